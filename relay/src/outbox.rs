//! The outbox table as the relay sees it: the SQL it runs and what a claimed row becomes.
//!
//! The table and `roomcast_publish` are in `migrations/0001_roomcast_outbox.sql`
//! ([`MIGRATION`]).

use roomcast_publisher::{Publisher, Target, validate_id, wire};
use serde_json::value::RawValue;

/// The migration creating the table, its indexes, `roomcast_publish` and the NOTIFY trigger.
pub const MIGRATION: &str = include_str!("../migrations/0001_roomcast_outbox.sql");

/// The channel the migration's trigger notifies on every committed insert.
pub const CHANNEL: &str = "roomcast_outbox";

/// Claims up to `$1` unprocessed rows in id order, skipping rows another relay holds, and says
/// of each whether it may be published now. Rows of one room are published in id order even
/// with several relays: a room's claimed rows are held back (released at commit, claimed again
/// shortly) unless they are all of its unprocessed rows up to the last of them, that is, unless
/// another relay holds an earlier row of the room.
///
/// A row's `data` comes only when it is at most `$2` bytes (the payload limit) and the claim's
/// rows before it hold less than `$3` bytes (`ROOMCAST_RELAY_BATCH_BYTES`): a larger row is
/// moved to `roomcast_outbox_failed` without being read, and the rows past the budget wait for
/// the next batch without being transferred. Rows whose room is NULL (written around the
/// migration's checks) are ready, to be moved aside; they group under `''`, which no room name
/// is.
///
/// The check counts, per room, the unprocessed rows up to the room's last claimed id (an index
/// range scan on `(room, id)`, run on the room's last claimed row only), so a claim costs
/// O(rows) whatever the number of rooms; checking row by row made the planner scan the batch
/// once per row. Everything after the claim is window functions over the claimed rows, no join
/// between them: right after a bulk insert the planner estimated one row per step and turned a
/// join of two 500-row steps into a 250,000-comparison nested loop (25 ms per claim). The CTEs
/// are evaluated once (the first locks) and on this statement's snapshot: a row another relay
/// published after it was taken still counts, which only holds the room back until the next
/// batch.
pub const CLAIM: &str = "
WITH claimed AS (
    SELECT id FROM roomcast_outbox
    WHERE processed_at IS NULL
    ORDER BY id
    LIMIT $1
    FOR UPDATE SKIP LOCKED
),
taken AS MATERIALIZED (
    SELECT o.id, o.tenant, o.kind, o.target_id, o.event, o.data, o.idempotency_key, o.created_at,
           coalesce(o.room, '') AS room_key, octet_length(o.data::text) AS size,
           count(*) OVER w AS mine, max(o.id) OVER w AS last
    FROM roomcast_outbox o JOIN claimed c ON c.id = o.id
    WINDOW w AS (PARTITION BY coalesce(o.room, ''))
),
checked AS MATERIALIZED (
    SELECT t.*, CASE WHEN t.id = t.last THEN t.room_key = '' OR t.mine = (
        SELECT count(*) FROM roomcast_outbox e
        WHERE e.room = t.room_key AND e.processed_at IS NULL AND e.id <= t.last
    ) END AS last_ready
    FROM taken t
),
ready AS (
    SELECT c.*, bool_or(c.last_ready) OVER (PARTITION BY c.room_key) AS ready FROM checked c
),
sized AS (
    SELECT r.*, coalesce(sum(CASE WHEN r.ready THEN r.size ELSE 0 END)
               OVER (ORDER BY r.id ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING), 0) AS before
    FROM ready r
)
SELECT id, tenant, kind, target_id, event,
       CASE WHEN size <= $2 AND before < $3 THEN data::text END,
       idempotency_key,
       extract(epoch FROM now() - created_at)::float8 AS age, ready,
       coalesce(size, 0)::bigint AS size, before < $3 AS within_budget
FROM sized
ORDER BY id";

/// Deletes published rows (retention 0). `IN (SELECT unnest(..))` rather than `= ANY(..)`: the
/// latter was planned as a sequential scan while the table's statistics still described it
/// before a bulk insert (a drain of 50,000 rows spent up to 100 ms per batch here), the former
/// as index lookups in the same case (BENCHMARKS.md, the outbox relay).
pub const DELETE_PUBLISHED: &str = "DELETE FROM roomcast_outbox WHERE id IN (SELECT unnest($1::bigint[]))";

/// Marks published rows (retention above 0), planned like [`DELETE_PUBLISHED`].
pub const MARK_PUBLISHED: &str =
    "UPDATE roomcast_outbox SET processed_at = now() WHERE id IN (SELECT unnest($1::bigint[]))";

/// Moves the rows that can never be published (ids `$1`, reasons `$2`) to
/// `roomcast_outbox_failed`, in one statement. A move rather than an update: a row written
/// around the table's checks may break them, and an update of it would then fail (a check added
/// back `NOT VALID` still checks updated rows). An id already there (the identity restarted, the
/// outbox recreated) is overwritten with the new row.
pub const MARK_FAILED: &str = "
WITH bad AS (
    SELECT * FROM unnest($1::bigint[], $2::text[]) AS b(id, error)
),
gone AS (
    DELETE FROM roomcast_outbox o USING bad WHERE o.id = bad.id
    RETURNING o.id, o.tenant, o.kind, o.target_id, o.event, o.data, o.idempotency_key, o.created_at, bad.error
)
INSERT INTO roomcast_outbox_failed (id, tenant, kind, target_id, event, data, idempotency_key, created_at, error)
SELECT id, tenant, kind, target_id, event, data, idempotency_key, created_at, error FROM gone
ON CONFLICT (id) DO UPDATE SET
    tenant = EXCLUDED.tenant, kind = EXCLUDED.kind, target_id = EXCLUDED.target_id, event = EXCLUDED.event,
    data = EXCLUDED.data, idempotency_key = EXCLUDED.idempotency_key, created_at = EXCLUDED.created_at,
    error = EXCLUDED.error, failed_at = now()";

/// Deletes published rows older than the retention (`$1` seconds), 10,000 at a time (the relay
/// repeats it while a full 10,000 went, within its database timeout).
pub const PURGE: &str = "
DELETE FROM roomcast_outbox WHERE id IN (
    SELECT id FROM roomcast_outbox
    WHERE processed_at < now() - make_interval(secs => $1)
    LIMIT 10000
)";

/// Age in seconds of the oldest unprocessed row (NULL when there is none): the relay's lag.
pub const LAG: &str = "
SELECT extract(epoch FROM now() - created_at)::float8
FROM roomcast_outbox WHERE processed_at IS NULL ORDER BY id LIMIT 1";

/// One claimed row.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    /// The row's id.
    pub id: i64,
    /// `tenant` (NULL only when written around the checks, as the next three).
    pub tenant: Option<String>,
    /// `kind`: tenant, user, project or channel.
    pub kind: Option<String>,
    /// `target_id`: the user, project or channel id; `None` for a tenant.
    pub target_id: Option<String>,
    /// `event`.
    pub event: Option<String>,
    /// `data`, as JSON text; `None` when it is larger than the payload limit (not read).
    pub data: Option<String>,
    /// Size of `data` as JSON text, in bytes.
    pub size: i64,
    /// `idempotency_key`: the event id.
    pub key: Option<String>,
    /// Seconds since the inserting transaction started.
    pub age: f64,
    /// Whether no earlier row of its room is held elsewhere (see [`CLAIM`]).
    pub ready: bool,
    /// Whether the claim's rows before it fit `ROOMCAST_RELAY_BATCH_BYTES` (else it waits for
    /// the next batch, and so do all after it).
    pub within_budget: bool,
}

impl Row {
    /// Reads a row of [`CLAIM`]'s result.
    pub fn from_claim(r: &tokio_postgres::Row) -> Result<Row, tokio_postgres::Error> {
        Ok(Row {
            id: r.try_get(0)?,
            tenant: r.try_get(1)?,
            kind: r.try_get(2)?,
            target_id: r.try_get(3)?,
            event: r.try_get(4)?,
            data: r.try_get(5)?,
            key: r.try_get(6)?,
            age: r.try_get::<_, Option<f64>>(7)?.unwrap_or(0.0),
            ready: r.try_get(8)?,
            size: r.try_get(9)?,
            within_budget: r.try_get(10)?,
        })
    }

    /// The target of this row, or why it can never be published. The migration's checks refuse
    /// such rows at insert; these are for rows written around them (an older schema, a
    /// dropped constraint) and for limits the database does not know (the payload size).
    pub fn target<'p>(&self, publisher: &'p Publisher, max_payload: usize) -> Result<Target<'p>, String> {
        let tenant = self.tenant.as_deref().ok_or("tenant is NULL")?;
        let kind = self.kind.as_deref().ok_or("kind is NULL")?;
        let event = self.event.as_deref().ok_or("event is NULL")?;
        let key = self.key.as_deref().ok_or("idempotency_key is NULL")?;
        let id = || self.target_id.as_deref().ok_or_else(|| format!("kind {kind} needs a target_id"));
        let target = match kind {
            "tenant" => publisher.tenant(tenant),
            "user" => publisher.user(tenant, id()?),
            "project" => publisher.project(tenant, id()?),
            "channel" => publisher.channel(tenant, id()?),
            other => return Err(format!("unknown kind {other:?} (tenant, user, project or channel)")),
        };
        target.room().map_err(|e| format!("bad room id: {e}"))?;
        validate_id(key).map_err(|e| format!("bad idempotency_key: {e}"))?;
        wire::validate_event_name(event).map_err(|e| format!("bad event name: {e}"))?;
        if self.data.is_none() || self.size > i64::try_from(max_payload).unwrap_or(i64::MAX) {
            return Err(format!("payload_too_large: data is {} bytes, the most is {max_payload}", self.size));
        }
        Ok(target)
    }

    /// The payload as it is published (JSON text, unchanged).
    pub fn payload(&self) -> Result<Box<RawValue>, String> {
        let data = self.data.clone().ok_or("payload_too_large: data was not read")?;
        RawValue::from_string(data).map_err(|e| format!("data is not JSON: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(kind: &str, target: Option<&str>) -> Row {
        Row {
            id: 1,
            tenant: Some("acme".into()),
            kind: Some(kind.into()),
            target_id: target.map(Into::into),
            event: Some("task.updated".into()),
            data: Some(r#"{"id": 42}"#.into()),
            size: 10,
            key: Some("k-1".into()),
            age: 0.0,
            ready: true,
            within_budget: true,
        }
    }

    fn publisher() -> Publisher {
        // Never connected: only its targets are built.
        let client = roomcast_publisher::fred::prelude::Builder::default_centralized().build().expect("client");
        Publisher::from_client(client)
    }

    #[test]
    fn each_kind_names_the_gateways_room() {
        let p = publisher();
        for (kind, target, room) in [
            ("tenant", None, "tenant:acme"),
            ("user", Some("ada"), "tenant:acme:user:ada"),
            ("project", Some("p1"), "tenant:acme:project:p1"),
            ("channel", Some("c1"), "tenant:acme:channel:c1"),
        ] {
            let t = row(kind, target).target(&p, 1024).expect(kind);
            assert_eq!(t.room().expect("room").to_string(), room);
        }
    }

    #[test]
    fn a_row_that_can_never_publish_says_why() {
        let p = publisher();
        let cases: Vec<(Row, &str)> = vec![
            (row("team", Some("x")), "unknown kind"),
            (row("project", None), "needs a target_id"),
            (row("project", Some("a:b")), "bad room id"),
            (Row { tenant: Some(String::new()), ..row("tenant", None) }, "bad room id"),
            (Row { event: Some("presence:join".into()), ..row("tenant", None) }, "bad event name"),
            (Row { key: Some("has space".into()), ..row("tenant", None) }, "bad idempotency_key"),
            (Row { tenant: None, ..row("tenant", None) }, "tenant is NULL"),
            (Row { kind: None, ..row("tenant", None) }, "kind is NULL"),
            (Row { event: None, ..row("tenant", None) }, "event is NULL"),
            (Row { key: None, ..row("tenant", None) }, "idempotency_key is NULL"),
            (Row { data: None, size: 2000, ..row("tenant", None) }, "payload_too_large"),
            (Row { size: 2000, ..row("tenant", None) }, "payload_too_large"),
        ];
        for (r, why) in cases {
            let err = r.target(&p, 1024).err().unwrap_or_else(|| panic!("{r:?} was accepted"));
            assert!(err.contains(why), "{err} should say {why}");
        }
    }

    #[test]
    fn the_payload_is_published_as_stored() {
        assert_eq!(row("tenant", None).payload().expect("json").get(), r#"{"id": 42}"#);
        assert!(Row { data: Some("{".into()), ..row("tenant", None) }.payload().is_err());
        assert!(Row { data: None, ..row("tenant", None) }.payload().is_err());
    }
}
