//! `/recordings`: streamed uploads, listing, details, progress events,
//! transcript downloads, audio playback and deletion.

use super::{AuthUser, Query, RecordingId};
use crate::cursor::Cursor;
use crate::db::{begin_as, client};
use crate::error::{ApiError, ApiResult};
use crate::transcript::{self, Format, Segment};
use crate::AppState;
use axum::extract::{Multipart, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use bytes::{BufMut, Bytes, BytesMut};
use futures_util::SinkExt;
use serde::Deserialize;
use serde_json::{json, Value};
use std::path::PathBuf;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use uuid::Uuid;

/// An upload on disk, removed when dropped.
pub(super) struct Spooled {
    path: PathBuf,
    size: u64,
    content_type: String,
    filename: Option<String>,
}

impl Drop for Spooled {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

fn too_large(limit: u64) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!("the upload is larger than the limit of {limit} bytes"),
    )
}

fn bad_multipart(e: axum::extract::multipart::MultipartError) -> ApiError {
    let status = e.status();
    if status == StatusCode::PAYLOAD_TOO_LARGE {
        return ApiError::new(status, e.body_text());
    }
    ApiError::bad_request(format!("malformed multipart body: {}", e.body_text()))
}

async fn spool(
    mut field: axum::extract::multipart::Field<'_>,
    dir: &std::path::Path,
    limit: u64,
) -> ApiResult<Spooled> {
    tokio::fs::create_dir_all(dir)
        .await
        .map_err(|e| ApiError::internal(format!("spool dir {}: {e}", dir.display())))?;
    let spooled = Spooled {
        path: dir.join(format!("upload-{}", Uuid::new_v4())),
        size: 0,
        content_type: field
            .content_type()
            .unwrap_or("application/octet-stream")
            .to_string(),
        filename: field.file_name().map(str::to_string),
    };
    let mut file = tokio::fs::File::create(&spooled.path)
        .await
        .map_err(|e| ApiError::internal(format!("spool file: {e}")))?;
    let mut spooled = spooled;
    while let Some(chunk) = field.chunk().await.map_err(bad_multipart)? {
        spooled.size += chunk.len() as u64;
        if spooled.size > limit {
            return Err(too_large(limit));
        }
        file.write_all(&chunk)
            .await
            .map_err(|e| ApiError::internal(format!("spool write: {e}")))?;
    }
    file.flush()
        .await
        .map_err(|e| ApiError::internal(format!("spool flush: {e}")))?;
    Ok(spooled)
}

/// Bytes per stored chunk: big enough that a row's overhead is noise, small
/// enough that a range read fetches little it does not need.
pub const AUDIO_CHUNK: usize = 1024 * 1024;

/// Stream the spooled file into `s2t.recording_audio_chunks` with binary
/// COPY, one row per [`AUDIO_CHUNK`] bytes, so neither the gateway nor the
/// database ever holds the whole upload, and return the audio id for
/// `s2t.attach_audio`. The bytes are written once: attaching them later in
/// the transaction only records where they are.
async fn stage_audio(tx: &tokio_postgres::Transaction<'_>, upload: &Spooled) -> ApiResult<Uuid> {
    let audio_id = Uuid::new_v4();
    let sink = tx
        .copy_in(
            "COPY s2t.recording_audio_chunks (audio_id, byte_offset, data) FROM STDIN (FORMAT binary)",
        )
        .await?;
    futures_util::pin_mut!(sink);
    let mut head = BytesMut::new();
    head.put_slice(b"PGCOPY\n\xff\r\n\0");
    head.put_i32(0); // flags
    head.put_i32(0); // header extension length
    sink.send(head.freeze()).await?;
    let mut file = tokio::fs::File::open(&upload.path)
        .await
        .map_err(|e| ApiError::internal(format!("spool read: {e}")))?;
    let mut buf = vec![0u8; AUDIO_CHUNK];
    let mut offset: i64 = 0;
    loop {
        // Fill a whole chunk (reads may return less) so that every chunk
        // but the last is exactly AUDIO_CHUNK bytes.
        let mut n = 0;
        while n < buf.len() {
            let got = file
                .read(&mut buf[n..])
                .await
                .map_err(|e| ApiError::internal(format!("spool read: {e}")))?;
            if got == 0 {
                break;
            }
            n += got;
        }
        if n == 0 {
            break;
        }
        let mut row = BytesMut::with_capacity(n + 46);
        row.put_i16(3); // fields in the tuple
        row.put_i32(16);
        row.put_slice(audio_id.as_bytes());
        row.put_i32(8);
        row.put_i64(offset);
        row.put_i32(n as i32);
        row.put_slice(&buf[..n]);
        sink.send(row.freeze()).await?;
        offset += n as i64;
        if n < buf.len() {
            break;
        }
    }
    sink.send(Bytes::from_static(b"\xff\xff")).await?; // end of data
    sink.as_mut().finish().await?;
    Ok(audio_id)
}

/// A multipart upload: the spooled `file` and the other (short) text fields.
pub(super) struct Received {
    pub upload: Spooled,
    pub fields: std::collections::HashMap<String, String>,
}

/// Read a multipart body: `file` streams to the spool directory (refused
/// over `limit`), every other field is kept as text (at most 32 fields of
/// 4 KiB each).
pub(super) async fn receive(
    state: &AppState,
    headers: &HeaderMap,
    mut multipart: Multipart,
    limit: u64,
) -> ApiResult<Received> {
    // An honest Content-Length over the limit is refused before reading.
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit + 64 * 1024) {
        return Err(too_large(limit));
    }
    let dir = state
        .config
        .spool_dir
        .clone()
        .unwrap_or_else(|| std::env::temp_dir().join("s2t-spool"));
    let mut fields = std::collections::HashMap::new();
    let mut upload: Option<Spooled> = None;
    while let Some(field) = multipart.next_field().await.map_err(bad_multipart)? {
        let name = field.name().unwrap_or_default().to_string();
        if name == "file" && upload.is_none() {
            upload = Some(spool(field, &dir, limit).await?);
        } else {
            if fields.len() >= 32 {
                return Err(ApiError::bad_request("too many form fields (at most 32)"));
            }
            // Read with a cap: a huge text field must not fill memory.
            let mut bytes = Vec::new();
            let mut field = field;
            while let Some(chunk) = field.chunk().await.map_err(bad_multipart)? {
                bytes.extend_from_slice(&chunk);
                if bytes.len() > 4096 {
                    return Err(ApiError::invalid(
                        [(name, "at most 4096 bytes".to_string())].into(),
                    ));
                }
            }
            let Ok(text) = String::from_utf8(bytes) else {
                return Err(ApiError::invalid(
                    [(name, "must be UTF-8 text".to_string())].into(),
                ));
            };
            fields.insert(name, text);
        }
    }
    let Some(upload) = upload else {
        return Err(ApiError::invalid(
            [(
                "file".to_string(),
                "attach the audio as the multipart field 'file'".to_string(),
            )]
            .into(),
        ));
    };
    if upload.size == 0 {
        return Err(ApiError::invalid(
            [("file".to_string(), "the file is empty".to_string())].into(),
        ));
    }
    Ok(Received { upload, fields })
}

/// Admit an upload against the quota and store its audio, in one
/// transaction: over quota, nothing is created.
pub(super) async fn admit(
    state: &AppState,
    user: Uuid,
    upload: &Spooled,
    language: &str,
    mut meta: Value,
) -> ApiResult<Uuid> {
    meta["filename"] = json!(upload.filename);
    meta["content_type"] = json!(upload.content_type);
    meta["size_bytes"] = json!(upload.size);
    // The header's length is reserved against the minutes at admission.
    let (path, filename) = (upload.path.clone(), upload.filename.clone());
    let expected_ms = tokio::task::spawn_blocking(move || {
        crate::probe::declared_duration_ms(&path, filename.as_deref())
    })
    .await
    .ok()
    .flatten();
    let mut c = client(&state.pool).await?;
    let tx = begin_as(&mut c, user).await?;
    // Stream the bytes before admitting: admission locks the user's
    // subscription row until commit, and must not hold it through the copy.
    let staged = stage_audio(&tx, upload).await?;
    let id: Uuid = tx
        .query_one(
            "SELECT s2t.check_quota_and_create_recording($1, 'upload', $2, $3, 'db:', $4)",
            &[&user, &language, &meta, &expected_ms],
        )
        .await?
        .get(0);
    tx.execute(
        "SELECT s2t.attach_audio($1, $2, $3)",
        &[&id, &staged, &upload.content_type],
    )
    .await?;
    tx.commit().await?;
    state.metrics.upload(upload.size);
    Ok(id)
}

/// What must hold before an upload's body is read: a free upload slot for
/// the user (kept until the upload is admitted or refused) and room in the
/// quota by a cheap unlocked read, so a body that admission would refuse
/// is never spooled.
pub(super) async fn before_upload(
    state: &AppState,
    user: Uuid,
) -> ApiResult<crate::limits::UploadSlot> {
    let slot = state.uploads.acquire(user).ok_or_else(|| {
        ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            format!(
                "at most {} uploads at once per user; wait for one to finish",
                state.uploads.max()
            ),
        )
        .with_retry_after(1)
    })?;
    let mut c = client(&state.pool).await?;
    let tx = begin_as(&mut c, user).await?;
    let row = tx
        .query_opt(
            "SELECT s.usage_count, p.monthly_usage_limit, s.used_seconds, s.reserved_seconds,
                    p.monthly_minutes, p.code, s.cycle_end, now()
               FROM s2t.user_subscriptions s JOIN s2t.plans p ON p.id = s.plan_id
              WHERE s.user_id = $1",
            &[&user],
        )
        .await?;
    tx.commit().await?;
    // No subscription: admission explains that better than we could.
    if let Some(r) = row {
        let usage = crate::quota::Usage {
            usage_count: r.get(0),
            usage_limit: r.get(1),
            used_seconds: r.get(2),
            reserved_seconds: r.get(3),
            monthly_minutes: r.get(4),
            plan_code: r.get(5),
            cycle_end: r.get(6),
        };
        if let Some(refusal) = crate::quota::precheck(&usage, r.get(7)) {
            return Err(refusal);
        }
    }
    Ok(slot)
}

pub async fn upload(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    headers: HeaderMap,
    multipart: Multipart,
) -> ApiResult<Response> {
    let _slot = before_upload(&state, user).await?;
    let Received { upload, fields } =
        receive(&state, &headers, multipart, state.config.max_upload_bytes).await?;
    let language = fields
        .get("language")
        .map(|l| l.trim().to_lowercase())
        .filter(|l| !l.is_empty())
        .unwrap_or_else(|| "auto".into());
    let id = admit(&state, user, &upload, &language, json!({})).await?;
    Ok((
        StatusCode::ACCEPTED,
        [(header::LOCATION, format!("/recordings/{id}"))],
        Json(json!({
            "id": id, "status": "processing", "language": language, "size_bytes": upload.size,
            "events_url": format!("/recordings/{id}/events"),
        })),
    )
        .into_response())
}

const RECORDING_COLUMNS: &str =
    "id, source, language, status, duration_ms, created_at, completed_at,
    failure_reason, billed_seconds, (meta -> 'progress')::float8, meta";

fn recording_json(r: &tokio_postgres::Row) -> Value {
    json!({
        "id": r.get::<_, Uuid>(0),
        "source": r.get::<_, String>(1),
        "language": r.get::<_, Option<String>>(2),
        "status": r.get::<_, String>(3),
        "duration_ms": r.get::<_, Option<i32>>(4),
        "created_at": r.get::<_, chrono::DateTime<chrono::Utc>>(5),
        "completed_at": r.get::<_, Option<chrono::DateTime<chrono::Utc>>>(6),
        "failure_reason": r.get::<_, Option<String>>(7),
        "billed_seconds": r.get::<_, i32>(8),
        "progress": r.get::<_, Option<f64>>(9),
        "meta": r.get::<_, Option<Value>>(10),
    })
}

#[derive(Debug, Deserialize)]
pub struct ListQuery {
    status: Option<String>,
    cursor: Option<String>,
    limit: Option<i64>,
}

pub async fn list(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Query(q): Query<ListQuery>,
) -> ApiResult<Json<Value>> {
    let limit = q.limit.unwrap_or(20);
    if !(1..=100).contains(&limit) {
        return Err(ApiError::bad_request("limit must be between 1 and 100"));
    }
    if let Some(s) = &q.status {
        if !["processing", "done", "failed"].contains(&s.as_str()) {
            return Err(ApiError::bad_request(
                "status must be processing, done or failed",
            ));
        }
    }
    let cursor = match &q.cursor {
        Some(c) => Some(Cursor::decode(c).ok_or_else(|| ApiError::bad_request("invalid cursor"))?),
        None => None,
    };
    let mut c = client(&state.pool).await?;
    let tx = begin_as(&mut c, user).await?;
    let rows = tx
        .query(
            &format!(
                "SELECT {RECORDING_COLUMNS} FROM s2t.recordings
                  WHERE user_id = $1 AND ($2::text IS NULL OR status = $2)
                    AND ($3::timestamptz IS NULL OR (created_at, id) < ($3, $4))
                  ORDER BY created_at DESC, id DESC LIMIT $5"
            ),
            &[
                &user,
                &q.status,
                &cursor.map(|c| c.created_at),
                &cursor.map(|c| c.id).unwrap_or_default(),
                &(limit + 1),
            ],
        )
        .await?;
    tx.commit().await?;
    let more = rows.len() as i64 > limit;
    let page = &rows[..rows.len().min(limit as usize)];
    let next = more.then(|| page.last()).flatten().map(|r| {
        Cursor {
            created_at: r.get(5),
            id: r.get(0),
        }
        .encode()
    });
    Ok(Json(json!({
        "recordings": page.iter().map(recording_json).collect::<Vec<_>>(),
        "next_cursor": next,
    })))
}

pub(super) async fn load_segments(
    tx: &tokio_postgres::Transaction<'_>,
    id: Uuid,
) -> ApiResult<Vec<(Segment, Option<Value>)>> {
    let rows = tx
        .query(
            "SELECT idx, start_ms, end_ms, text, words FROM s2t.segments WHERE recording_id = $1 ORDER BY idx",
            &[&id],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| {
            (
                Segment {
                    idx: r.get(0),
                    start_ms: r.get(1),
                    end_ms: r.get(2),
                    text: r.get(3),
                },
                r.get(4),
            )
        })
        .collect())
}

pub(super) async fn load_recording(
    tx: &tokio_postgres::Transaction<'_>,
    id: Uuid,
) -> ApiResult<tokio_postgres::Row> {
    tx.query_opt(
        &format!("SELECT {RECORDING_COLUMNS} FROM s2t.recordings WHERE id = $1"),
        &[&id],
    )
    .await?
    .ok_or_else(|| ApiError::not_found("recording"))
}

pub async fn get_one(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    RecordingId(id): RecordingId,
) -> ApiResult<Json<Value>> {
    let mut c = client(&state.pool).await?;
    let tx = begin_as(&mut c, user).await?;
    let row = load_recording(&tx, id).await?;
    let segments = load_segments(&tx, id).await?;
    tx.commit().await?;
    let mut body = recording_json(&row);
    body["segments"] = segments
        .into_iter()
        .map(|(s, words)| json!({"idx": s.idx, "start_ms": s.start_ms, "end_ms": s.end_ms, "text": s.text, "words": words}))
        .collect();
    Ok(Json(body))
}

pub async fn delete(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    RecordingId(id): RecordingId,
) -> ApiResult<StatusCode> {
    let mut c = client(&state.pool).await?;
    let tx = begin_as(&mut c, user).await?;
    let n = tx
        .execute(
            "DELETE FROM s2t.recordings WHERE id = $1 AND user_id = $2",
            &[&id, &user],
        )
        .await?;
    tx.commit().await?;
    if n == 0 {
        return Err(ApiError::not_found("recording"));
    }
    Ok(StatusCode::NO_CONTENT)
}

/// `transcript.{txt,srt,vtt,json}` or `audio`.
pub async fn download(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    RecordingId(id): RecordingId,
    axum::extract::Path((_, file)): axum::extract::Path<(String, String)>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    if file == "audio" {
        return super::audio::audio(state, user, id, headers).await;
    }
    let format = file
        .strip_prefix("transcript.")
        .and_then(Format::from_extension)
        .ok_or_else(|| ApiError::not_found("route"))?;
    let mut c = client(&state.pool).await?;
    let tx = begin_as(&mut c, user).await?;
    let row = load_recording(&tx, id).await?;
    let status: String = row.get(3);
    if status != "done" {
        let reason: Option<String> = row.get(7);
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            match reason {
                Some(r) => format!("the recording failed, so it has no transcript: {r}"),
                None => "the recording is still being transcribed; follow its events".into(),
            },
        ));
    }
    let segments: Vec<Segment> = load_segments(&tx, id)
        .await?
        .into_iter()
        .map(|(s, _)| s)
        .collect();
    tx.commit().await?;
    let body = match format {
        Format::Txt => transcript::to_txt(&segments),
        Format::Srt => transcript::to_srt(&segments),
        Format::Vtt => transcript::to_vtt(&segments),
        Format::Json => {
            let mut v = recording_json(&row);
            v["segments"] = serde_json::to_value(&segments).expect("segments serialise");
            serde_json::to_string_pretty(&v).expect("json")
        }
    };
    let name = format!("recording-{}.{}", &id.to_string()[..8], format.extension());
    Ok((
        [
            (header::CONTENT_TYPE, format.content_type().to_string()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{name}\""),
            ),
        ],
        body,
    )
        .into_response())
}

fn sse_event(e: &crate::events::RecordingEvent) -> Event {
    Event::default()
        .event("status")
        .json_data(e)
        .expect("events serialise")
}

async fn current_event(
    state: &AppState,
    user: Uuid,
    id: Uuid,
) -> ApiResult<crate::events::RecordingEvent> {
    let mut c = client(&state.pool).await?;
    let tx = begin_as(&mut c, user).await?;
    let r = load_recording(&tx, id).await?;
    tx.commit().await?;
    Ok(crate::events::RecordingEvent {
        recording_id: id,
        user_id: Some(user),
        status: r.get(3),
        progress: r.get(9),
        failure_reason: r.get(7),
    })
}

pub async fn events(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    RecordingId(id): RecordingId,
) -> ApiResult<impl IntoResponse> {
    // Subscribe before reading, so no change falls between the two.
    let mut notifications = state.events.subscribe();
    let first = current_event(&state, user, id).await?;
    let (out, rx) = tokio::sync::mpsc::channel::<Event>(16);
    let st = state.clone();
    tokio::spawn(async move {
        let mut last = first.clone();
        if out.send(sse_event(&first)).await.is_err() || first.is_final() {
            return;
        }
        // A safety net for notifications lost while the listener reconnects.
        let mut recheck = tokio::time::interval(std::time::Duration::from_secs(15));
        recheck.tick().await;
        let mut stopping = st.stopping.subscribe();
        loop {
            let next = tokio::select! {
                _ = out.closed() => return,
                // Shutting down: end the stream; clients reconnect.
                _ = stopping.changed() => return,
                n = notifications.recv() => match n {
                    Ok(e) if e.recording_id == id => Some(e),
                    Ok(_) => None,
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => current_event(&st, user, id).await.ok(),
                    Err(_) => return,
                },
                _ = recheck.tick() => current_event(&st, user, id).await.ok(),
            };
            let Some(mut e) = next else { continue };
            e.user_id = None;
            if e.status == last.status && e.progress == last.progress {
                continue;
            }
            last = e.clone();
            if out.send(sse_event(&e)).await.is_err() || e.is_final() {
                return;
            }
        }
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|e| (Ok::<_, std::convert::Infallible>(e), rx))
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}
