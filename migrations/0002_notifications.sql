-- Transactional outbox: one row per file, channel and kind, written in the same
-- transaction that finishes the file, then delivered by the dispatcher.
CREATE TABLE notifications (
    id           bigserial   PRIMARY KEY,
    file_id      uuid        NOT NULL REFERENCES files (id) ON DELETE CASCADE,
    channel      text        NOT NULL,
    kind         text        NOT NULL CHECK (kind IN ('succeeded', 'failed')),
    subject      text        NOT NULL,
    message      text        NOT NULL,
    body         text        NOT NULL,
    status       text        NOT NULL DEFAULT 'pending'
                 CHECK (status IN ('pending', 'sending', 'sent', 'failed')),
    attempts     integer     NOT NULL DEFAULT 0,
    run_after    timestamptz NOT NULL DEFAULT now(),
    locked_until timestamptz,
    last_error   text,
    created_at   timestamptz NOT NULL DEFAULT now(),
    sent_at      timestamptz,
    UNIQUE (file_id, channel, kind)
);

CREATE INDEX notifications_due ON notifications (run_after) WHERE status IN ('pending', 'sending');

CREATE FUNCTION notifications_notify_pending() RETURNS trigger AS $$
BEGIN
    IF NEW.status = 'pending' THEN
        PERFORM pg_notify('tally_notifications', NEW.id::text);
    END IF;
    RETURN NULL;
END;
$$ LANGUAGE plpgsql;

CREATE TRIGGER notifications_notify_pending
    AFTER INSERT OR UPDATE OF status ON notifications
    FOR EACH ROW EXECUTE FUNCTION notifications_notify_pending();
