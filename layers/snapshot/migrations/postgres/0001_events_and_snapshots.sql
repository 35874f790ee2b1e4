-- omega-snapshot: events and snapshots (PostgreSQL).
CREATE TABLE IF NOT EXISTS omega_events (
    aggregate_type TEXT NOT NULL,
    aggregate_id   TEXT NOT NULL,
    version        BIGINT NOT NULL,
    schema_version INTEGER NOT NULL,
    payload        BYTEA NOT NULL,
    -- Set on the last event of each appended batch: a command is appended at most once.
    command_id     TEXT,
    recorded_at    BIGINT NOT NULL,
    PRIMARY KEY (aggregate_type, aggregate_id, version)
);
CREATE UNIQUE INDEX IF NOT EXISTS omega_events_command
    ON omega_events (aggregate_type, aggregate_id, command_id)
    WHERE command_id IS NOT NULL;
CREATE TABLE IF NOT EXISTS omega_snapshots (
    aggregate_type TEXT NOT NULL,
    aggregate_id   TEXT NOT NULL,
    version        BIGINT NOT NULL,
    data           BYTEA NOT NULL,
    PRIMARY KEY (aggregate_type, aggregate_id, version)
);
