-- Operators with roles: named bearer tokens, each with a role (viewer < operator < admin),
-- stored only as the SHA-256 of the token. A name stays taken once revoked, so that an audit
-- line's name always means one token. The bootstrap token (FERRY_OPERATOR_TOKEN or the state
-- dir's operator-token) is configuration, not a row: it is the admin that makes the others.
CREATE TABLE operator_tokens (
    id uuid PRIMARY KEY,
    name text NOT NULL UNIQUE,
    role text NOT NULL CHECK (role IN ('viewer', 'operator', 'admin')),
    token_hash bytea NOT NULL UNIQUE,
    created_at timestamptz NOT NULL DEFAULT now(),
    created_by text NOT NULL,
    revoked_at timestamptz,
    last_used_at timestamptz
);

-- Every action an operator token asked for, allowed or refused: who (the token's name and
-- role at the time), when, which route, which group or VM, and the HTTP status it ended with.
-- No foreign keys: a refused request may name a group that does not exist, and the trail
-- outlives what it speaks of.
CREATE TABLE audit (
    id bigserial PRIMARY KEY,
    at timestamptz NOT NULL DEFAULT now(),
    actor text NOT NULL,
    role text NOT NULL,
    method text NOT NULL,
    route text NOT NULL,
    path text NOT NULL,
    group_id uuid,
    vm_id uuid,
    status int NOT NULL,
    detail text
);
CREATE INDEX audit_group ON audit (group_id, id DESC);
