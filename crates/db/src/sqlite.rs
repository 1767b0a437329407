//! The SQLite backend: one real file in WAL mode, migrated on open.
//!
//! SQLite serialises writers, so each state change is a single guarded
//! statement (or a short transaction) and is atomic against other workers and
//! processes sharing the file.

use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use cyberimage_core::time::now;
use cyberimage_core::{ImageId, ImageRecord, Job, JobId, JobStatus, Progress};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteRow, SqliteSynchronous,
};
use sqlx::{Row, SqlitePool};

use crate::rows::{
    input_digests, keyword_filter, like_pattern, millis, queue_stats, queue_stats_sql, spec_json,
    status_counts, IMAGE_COLUMNS, IMAGE_INSERT_COLUMNS, INPUT_SPECS_SQL, JOB_COLUMNS,
    STATUS_COUNTS_SQL,
};
use crate::{
    CancelOutcome, DbError, GalleryPage, GalleryQuery, ImageRepo, JobRepo, QueueCounts, QueueStats,
    RecoveryReport, StatusCounts, AFFINITY_PATIENCE_MS,
};

/// Schema versions, applied in order and recorded in `schema_migrations`.
/// Never edit a shipped entry: append a new one.
const MIGRATIONS: &[(i64, &str)] = &[
    (
        1,
        r#"
    CREATE TABLE jobs (
        seq           INTEGER PRIMARY KEY AUTOINCREMENT,
        id            TEXT NOT NULL UNIQUE,
        status        TEXT NOT NULL,
        model         TEXT NOT NULL,
        prompt        TEXT NOT NULL,
        spec          TEXT NOT NULL,
        stage         TEXT NOT NULL,
        step          INTEGER NOT NULL DEFAULT 0,
        total_steps   INTEGER NOT NULL,
        created_at    INTEGER NOT NULL,
        started_at    INTEGER,
        completed_at  INTEGER,
        error         TEXT,
        attempts      INTEGER NOT NULL DEFAULT 0,
        worker        TEXT,
        heartbeat_at  INTEGER
    );
    CREATE INDEX jobs_by_status ON jobs (status, seq);

    CREATE TABLE images (
        seq             INTEGER PRIMARY KEY AUTOINCREMENT,
        id              TEXT NOT NULL UNIQUE,
        job_id          TEXT NOT NULL REFERENCES jobs (id),
        idx             INTEGER NOT NULL,
        model           TEXT NOT NULL,
        prompt          TEXT NOT NULL,
        negative_prompt TEXT,
        width           INTEGER NOT NULL,
        height          INTEGER NOT NULL,
        steps           INTEGER NOT NULL,
        guidance_scale  REAL NOT NULL,
        seed            INTEGER NOT NULL,
        created_at      INTEGER NOT NULL
    );
    CREATE INDEX images_by_job ON images (job_id, idx);
    CREATE INDEX images_by_model ON images (model, seq);
    "#,
    ),
    (
        2,
        // Gallery favourites.
        "ALTER TABLE images ADD COLUMN favorite INTEGER NOT NULL DEFAULT 0",
    ),
];

/// A transaction that reads and then writes. SQLite's default (deferred)
/// transaction takes the write lock only at its first write, and in WAL
/// mode that upgrade fails at once with SQLITE_BUSY_SNAPSHOT ("database is
/// locked", no busy wait) when another connection wrote since the read;
/// an immediate one takes the lock first, waiting up to the busy timeout.
pub(crate) async fn begin_write(
    pool: &SqlitePool,
) -> Result<sqlx::Transaction<'static, sqlx::Sqlite>, DbError> {
    Ok(pool.begin_with("BEGIN IMMEDIATE").await?)
}

#[derive(Clone)]
pub struct SqliteDb {
    pub(crate) pool: SqlitePool,
}

crate::rows::row_readers!(SqliteRow);

impl SqliteDb {
    /// Opens (creating if needed) the database file and brings its schema up
    /// to date.
    pub async fn open(path: &Path) -> Result<Self, DbError> {
        Self::connect(SqliteConnectOptions::new().filename(path)).await
    }

    /// `sqlite://path` or `sqlite:path` URLs, as in `database_url`.
    pub async fn open_url(url: &str) -> Result<Self, DbError> {
        Self::connect(SqliteConnectOptions::from_str(url)?).await
    }

    async fn connect(options: SqliteConnectOptions) -> Result<Self, DbError> {
        let options = options
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // WAL + NORMAL survives a killed process; only an OS crash or
            // power cut can lose the last commits.
            .synchronous(SqliteSynchronous::Normal)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(10));
        let pool = SqlitePoolOptions::new()
            .max_connections(8)
            .connect_with(options)
            .await?;
        let db = Self { pool };
        db.migrate().await?;
        Ok(db)
    }

    async fn migrate(&self) -> Result<(), DbError> {
        let mut tx = self.pool.begin().await?;
        sqlx::query(
            "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, applied_at INTEGER NOT NULL)",
        )
        .execute(&mut *tx)
        .await?;
        let current: i64 =
            sqlx::query_scalar("SELECT COALESCE(MAX(version), 0) FROM schema_migrations")
                .fetch_one(&mut *tx)
                .await?;
        for (version, sql) in MIGRATIONS.iter().filter(|(v, _)| *v > current) {
            sqlx::raw_sql(sql).execute(&mut *tx).await?;
            sqlx::query("INSERT INTO schema_migrations (version, applied_at) VALUES (?, ?)")
                .bind(version)
                .bind(millis(&now()))
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }

    async fn images_of(&self, job: JobId) -> Result<Vec<ImageRecord>, DbError> {
        let sql = format!("SELECT {IMAGE_COLUMNS} FROM images WHERE job_id = ? ORDER BY idx");
        sqlx::query(&sql)
            .bind(job.to_string())
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(image_from_row)
            .collect()
    }
}

#[async_trait]
impl JobRepo for SqliteDb {
    async fn insert_job(&self, job: &Job, max_pending: u32) -> Result<(), DbError> {
        let result = sqlx::query(
            "INSERT INTO jobs (id, status, model, prompt, spec, stage, step, total_steps, created_at, attempts)
             SELECT ?, ?, ?, ?, ?, ?, ?, ?, ?, ?
             WHERE (SELECT COUNT(*) FROM jobs WHERE status = 'pending') < ?",
        )
        .bind(job.id.to_string())
        .bind(job.status.as_str())
        .bind(&job.spec.model)
        .bind(&job.spec.prompt)
        .bind(spec_json(&job.spec))
        .bind(job.progress.stage.as_str())
        .bind(i64::from(job.progress.step))
        .bind(i64::from(job.progress.total_steps))
        .bind(millis(&job.created_at))
        .bind(i64::from(job.attempts))
        .bind(i64::from(max_pending))
        .execute(&self.pool)
        .await?;
        if result.rows_affected() == 0 {
            return Err(DbError::QueueFull);
        }
        Ok(())
    }

    async fn get_job(&self, id: JobId) -> Result<Option<Job>, DbError> {
        let sql = format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = ?");
        let Some(row) = sqlx::query(&sql)
            .bind(id.to_string())
            .fetch_optional(&self.pool)
            .await?
        else {
            return Ok(None);
        };
        let mut job = job_from_row(&row)?;
        if job.status == JobStatus::Completed {
            job.images = self.images_of(id).await?;
        }
        Ok(Some(job))
    }

    async fn claim_next(
        &self,
        worker: &str,
        preferred_model: Option<&str>,
        only_models: Option<&[String]>,
    ) -> Result<Option<Job>, DbError> {
        let t = millis(&now());
        let only = only_models.map(|m| serde_json::to_string(m).expect("strings serialise"));
        let sql = format!(
            "UPDATE jobs SET status = 'processing', stage = 'preparing', step = 0,
                    started_at = ?1, attempts = attempts + 1, worker = ?2, heartbeat_at = ?1
             WHERE seq = (SELECT seq FROM jobs WHERE status = 'pending'
                            AND (?5 IS NULL OR model IN (SELECT value FROM json_each(?5)))
                          ORDER BY (created_at < ?4) DESC, (model IS ?3) DESC, seq LIMIT 1)
               AND status = 'pending'
             RETURNING {JOB_COLUMNS}"
        );
        let row = sqlx::query(&sql)
            .bind(t)
            .bind(worker)
            .bind(preferred_model)
            .bind(t - AFFINITY_PATIENCE_MS)
            .bind(only)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(job_from_row).transpose()
    }

    async fn update_progress(&self, id: JobId, progress: Progress) -> Result<bool, DbError> {
        let r = sqlx::query(
            "UPDATE jobs SET stage = ?, step = ?, total_steps = ?, heartbeat_at = ?
             WHERE id = ? AND status = 'processing'",
        )
        .bind(progress.stage.as_str())
        .bind(i64::from(progress.step))
        .bind(i64::from(progress.total_steps))
        .bind(millis(&now()))
        .bind(id.to_string())
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected() == 1)
    }

    async fn complete_job(&self, id: JobId, images: &[ImageRecord]) -> Result<bool, DbError> {
        let mut tx = self.pool.begin().await?;
        let r = sqlx::query(
            "UPDATE jobs SET status = 'completed', stage = 'completed', step = total_steps,
                    completed_at = ?, error = NULL
             WHERE id = ? AND status = 'processing'",
        )
        .bind(millis(&now()))
        .bind(id.to_string())
        .execute(&mut *tx)
        .await?;
        if r.rows_affected() == 0 {
            tx.rollback().await?;
            return Ok(false);
        }
        for img in images {
            sqlx::query(&format!(
                "INSERT INTO images ({IMAGE_INSERT_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
            ))
            .bind(img.id.as_str())
            .bind(img.job_id.to_string())
            .bind(i64::from(img.index))
            .bind(&img.model)
            .bind(&img.prompt)
            .bind(&img.negative_prompt)
            .bind(i64::from(img.width))
            .bind(i64::from(img.height))
            .bind(i64::from(img.steps))
            .bind(f64::from(img.guidance_scale))
            .bind(i64::try_from(img.seed).map_err(|_| DbError::Corrupt("seed".into()))?)
            .bind(millis(&img.created_at))
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(true)
    }

    async fn fail_job(&self, id: JobId, reason: &str) -> Result<bool, DbError> {
        let r = sqlx::query(
            "UPDATE jobs SET status = 'failed', stage = 'failed', completed_at = ?, error = ?
             WHERE id = ? AND status IN ('pending', 'processing')",
        )
        .bind(millis(&now()))
        .bind(reason)
        .bind(id.to_string())
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected() == 1)
    }

    async fn cancel_job(&self, id: JobId, reason: &str) -> Result<CancelOutcome, DbError> {
        // RETURNING reports the row after the update, so read the old status
        // in the same transaction first; the guarded UPDATE keeps it honest.
        let mut tx = begin_write(&self.pool).await?;
        let before: Option<String> = sqlx::query_scalar("SELECT status FROM jobs WHERE id = ?")
            .bind(id.to_string())
            .fetch_optional(&mut *tx)
            .await?;
        let Some(before) = before else {
            return Ok(CancelOutcome::NotFound);
        };
        let was = JobStatus::parse(&before)
            .ok_or_else(|| DbError::Corrupt(format!("job {id}: status")))?;
        if was.is_terminal() {
            return Ok(CancelOutcome::AlreadyFinished(was));
        }
        let r = sqlx::query(
            "UPDATE jobs SET status = 'cancelled', completed_at = ?, error = ?
             WHERE id = ? AND status = ?",
        )
        .bind(millis(&now()))
        .bind(reason)
        .bind(id.to_string())
        .bind(was.as_str())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        if r.rows_affected() == 1 {
            Ok(CancelOutcome::Cancelled { was })
        } else {
            // It moved on between the read and the update: report what it is now.
            match self.get_job(id).await? {
                Some(job) if job.status.is_terminal() => {
                    Ok(CancelOutcome::AlreadyFinished(job.status))
                }
                Some(_) => Box::pin(self.cancel_job(id, reason)).await,
                None => Ok(CancelOutcome::NotFound),
            }
        }
    }

    async fn requeue_job(&self, id: JobId) -> Result<bool, DbError> {
        let r = sqlx::query(
            "UPDATE jobs SET status = 'pending', stage = 'preparing', step = 0, started_at = NULL,
                    attempts = MAX(attempts - 1, 0), worker = NULL
             WHERE id = ? AND status = 'processing'",
        )
        .bind(id.to_string())
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected() == 1)
    }

    async fn heartbeat(&self, id: JobId) -> Result<bool, DbError> {
        let r =
            sqlx::query("UPDATE jobs SET heartbeat_at = ? WHERE id = ? AND status = 'processing'")
                .bind(millis(&now()))
                .bind(id.to_string())
                .execute(&self.pool)
                .await?;
        Ok(r.rows_affected() == 1)
    }

    async fn recover_interrupted(
        &self,
        max_attempts: u32,
        stale_before: cyberimage_core::time::Timestamp,
    ) -> Result<RecoveryReport, DbError> {
        let stale = millis(&stale_before);
        let mut tx = self.pool.begin().await?;
        let failed = sqlx::query(
            "UPDATE jobs SET status = 'failed', stage = 'failed', completed_at = ?,
                    error = 'interrupted ' || attempts || ' times (server stopped while generating); giving up'
             WHERE status = 'processing' AND attempts >= ? AND COALESCE(heartbeat_at, 0) < ?",
        )
        .bind(millis(&now()))
        .bind(i64::from(max_attempts))
        .bind(stale)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        let requeued = sqlx::query(
            "UPDATE jobs SET status = 'pending', stage = 'preparing', step = 0, started_at = NULL, worker = NULL
             WHERE status = 'processing' AND COALESCE(heartbeat_at, 0) < ?",
        )
        .bind(stale)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        tx.commit().await?;
        Ok(RecoveryReport { requeued, failed })
    }

    /// `PRAGMA integrity_check`, for `doctor` and the crash tests.
    async fn integrity_check(&self) -> Result<String, DbError> {
        Ok(sqlx::query_scalar("PRAGMA integrity_check")
            .fetch_one(&self.pool)
            .await?)
    }

    async fn queue_counts(&self) -> Result<QueueCounts, DbError> {
        let row = sqlx::query(
            "SELECT COALESCE(SUM(status = 'pending'), 0) AS pending,
                    COALESCE(SUM(status = 'processing'), 0) AS processing
             FROM jobs WHERE status IN ('pending', 'processing')",
        )
        .fetch_one(&self.pool)
        .await?;
        let count = |name: &str| -> Result<u64, DbError> {
            Ok(u64::try_from(row.try_get::<i64, _>(name)?).unwrap_or(0))
        };
        Ok(QueueCounts {
            pending: count("pending")?,
            processing: count("processing")?,
        })
    }

    async fn status_counts(&self) -> Result<StatusCounts, DbError> {
        let rows: Vec<(String, i64)> = sqlx::query_as(STATUS_COUNTS_SQL)
            .fetch_all(&self.pool)
            .await?;
        status_counts(rows)
    }

    async fn queue_stats(
        &self,
        since: cyberimage_core::time::Timestamp,
    ) -> Result<QueueStats, DbError> {
        let (by_model, mean) = queue_stats_sql("?");
        let rows: Vec<(String, String, i64)> = sqlx::query_as(&by_model)
            .bind(millis(&since))
            .fetch_all(&self.pool)
            .await?;
        let (mean_run_ms,): (Option<f64>,) = sqlx::query_as(&mean)
            .bind(millis(&since))
            .fetch_one(&self.pool)
            .await?;
        queue_stats(rows, mean_run_ms)
    }

    async fn list_jobs(&self, statuses: &[JobStatus], limit: u32) -> Result<Vec<Job>, DbError> {
        if statuses.is_empty() {
            return Ok(Vec::new());
        }
        let active = statuses.iter().all(|s| !s.is_terminal());
        let placeholders = vec!["?"; statuses.len()].join(", ");
        let order = if active { "seq ASC" } else { "seq DESC" };
        let sql = format!(
            "SELECT {JOB_COLUMNS} FROM jobs WHERE status IN ({placeholders}) ORDER BY {order} LIMIT ?"
        );
        let mut q = sqlx::query(&sql);
        for s in statuses {
            q = q.bind(s.as_str());
        }
        q.bind(i64::from(limit))
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(job_from_row)
            .collect()
    }
}

#[async_trait]
impl ImageRepo for SqliteDb {
    async fn get_image(&self, id: ImageId) -> Result<Option<ImageRecord>, DbError> {
        let sql = format!("SELECT {IMAGE_COLUMNS} FROM images WHERE id = ?");
        sqlx::query(&sql)
            .bind(id.as_str())
            .fetch_optional(&self.pool)
            .await?
            .as_ref()
            .map(image_from_row)
            .transpose()
    }

    async fn list_images(&self, query: &GalleryQuery) -> Result<GalleryPage, DbError> {
        let pattern = query.search.as_deref().map(like_pattern);
        let keywords: Vec<String> = query.keywords.iter().map(|k| like_pattern(k)).collect();
        let filter = format!(
            "(?1 IS NULL OR model = ?1) AND (?2 IS NULL OR prompt LIKE ?2 ESCAPE '\\'){}",
            if query.favorites_only {
                " AND favorite = 1"
            } else {
                ""
            }
        );
        // Keywords after the other parameters: 3.. in the count, 5.. in the page.
        let count_filter = keyword_filter(keywords.len(), 3, |n| format!("?{n}"), "LIKE");
        let count_sql = format!("SELECT COUNT(*) FROM images WHERE {filter}{count_filter}");
        let mut count = sqlx::query_scalar(&count_sql)
            .bind(&query.model)
            .bind(&pattern);
        for k in &keywords {
            count = count.bind(k);
        }
        let total: i64 = count.fetch_one(&self.pool).await?;
        let per_page = i64::from(query.per_page.max(1));
        let offset = i64::from(query.page.max(1) - 1) * per_page;
        let page_filter = keyword_filter(keywords.len(), 5, |n| format!("?{n}"), "LIKE");
        let sql = format!(
            "SELECT {IMAGE_COLUMNS} FROM images WHERE {filter}{page_filter} ORDER BY seq DESC LIMIT ?3 OFFSET ?4"
        );
        let mut page = sqlx::query(&sql)
            .bind(&query.model)
            .bind(&pattern)
            .bind(per_page)
            .bind(offset);
        for k in &keywords {
            page = page.bind(k);
        }
        let images = page
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(image_from_row)
            .collect::<Result<_, _>>()?;
        Ok(GalleryPage {
            images,
            total: u64::try_from(total).unwrap_or(0),
        })
    }

    async fn set_favorite(&self, id: ImageId, favorite: bool) -> Result<bool, DbError> {
        let r = sqlx::query("UPDATE images SET favorite = ? WHERE id = ?")
            .bind(favorite)
            .bind(id.as_str())
            .execute(&self.pool)
            .await?;
        Ok(r.rows_affected() == 1)
    }

    async fn delete_image(&self, id: ImageId) -> Result<bool, DbError> {
        let r = sqlx::query("DELETE FROM images WHERE id = ?")
            .bind(id.as_str())
            .execute(&self.pool)
            .await?;
        Ok(r.rows_affected() == 1)
    }

    async fn all_image_ids(&self) -> Result<Vec<ImageId>, DbError> {
        let ids: Vec<String> = sqlx::query_scalar("SELECT id FROM images ORDER BY seq")
            .fetch_all(&self.pool)
            .await?;
        ids.iter()
            .map(|s| ImageId::parse(s).map_err(|_| DbError::Corrupt(format!("image id {s:?}"))))
            .collect()
    }

    async fn referenced_inputs(&self) -> Result<Vec<String>, DbError> {
        let specs: Vec<String> = sqlx::query_scalar(INPUT_SPECS_SQL)
            .fetch_all(&self.pool)
            .await?;
        input_digests(specs)
    }
}
