//! Jobs, their life cycle and progress, and the image records they produce.
//!
//! The life cycle is `pending → processing → completed | failed | cancelled`,
//! with one way back: `processing → pending` when a crash or shutdown
//! interrupted a job that still has attempts left.

use serde::{Deserialize, Serialize};

use crate::ids::{ImageId, JobId};
use crate::spec::GenerationSpec;
use crate::time::Timestamp;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobStatus {
    Pending,
    Processing,
    Completed,
    Failed,
    Cancelled,
}

impl JobStatus {
    pub const ALL: [JobStatus; 5] = [
        Self::Pending,
        Self::Processing,
        Self::Completed,
        Self::Failed,
        Self::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Processing => "processing",
            Self::Completed => "completed",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|st| st.as_str() == s)
    }

    /// Finished jobs never change again.
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Completed | Self::Failed | Self::Cancelled)
    }

    /// The transitions the queue allows; the database enforces the same
    /// rules with `WHERE status = …` guards on every update.
    pub fn can_become(self, next: JobStatus) -> bool {
        use JobStatus::*;
        matches!(
            (self, next),
            (Pending, Processing)
                | (Pending, Cancelled)
                | (Processing, Completed)
                | (Processing, Failed)
                | (Processing, Cancelled)
                | (Processing, Pending)
                | (Pending, Failed)
        )
    }
}

/// Where a job is in its work. The seed reports it as a set of booleans;
/// we keep one stage and derive the booleans.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    Preparing,
    LoadingModel,
    Generating,
    Saving,
    Completed,
    Failed,
}

impl Stage {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Preparing => "preparing",
            Self::LoadingModel => "loading_model",
            Self::Generating => "generating",
            Self::Saving => "saving",
            Self::Completed => "completed",
            Self::Failed => "failed",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        [
            Self::Preparing,
            Self::LoadingModel,
            Self::Generating,
            Self::Saving,
            Self::Completed,
            Self::Failed,
        ]
        .into_iter()
        .find(|st| st.as_str() == s)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    pub stage: Stage,
    /// Denoising steps done so far, summed over all images of the job.
    pub step: u32,
    /// Denoising steps the whole job needs (steps × num_images).
    pub total_steps: u32,
}

impl Progress {
    pub fn queued(total_steps: u32) -> Self {
        Self {
            stage: Stage::Preparing,
            step: 0,
            total_steps,
        }
    }

    /// The seed's progress object, field for field.
    pub fn to_seed_json(&self) -> serde_json::Value {
        serde_json::json!({
            "preparing": self.stage == Stage::Preparing,
            "loading_model": self.stage == Stage::LoadingModel,
            "generating": self.stage == Stage::Generating,
            "saving": self.stage == Stage::Saving,
            "completed": self.stage == Stage::Completed,
            "failed": self.stage == Stage::Failed,
            "step": self.step,
            "total_steps": self.total_steps,
        })
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Job {
    pub id: JobId,
    pub spec: GenerationSpec,
    pub status: JobStatus,
    pub progress: Progress,
    pub created_at: Timestamp,
    pub started_at: Option<Timestamp>,
    pub completed_at: Option<Timestamp>,
    /// Why the job failed or was cancelled, in words a user can act on.
    pub error: Option<String>,
    /// How many times a worker has claimed this job.
    pub attempts: u32,
    /// Images of a completed job, in generation order.
    pub images: Vec<ImageRecord>,
}

impl Job {
    /// A new job waiting in the queue, created now.
    pub fn pending(spec: GenerationSpec) -> Self {
        Self {
            id: JobId::new(),
            progress: Progress::queued(spec.total_steps()),
            spec,
            status: JobStatus::Pending,
            created_at: crate::time::now(),
            started_at: None,
            completed_at: None,
            error: None,
            attempts: 0,
            images: Vec::new(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ImageRecord {
    pub id: ImageId,
    pub job_id: JobId,
    /// Position of this image within its job.
    pub index: u32,
    pub model: String,
    pub prompt: String,
    pub negative_prompt: Option<String>,
    pub width: u32,
    pub height: u32,
    pub steps: u32,
    pub guidance_scale: f32,
    pub seed: u64,
    pub created_at: Timestamp,
    /// Marked as a favourite in the gallery.
    pub favorite: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn terminal_states_have_no_way_out() {
        for from in JobStatus::ALL.into_iter().filter(|s| s.is_terminal()) {
            for to in JobStatus::ALL {
                assert!(!from.can_become(to), "{from:?} -> {to:?}");
            }
        }
    }

    #[test]
    fn status_and_stage_names_round_trip() {
        for s in JobStatus::ALL {
            assert_eq!(JobStatus::parse(s.as_str()), Some(s));
        }
        assert_eq!(Stage::parse("loading_model"), Some(Stage::LoadingModel));
        assert_eq!(Stage::parse("nope"), None);
    }

    #[test]
    fn seed_progress_has_exactly_one_stage_flag() {
        let p = Progress {
            stage: Stage::Generating,
            step: 15,
            total_steps: 30,
        };
        let v = p.to_seed_json();
        let flags = [
            "preparing",
            "loading_model",
            "generating",
            "saving",
            "completed",
            "failed",
        ];
        let set: Vec<_> = flags.iter().filter(|f| v[**f] == true).collect();
        assert_eq!(set, vec![&"generating"]);
        assert_eq!(v["step"], 15);
        assert_eq!(v["total_steps"], 30);
    }
}
