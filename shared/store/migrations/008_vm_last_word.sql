-- Deadlines (docs/operations.md): when a VM last said anything (any request it made to the
-- gateway with its token: a state, a log line, a heartbeat, a download) or, in a phase the
-- service does itself (archiving), when the service last made progress for it; and the last
-- step it named. The coordinator's watchdog fails a VM silent past its phase's deadline,
-- counting from this or from its last change of state, whichever is later.
ALTER TABLE vms ADD COLUMN last_word_at timestamptz;
ALTER TABLE vms ADD COLUMN last_step text;
