//! Resource subscriptions of the handshake era: a client subscribes to an
//! image's URI (`resources/subscribe`), and when that image is marked or
//! unmarked a favourite or deleted it hears
//! `notifications/resources/updated`; a new gallery image sends every
//! listener `notifications/resources/list_changed`. Over Streamable HTTP
//! they go on the session's own stream (`GET /mcp`), on stdio to stdout.
//! (2026-07-28 moved subscriptions to `subscriptions/listen`.) The image
//! changes come from the jobs service's image events, so only changes made
//! in this process are heard.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use cyberimage_jobs::{ImageChange, ImageEvent};
use serde_json::{json, Value};
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::mpsc::UnboundedSender;

use super::{protocol, McpServer};

#[derive(Default)]
struct Listener {
    uris: HashSet<String>,
    stream: Option<UnboundedSender<Value>>,
}

#[derive(Default)]
pub struct Subscriptions {
    /// By session (an HTTP session id, or one stdio connection's key).
    listeners: Mutex<HashMap<String, Listener>>,
    forwarding: AtomicBool,
}

impl Subscriptions {
    fn with<T>(&self, session: &str, f: impl FnOnce(&mut Listener) -> T) -> T {
        let mut map = self.listeners.lock().unwrap_or_else(|e| e.into_inner());
        f(map.entry(session.to_owned()).or_default())
    }

    pub fn subscribe(&self, session: &str, uri: &str) {
        self.with(session, |l| l.uris.insert(uri.to_owned()));
    }

    pub fn unsubscribe(&self, session: &str, uri: &str) {
        self.with(session, |l| l.uris.remove(uri));
    }

    /// Where the session's notifications go from now on (a newer stream
    /// replaces an older one).
    pub fn set_stream(&self, session: &str, stream: UnboundedSender<Value>) {
        self.with(session, |l| l.stream = Some(stream));
    }

    /// Forgets a session that ended.
    pub fn remove(&self, session: &str) {
        self.listeners
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(session);
    }

    fn deliver(&self, event: &ImageEvent) {
        let full = super::tools::image_uri(&event.image_id);
        let thumbnail = format!("{full}/thumbnail");
        let mut map = self.listeners.lock().unwrap_or_else(|e| e.into_inner());
        map.retain(|_, listener| {
            let Some(stream) = &listener.stream else {
                return true;
            };
            let sent = match event.change {
                ImageChange::Created => stream.send(protocol::notification(
                    "notifications/resources/list_changed",
                    json!({}),
                )),
                ImageChange::Favorite | ImageChange::Deleted => {
                    let mut sent = Ok(());
                    for uri in [&full, &thumbnail] {
                        if listener.uris.contains(uri.as_str()) {
                            sent = sent.and(stream.send(protocol::notification(
                                "notifications/resources/updated",
                                json!({"uri": uri}),
                            )));
                        }
                    }
                    sent
                }
            };
            // A closed stream: the client went away; keep its
            // subscriptions for a stream it may open again.
            if sent.is_err() {
                listener.stream = None;
            }
            true
        });
    }
}

/// Starts forwarding image changes to subscribers, once per server.
pub fn start_forwarding(server: &Arc<McpServer>) {
    if server.subscriptions.forwarding.swap(true, Ordering::SeqCst) {
        return;
    }
    let mut events = server.service.subscribe_images();
    let server = Arc::downgrade(server);
    tokio::spawn(async move {
        loop {
            match events.recv().await {
                Ok(event) => match server.upgrade() {
                    Some(server) => server.subscriptions.deliver(&event),
                    None => return,
                },
                // Missed some under load: subscribers re-read what they watch.
                Err(RecvError::Lagged(_)) => continue,
                Err(RecvError::Closed) => return,
            }
        }
    });
}
