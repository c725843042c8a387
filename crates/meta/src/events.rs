//! Events (the audit record and the webhook outbox) and webhook delivery bookkeeping.
//!
//! An event of a change is inserted in the transaction of that change, together with one
//! `webhook_queue` row per endpoint that wants it, so a crash can neither lose an event nor
//! report a change that did not happen. Delivery reads the queue in id order, which is commit
//! order for rows that are visible, and deletes rows once delivered.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use sqlx::any::AnyRow;
use sqlx::{AssertSqlSafe, Row};

use crate::store::Tx;
use crate::writer::AnyQuery;
use crate::{MetaStore, Result};

/// An event to record.
#[derive(Debug, Clone, Default)]
pub struct NewEvent {
    /// When it happened, in milliseconds since the epoch (0: when it is recorded).
    pub time_ms: i64,
    /// `push`, `pull`, `delete` or `mount`.
    pub action: &'static str,
    pub repository: String,
    pub digest: Option<String>,
    pub tag: Option<String>,
    pub media_type: Option<String>,
    pub size: Option<u64>,
    /// For mounts: where the blob came from.
    pub from_repository: Option<String>,
    pub actor: Option<String>,
    pub address: Option<String>,
    pub request_id: Option<String>,
    pub user_agent: Option<String>,
    pub method: Option<String>,
    /// Webhook endpoints that want this event.
    pub endpoints: Vec<String>,
}

/// A recorded event.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Event {
    pub id: i64,
    /// Milliseconds since the Unix epoch.
    pub created_at: i64,
    pub action: String,
    pub repository: String,
    pub digest: Option<String>,
    pub tag: Option<String>,
    pub media_type: Option<String>,
    pub size: Option<i64>,
    pub from_repository: Option<String>,
    pub actor: Option<String>,
    pub address: Option<String>,
    pub request_id: Option<String>,
    pub user_agent: Option<String>,
    pub method: Option<String>,
}

/// A filter for the audit query.
#[derive(Debug, Clone, Default)]
pub struct EventFilter {
    pub repository: Option<String>,
    pub actor: Option<String>,
    pub action: Option<String>,
    /// Milliseconds since the epoch, inclusive.
    pub since: Option<i64>,
    /// Milliseconds since the epoch, exclusive.
    pub until: Option<i64>,
    /// Only events with an id above this (paging).
    pub after_id: Option<i64>,
    pub limit: u32,
}

/// A queued delivery.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub queue_id: i64,
    pub attempts: i64,
    pub event: Event,
}

/// Delivery state of one endpoint.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct EndpointStatus {
    pub endpoint: String,
    pub queued: i64,
    pub delivered: i64,
    pub failed_attempts: i64,
    pub last_error: Option<String>,
    pub last_success_at: Option<i64>,
}

pub(crate) fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

const EVENT_COLUMNS: &str =
    "e.id, e.created_at, e.action, e.repository, e.digest, e.tag, e.media_type, e.size, e.from_repository, e.actor, e.address, e.request_id, e.user_agent, e.method";

fn event_from_row(r: &AnyRow) -> Result<Event> {
    Ok(Event {
        id: r.try_get("id")?,
        created_at: r.try_get("created_at")?,
        action: r.try_get("action")?,
        repository: r.try_get("repository")?,
        digest: r.try_get("digest")?,
        tag: r.try_get("tag")?,
        media_type: r.try_get("media_type")?,
        size: r.try_get("size")?,
        from_repository: r.try_get("from_repository")?,
        actor: r.try_get("actor")?,
        address: r.try_get("address")?,
        request_id: r.try_get("request_id")?,
        user_agent: r.try_get("user_agent")?,
        method: r.try_get("method")?,
    })
}

/// `$first, $first+1, ...`: `n` numbered placeholders (only these reach generated SQL text).
fn placeholders(first: usize, n: usize) -> String {
    (first..first + n).map(|i| format!("${i}")).collect::<Vec<_>>().join(", ")
}

/// The `INSERT INTO events` statement for `n` events, whose values are bound (by
/// [`bind_events`]) from `$first` on, 13 per event. Only numbered placeholders are generated
/// into the text; every value is bound.
pub(crate) fn events_insert_sql(first: usize, n: usize) -> String {
    let rows: Vec<String> = (0..n).map(|i| format!("({})", placeholders(first + i * 13, 13))).collect();
    format!(
        "INSERT INTO events (created_at, action, repository, digest, tag, media_type, size, from_repository, actor, address, request_id, user_agent, method) VALUES {}",
        rows.join(", ")
    )
}

/// Bind the values of `events` for [`events_insert_sql`], after whatever `q` has bound.
pub(crate) fn bind_events<'q>(mut q: AnyQuery<'q>, events: &[NewEvent], now: i64) -> AnyQuery<'q> {
    for e in events {
        q = q
            .bind(if e.time_ms > 0 { e.time_ms } else { now })
            .bind(e.action)
            .bind(e.repository.as_str())
            .bind(e.digest.as_deref())
            .bind(e.tag.as_deref())
            .bind(e.media_type.as_deref())
            .bind(e.size.map(|s| i64::try_from(s).unwrap_or(i64::MAX)))
            .bind(e.from_repository.as_deref())
            .bind(e.actor.as_deref())
            .bind(e.address.as_deref())
            .bind(e.request_id.as_deref())
            .bind(e.user_agent.as_deref())
            .bind(e.method.as_deref());
    }
    q
}

/// Events per multi-row insert (13 parameters each; well under both databases' limits).
const INSERT_BATCH: usize = 200;

/// Insert `events` and their queue rows inside `tx`: one statement per [`INSERT_BATCH`] events
/// and one for their queue rows, so a batch of pulls costs a few round trips, not one per row.
pub(crate) async fn insert_events(tx: &mut Tx, events: &[NewEvent]) -> Result<()> {
    let now = now_ms();
    for chunk in events.chunks(INSERT_BATCH) {
        let sql = format!("{} RETURNING id", events_insert_sql(2, chunk.len()));
        // $1 is unused by the rows but keeps the numbering uniform with the queue insert.
        let q = bind_events(sqlx::query(AssertSqlSafe(sql)).bind(now), chunk, now);
        // Ids are allocated in row order within one statement; sort rather than trust the order
        // RETURNING lists them in.
        let mut ids: Vec<i64> = q.fetch_all(&mut **tx).await?.iter().map(|r| r.try_get("id")).collect::<Result<_, _>>()?;
        ids.sort_unstable();
        let pairs: Vec<(i64, &str)> = ids.iter().zip(chunk).flat_map(|(id, e)| e.endpoints.iter().map(move |ep| (*id, ep.as_str()))).collect();
        for part in pairs.chunks(INSERT_BATCH * 2) {
            let rows: Vec<String> = (0..part.len()).map(|i| format!("(${}, ${}, 0, $1)", i * 2 + 2, i * 2 + 3)).collect();
            let sql = format!("INSERT INTO webhook_queue (endpoint, event_id, attempts, next_attempt_at) VALUES {}", rows.join(", "));
            let mut q = sqlx::query(AssertSqlSafe(sql)).bind(now);
            for (id, endpoint) in part {
                q = q.bind(*endpoint).bind(*id);
            }
            q.execute(&mut **tx).await?;
        }
    }
    Ok(())
}

impl MetaStore {
    /// Record events that belong to no other write (pulls), in one transaction.
    pub async fn record_events(&self, events: &[NewEvent]) -> Result<()> {
        if events.is_empty() {
            return Ok(());
        }
        let mut tx = self.begin_write().await?;
        insert_events(&mut tx, events).await?;
        tx.commit().await?;
        Ok(())
    }

    /// Events matching `filter`, oldest first.
    pub async fn events(&self, filter: &EventFilter) -> Result<Vec<Event>> {
        let mut sql = format!("SELECT {EVENT_COLUMNS} FROM events e WHERE e.id > $1");
        let mut n = 1;
        let mut clause = |col: &str, op: &str| {
            n += 1;
            sql.push_str(&format!(" AND e.{col} {op} ${n}"));
        };
        if filter.repository.is_some() {
            clause("repository", "=");
        }
        if filter.actor.is_some() {
            clause("actor", "=");
        }
        if filter.action.is_some() {
            clause("action", "=");
        }
        if filter.since.is_some() {
            clause("created_at", ">=");
        }
        if filter.until.is_some() {
            clause("created_at", "<");
        }
        sql.push_str(&format!(" ORDER BY e.id LIMIT {}", filter.limit.clamp(1, 10_000)));
        // Only fixed column names and numbered placeholders reach the text; values are bound.
        let mut q = sqlx::query(AssertSqlSafe(sql)).bind(filter.after_id.unwrap_or(0));
        for v in [&filter.repository, &filter.actor, &filter.action].into_iter().flatten() {
            q = q.bind(v.as_str());
        }
        for v in [filter.since, filter.until].into_iter().flatten() {
            q = q.bind(v);
        }
        q.fetch_all(&self.read).await?.iter().map(event_from_row).collect()
    }

    /// Delete events older than `before_ms` (epoch milliseconds) that no webhook still has to
    /// deliver. Returns how many went.
    pub async fn prune_events(&self, before_ms: i64) -> Result<u64> {
        let r = self
            .write_one(sqlx::query("DELETE FROM events WHERE created_at < $1 AND NOT EXISTS (SELECT 1 FROM webhook_queue q WHERE q.event_id = events.id)").bind(before_ms))
            .await?;
        Ok(r.rows_affected())
    }

    /// Take (or keep) the delivery lease of `endpoint` for `owner` for `ttl`. Returns whether
    /// `owner` holds it.
    pub async fn claim_webhook_lease(&self, endpoint: &str, owner: &str, ttl: Duration) -> Result<bool> {
        let now = now_ms();
        let until = now + i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX / 2);
        let mut tx = self.begin_write().await?;
        sqlx::query("INSERT INTO webhook_leases (endpoint, owner, until) VALUES ($1, $2, 0) ON CONFLICT (endpoint) DO NOTHING")
            .bind(endpoint)
            .bind(owner)
            .execute(&mut *tx)
            .await?;
        let r = sqlx::query("UPDATE webhook_leases SET owner = $2, until = $3 WHERE endpoint = $1 AND (owner = $2 OR until < $4)")
            .bind(endpoint)
            .bind(owner)
            .bind(until)
            .bind(now)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(r.rows_affected() > 0)
    }

    /// Give up the delivery lease of `endpoint`, if `owner` holds it.
    pub async fn release_webhook_lease(&self, endpoint: &str, owner: &str) -> Result<()> {
        self.write_one(sqlx::query("UPDATE webhook_leases SET until = 0 WHERE endpoint = $1 AND owner = $2").bind(endpoint).bind(owner)).await?;
        Ok(())
    }

    /// The next deliveries due for `endpoint`, in queue order. Stops at the first row not yet
    /// due, so a failing event holds back the ones after it (order is kept).
    pub async fn due_deliveries(&self, endpoint: &str, limit: u32) -> Result<Vec<Delivery>> {
        let sql = format!(
            "SELECT q.id AS queue_id, q.attempts, q.next_attempt_at, {EVENT_COLUMNS} FROM webhook_queue q JOIN events e ON e.id = q.event_id \
             WHERE q.endpoint = $1 ORDER BY q.id LIMIT {}",
            limit.clamp(1, 1000)
        );
        let rows = sqlx::query(AssertSqlSafe(sql)).bind(endpoint).fetch_all(&self.read).await?;
        let now = now_ms();
        let mut out = Vec::new();
        for r in &rows {
            let due: i64 = r.try_get("next_attempt_at")?;
            if due > now {
                break;
            }
            out.push(Delivery { queue_id: r.try_get("queue_id")?, attempts: r.try_get("attempts")?, event: event_from_row(r)? });
        }
        Ok(out)
    }

    /// When the first queued delivery of `endpoint` is due, if any.
    pub async fn next_delivery_at(&self, endpoint: &str) -> Result<Option<i64>> {
        let row = sqlx::query("SELECT MIN(next_attempt_at) AS t FROM webhook_queue WHERE endpoint = $1 AND id = (SELECT MIN(id) FROM webhook_queue WHERE endpoint = $1)")
            .bind(endpoint)
            .fetch_one(&self.read)
            .await?;
        Ok(row.try_get("t")?)
    }

    /// Mark deliveries done.
    pub async fn complete_deliveries(&self, endpoint: &str, queue_ids: &[i64]) -> Result<()> {
        let mut tx = self.begin_write().await?;
        for part in queue_ids.chunks(INSERT_BATCH * 2) {
            let sql = format!("DELETE FROM webhook_queue WHERE id IN ({})", placeholders(1, part.len()));
            let mut q = sqlx::query(AssertSqlSafe(sql));
            for id in part {
                q = q.bind(*id);
            }
            q.execute(&mut *tx).await?;
        }
        sqlx::query("UPDATE webhook_leases SET delivered = delivered + $2, last_success_at = $3 WHERE endpoint = $1")
            .bind(endpoint)
            .bind(i64::try_from(queue_ids.len()).unwrap_or(0))
            .bind(now_ms())
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Record a failed attempt on deliveries and when to try again.
    pub async fn fail_deliveries(&self, endpoint: &str, queue_ids: &[i64], error: &str, retry_in: Duration) -> Result<()> {
        let next = now_ms() + i64::try_from(retry_in.as_millis()).unwrap_or(i64::MAX / 2);
        let mut tx = self.begin_write().await?;
        for part in queue_ids.chunks(INSERT_BATCH * 2) {
            let sql = format!("UPDATE webhook_queue SET attempts = attempts + 1, next_attempt_at = $1, last_error = $2 WHERE id IN ({})", placeholders(3, part.len()));
            let mut q = sqlx::query(AssertSqlSafe(sql)).bind(next).bind(error);
            for id in part {
                q = q.bind(*id);
            }
            q.execute(&mut *tx).await?;
        }
        sqlx::query("UPDATE webhook_leases SET failed = failed + 1, last_error = $2 WHERE endpoint = $1")
            .bind(endpoint)
            .bind(error)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }

    /// Delivery state of `endpoint`.
    pub async fn endpoint_status(&self, endpoint: &str) -> Result<EndpointStatus> {
        let queued: i64 = sqlx::query("SELECT COUNT(*) AS n FROM webhook_queue WHERE endpoint = $1").bind(endpoint).fetch_one(&self.read).await?.try_get("n")?;
        let lease = sqlx::query("SELECT delivered, failed, last_error, last_success_at FROM webhook_leases WHERE endpoint = $1")
            .bind(endpoint)
            .fetch_optional(&self.read)
            .await?;
        let mut st = EndpointStatus { endpoint: endpoint.to_owned(), queued, ..Default::default() };
        if let Some(r) = lease {
            st.delivered = r.try_get("delivered")?;
            st.failed_attempts = r.try_get("failed")?;
            st.last_error = r.try_get("last_error")?;
            st.last_success_at = r.try_get("last_success_at")?;
        }
        Ok(st)
    }
}
