-- Groups, their VMs and everything a VM reports while it is rebuilt.
CREATE TABLE groups (
    id              uuid PRIMARY KEY,
    name            text NOT NULL,
    plan            jsonb NOT NULL,
    status          text NOT NULL DEFAULT 'active',
    halted_vm_id    uuid,
    halted_reason   text,
    archived_at     timestamptz,
    master_complete jsonb,            -- master name -> {log_file, log_pos}, set by the provisioner
    ready_at        timestamptz,
    -- Replication credentials for the group's databases: a secret, never in events or logs.
    replication_password text NOT NULL,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now()
);
-- One live group per name; a finished (live) group may be migrated again under a new id.
CREATE UNIQUE INDEX groups_active_name ON groups (name) WHERE status <> 'live';

CREATE TABLE vms (
    id               uuid PRIMARY KEY,
    group_id         uuid NOT NULL REFERENCES groups (id) ON DELETE CASCADE,
    name             text NOT NULL,
    role             text NOT NULL,
    position         int NOT NULL,
    state            text NOT NULL DEFAULT 'planned',
    held_state       text,            -- where a HALTED VM resumes
    failed_from      text,            -- the state a FAILED VM was in
    step             text,
    message          text,
    provider_ref     text,
    master_id        uuid,            -- a replica's database master (it loads the master's dumps)
    state_changed_at timestamptz NOT NULL DEFAULT now(),
    created_at       timestamptz NOT NULL DEFAULT now(),
    UNIQUE (group_id, name)
);
CREATE INDEX vms_group ON vms (group_id);
CREATE INDEX vms_state ON vms (state);

-- Every state a VM passed through, for timelines.
CREATE TABLE vm_transitions (
    id         bigserial PRIMARY KEY,
    vm_id      uuid NOT NULL REFERENCES vms (id) ON DELETE CASCADE,
    from_state text NOT NULL,
    to_state   text NOT NULL,
    step       text,
    at         timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX vm_transitions_vm ON vm_transitions (vm_id, id);

CREATE TABLE vm_messages (
    id    bigserial PRIMARY KEY,
    vm_id uuid NOT NULL REFERENCES vms (id) ON DELETE CASCADE,
    level text NOT NULL,
    text  text NOT NULL,
    at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX vm_messages_vm ON vm_messages (vm_id, id);

CREATE TABLE archives (
    id         text PRIMARY KEY,
    vm_id      uuid NOT NULL REFERENCES vms (id) ON DELETE CASCADE,
    kind       text NOT NULL,         -- path | database
    source     text NOT NULL,         -- "/data" or the database name
    engine     text,
    file       text NOT NULL,
    sha256     text NOT NULL,
    size       bigint NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    UNIQUE (vm_id, kind, source)
);

CREATE TABLE vm_tokens (
    id         uuid PRIMARY KEY,
    vm_id      uuid NOT NULL REFERENCES vms (id) ON DELETE CASCADE,
    token_hash bytea NOT NULL UNIQUE,
    issued_at  timestamptz NOT NULL DEFAULT now(),
    revoked_at timestamptz
);
CREATE INDEX vm_tokens_vm ON vm_tokens (vm_id);

CREATE TABLE vm_scripts (
    vm_id       uuid PRIMARY KEY REFERENCES vms (id) ON DELETE CASCADE,
    script      text NOT NULL,
    rendered_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE outbox (
    id           bigserial PRIMARY KEY,
    event_id     uuid NOT NULL UNIQUE,
    routing_key  text NOT NULL,
    body         jsonb NOT NULL,
    group_id     uuid,
    created_at   timestamptz NOT NULL DEFAULT now(),
    published_at timestamptz,
    error        text                -- why it could not be published (unroutable)
);
CREATE INDEX outbox_unpublished ON outbox (id) WHERE published_at IS NULL;
CREATE INDEX outbox_group ON outbox (group_id, id);

CREATE TABLE inbox (
    service      text NOT NULL,
    event_id     uuid NOT NULL,
    processed_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (service, event_id)
);

CREATE TABLE cutover_runs (
    id          uuid PRIMARY KEY,
    group_id    uuid NOT NULL REFERENCES groups (id) ON DELETE CASCADE,
    prepare     boolean NOT NULL DEFAULT false,
    status      text NOT NULL,        -- requested | accepted | refused | running | completed | failed | rolled_back
    reason      text,
    downtime_s  double precision,
    created_at  timestamptz NOT NULL DEFAULT now(),
    finished_at timestamptz
);

CREATE TABLE cutover_steps (
    run_id      uuid NOT NULL REFERENCES cutover_runs (id) ON DELETE CASCADE,
    position    int NOT NULL,
    name        text NOT NULL,
    status      text NOT NULL,
    started_at  timestamptz,
    finished_at timestamptz,
    error       text,
    PRIMARY KEY (run_id, position)
);

-- What a VM reported with its last state (a master's binlog position when it completes).
ALTER TABLE vms ADD COLUMN detail jsonb;
