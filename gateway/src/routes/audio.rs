//! `GET /recordings/{id}/audio`: playback with HTTP `Range`.
//!
//! A player reads at its own pace and may pause for minutes, so the body is
//! read in steps of [`AUDIO_STEP`] bytes, each in its own short transaction
//! on a connection that goes back to the pool before the bytes are sent.
//! Holding one connection (and an open transaction) per player would let 16
//! paused players take the whole pool. Where the bytes live is confined to
//! [`audio_meta`] and [`read_audio`].

use crate::db::{begin_as, client};
use crate::error::{ApiError, ApiResult};
use crate::range::{self, RangeAnswer};
use crate::AppState;
use axum::body::Body as HttpBody;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use uuid::Uuid;

/// Bytes read per transaction.
pub const AUDIO_STEP: u64 = 1024 * 1024;

/// The audio's content type and length, or 404.
async fn audio_meta(state: &AppState, user: Uuid, id: Uuid) -> ApiResult<(String, u64)> {
    let mut c = client(&state.pool).await?;
    let tx = begin_as(&mut c, user).await?;
    let row = tx
        .query_opt(
            "SELECT content_type, size_bytes FROM s2t.recording_audio WHERE recording_id = $1",
            &[&id],
        )
        .await?
        .ok_or_else(|| ApiError::not_found("recording audio"))?;
    tx.commit().await?;
    let len: i64 = row.get(1);
    Ok((row.get(0), len.max(0) as u64))
}

/// `len` bytes from `offset`, in one short transaction: `s2t.read_audio`
/// reads only the stored chunks that overlap the range (and of those only
/// the TOAST pages it needs). The user is checked again, so deleting the
/// recording or disabling the account stops a download in progress at its
/// next step.
async fn read_audio(
    state: &AppState,
    user: Uuid,
    id: Uuid,
    offset: u64,
    len: u64,
) -> ApiResult<Bytes> {
    let mut c = client(&state.pool).await?;
    let tx = begin_as(&mut c, user).await?;
    let piece: Vec<u8> = tx
        .query_opt(
            "SELECT s2t.read_audio($1, $2, $3)",
            &[&id, &(offset as i64), &(len as i32)],
        )
        .await?
        .ok_or_else(|| ApiError::not_found("recording audio"))?
        .get(0);
    tx.commit().await?;
    Ok(Bytes::from(piece))
}

pub async fn audio(
    state: AppState,
    user: Uuid,
    id: Uuid,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let (kind, len) = audio_meta(&state, user, id).await?;
    let answer = range::parse(
        headers.get(header::RANGE).and_then(|v| v.to_str().ok()),
        len,
    );
    let (status, start, end) = match answer {
        RangeAnswer::Full => (StatusCode::OK, 0, len.saturating_sub(1)),
        RangeAnswer::Partial { start, end } => (StatusCode::PARTIAL_CONTENT, start, end),
        RangeAnswer::Unsatisfiable => {
            return Ok((
                StatusCode::RANGE_NOT_SATISFIABLE,
                [(header::CONTENT_RANGE, format!("bytes */{len}"))],
            )
                .into_response())
        }
    };
    // Each step is read when the client has taken the previous one (the
    // stream is polled only as the socket drains), with no connection
    // held in between.
    let steps = futures_util::stream::unfold(
        (state, start, len > 0),
        move |(state, at, more)| async move {
            if !more || at > end {
                return None;
            }
            let n = AUDIO_STEP.min(end - at + 1);
            match read_audio(&state, user, id, at, n).await {
                Ok(piece) if !piece.is_empty() => Some((Ok(piece), (state, at + n, true))),
                // The audio shrank or went away under the download.
                Ok(_) => Some((
                    Err(std::io::Error::other("the audio ended early")),
                    (state, at, false),
                )),
                Err(e) => Some((
                    Err(std::io::Error::other(e.problem.detail)),
                    (state, at, false),
                )),
            }
        },
    );
    let mut res = Response::new(HttpBody::from_stream(steps));
    *res.status_mut() = status;
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        kind.parse()
            .unwrap_or(header::HeaderValue::from_static("application/octet-stream")),
    );
    h.insert(
        header::ACCEPT_RANGES,
        header::HeaderValue::from_static("bytes"),
    );
    let count = if len == 0 { 0 } else { end - start + 1 };
    h.insert(header::CONTENT_LENGTH, count.into());
    if status == StatusCode::PARTIAL_CONTENT {
        h.insert(
            header::CONTENT_RANGE,
            format!("bytes {start}-{end}/{len}").parse().expect("ascii"),
        );
    }
    Ok(res)
}
