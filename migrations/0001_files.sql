-- Uploaded files: the history record and the work queue in one table.
CREATE TABLE files (
    id                uuid PRIMARY KEY,
    filename          text        NOT NULL,
    size_bytes        bigint      NOT NULL,
    sha256            text        NOT NULL,
    object_key        text        NOT NULL,
    delimiter         text,
    decimal_separator text        NOT NULL DEFAULT '.',
    status            text        NOT NULL DEFAULT 'pending'
                      CHECK (status IN ('pending', 'processing', 'succeeded', 'failed')),
    attempts          integer     NOT NULL DEFAULT 0,
    run_after         timestamptz NOT NULL DEFAULT now(),
    lease_owner       text,
    locked_until      timestamptz,
    progress_bytes    bigint      NOT NULL DEFAULT 0,
    entries           bigint,
    sum               numeric,
    error             text,
    created_at        timestamptz NOT NULL DEFAULT now(),
    started_at        timestamptz,
    finished_at       timestamptz
);

-- Claims scan only unfinished rows, so a long history does not slow them down.
CREATE INDEX files_claimable ON files (created_at) WHERE status IN ('pending', 'processing');
-- History: newest first, cursor on (created_at, id).
CREATE INDEX files_history ON files (created_at DESC, id DESC);
CREATE INDEX files_history_by_status ON files (status, created_at DESC, id DESC);

-- Wake workers the moment a file becomes claimable.
CREATE FUNCTION files_notify_pending() RETURNS trigger AS $$
BEGIN
    IF NEW.status = 'pending' THEN
        PERFORM pg_notify('tally_files', NEW.id::text);
    END IF;
    RETURN NULL;
END;
$$ LANGUAGE plpgsql;

CREATE TRIGGER files_notify_pending
    AFTER INSERT OR UPDATE OF status ON files
    FOR EACH ROW EXECUTE FUNCTION files_notify_pending();
