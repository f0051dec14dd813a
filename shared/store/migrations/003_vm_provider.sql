-- Which provider made each VM, and whether its VMs are simulated (sim, fake) rather than real
-- machines: `ferry status`, the API and the UI say so.
ALTER TABLE vms ADD COLUMN provider text;
ALTER TABLE vms ADD COLUMN simulated boolean NOT NULL DEFAULT false;
