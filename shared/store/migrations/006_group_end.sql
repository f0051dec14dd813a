-- The end of a migration: a group is cancelled before its cutover, or finalized after it.
-- When it was (retention counts a closed group's VM messages from here).
ALTER TABLE groups ADD COLUMN closed_at timestamptz;
-- Why the last cancel or finalize stopped short (a VM the provider would not delete, a legacy
-- host out of reach): the group stays cancelling or finalizing until the operator asks again.
ALTER TABLE groups ADD COLUMN closing_error text;
-- What a finalize did with the forwarding of the old public addresses on the legacy hosts:
-- kept | removed.
ALTER TABLE groups ADD COLUMN legacy_forwarding text;

-- A name is held while its group is on its way (cancelling included: its VMs may still be
-- there). A cancelled group keeps its row for the record but no longer holds its name; a live
-- one let it go already (001), and finalizing does not take it back.
DROP INDEX groups_active_name;
CREATE UNIQUE INDEX groups_active_name ON groups (name)
    WHERE status NOT IN ('live', 'finalizing', 'finalized', 'cancelled');

-- Retention deletes processed-event records by age.
CREATE INDEX inbox_processed_at ON inbox (processed_at);
