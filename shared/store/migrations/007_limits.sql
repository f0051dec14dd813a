-- Limits (docs/operations.md, "Limits"): how many VMs are in the expensive phases at once
-- (creating to provisioning), per destination host and overall, and how many are archived at
-- once per legacy site.
-- The destination host the creator admitted the VM to (the provider's name for it): in-flight
-- VMs are counted per host from here.
ALTER TABLE vms ADD COLUMN host text;
-- Why a VM is not moving on although its group is: it waits for a slot ("waiting for a slot:
-- 20 of 20 in flight on host X"). Cleared when it is admitted.
ALTER TABLE vms ADD COLUMN waiting text;
