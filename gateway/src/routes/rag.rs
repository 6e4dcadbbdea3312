//! `POST /rag/ask` and `GET /rag/history`: answers from the caller's own
//! transcripts, counted against the plan's monthly questions, kept per
//! user; `?stream=true` (or `Accept: text/event-stream`) sends them as
//! Server-Sent Events.
//!
//! Extractive answers are the extension's `s2t.ask`. When a chat model is
//! configured (`S2T_LLM_URL`), the model is given `s2t.ask_context`'s
//! passages and prompt; its answer is checked (`s2t_core::answer::check`):
//! markers naming no passage are removed, unsupported sentences flagged,
//! and an answer citing nothing valid, a refusal, an error or a timeout
//! gives the extractive answer instead, saying why in `fallback`.

use super::search::time;
use super::{AuthUser, Query};
use crate::cursor::Cursor;
use crate::db::{begin_as, client};
use crate::error::{ApiError, ApiResult};
use crate::llm::{Llm, LlmError};
use crate::AppState;
use axum::extract::State;
use axum::http::{header, HeaderMap};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures_util::StreamExt;
use s2t_core::answer::Passage;
use serde::Deserialize;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use tokio::sync::mpsc;
use uuid::Uuid;

#[derive(Debug, Deserialize)]
pub struct AskBody {
    question: Option<String>,
    recording_id: Option<String>,
    since: Option<String>,
    until: Option<String>,
    k: Option<i64>,
    lang: Option<String>,
    mode: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Mode {
    /// Generative when a model is configured, else extractive.
    Auto,
    Extractive,
    Generative,
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
    mode: Mode,
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
    let mode = match b.mode.as_deref() {
        None | Some("auto") => Mode::Auto,
        Some("extractive") => Mode::Extractive,
        Some("generative") => Mode::Generative,
        Some(_) => {
            errors.insert(
                "mode".into(),
                "must be auto, extractive or generative".into(),
            );
            Mode::Auto
        }
    };
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
        mode,
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
    let checks: Value = r.get("checks");
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
        "flagged": checks.get("flagged").cloned().unwrap_or_else(|| json!([])),
        "removed_markers": checks.get("removed_markers").cloned().unwrap_or_else(|| json!([])),
        "created_at": created.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
    })
}

const ANSWER_COLUMNS: &str =
    "id, question, answer, citations, mode, model, found, fallback, scope, created_at, checks";

/// What a generated answer came to.
enum Generated {
    Checked {
        answer: String,
        citations: Vec<s2t_core::answer::Citation>,
        flagged: Vec<s2t_core::answer::Flag>,
        removed: Vec<usize>,
    },
    /// Replaced by the extractive answer; `error` when the model failed
    /// (rather than answered badly).
    Fallback { reason: String, error: bool },
}

type Events = Option<mpsc::Sender<Event>>;

fn event(name: &str, data: &Value) -> Event {
    Event::default().event(name).data(data.to_string())
}

async fn send(events: &Events, name: &str, data: Value) {
    if let Some(tx) = events {
        // A client that left is no reason to stop: the answer is stored.
        let _ = tx.send(event(name, &data)).await;
    }
}

/// The model's answer to the prompt of `context`, streamed to `events`
/// as it comes, then checked against `passages`.
async fn generate(
    llm: &Llm,
    max_tokens: u32,
    question: &str,
    context: &Value,
    passages: &[Passage],
    events: &Events,
) -> Generated {
    use s2t_core::answer::{best_span, check, cite, generated_citations, NOT_FOUND_REPLY};
    // What the answer may cite, highlighted for the question; the done
    // event carries the checked citations.
    let offered: Vec<_> = (0..passages.len())
        .map(|i| cite(i + 1, passages, i, best_span(&passages[i].text, question)))
        .collect();
    send(
        events,
        "citations",
        json!({"citations": with_links(&json!(offered)), "found": true, "mode": "generative",
               "model": llm.model, "final": false}),
    )
    .await;
    let fail = |e: LlmError| Generated::Fallback {
        reason: e.to_string(),
        error: true,
    };
    let mut stream = match llm.stream(&context["messages"], max_tokens).await {
        Ok(s) => Box::pin(s),
        Err(e) => return fail(e),
    };
    let mut text = String::new();
    while let Some(piece) = stream.next().await {
        match piece {
            Ok(t) => {
                send(events, "answer", json!({"text": t})).await;
                text.push_str(&t);
            }
            Err(e) => return fail(e),
        }
    }
    if text
        .trim()
        .trim_end_matches('.')
        .eq_ignore_ascii_case(NOT_FOUND_REPLY)
    {
        return Generated::Fallback {
            reason: "the model found no answer in the passages".into(),
            error: false,
        };
    }
    let texts: Vec<&str> = passages.iter().map(|p| p.text.as_str()).collect();
    let checked = check(&text, &texts);
    let citations = generated_citations(&checked, passages);
    if citations.is_empty() {
        return Generated::Fallback {
            reason: "the model's answer cited no retrieved passage".into(),
            error: false,
        };
    }
    Generated::Checked {
        answer: checked.answer,
        citations,
        flagged: checked.flagged,
        removed: checked.removed,
    }
}

/// An answer as the extension or the check gives it, ready to store.
struct Answer {
    answer: String,
    citations: Value,
    mode: &'static str,
    model: Option<String>,
    found: bool,
    fallback: Option<String>,
    flagged: Value,
    removed: Value,
}

impl Answer {
    fn extractive(a: &Value, fallback: Option<String>) -> Answer {
        Answer {
            answer: a["answer"].as_str().unwrap_or_default().to_string(),
            citations: with_links(&a["citations"]),
            mode: "extractive",
            model: a["model"].as_str().map(str::to_string),
            found: a["found"].as_bool().unwrap_or(false),
            fallback,
            flagged: json!([]),
            removed: json!([]),
        }
    }
}

async fn store(
    state: &AppState,
    user: Uuid,
    p: &Params,
    scope: &Value,
    a: &Answer,
) -> ApiResult<Value> {
    let mut c = client(&state.pool).await?;
    let tx = begin_as(&mut c, user).await?;
    let row = insert(&tx, user, p, scope, a).await?;
    tx.commit().await?;
    Ok(answer_json(&row))
}

async fn insert(
    tx: &tokio_postgres::Transaction<'_>,
    user: Uuid,
    p: &Params,
    scope: &Value,
    a: &Answer,
) -> ApiResult<tokio_postgres::Row> {
    Ok(tx
        .query_one(
            &format!(
                "INSERT INTO s2t.answers (user_id, question, answer, citations, mode, model, found, fallback, scope, checks)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10) RETURNING {ANSWER_COLUMNS}"
            ),
            &[
                &user, &p.question, &a.answer, &a.citations, &a.mode, &a.model, &a.found,
                &a.fallback, scope, &json!({"flagged": a.flagged, "removed_markers": a.removed}),
            ],
        )
        .await?)
}

/// An answer's events: its citations, its text sentence by sentence (when
/// not already streamed), then the whole answer.
fn answer_events(out: &Value, text: bool) -> Vec<(&'static str, Value)> {
    let mut events = vec![(
        "citations",
        json!({"citations": out["citations"], "found": out["found"], "mode": out["mode"],
               "model": out["model"], "final": true}),
    )];
    if text {
        let answer = out["answer"].as_str().unwrap_or_default();
        for span in s2t_core::answer::sentences(answer) {
            let piece = s2t_core::answer::slice(answer, span);
            events.push(("answer", json!({"text": piece})));
        }
    }
    events.push(("done", out.clone()));
    events
}

fn sse(events: impl futures_util::Stream<Item = Event> + Send + 'static) -> Response {
    Sse::new(events.map(Ok::<_, std::convert::Infallible>))
        .keep_alive(KeepAlive::default())
        .into_response()
}

/// The events a task sends, until it drops its sender.
fn received(rx: mpsc::Receiver<Event>) -> impl futures_util::Stream<Item = Event> {
    futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|e| (e, rx)) })
}

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
    let llm = match p.mode {
        Mode::Extractive => None,
        _ => state.llm.clone(),
    };
    let scope =
        json!({"recording_id": p.recording_id, "since": p.since, "until": p.until, "k": p.k});
    let mut c = client(&state.pool).await?;
    let tx = begin_as(&mut c, user).await?;
    // Counted in the transaction that answers: a question that fails here
    // is not counted.
    tx.query_one("SELECT s2t.admit_question($1)", &[&user])
        .await?;
    let Some(llm) = llm else {
        let a: Value = tx
            .query_one(
                "SELECT s2t.ask($1::text, $2::int, $3::uuid, $4::timestamptz, $5::timestamptz, $6::text)",
                &[&p.question, &p.k, &p.recording_id, &p.since, &p.until, &lang],
            )
            .await?
            .get(0);
        let fallback = (p.mode == Mode::Generative)
            .then(|| "no chat model is configured (S2T_LLM_URL)".to_string());
        let answer = Answer::extractive(&a, fallback);
        let row = insert(&tx, user, &p, &scope, &answer).await?;
        tx.commit().await?;
        let out = answer_json(&row);
        if !stream {
            return Ok(Json(out).into_response());
        }
        let events = answer_events(&out, true)
            .into_iter()
            .map(|(name, data)| event(name, &data));
        return Ok(sse(futures_util::stream::iter(events)));
    };
    // Generative: the passages and the prompt, and the extractive answer
    // to fall back on, from one search.
    let context: Value = tx
        .query_one(
            "SELECT s2t.ask_context($1::text, $2::int, $3::uuid, $4::timestamptz, $5::timestamptz)",
            &[&p.question, &p.k, &p.recording_id, &p.since, &p.until],
        )
        .await?
        .get(0);
    let extracted: Value = tx
        .query_one(
            "SELECT s2t._extract_answer($1::text, $2::jsonb, $3::text, 3)",
            &[&p.question, &context["passages"], &lang],
        )
        .await?
        .get(0);
    tx.commit().await?;
    drop(c); // no connection is held while the model writes
    let mut extractive = extracted.clone();
    extractive["model"] = extracted["scored_by"].clone();
    let passages: Vec<Passage> = serde_json::from_value(context["passages"].clone())
        .map_err(|e| ApiError::internal(format!("ask_context's passages: {e}")))?;
    let (etx, erx) = mpsc::channel(64);
    let events: Events = stream.then_some(etx);
    let max_tokens = state.config.llm_max_tokens;
    // The answer is finished and stored even if the client leaves.
    let task = tokio::spawn(async move {
        let answer = if !extractive["found"].as_bool().unwrap_or(false) {
            Answer::extractive(
                &extractive,
                Some("nothing relevant was retrieved, so the model was not asked".into()),
            )
        } else {
            match generate(&llm, max_tokens, &p.question, &context, &passages, &events).await {
                Generated::Checked {
                    answer,
                    citations,
                    flagged,
                    removed,
                } => Answer {
                    answer,
                    citations: with_links(&json!(citations)),
                    mode: "generative",
                    model: Some(llm.model.clone()),
                    found: true,
                    fallback: None,
                    flagged: json!(flagged
                        .iter()
                        .map(|f| json!({"sentence": f.sentence, "support": f.support}))
                        .collect::<Vec<_>>()),
                    removed: json!(removed),
                },
                Generated::Fallback { reason, error } => {
                    let name = if error { "error" } else { "fallback" };
                    send(
                        &events,
                        name,
                        json!({"message": reason, "fallback": "extractive"}),
                    )
                    .await;
                    Answer::extractive(&extractive, Some(reason))
                }
            }
        };
        let streamed = answer.mode == "generative";
        match store(&state, user, &p, &scope, &answer).await {
            Ok(out) => {
                for (name, data) in answer_events(&out, !streamed) {
                    send(&events, name, data).await;
                }
                Ok(out)
            }
            Err(e) => {
                send(
                    &events,
                    "error",
                    json!({"message": "the answer could not be stored"}),
                )
                .await;
                Err(e)
            }
        }
    });
    if stream {
        return Ok(sse(received(erx)));
    }
    let out = task
        .await
        .map_err(|e| ApiError::internal(format!("the answer task failed: {e}")))??;
    Ok(Json(out).into_response())
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
