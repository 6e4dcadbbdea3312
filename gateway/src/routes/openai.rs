//! `POST /v1/audio/transcriptions`, shaped like OpenAI's, so its clients and
//! tools work unchanged: the file is queued like any upload (same quota),
//! and the answer waits for the worker.

use super::recordings::{admit, before_upload, load_recording, load_segments, receive, Received};
use super::AuthUser;
use crate::db::{begin_as, client};
use crate::error::{ApiError, ApiResult};
use crate::transcript::{self, Segment};
use crate::AppState;
use axum::extract::{Multipart, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};
use std::time::Duration;
use uuid::Uuid;

const FORMATS: [&str; 5] = ["json", "text", "srt", "vtt", "verbose_json"];

/// The model a request names, checked against what is installed:
/// `whisper-1` (or nothing) leaves the choice to the worker.
pub fn resolve_model(
    requested: Option<&str>,
    installed: &[String],
) -> Result<Option<String>, String> {
    match requested.map(str::trim).filter(|m| !m.is_empty()) {
        None | Some("whisper-1") => Ok(None),
        Some(m) if installed.iter().any(|i| i == m) => Ok(Some(m.to_string())),
        Some(m) => Err(format!(
            "model {m:?} is not installed; use whisper-1 or one of: {}",
            installed.join(", ")
        )),
    }
}

fn bad_param(param: &str, message: String) -> ApiError {
    let mut e = ApiError::bad_request(message.clone());
    e.problem.errors.insert(param.to_string(), message);
    e
}

pub async fn transcriptions(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    headers: HeaderMap,
    multipart: Multipart,
) -> ApiResult<Response> {
    let slot = before_upload(&state, user).await?;
    let Received { upload, fields } =
        receive(&state, &headers, multipart, state.config.sync_max_bytes).await?;
    let format = fields
        .get("response_format")
        .map(|f| f.trim().to_string())
        .unwrap_or_else(|| "json".into());
    if !FORMATS.contains(&format.as_str()) {
        return Err(bad_param(
            "response_format",
            format!("response_format must be one of {}", FORMATS.join(", ")),
        ));
    }
    let model = resolve_model(
        fields.get("model").map(String::as_str),
        &state.config.model_names,
    )
    .map_err(|m| bad_param("model", m))?;
    let english_only = model.as_deref().is_some_and(|m| m.ends_with(".en"));
    let language = match fields.get("language").map(|l| l.trim().to_lowercase()) {
        Some(l) if !l.is_empty() => l,
        _ if english_only => "en".into(),
        _ => "auto".into(),
    };
    if english_only && language != "en" {
        return Err(bad_param(
            "language",
            format!(
                "model {} is English-only; language {language:?} needs a multilingual model",
                model.as_deref().unwrap_or_default()
            ),
        ));
    }
    let meta = json!({
        "api": "openai", "model": model,
        "prompt": fields.get("prompt").filter(|p| !p.trim().is_empty()),
    });
    // Subscribe before queueing, so the final event cannot slip past.
    let mut events = state.events.subscribe();
    let id = admit(&state, user, &upload, &language, meta).await?;
    // Admitted: the upload is no longer in flight, only the wait is.
    drop((slot, upload));
    let deadline =
        tokio::time::Instant::now() + Duration::from_secs(state.config.sync_timeout_secs);
    match wait_until_final(&state, user, id, &mut events, deadline).await? {
        Waited::Final => {}
        Waited::Stopping => {
            let mut e = ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("the gateway is restarting; the transcription goes on at /recordings/{id}"),
            );
            e.problem.extra.insert("recording_id".into(), json!(id));
            return Err(e);
        }
        Waited::TimedOut => {
            let mut e = ApiError::new(
                StatusCode::GATEWAY_TIMEOUT,
                format!(
                    "the transcription is still running after {} s; follow it at /recordings/{id}",
                    state.config.sync_timeout_secs
                ),
            );
            e.problem.extra.insert("recording_id".into(), json!(id));
            return Err(e);
        }
    }
    let mut c = client(&state.pool).await?;
    let tx = begin_as(&mut c, user).await?;
    let row = load_recording(&tx, id).await?;
    let status: String = row.get(3);
    if status == "failed" {
        let reason: Option<String> = row.get(7);
        let mut e = ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            format!("transcription failed: {}", reason.unwrap_or_default()),
        );
        e.problem.extra.insert("recording_id".into(), json!(id));
        return Err(e);
    }
    let segments: Vec<Segment> = load_segments(&tx, id)
        .await?
        .into_iter()
        .map(|(s, _)| s)
        .collect();
    tx.commit().await?;
    let detected: Option<String> = row.get(2);
    let duration_ms: Option<i32> = row.get(4);
    Ok(render(
        &format,
        id,
        &segments,
        detected,
        duration_ms.unwrap_or(0),
    ))
}

/// How the wait for a synchronous transcription ended.
enum Waited {
    /// The database says the recording is done or failed.
    Final,
    TimedOut,
    Stopping,
}

/// How often the wait re-reads the recording even without an event: a
/// notification can be lost while the listener reconnects.
const RECHECK: Duration = Duration::from_secs(5);

/// Wait until the recording is final *in the database*. An event (or a
/// lagging event stream) is only a cue to look: events can be late, lost
/// or, from anyone who may NOTIFY, wrong, and answering 200 from an event
/// alone once gave an empty transcript for a recording still running.
async fn wait_until_final(
    state: &AppState,
    user: Uuid,
    id: Uuid,
    events: &mut tokio::sync::broadcast::Receiver<crate::events::RecordingEvent>,
    deadline: tokio::time::Instant,
) -> ApiResult<Waited> {
    let mut stopping = state.stopping.subscribe();
    loop {
        if *stopping.borrow() {
            return Ok(Waited::Stopping);
        }
        let cue =
            tokio::time::timeout_at(deadline.min(tokio::time::Instant::now() + RECHECK), async {
                loop {
                    tokio::select! {
                        e = events.recv() => match e {
                            Ok(e) if e.recording_id == id && e.is_final() => return,
                            Ok(_) => {}
                            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => return,
                            // The hub is gone; the periodic re-check carries on.
                            Err(_) => std::future::pending::<()>().await,
                        },
                        // Shutting down: answer now rather than hold the shutdown up.
                        _ = stopping.changed() => return,
                    }
                }
            })
            .await;
        let _ = cue;
        if is_final(state, user, id).await? {
            return Ok(Waited::Final);
        }
        if *state.stopping.borrow() {
            return Ok(Waited::Stopping);
        }
        if tokio::time::Instant::now() >= deadline {
            return Ok(Waited::TimedOut);
        }
    }
}

async fn is_final(state: &AppState, user: Uuid, id: Uuid) -> ApiResult<bool> {
    let mut c = client(&state.pool).await?;
    let tx = begin_as(&mut c, user).await?;
    let status: String = load_recording(&tx, id).await?.get(3);
    tx.commit().await?;
    Ok(status != "processing")
}

fn render(
    format: &str,
    id: Uuid,
    segments: &[Segment],
    language: Option<String>,
    duration_ms: i32,
) -> Response {
    let text = segments
        .iter()
        .map(|s| s.text.trim())
        .filter(|t| !t.is_empty())
        .collect::<Vec<_>>()
        .join(" ");
    let with_id = |mut r: Response| {
        r.headers_mut().insert(
            "x-recording-id",
            id.to_string().parse().expect("a uuid is a header value"),
        );
        r
    };
    match format {
        "text" => with_id(
            (
                [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
                format!("{text}\n"),
            )
                .into_response(),
        ),
        "srt" => with_id(
            (
                [(header::CONTENT_TYPE, "application/x-subrip; charset=utf-8")],
                transcript::to_srt(segments),
            )
                .into_response(),
        ),
        "vtt" => with_id(
            (
                [(header::CONTENT_TYPE, "text/vtt; charset=utf-8")],
                transcript::to_vtt(segments),
            )
                .into_response(),
        ),
        "verbose_json" => Json(json!({
            "task": "transcribe",
            "language": language,
            "duration": duration_ms as f64 / 1000.0,
            "text": text,
            "segments": segments.iter().map(|s| json!({
                "id": s.idx, "seek": 0,
                "start": s.start_ms as f64 / 1000.0, "end": s.end_ms as f64 / 1000.0,
                "text": s.text, "tokens": Vec::<i32>::new(), "temperature": 0.0,
                "avg_logprob": 0.0, "compression_ratio": 0.0, "no_speech_prob": 0.0,
            })).collect::<Vec<Value>>(),
            "recording_id": id,
        }))
        .into_response(),
        _ => Json(json!({ "text": text, "recording_id": id })).into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn whisper_1_means_the_default_and_unknown_models_are_refused() {
        let installed = vec!["tiny.en".to_string(), "base".to_string()];
        assert_eq!(resolve_model(Some("whisper-1"), &installed), Ok(None));
        assert_eq!(resolve_model(None, &installed), Ok(None));
        assert_eq!(
            resolve_model(Some("base"), &installed),
            Ok(Some("base".into()))
        );
        let err = resolve_model(Some("large-v3"), &installed).unwrap_err();
        assert!(err.contains("tiny.en, base"), "{err}");
    }
}
