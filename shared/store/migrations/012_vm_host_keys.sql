-- Host keys pinned (docs/security.md, "Host keys"): the public SSH host keys a new VM reported
-- through the gateway once its configuration script made them (or found them in its root
-- archive), one per key type. The cutover reaches the VM with exactly these keys in its
-- known_hosts and StrictHostKeyChecking=yes. A VM that reports again (a configuration retried)
-- replaces its keys: the new root is new.
CREATE TABLE vm_host_keys (
    vm_id uuid NOT NULL REFERENCES vms(id) ON DELETE CASCADE,
    key_type text NOT NULL,
    public_key text NOT NULL,
    fingerprint text NOT NULL,
    reported_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (vm_id, key_type)
);
