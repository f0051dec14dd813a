-- The group's replication password is kept sealed (a Fernet token made with the secrets key
-- file, shared/secrets_key.py) in sealed_replication_password; replication_password is left
-- only for the groups stored before this migration, until they are sealed.
--
-- SQL cannot seal them: the key is kept outside the database, on purpose. The gateway's start-up
-- seals every clear value it finds, in one transaction, under the migrations' advisory lock
-- (shared/store/sealed.py, seal_at_start), and empties the clear column; so does the rotation
-- command. A later migration can drop replication_password once every installation has run both.
ALTER TABLE groups ADD COLUMN sealed_replication_password text;
ALTER TABLE groups ALTER COLUMN replication_password DROP NOT NULL;
ALTER TABLE groups ADD CONSTRAINT groups_replication_password_kept_once
    CHECK (replication_password IS NULL OR sealed_replication_password IS NULL);
