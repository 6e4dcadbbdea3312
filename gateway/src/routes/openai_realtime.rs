//! `GET /v1/realtime?intent=transcription`: OpenAI's realtime transcription
//! protocol over the same sessions as `/ws/s2t` (same quota, same worker,
//! same saved finals). The translation is [`crate::realtime_compat`]; this
//! is the socket glue. The session opens at the first audio, with the
//! configuration given by then; when the client goes, the session is
//! stopped (flushed, saved and billed), as OpenAI's protocol has no resume.

use super::realtime::{connect_worker, WorkerSocket};
use super::AuthUser;
use crate::error::ApiError;
use crate::realtime_compat::{Compat, Step};
use crate::AppState;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::response::Response;
use futures_util::{SinkExt, StreamExt};
use s2t_core::realtime::MAX_FRAME_BYTES;
use serde::Deserialize;
use serde_json::Value;
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message as WorkerMessage;
use uuid::Uuid;

#[derive(Deserialize)]
pub struct RealtimeQuery {
    intent: Option<String>,
}

pub async fn realtime(
    State(state): State<AppState>,
    Query(query): Query<RealtimeQuery>,
    AuthUser(user): AuthUser,
    upgrade: WebSocketUpgrade,
) -> Result<Response, ApiError> {
    if query.intent.as_deref() != Some("transcription") {
        return Err(ApiError::bad_request(
            "only transcription sessions are served here: connect with ?intent=transcription",
        ));
    }
    // Base64 makes a frame a third larger than its audio.
    Ok(upgrade
        .max_message_size(2 * MAX_FRAME_BYTES)
        .on_upgrade(move |socket| session(state, socket, user)))
}

async fn send(client: &mut WebSocket, event: Value) -> bool {
    client.send(Message::text(event.to_string())).await.is_ok()
}

async fn close(client: &mut WebSocket, code: u16, reason: &str) {
    let frame = CloseFrame {
        code,
        reason: reason.into(),
    };
    super::realtime::close_client(client, Some(frame)).await;
}

/// The worker's `ready` (or its refusal, as an OpenAI error).
async fn ready(worker: &mut WorkerSocket, c: &mut Compat) -> Result<(), Value> {
    let first = tokio::time::timeout(Duration::from_secs(10), worker.next()).await;
    if let Ok(Some(Ok(WorkerMessage::Text(t)))) = first {
        let v: Value = serde_json::from_str(t.as_str()).unwrap_or_default();
        if v["type"] == "ready" {
            return Ok(());
        }
        if let Some(e) = c.on_server(&v).into_iter().next() {
            return Err(e);
        }
    }
    Err(c.error("internal", "the worker did not take the session; retry"))
}

async fn next_from(worker: &mut Option<WorkerSocket>) -> Option<Result<WorkerMessage, String>> {
    match worker.as_mut() {
        Some(w) => w.next().await.map(|m| m.map_err(|e| e.to_string())),
        None => std::future::pending().await,
    }
}

async fn session(state: AppState, mut client: WebSocket, user: Uuid) {
    let mut c = Compat::default();
    let created = c.created();
    if !send(&mut client, created).await {
        return;
    }
    let mut worker: Option<WorkerSocket> = None;
    loop {
        tokio::select! {
            from_client = client.recv() => match from_client {
                Some(Ok(Message::Text(text))) => {
                    for step in c.on_client(text.as_str(), worker.is_some()) {
                        match step {
                            Step::Reply(event) => {
                                send(&mut client, event).await;
                            }
                            Step::Audio(bytes) => {
                                if worker.is_none() {
                                    let opened = match connect_worker(&state, user, c.start()).await {
                                        Ok(mut w) => ready(&mut w, &mut c).await.map(|_| w),
                                        Err(e) => Err(c.error(e.code.name(), &e.message)),
                                    };
                                    match opened {
                                        Ok(w) => worker = Some(w),
                                        Err(event) => {
                                            send(&mut client, event).await;
                                            return close(&mut client, 1008, "refused").await;
                                        }
                                    }
                                }
                                if let Some(w) = worker.as_mut() {
                                    let _ = w.send(WorkerMessage::Binary(bytes.into())).await;
                                }
                            }
                            Step::Commit => match worker.as_mut() {
                                Some(w) => {
                                    let _ = w.send(WorkerMessage::text(r#"{"type":"commit"}"#)).await;
                                }
                                None => {
                                    let e = c.error("input_audio_buffer_commit_empty", "no audio has been appended to commit");
                                    send(&mut client, e).await;
                                }
                            },
                        }
                    }
                }
                Some(Ok(Message::Binary(_))) => {
                    let e = c.error("invalid_event", "send audio as input_audio_buffer.append events (base64 pcm16 at 24 kHz)");
                    send(&mut client, e).await;
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => {
                    // No resume in this protocol: the session ends here,
                    // flushed and billed for the audio received.
                    if let Some(mut w) = worker.take() {
                        let _ = w.send(WorkerMessage::text(r#"{"type":"stop"}"#)).await;
                        let _ = tokio::time::timeout(Duration::from_secs(30), async {
                            while let Some(Ok(m)) = w.next().await {
                                if matches!(m, WorkerMessage::Close(_)) {
                                    break;
                                }
                            }
                        })
                        .await;
                    }
                    return;
                }
            },
            from_worker = next_from(&mut worker) => match from_worker {
                Some(Ok(WorkerMessage::Text(t))) => {
                    let message: Value = serde_json::from_str(t.as_str()).unwrap_or_default();
                    for event in c.on_server(&message) {
                        send(&mut client, event).await;
                    }
                }
                Some(Ok(WorkerMessage::Close(frame))) => {
                    let code = frame.as_ref().map_or(1000, |f| u16::from(f.code));
                    // Our error codes ended the session; OpenAI's clients
                    // know 1000 and 1008/1011.
                    let code = match code {
                        1000 => 1000,
                        1011 | 1012 => 1011,
                        _ => 1008,
                    };
                    return close(&mut client, code, "session ended").await;
                }
                Some(Ok(_)) => {}
                Some(Err(_)) | None => {
                    let e = c.error("internal", "the worker serving this session stopped; the transcript so far is saved");
                    send(&mut client, e).await;
                    return close(&mut client, 1011, "worker stopped").await;
                }
            },
        }
    }
}
