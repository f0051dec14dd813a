-- What each VM is rebuilt as: the legacy host's system, read from its root when archived
-- (shared/systems: family, init, network stack...), and the MAC of the NIC its provider made,
-- by which the rebuilt VM's network configuration finds its interface.
ALTER TABLE vms ADD COLUMN legacy_system jsonb;
ALTER TABLE vms ADD COLUMN mac text;
