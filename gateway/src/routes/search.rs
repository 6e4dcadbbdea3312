//! `GET /search/semantic`: the extension's hybrid search (`s2t.search`)
//! under the caller's row-level security, with a deep link per hit.

use super::{AuthUser, Query};
use crate::db::{begin_as, client};
use crate::error::{ApiError, ApiResult};
use crate::AppState;
use axum::extract::State;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use uuid::Uuid;

#[derive(Debug, Deserialize)]
pub struct SearchQuery {
    q: Option<String>,
    k: Option<String>,
    recording_id: Option<String>,
    since: Option<String>,
    until: Option<String>,
    language: Option<String>,
}

/// The parameters, checked; every problem is named by its field.
struct Params {
    q: String,
    k: i32,
    recording_id: Option<Uuid>,
    since: Option<chrono::DateTime<chrono::Utc>>,
    until: Option<chrono::DateTime<chrono::Utc>>,
    language: Option<String>,
}

pub(super) fn time(
    field: &str,
    v: &Option<String>,
    errors: &mut BTreeMap<String, String>,
) -> Option<chrono::DateTime<chrono::Utc>> {
    let v = v.as_deref()?;
    match chrono::DateTime::parse_from_rfc3339(v) {
        Ok(t) => Some(t.with_timezone(&chrono::Utc)),
        Err(_) => {
            errors.insert(
                field.into(),
                "must be an RFC 3339 time, such as 2026-12-01T00:00:00Z".into(),
            );
            None
        }
    }
}

/// The checked parameters, or one message per bad field.
fn check(q: SearchQuery) -> Result<Params, BTreeMap<String, String>> {
    let mut errors = BTreeMap::new();
    let text = q.q.unwrap_or_default().trim().to_string();
    if text.is_empty() || text.chars().count() > 2000 {
        errors.insert("q".into(), "must be 1 to 2000 characters".into());
    }
    let k = match q.k.as_deref().map(str::parse::<i32>) {
        None => 10,
        Some(Ok(k)) if (1..=100).contains(&k) => k,
        Some(_) => {
            errors.insert("k".into(), "must be an integer from 1 to 100".into());
            10
        }
    };
    let recording_id = match q.recording_id.as_deref().map(Uuid::parse_str) {
        None => None,
        Some(Ok(id)) => Some(id),
        Some(Err(_)) => {
            errors.insert("recording_id".into(), "must be a UUID".into());
            None
        }
    };
    let since = time("since", &q.since, &mut errors);
    let until = time("until", &q.until, &mut errors);
    if let (Some(s), Some(u)) = (since, until) {
        if s > u {
            errors.insert("since".into(), "must not be after until".into());
        }
    }
    let language = q.language.filter(|l| !l.is_empty());
    if let Some(l) = &language {
        if !(2..=3).contains(&l.len()) || !l.chars().all(|c| c.is_ascii_lowercase()) {
            errors.insert(
                "language".into(),
                "must be an ISO 639 code such as vi or en".into(),
            );
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(Params {
        q: text,
        k,
        recording_id,
        since,
        until,
        language,
    })
}

pub async fn semantic(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Query(q): Query<SearchQuery>,
) -> ApiResult<Json<Value>> {
    let p = check(q).map_err(ApiError::invalid)?;
    let mut c = client(&state.pool).await?;
    let tx = begin_as(&mut c, user).await?;
    let rows = tx
        .query(
            "SELECT chunk_id, recording_id, title, recording_created_at, start_ms, end_ms, text,
                    score, dense_rank, lexical_rank, highlights
               FROM s2t.search($1::text, $2::int, $3::uuid, $4::timestamptz, $5::timestamptz, $6::text)",
            &[&p.q, &p.k, &p.recording_id, &p.since, &p.until, &p.language],
        )
        .await?;
    // Whether the meaning was used: the extension's NOTICE does not reach
    // an HTTP client, so ask the same backend (free after the search).
    let row = tx
        .query_one(
            "SELECT s2t.embedding_available(), s2t.embedding_model()",
            &[],
        )
        .await?;
    let (dense, model): (bool, String) = (row.get(0), row.get(1));
    tx.commit().await?;
    let hits: Vec<Value> = rows
        .iter()
        .map(|r| {
            let recording: Uuid = r.get(1);
            let created: chrono::DateTime<chrono::Utc> = r.get(3);
            let start_ms: i32 = r.get(4);
            json!({
                "chunk_id": r.get::<_, Uuid>(0),
                "recording_id": recording,
                "title": r.get::<_, Option<String>>(2),
                "recording_created_at": created.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                "start_ms": start_ms,
                "end_ms": r.get::<_, i32>(5),
                "text": r.get::<_, String>(6),
                "score": r.get::<_, f64>(7),
                "dense_rank": r.get::<_, Option<i32>>(8),
                "lexical_rank": r.get::<_, Option<i32>>(9),
                "highlights": r.get::<_, Value>(10),
                "link": format!("/recordings/{recording}?t={start_ms}"),
            })
        })
        .collect();
    Ok(Json(json!({
        "query": p.q,
        "mode": if dense { "hybrid" } else { "lexical" },
        "model": model,
        "hits": hits,
    })))
}
