-- A cutover step's timing, what it did, and its undo when the run rolled back.
-- status: running | done | failed | undone | undo_failed
ALTER TABLE cutover_steps ADD COLUMN seconds double precision;
ALTER TABLE cutover_steps ADD COLUMN detail text;
ALTER TABLE cutover_steps ADD COLUMN undone_at timestamptz;
ALTER TABLE cutover_steps ADD COLUMN undo_error text;
