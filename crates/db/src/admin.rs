//! Queue administration: retrying failed jobs, deleting job records and
//! clearing the queue, for both backends. Every change is a guarded
//! statement, as in the rest of the queue: a job being run is never
//! touched, and a job whose pictures are in the gallery keeps its record
//! (the images table refers to it).
//!
//! The SQL is written once with `?` placeholders; PostgreSQL gets them
//! numbered (`numbered`). PostgreSQL also takes the queue-bound advisory
//! lock, so retries and submissions cannot overshoot `max_pending`
//! together.

use async_trait::async_trait;
use cyberimage_core::{JobId, JobStatus};

use crate::postgres::QUEUE_LOCK;
use crate::{DbError, PgDb, SqliteDb};

/// What retrying one job found and did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RetryOutcome {
    NotFound,
    /// Only failed jobs are retried.
    NotFailed(JobStatus),
    /// It has used `max_attempts` claims; `force` retries it anyway.
    AttemptsExhausted {
        attempts: u32,
    },
    QueueFull,
    Retried,
}

/// What retrying every failed job did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct RetryReport {
    pub retried: u64,
    /// Failed jobs left alone because their attempts are used up.
    pub exhausted: u64,
    /// Failed jobs left because the queue bound was reached.
    pub over_queue_bound: u64,
}

/// What deleting one job record found and did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeleteOutcome {
    NotFound,
    /// A worker is running it: cancel it first.
    Running,
    /// Its pictures are in the gallery; delete them first.
    HasImages(u64),
    Deleted,
}

/// What clearing the queue did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct ClearReport {
    pub deleted: u64,
    /// Jobs of the chosen statuses kept because their images are in the
    /// gallery.
    pub kept_with_images: u64,
}

#[async_trait]
pub trait AdminRepo: Send + Sync {
    /// `failed → pending` with progress, error and timestamps reset, if it
    /// has claims left (`attempts < max_attempts`) or `force` (which also
    /// gives it a fresh attempt budget), and the queue has room.
    async fn retry_job(
        &self,
        id: JobId,
        max_attempts: u32,
        max_pending: u32,
        force: bool,
    ) -> Result<RetryOutcome, DbError>;

    /// Every failed job that may be retried, oldest first, up to the
    /// queue bound.
    async fn retry_failed(
        &self,
        max_attempts: u32,
        max_pending: u32,
        force: bool,
    ) -> Result<RetryReport, DbError>;

    /// Deletes one job record that is not running and has no images.
    async fn delete_job(&self, id: JobId) -> Result<DeleteOutcome, DbError>;

    /// Deletes the records of jobs in `statuses` (never running ones, and
    /// never those whose images are in the gallery).
    async fn clear_jobs(&self, statuses: &[JobStatus]) -> Result<ClearReport, DbError>;
}

/// The columns a retried job starts again with.
const RESET: &str = "status = 'pending', stage = 'preparing', step = 0, started_at = NULL, \
     completed_at = NULL, error = NULL, worker = NULL, heartbeat_at = NULL, \
     attempts = CASE WHEN ? THEN 0 ELSE attempts END";

const PENDING_COUNT: &str = "SELECT COUNT(*) FROM jobs WHERE status = 'pending'";

fn retry_one_sql() -> String {
    format!("UPDATE jobs SET {RESET} WHERE id = ? AND status = 'failed'")
}

fn retry_many_sql() -> String {
    format!(
        "UPDATE jobs SET {RESET} WHERE seq IN (SELECT seq FROM jobs WHERE status = 'failed' \
         AND (? OR attempts < ?) ORDER BY seq LIMIT ?)"
    )
}

const FAILED_COUNTS: &str = "SELECT \
     COALESCE(SUM(CASE WHEN attempts >= ? THEN 1 ELSE 0 END), 0), COUNT(*) \
     FROM jobs WHERE status = 'failed'";

const IMAGE_COUNT: &str = "SELECT COUNT(*) FROM images WHERE job_id = ?";

/// Statuses are our own enum's names, never user text: inlined as literals.
fn status_list(statuses: &[JobStatus]) -> String {
    statuses
        .iter()
        .filter(|s| **s != JobStatus::Processing)
        .map(|s| format!("'{}'", s.as_str()))
        .collect::<Vec<_>>()
        .join(", ")
}

fn clear_sql(list: &str) -> String {
    format!(
        "DELETE FROM jobs WHERE status IN ({list}) AND NOT EXISTS \
         (SELECT 1 FROM images WHERE images.job_id = jobs.id)"
    )
}

fn remaining_sql(list: &str) -> String {
    format!("SELECT COUNT(*) FROM jobs WHERE status IN ({list})")
}

/// `?` placeholders as PostgreSQL's `$1, $2, …`.
fn numbered(sql: &str) -> String {
    let mut out = String::with_capacity(sql.len() + 8);
    let mut n = 0;
    for c in sql.chars() {
        if c == '?' {
            n += 1;
            out.push_str(&format!("${n}"));
        } else {
            out.push(c);
        }
    }
    out
}

/// Decides a single retry from the job's status and attempts.
fn retry_verdict(
    found: Option<(String, i64)>,
    max_attempts: u32,
    force: bool,
) -> Result<Option<RetryOutcome>, DbError> {
    let Some((status, attempts)) = found else {
        return Ok(Some(RetryOutcome::NotFound));
    };
    let status = JobStatus::parse(&status)
        .ok_or_else(|| DbError::Corrupt(format!("job status {status:?}")))?;
    if status != JobStatus::Failed {
        return Ok(Some(RetryOutcome::NotFailed(status)));
    }
    if !force && attempts >= i64::from(max_attempts) {
        return Ok(Some(RetryOutcome::AttemptsExhausted {
            attempts: u32::try_from(attempts).unwrap_or(u32::MAX),
        }));
    }
    Ok(None)
}

fn delete_verdict(status: Option<String>, images: i64) -> Option<DeleteOutcome> {
    match status.as_deref() {
        None => Some(DeleteOutcome::NotFound),
        Some("processing") => Some(DeleteOutcome::Running),
        Some(_) if images > 0 => Some(DeleteOutcome::HasImages(images as u64)),
        Some(_) => None,
    }
}

fn count(n: i64) -> u64 {
    u64::try_from(n).unwrap_or(0)
}

/// The same body for both backends; `$q` turns shared SQL into the
/// backend's placeholders, `$begin` opens a transaction that reads then
/// writes, and `$lock` serialises it against submitters.
macro_rules! admin_impl {
    ($db:ty, $q:expr, $begin:expr, $lock:expr) => {
        #[async_trait]
        impl AdminRepo for $db {
            async fn retry_job(
                &self,
                id: JobId,
                max_attempts: u32,
                max_pending: u32,
                force: bool,
            ) -> Result<RetryOutcome, DbError> {
                let mut tx = $begin(&self.pool).await?;
                $lock(&mut tx).await?;
                let found: Option<(String, i64)> =
                    sqlx::query_as(&$q("SELECT status, attempts FROM jobs WHERE id = ?"))
                        .bind(id.to_string())
                        .fetch_optional(&mut *tx)
                        .await?;
                if let Some(outcome) = retry_verdict(found, max_attempts, force)? {
                    return Ok(outcome);
                }
                let pending: i64 = sqlx::query_scalar(PENDING_COUNT)
                    .fetch_one(&mut *tx)
                    .await?;
                if pending >= i64::from(max_pending) {
                    return Ok(RetryOutcome::QueueFull);
                }
                let r = sqlx::query(&$q(&retry_one_sql()))
                    .bind(force)
                    .bind(id.to_string())
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
                Ok(if r.rows_affected() == 1 {
                    RetryOutcome::Retried
                } else {
                    RetryOutcome::NotFound
                })
            }

            async fn retry_failed(
                &self,
                max_attempts: u32,
                max_pending: u32,
                force: bool,
            ) -> Result<RetryReport, DbError> {
                let mut tx = $begin(&self.pool).await?;
                $lock(&mut tx).await?;
                let pending: i64 = sqlx::query_scalar(PENDING_COUNT)
                    .fetch_one(&mut *tx)
                    .await?;
                let room = (i64::from(max_pending) - pending).max(0);
                let r = sqlx::query(&$q(&retry_many_sql()))
                    .bind(force)
                    .bind(force)
                    .bind(i64::from(max_attempts))
                    .bind(room)
                    .execute(&mut *tx)
                    .await?;
                let (exhausted, left): (i64, i64) = sqlx::query_as(&$q(FAILED_COUNTS))
                    .bind(i64::from(max_attempts))
                    .fetch_one(&mut *tx)
                    .await?;
                tx.commit().await?;
                let exhausted = if force { 0 } else { count(exhausted) };
                Ok(RetryReport {
                    retried: r.rows_affected(),
                    exhausted,
                    over_queue_bound: count(left).saturating_sub(exhausted),
                })
            }

            async fn delete_job(&self, id: JobId) -> Result<DeleteOutcome, DbError> {
                let mut tx = $begin(&self.pool).await?;
                let status: Option<String> =
                    sqlx::query_scalar(&$q("SELECT status FROM jobs WHERE id = ?"))
                        .bind(id.to_string())
                        .fetch_optional(&mut *tx)
                        .await?;
                let images: i64 = sqlx::query_scalar(&$q(IMAGE_COUNT))
                    .bind(id.to_string())
                    .fetch_one(&mut *tx)
                    .await?;
                if let Some(outcome) = delete_verdict(status, images) {
                    return Ok(outcome);
                }
                // Guarded again: a worker may have claimed it meanwhile.
                let r = sqlx::query(&$q(
                    "DELETE FROM jobs WHERE id = ? AND status <> 'processing'",
                ))
                .bind(id.to_string())
                .execute(&mut *tx)
                .await?;
                tx.commit().await?;
                Ok(if r.rows_affected() == 1 {
                    DeleteOutcome::Deleted
                } else {
                    DeleteOutcome::Running
                })
            }

            async fn clear_jobs(&self, statuses: &[JobStatus]) -> Result<ClearReport, DbError> {
                let list = status_list(statuses);
                if list.is_empty() {
                    return Ok(ClearReport::default());
                }
                let mut tx = $begin(&self.pool).await?;
                let r = sqlx::query(&clear_sql(&list)).execute(&mut *tx).await?;
                let kept: i64 = sqlx::query_scalar(&remaining_sql(&list))
                    .fetch_one(&mut *tx)
                    .await?;
                tx.commit().await?;
                Ok(ClearReport {
                    deleted: r.rows_affected(),
                    kept_with_images: count(kept),
                })
            }
        }
    };
}

fn same(sql: &str) -> String {
    sql.to_owned()
}

async fn no_lock(_: &mut sqlx::Transaction<'_, sqlx::Sqlite>) -> Result<(), DbError> {
    // SQLite serialises writers; the immediate transaction is enough.
    Ok(())
}

async fn pg_begin(
    pool: &sqlx::PgPool,
) -> Result<sqlx::Transaction<'static, sqlx::Postgres>, DbError> {
    Ok(pool.begin().await?)
}

async fn queue_lock(tx: &mut sqlx::Transaction<'_, sqlx::Postgres>) -> Result<(), DbError> {
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(QUEUE_LOCK)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

admin_impl!(SqliteDb, same, crate::sqlite::begin_write, no_lock);
admin_impl!(PgDb, numbered, pg_begin, queue_lock);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_numbered_for_postgres() {
        assert_eq!(numbered("a = ? AND b < ?"), "a = $1 AND b < $2");
        assert!(retry_many_sql().matches('?').count() == 4);
    }

    #[test]
    fn processing_is_never_cleared() {
        assert_eq!(
            status_list(&[JobStatus::Processing, JobStatus::Failed]),
            "'failed'"
        );
        assert_eq!(status_list(&[JobStatus::Processing]), "");
    }
}
