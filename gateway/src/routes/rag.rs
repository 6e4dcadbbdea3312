//! `POST /rag/ask` and `GET /rag/history`: answers from the caller's own
//! transcripts (the extension's `s2t.ask`, extractive), counted against the
//! plan's monthly questions, kept per user; `?stream=true` (or `Accept:
//! text/event-stream`) sends them as Server-Sent Events.

use super::search::time;
use super::{AuthUser, Query};
use crate::cursor::Cursor;
use crate::db::{begin_as, client};
use crate::error::{ApiError, ApiResult};
use crate::AppState;
use axum::extract::State;
use axum::http::{header, HeaderMap};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use uuid::Uuid;

#[derive(Debug, Deserialize)]
pub struct AskBody {
    question: Option<String>,
    recording_id: Option<String>,
    since: Option<String>,
    until: Option<String>,
    k: Option<i64>,
    lang: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct AskQuery {
    stream: Option<String>,
}

struct Params {
    question: String,
    recording_id: Option<Uuid>,
    since: Option<chrono::DateTime<chrono::Utc>>,
    until: Option<chrono::DateTime<chrono::Utc>>,
    k: i32,
    lang: Option<String>,
}

fn check(b: AskBody) -> Result<Params, BTreeMap<String, String>> {
    let mut errors = BTreeMap::new();
    let question = b.question.unwrap_or_default().trim().to_string();
    if question.is_empty() || question.chars().count() > 2000 {
        errors.insert("question".into(), "must be 1 to 2000 characters".into());
    }
    let recording_id = match b.recording_id.as_deref().map(Uuid::parse_str) {
        None => None,
        Some(Ok(id)) => Some(id),
        Some(Err(_)) => {
            errors.insert("recording_id".into(), "must be a UUID".into());
            None
        }
    };
    let since = time("since", &b.since, &mut errors);
    let until = time("until", &b.until, &mut errors);
    if let (Some(s), Some(u)) = (since, until) {
        if s > u {
            errors.insert("since".into(), "must not be after until".into());
        }
    }
    let k = match b.k {
        None => 6,
        Some(k) if (1..=20).contains(&k) => k as i32,
        Some(_) => {
            errors.insert("k".into(), "must be an integer from 1 to 20".into());
            6
        }
    };
    let lang = b.lang.filter(|l| !l.is_empty());
    if let Some(l) = &lang {
        if !["en", "vi"].contains(&l.as_str()) {
            errors.insert("lang".into(), "must be en or vi".into());
        }
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(Params {
        question,
        recording_id,
        since,
        until,
        k,
        lang,
    })
}

/// The answer's language: the body's `lang`, else the browser's first
/// preference (Vietnamese or English).
fn language(p: &Params, headers: &HeaderMap) -> &'static str {
    let tag = p.lang.clone().unwrap_or_else(|| {
        headers
            .get(header::ACCEPT_LANGUAGE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("en")
            .to_string()
    });
    match s2t_core::answer::Lang::from_tag(&tag) {
        s2t_core::answer::Lang::Vi => "vi",
        s2t_core::answer::Lang::En => "en",
    }
}

fn wants_stream(q: &AskQuery, headers: &HeaderMap) -> bool {
    matches!(q.stream.as_deref(), Some("true" | "1"))
        || headers
            .get(header::ACCEPT)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|a| a.contains("text/event-stream"))
}

/// Citations as the extension gives them, each with a link that plays the
/// highlighted sentence.
fn with_links(citations: &Value) -> Value {
    let mut out = citations.clone();
    if let Some(list) = out.as_array_mut() {
        for c in list {
            let link = format!(
                "/recordings/{}?t={}",
                c["recording_id"].as_str().unwrap_or_default(),
                c["start_ms"].as_i64().unwrap_or(0)
            );
            c["link"] = link.into();
        }
    }
    out
}

fn answer_json(r: &tokio_postgres::Row) -> Value {
    let created: chrono::DateTime<chrono::Utc> = r.get("created_at");
    json!({
        "id": r.get::<_, Uuid>("id"),
        "question": r.get::<_, String>("question"),
        "answer": r.get::<_, String>("answer"),
        "citations": r.get::<_, Value>("citations"),
        "mode": r.get::<_, String>("mode"),
        "model": r.get::<_, Option<String>>("model"),
        "found": r.get::<_, bool>("found"),
        "fallback": r.get::<_, Option<String>>("fallback"),
        "scope": r.get::<_, Value>("scope"),
        "created_at": created.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
    })
}

const ANSWER_COLUMNS: &str =
    "id, question, answer, citations, mode, model, found, fallback, scope, created_at";

pub async fn ask(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    headers: HeaderMap,
    Query(q): Query<AskQuery>,
    Json(body): Json<AskBody>,
) -> ApiResult<Response> {
    let p = check(body).map_err(ApiError::invalid)?;
    let lang = language(&p, &headers);
    let stream = wants_stream(&q, &headers);
    let mut c = client(&state.pool).await?;
    let tx = begin_as(&mut c, user).await?;
    // Counted and answered in one transaction: a question that fails is
    // not counted.
    tx.query_one("SELECT s2t.admit_question($1)", &[&user])
        .await?;
    let a: Value = tx
        .query_one(
            "SELECT s2t.ask($1::text, $2::int, $3::uuid, $4::timestamptz, $5::timestamptz, $6::text)",
            &[&p.question, &p.k, &p.recording_id, &p.since, &p.until, &lang],
        )
        .await?
        .get(0);
    let citations = with_links(&a["citations"]);
    let scope =
        json!({"recording_id": p.recording_id, "since": p.since, "until": p.until, "k": p.k});
    let row = tx
        .query_one(
            &format!(
                "INSERT INTO s2t.answers (user_id, question, answer, citations, mode, model, found, scope)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING {ANSWER_COLUMNS}"
            ),
            &[
                &user,
                &p.question,
                &a["answer"].as_str().unwrap_or_default(),
                &citations,
                &a["mode"].as_str().unwrap_or("extractive"),
                &a["model"].as_str(),
                &a["found"].as_bool().unwrap_or(false),
                &scope,
            ],
        )
        .await?;
    tx.commit().await?;
    let out = answer_json(&row);
    if !stream {
        return Ok(Json(out).into_response());
    }
    // The citations first (what the answer may quote), then the answer's
    // text sentence by sentence, then the whole answer.
    let mut events = vec![Event::default().event("citations").json_data(json!({
        "citations": out["citations"], "found": out["found"], "mode": out["mode"], "model": out["model"],
    }))];
    let text = out["answer"].as_str().unwrap_or_default().to_string();
    for span in s2t_core::answer::sentences(&text) {
        let piece = s2t_core::answer::slice(&text, span);
        events.push(
            Event::default()
                .event("answer")
                .json_data(json!({"text": piece})),
        );
    }
    events.push(Event::default().event("done").json_data(&out));
    let events: Vec<Result<Event, std::convert::Infallible>> = events
        .into_iter()
        .map(|e| Ok(e.unwrap_or_else(|_| Event::default().event("error"))))
        .collect();
    Ok(Sse::new(futures_util::stream::iter(events))
        .keep_alive(KeepAlive::default())
        .into_response())
}

#[derive(Debug, Deserialize)]
pub struct HistoryQuery {
    cursor: Option<String>,
    limit: Option<i64>,
}

pub async fn history(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Query(q): Query<HistoryQuery>,
) -> ApiResult<Json<Value>> {
    let limit = q.limit.unwrap_or(20);
    if !(1..=100).contains(&limit) {
        return Err(ApiError::bad_request("limit must be between 1 and 100"));
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
                "SELECT {ANSWER_COLUMNS} FROM s2t.answers
                  WHERE user_id = $1 AND ($2::timestamptz IS NULL OR (created_at, id) < ($2, $3))
                  ORDER BY created_at DESC, id DESC LIMIT $4"
            ),
            &[
                &user,
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
            created_at: r.get("created_at"),
            id: r.get("id"),
        }
        .encode()
    });
    Ok(Json(json!({
        "answers": page.iter().map(answer_json).collect::<Vec<_>>(),
        "next_cursor": next,
    })))
}
