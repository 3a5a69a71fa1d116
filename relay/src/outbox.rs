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
/// A row's `data` comes only when it is at most `$2` bytes (the payload limit): a larger row is
/// moved to `roomcast_outbox_failed` without being read. Rows whose room is NULL (written around
/// the migration's checks) are ready, to be moved there too.
///
/// The check counts, per room, the unprocessed rows up to the room's last claimed id (an index
/// range scan on `(room, id)`, so a claim costs O(rows) whatever the number of rooms; checking
/// row by row made the planner scan the batch once per row). The CTEs are evaluated once (the
/// first locks) and on this statement's snapshot: a row another relay published after it was
/// taken still counts, which only holds the room back until the next batch.
pub const CLAIM: &str = "
WITH claimed AS (
    SELECT id FROM roomcast_outbox
    WHERE processed_at IS NULL
    ORDER BY id
    LIMIT $1
    FOR UPDATE SKIP LOCKED
),
taken AS MATERIALIZED (
    SELECT o.* FROM roomcast_outbox o JOIN claimed c ON c.id = o.id
),
rooms AS MATERIALIZED (
    SELECT g.room, g.room IS NULL OR g.mine = (
        SELECT count(*) FROM roomcast_outbox e
        WHERE e.room = g.room AND e.processed_at IS NULL AND e.id <= g.last
    ) AS ready
    FROM (SELECT room, max(id) AS last, count(*) AS mine FROM taken GROUP BY room) g
)
SELECT t.id, t.tenant, t.kind, t.target_id, t.event,
       CASE WHEN octet_length(t.data::text) <= $2 THEN t.data::text END,
       t.idempotency_key,
       extract(epoch FROM now() - t.created_at)::float8 AS age, r.ready,
       octet_length(t.data::text)::bigint AS size
FROM taken t JOIN rooms r ON r.room IS NOT DISTINCT FROM t.room
ORDER BY t.id";

/// Deletes published rows (retention 0). `IN (SELECT unnest(..))` rather than `= ANY(..)`: the
/// latter was planned as a sequential scan while the table's statistics still described it
/// before a bulk insert (a drain of 50,000 rows spent up to 100 ms per batch here), the former
/// as index lookups in the same case (BENCHMARKS.md, the outbox relay).
pub const DELETE_PUBLISHED: &str = "DELETE FROM roomcast_outbox WHERE id IN (SELECT unnest($1::bigint[]))";

/// Marks published rows (retention above 0), planned like [`DELETE_PUBLISHED`].
pub const MARK_PUBLISHED: &str =
    "UPDATE roomcast_outbox SET processed_at = now() WHERE id IN (SELECT unnest($1::bigint[]))";

/// Moves one row that can never be published to `roomcast_outbox_failed`, with the reason. A
/// move rather than an update: a row written around the table's checks may break them, and an
/// update of it would then fail (a check added back `NOT VALID` still checks updated rows).
pub const MARK_FAILED: &str = "
WITH gone AS (
    DELETE FROM roomcast_outbox WHERE id = $1
    RETURNING id, tenant, kind, target_id, event, data, idempotency_key, created_at
)
INSERT INTO roomcast_outbox_failed (id, tenant, kind, target_id, event, data, idempotency_key, created_at, error)
SELECT id, tenant, kind, target_id, event, data, idempotency_key, created_at, $2 FROM gone
ON CONFLICT (id) DO UPDATE SET error = EXCLUDED.error, failed_at = now()";

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
    /// `tenant`.
    pub tenant: String,
    /// `kind`: tenant, user, project or channel.
    pub kind: String,
    /// `target_id`: the user, project or channel id; `None` for a tenant.
    pub target_id: Option<String>,
    /// `event`.
    pub event: String,
    /// `data`, as JSON text; `None` when it is larger than the payload limit (not read).
    pub data: Option<String>,
    /// Size of `data` as JSON text, in bytes.
    pub size: i64,
    /// `idempotency_key`: the event id.
    pub key: String,
    /// Seconds since the inserting transaction started.
    pub age: f64,
    /// Whether no earlier row of its room is held elsewhere (see [`CLAIM`]).
    pub ready: bool,
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
        })
    }

    /// The target of this row, or why it can never be published. The migration's checks refuse
    /// such rows at insert; these are for rows written around them (an older schema, a
    /// dropped constraint) and for limits the database does not know (the payload size).
    pub fn target<'p>(&self, publisher: &'p Publisher, max_payload: usize) -> Result<Target<'p>, String> {
        let id = || self.target_id.as_deref().ok_or_else(|| format!("kind {} needs a target_id", self.kind));
        let target = match self.kind.as_str() {
            "tenant" => publisher.tenant(&self.tenant),
            "user" => publisher.user(&self.tenant, id()?),
            "project" => publisher.project(&self.tenant, id()?),
            "channel" => publisher.channel(&self.tenant, id()?),
            other => return Err(format!("unknown kind {other:?} (tenant, user, project or channel)")),
        };
        target.room().map_err(|e| format!("bad room id: {e}"))?;
        validate_id(&self.key).map_err(|e| format!("bad idempotency_key: {e}"))?;
        wire::validate_event_name(&self.event).map_err(|e| format!("bad event name: {e}"))?;
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
            tenant: "acme".into(),
            kind: kind.into(),
            target_id: target.map(Into::into),
            event: "task.updated".into(),
            data: Some(r#"{"id": 42}"#.into()),
            size: 10,
            key: "k-1".into(),
            age: 0.0,
            ready: true,
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
            (Row { tenant: String::new(), ..row("tenant", None) }, "bad room id"),
            (Row { event: "presence:join".into(), ..row("tenant", None) }, "bad event name"),
            (Row { key: "has space".into(), ..row("tenant", None) }, "bad idempotency_key"),
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
