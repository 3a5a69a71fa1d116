-- Roomcast transactional outbox (PostgreSQL >= 13). Apply once per database, e.g.
--   psql "$DATABASE_URL" -v ON_ERROR_STOP=1 -f 0001_roomcast_outbox.sql
-- It is idempotent (IF NOT EXISTS / OR REPLACE): applying it again changes nothing.
--
-- Applications publish inside their own transaction:
--   BEGIN;
--   UPDATE tasks SET done = true WHERE id = 42;
--   SELECT roomcast_publish('acme', 'project', 'p1', 'task.updated', '{"id": 42, "done": true}');
--   COMMIT;
-- The event exists only if the transaction commits; roomcast-relay publishes it to Redis and
-- every gateway delivers it to the room's members, once. A room's rows are published in id
-- order among those committed when the relay reads the table (README, "Transactional
-- publishing", says what that means for transactions that overlap).

CREATE TABLE IF NOT EXISTS roomcast_outbox (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant          text        NOT NULL,
    -- tenant | user | project | channel; target_id is the user, project or channel id (NULL
    -- for a tenant-wide event).
    kind            text        NOT NULL,
    target_id       text,
    event           text        NOT NULL,
    data            jsonb       NOT NULL,
    -- The event id clients see (meta.id) and the publish's idempotency key: rows with the same
    -- key for the same room within the relay's dedupe window are delivered once. Random unless
    -- the application passes its own (e.g. 'order-42-shipped').
    idempotency_key text        NOT NULL DEFAULT gen_random_uuid()::text,
    created_at      timestamptz NOT NULL DEFAULT now(),
    -- Set by the relay when it published the row and ROOMCAST_RELAY_RETENTION keeps it.
    processed_at    timestamptz,
    -- The room's canonical name, as the gateways spell it: per-room order is kept on it.
    room            text GENERATED ALWAYS AS (
                        'tenant:' || tenant ||
                        CASE WHEN kind = 'tenant' THEN '' ELSE ':' || kind || ':' || target_id END
                    ) STORED,
    -- The same rules as the gateway's ids (1-128 of A-Z a-z 0-9 _ - . @ | + =), so a bad row is
    -- refused in the application's transaction instead of by the relay later.
    CONSTRAINT roomcast_outbox_tenant CHECK (tenant ~ '^[A-Za-z0-9_.@|+=-]{1,128}$'),
    CONSTRAINT roomcast_outbox_kind CHECK (
        (kind = 'tenant' AND target_id IS NULL)
        OR (kind IN ('user', 'project', 'channel') AND target_id IS NOT NULL
            AND target_id ~ '^[A-Za-z0-9_.@|+=-]{1,128}$')),
    CONSTRAINT roomcast_outbox_event CHECK (
        octet_length(event) BETWEEN 1 AND 128
        -- C0 and C1 control characters, as the gateway refuses them.
        AND event !~ '[\x01-\x1f\x7f-\x9f]'
        AND event NOT IN ('connect', 'connect_error', 'disconnect', 'disconnecting',
                          'newListener', 'removeListener', 'typing')
        AND event !~ '^(presence|auth|roomcast):'),
    CONSTRAINT roomcast_outbox_key CHECK (idempotency_key ~ '^[A-Za-z0-9_.@|+=-]{1,128}$')
);

-- Rows the relay can never publish (a payload over ROOMCAST_PUBLISH_MAX_PAYLOAD, a row written
-- around the checks above) are moved here with the reason, out of the queue's way. Nothing
-- deletes them: look, fix, re-insert into roomcast_outbox if wanted, delete.
CREATE TABLE IF NOT EXISTS roomcast_outbox_failed (
    id              bigint      PRIMARY KEY,
    tenant          text,
    kind            text,
    target_id       text,
    event           text,
    data            jsonb,
    idempotency_key text,
    created_at      timestamptz,
    failed_at       timestamptz NOT NULL DEFAULT now(),
    error           text        NOT NULL
);

-- What the relay claims: unprocessed rows in id order, and per room (the order check).
CREATE INDEX IF NOT EXISTS roomcast_outbox_pending ON roomcast_outbox (id) WHERE processed_at IS NULL;
CREATE INDEX IF NOT EXISTS roomcast_outbox_pending_room ON roomcast_outbox (room, id) WHERE processed_at IS NULL;
-- Retention deletes processed rows by age.
CREATE INDEX IF NOT EXISTS roomcast_outbox_processed ON roomcast_outbox (processed_at) WHERE processed_at IS NOT NULL;

-- Queues one event in the caller's transaction (the trigger below wakes the relays when it
-- commits). Returns the event id.
CREATE OR REPLACE FUNCTION roomcast_publish(
    p_tenant text, p_kind text, p_id text, p_event text, p_data jsonb,
    p_idempotency_key text DEFAULT NULL
) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    key text;
BEGIN
    INSERT INTO roomcast_outbox (tenant, kind, target_id, event, data, idempotency_key)
    VALUES (p_tenant, p_kind, CASE WHEN p_kind = 'tenant' THEN NULL ELSE p_id END, p_event,
            coalesce(p_data, 'null'::jsonb), coalesce(p_idempotency_key, gen_random_uuid()::text))
    RETURNING idempotency_key INTO key;
    RETURN key;
END
$$;

-- Every insert, through roomcast_publish or directly, wakes the relays when its transaction
-- commits: NOTIFY is transactional (a rolled-back transaction notifies nobody) and folds
-- identical notifications of one transaction into one.
CREATE OR REPLACE FUNCTION roomcast_outbox_notify() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('roomcast_outbox', '');
    RETURN NULL;
END
$$;

-- Created once: applying the migration again neither drops it (inserts in between would
-- notify nobody) nor locks the table, and a trigger you disabled stays disabled (NOTIFY
-- serializes the commits that send it; README, "The cost of NOTIFY").
DO $$
BEGIN
    IF NOT EXISTS (
        SELECT 1 FROM pg_trigger
        WHERE tgname = 'roomcast_outbox_notify' AND tgrelid = 'roomcast_outbox'::regclass
    ) THEN
        CREATE TRIGGER roomcast_outbox_notify AFTER INSERT ON roomcast_outbox
            FOR EACH STATEMENT EXECUTE FUNCTION roomcast_outbox_notify();
    END IF;
END
$$;
