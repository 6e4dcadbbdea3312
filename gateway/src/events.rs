//! Recording events for Server-Sent Events: one LISTEN connection per
//! gateway, fanned out to every open stream. The extension NOTIFYs
//! `s2t_recording_events` whenever a recording's status or progress changes.

use crate::pgtls::Target;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use std::time::Duration;
use tokio::sync::broadcast;
use tokio_postgres::tls::MakeTlsConnect;
use tokio_postgres::{AsyncMessage, NoTls, Socket};
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
    /// Starts the listener task; it reconnects with backoff on its own, over
    /// TLS when the connection string asks for it, like the pool.
    pub fn start(target: Target) -> Hub {
        let (tx, _) = broadcast::channel(1024);
        let sender = tx.clone();
        tokio::spawn(async move { listen_forever(target, sender).await });
        Hub { tx }
    }

    pub fn subscribe(&self) -> broadcast::Receiver<RecordingEvent> {
        self.tx.subscribe()
    }
}

async fn listen_forever(target: Target, tx: broadcast::Sender<RecordingEvent>) {
    let mut backoff = Duration::from_millis(200);
    loop {
        let outcome = match &target.tls {
            Some(tls) => listen_once(&target.config, tls.clone(), &tx, &mut backoff).await,
            None => listen_once(&target.config, NoTls, &tx, &mut backoff).await,
        };
        match outcome {
            Ok(()) => eprintln!(
                "{}",
                serde_json::json!({"level": "warn", "event": "listen_lost", "channel": CHANNEL})
            ),
            Err(e) => eprintln!(
                "{}",
                serde_json::json!({"level": "warn", "event": "listen_connect_failed", "error": e.to_string()})
            ),
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(10));
    }
}

/// One LISTEN connection, until it is lost.
async fn listen_once<T>(
    config: &tokio_postgres::Config,
    tls: T,
    tx: &broadcast::Sender<RecordingEvent>,
    backoff: &mut Duration,
) -> Result<(), tokio_postgres::Error>
where
    T: MakeTlsConnect<Socket>,
    T::Stream: Send + 'static,
{
    let (client, mut connection) = config.connect(tls).await?;
    let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
    let listening = async { client.batch_execute(&format!("LISTEN {CHANNEL}")).await };
    let mut ok = false;
    tokio::pin!(listening);
    loop {
        tokio::select! {
            r = &mut listening, if !ok => {
                if r.is_err() { return Ok(()); }
                ok = true;
                *backoff = Duration::from_millis(200);
            }
            m = messages.next() => match m {
                Some(Ok(AsyncMessage::Notification(n))) => {
                    if let Ok(e) = serde_json::from_str::<RecordingEvent>(n.payload()) {
                        let _ = tx.send(e);
                    }
                }
                Some(Ok(_)) => {}
                _ => return Ok(()),
            }
        }
    }
}
