-- What a dump's server answered when asked its version (PostgreSQL's server_version_num): the
-- rebuilt VM's cluster runs that major unless the plan names another.
ALTER TABLE archives ADD COLUMN server_version text;
