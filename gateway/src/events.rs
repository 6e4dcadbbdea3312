//! Recording events for Server-Sent Events: one LISTEN connection per
//! gateway, fanned out to every open stream. The extension NOTIFYs
//! `s2t_recording_events` whenever a recording's status or progress changes.

use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use std::time::Duration;
use tokio::sync::broadcast;
use tokio_postgres::{AsyncMessage, NoTls};
use uuid::Uuid;

pub const CHANNEL: &str = "s2t_recording_events";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecordingEvent {
    pub recording_id: Uuid,
    #[serde(skip_serializing)]
    pub user_id: Option<Uuid>,
    pub status: String,
    pub progress: Option<f64>,
    pub failure_reason: Option<String>,
}

impl RecordingEvent {
    pub fn is_final(&self) -> bool {
        self.status == "done" || self.status == "failed"
    }
}

pub struct Hub {
    tx: broadcast::Sender<RecordingEvent>,
}

impl Hub {
    /// Starts the listener task; it reconnects with backoff on its own.
    pub fn start(database_url: String) -> Hub {
        let (tx, _) = broadcast::channel(1024);
        let sender = tx.clone();
        tokio::spawn(async move { listen_forever(database_url, sender).await });
        Hub { tx }
    }

    pub fn subscribe(&self) -> broadcast::Receiver<RecordingEvent> {
        self.tx.subscribe()
    }
}

async fn listen_forever(url: String, tx: broadcast::Sender<RecordingEvent>) {
    let mut backoff = Duration::from_millis(200);
    loop {
        match tokio_postgres::connect(&url, NoTls).await {
            Ok((client, mut connection)) => {
                let mut messages =
                    futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
                let listening = async { client.batch_execute(&format!("LISTEN {CHANNEL}")).await };
                let (tx2, mut ok) = (tx.clone(), false);
                tokio::pin!(listening);
                loop {
                    tokio::select! {
                        r = &mut listening, if !ok => {
                            if r.is_err() { break; }
                            ok = true;
                            backoff = Duration::from_millis(200);
                        }
                        m = messages.next() => match m {
                            Some(Ok(AsyncMessage::Notification(n))) => {
                                if let Ok(e) = serde_json::from_str::<RecordingEvent>(n.payload()) {
                                    let _ = tx2.send(e);
                                }
                            }
                            Some(Ok(_)) => {}
                            _ => break,
                        }
                    }
                }
                eprintln!(
                    "{}",
                    serde_json::json!({"level": "warn", "event": "listen_lost", "channel": CHANNEL})
                );
            }
            Err(e) => eprintln!(
                "{}",
                serde_json::json!({"level": "warn", "event": "listen_connect_failed", "error": e.to_string()})
            ),
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(10));
    }
}
