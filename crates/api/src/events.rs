//! Server-sent events: live job progress pushed from the jobs event bus, so
//! pages and scripts need no tight polling. `GET /api/events` streams every
//! job; `?job_id=` narrows to one job, starts with its current state and
//! ends once it is finished.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::{Query, State};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::routing::get;
use axum::Router;
use cyberimage_core::JobId;
use cyberimage_jobs::JobEvent;
use futures::stream::{self, Stream, StreamExt};
use serde::Deserialize;
use serde_json::json;
use tokio_stream::wrappers::BroadcastStream;

use crate::error_table::ApiError;
use crate::AppState;

pub fn routes() -> Router<AppState> {
    Router::new().route("/api/events", get(events))
}

#[derive(Deserialize)]
struct EventsQuery {
    job_id: Option<String>,
}

/// A job's state as a `job` event; a live preview as a `preview` event
/// with the step it shows and where to fetch it.
fn to_sse(ev: &JobEvent) -> Event {
    if let Some(step) = ev.preview_step {
        let data = json!({
            "job_id": ev.job_id,
            "step": step,
            "preview_url": format!("/api/preview/{}?step={step}", ev.job_id),
        });
        return Event::default().event("preview").data(data.to_string());
    }
    let data = json!({
        "job_id": ev.job_id,
        "status": ev.status.as_str(),
        "progress": ev.progress.to_seed_json(),
        "error": ev.error,
    });
    Event::default().event("job").data(data.to_string())
}

async fn events(
    State(state): State<AppState>,
    Query(q): Query<EventsQuery>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    // Subscribe before reading the snapshot, so nothing falls in between.
    let live = BroadcastStream::new(state.service.subscribe())
        // A slow reader that lagged just misses intermediate steps.
        .filter_map(|r| async move { r.ok() });
    let (filter, snapshot) = match q.job_id.as_deref() {
        None => (None, None),
        Some(raw) => {
            let id = JobId::parse(raw)
                .map_err(|_| ApiError::from(cyberimage_jobs::JobsError::JobNotFound))?;
            let job = state.service.job(id).await?;
            let ev = JobEvent {
                job_id: id,
                status: job.status,
                progress: job.progress,
                error: job.error,
                preview_step: None,
            };
            (Some(id), Some(ev))
        }
    };
    let finished_already = snapshot.as_ref().is_some_and(|e| e.status.is_terminal());
    let live = live
        .filter(move |ev| std::future::ready(filter.is_none_or(|id| ev.job_id == id)))
        .boxed();
    let live = if finished_already {
        stream::empty().boxed()
    } else if filter.is_some() {
        // End right after the event that finishes the job.
        stream::unfold((live, false), |(mut live, done)| async move {
            if done {
                return None;
            }
            let ev = live.next().await?;
            let finished = ev.status.is_terminal();
            Some((ev, (live, finished)))
        })
        .boxed()
    } else {
        live
    };
    let stream = stream::iter(snapshot).chain(live).map(|ev| Ok(to_sse(&ev)));
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}
