//! Conversions between records and the column values every SQL backend
//! stores: text, 64-bit integers (timestamps as Unix milliseconds) and reals.

use chrono::DateTime;
use cyberimage_core::time::Timestamp;
use cyberimage_core::{
    GenerationSpec, ImageId, ImageRecord, Job, JobId, JobStatus, Progress, Stage,
};

use crate::DbError;

pub fn millis(t: &Timestamp) -> i64 {
    t.timestamp_millis()
}

pub fn from_millis(ms: i64) -> Result<Timestamp, DbError> {
    DateTime::from_timestamp_millis(ms).ok_or_else(|| DbError::Corrupt(format!("timestamp {ms}")))
}

pub fn opt_from_millis(ms: Option<i64>) -> Result<Option<Timestamp>, DbError> {
    ms.map(from_millis).transpose()
}

/// The columns of one `jobs` row, backend-neutral.
pub struct JobRow {
    pub id: String,
    pub status: String,
    pub spec: String,
    pub stage: String,
    pub step: i64,
    pub total_steps: i64,
    pub created_at: i64,
    pub started_at: Option<i64>,
    pub completed_at: Option<i64>,
    pub error: Option<String>,
    pub attempts: i64,
}

impl JobRow {
    pub fn into_job(self) -> Result<Job, DbError> {
        let corrupt = |what: &str| DbError::Corrupt(format!("job {}: {what}", self.id));
        Ok(Job {
            id: JobId::parse(&self.id).map_err(|_| corrupt("id"))?,
            spec: serde_json::from_str::<GenerationSpec>(&self.spec)
                .map_err(|e| corrupt(&format!("spec: {e}")))?,
            status: JobStatus::parse(&self.status).ok_or_else(|| corrupt("status"))?,
            progress: Progress {
                stage: Stage::parse(&self.stage).ok_or_else(|| corrupt("stage"))?,
                step: u32::try_from(self.step).map_err(|_| corrupt("step"))?,
                total_steps: u32::try_from(self.total_steps).map_err(|_| corrupt("total_steps"))?,
            },
            created_at: from_millis(self.created_at)?,
            started_at: opt_from_millis(self.started_at)?,
            completed_at: opt_from_millis(self.completed_at)?,
            error: self.error,
            attempts: u32::try_from(self.attempts).map_err(|_| corrupt("attempts"))?,
            images: Vec::new(),
        })
    }
}

pub fn spec_json(spec: &GenerationSpec) -> String {
    serde_json::to_string(spec).expect("a spec always serialises")
}

pub struct ImageRow {
    pub id: String,
    pub job_id: String,
    pub idx: i64,
    pub model: String,
    pub prompt: String,
    pub negative_prompt: Option<String>,
    pub width: i64,
    pub height: i64,
    pub steps: i64,
    pub guidance_scale: f64,
    pub seed: i64,
    pub created_at: i64,
    pub favorite: bool,
}

impl ImageRow {
    pub fn into_record(self) -> Result<ImageRecord, DbError> {
        let corrupt = |what: &str| DbError::Corrupt(format!("image {}: {what}", self.id));
        let small = |v: i64, what: &str| u32::try_from(v).map_err(|_| corrupt(what));
        Ok(ImageRecord {
            id: ImageId::parse(&self.id).map_err(|_| corrupt("id"))?,
            job_id: JobId::parse(&self.job_id).map_err(|_| corrupt("job id"))?,
            index: small(self.idx, "index")?,
            model: self.model.clone(),
            prompt: self.prompt.clone(),
            negative_prompt: self.negative_prompt.clone(),
            width: small(self.width, "width")?,
            height: small(self.height, "height")?,
            steps: small(self.steps, "steps")?,
            guidance_scale: self.guidance_scale as f32,
            seed: u64::try_from(self.seed).map_err(|_| corrupt("seed"))?,
            created_at: from_millis(self.created_at)?,
            favorite: self.favorite,
        })
    }
}

/// Escapes `%`, `_` and the escape character itself for `LIKE … ESCAPE '\'`.
pub fn like_pattern(search: &str) -> String {
    let mut p = String::with_capacity(search.len() + 2);
    p.push('%');
    for c in search.chars() {
        if matches!(c, '%' | '_' | '\\') {
            p.push('\\');
        }
        p.push(c);
    }
    p.push('%');
    p
}

/// `AND (prompt LIKE k OR model LIKE k)` for each keyword, its pattern bound
/// at parameter `first + i` (`placeholder` spells a parameter, `like` is
/// the backend's case-insensitive LIKE); empty for no keywords.
pub fn keyword_filter(
    count: usize,
    first: usize,
    placeholder: impl Fn(usize) -> String,
    like: &str,
) -> String {
    (0..count)
        .map(|i| {
            let p = placeholder(first + i);
            format!(" AND (prompt {like} {p} ESCAPE '\\' OR model {like} {p} ESCAPE '\\')")
        })
        .collect()
}

/// What every backend runs for `status_counts`.
pub const STATUS_COUNTS_SQL: &str = "SELECT status, COUNT(*) FROM jobs GROUP BY status";

/// `queue_stats`' two queries, parameter 1 the start of the window, spelt
/// by `placeholder`. The cast makes both backends average in floating
/// point (PostgreSQL would answer NUMERIC for BIGINT).
pub fn queue_stats_sql(placeholder: &str) -> (String, String) {
    (
        format!(
            "SELECT model, status, COUNT(*) FROM jobs WHERE created_at >= {placeholder} \
             GROUP BY model, status ORDER BY model"
        ),
        format!(
            "SELECT AVG(CAST(completed_at - started_at AS DOUBLE PRECISION)) FROM jobs \
             WHERE status = 'completed' AND started_at IS NOT NULL AND completed_at IS NOT NULL \
             AND created_at >= {placeholder}"
        ),
    )
}

/// `queue_stats` from the (model, status, count) rows and the mean.
pub fn queue_stats(
    rows: Vec<(String, String, i64)>,
    mean_run_ms: Option<f64>,
) -> Result<crate::QueueStats, DbError> {
    let mut per_model: Vec<(String, Vec<(String, i64)>)> = Vec::new();
    for (model, status, count) in rows {
        match per_model.last_mut() {
            Some((last, counts)) if *last == model => counts.push((status, count)),
            _ => per_model.push((model, vec![(status, count)])),
        }
    }
    Ok(crate::QueueStats {
        per_model: per_model
            .into_iter()
            .map(|(model, counts)| Ok((model, status_counts(counts)?)))
            .collect::<Result<_, DbError>>()?,
        mean_run_ms,
    })
}

/// `status_counts` from the (status, count) rows of `STATUS_COUNTS_SQL`.
pub fn status_counts(rows: Vec<(String, i64)>) -> Result<crate::StatusCounts, DbError> {
    let mut counts = crate::StatusCounts::default();
    for (status, count) in rows {
        let count = u64::try_from(count).unwrap_or(0);
        match status.as_str() {
            "pending" => counts.pending = count,
            "processing" => counts.processing = count,
            "completed" => counts.completed = count,
            "failed" => counts.failed = count,
            "cancelled" => counts.cancelled = count,
            other => return Err(DbError::Corrupt(format!("a job with status {other:?}"))),
        }
    }
    Ok(counts)
}

/// The columns every backend selects, in the order the readers expect.
pub const JOB_COLUMNS: &str =
    "id, status, spec, stage, step, total_steps, created_at, started_at, \
                           completed_at, error, attempts";
/// The columns an image row is written with; a new one starts as no favourite.
pub const IMAGE_INSERT_COLUMNS: &str = "id, job_id, idx, model, prompt, negative_prompt, width, \
                                    height, steps, guidance_scale, seed, created_at";
/// The columns an image row is read with.
pub const IMAGE_COLUMNS: &str = "id, job_id, idx, model, prompt, negative_prompt, width, height, \
                             steps, guidance_scale, seed, created_at, favorite";

/// `job_from_row` and `image_from_row` for one backend's row type: the
/// column reads are the same everywhere, only the row type differs.
macro_rules! row_readers {
    ($row:ty) => {
        fn job_from_row(row: &$row) -> Result<Job, DbError> {
            $crate::rows::JobRow {
                id: row.try_get("id")?,
                status: row.try_get("status")?,
                spec: row.try_get("spec")?,
                stage: row.try_get("stage")?,
                step: row.try_get("step")?,
                total_steps: row.try_get("total_steps")?,
                created_at: row.try_get("created_at")?,
                started_at: row.try_get("started_at")?,
                completed_at: row.try_get("completed_at")?,
                error: row.try_get("error")?,
                attempts: row.try_get("attempts")?,
            }
            .into_job()
        }

        fn image_from_row(row: &$row) -> Result<ImageRecord, DbError> {
            $crate::rows::ImageRow {
                id: row.try_get("id")?,
                job_id: row.try_get("job_id")?,
                idx: row.try_get("idx")?,
                model: row.try_get("model")?,
                prompt: row.try_get("prompt")?,
                negative_prompt: row.try_get("negative_prompt")?,
                width: row.try_get("width")?,
                height: row.try_get("height")?,
                steps: row.try_get("steps")?,
                guidance_scale: row.try_get("guidance_scale")?,
                seed: row.try_get("seed")?,
                created_at: row.try_get("created_at")?,
                favorite: row.try_get("favorite")?,
            }
            .into_record()
        }
    };
}
pub(crate) use row_readers;

/// What every backend runs for `referenced_inputs`: the specs that can
/// name an input (the rest never do).
pub const INPUT_SPECS_SQL: &str = "SELECT spec FROM jobs WHERE spec LIKE '%\"init_image\"%'";

/// The input digests the specs of `INPUT_SPECS_SQL` name.
pub fn input_digests(specs: Vec<String>) -> Result<Vec<String>, DbError> {
    let mut out = Vec::new();
    for spec in specs {
        let spec: cyberimage_core::GenerationSpec =
            serde_json::from_str(&spec).map_err(|e| DbError::Corrupt(format!("job spec: {e}")))?;
        if let Some(init) = spec.init_image {
            out.push(init.sha256);
            out.extend(init.mask_sha256);
        }
    }
    out.sort();
    out.dedup();
    Ok(out)
}
