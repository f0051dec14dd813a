-- Listings at fleet scale page through groups and VMs by key, in the order they are shown:
-- groups newest first by (created_at, id); VMs newest first, then by group and plan position.
-- These indexes let each page start where the last one ended instead of counting past it.
CREATE INDEX groups_listing ON groups (created_at DESC, id DESC);
CREATE INDEX vms_listing ON vms (created_at DESC, group_id, position);
