//! `s2t-llm`: a local chat model behind the OpenAI chat-completions API
//! (`POST /v1/chat/completions`, streamed or not, `GET /v1/models`,
//! `GET /healthz`), so that the gateway's generative answers can run on
//! this machine. Any other server that speaks the API serves as well.
//! A separate binary: whisper.cpp and llama.cpp both carry ggml and cannot
//! be linked into one program.

mod api;
mod engine;

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use clap::Parser;
use engine::{Engine, Job, Out, Refused, Settings};
use futures_util::StreamExt;
use serde_json::{json, Value};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};
use tokio::sync::mpsc;

#[derive(Debug, Parser)]
#[command(name = "s2t-llm", version, about = "pg_s2t's local chat model server")]
struct Args {
    /// The GGUF model file.
    #[arg(long, env = "S2T_LLM_MODEL_FILE")]
    model: PathBuf,
    /// The name clients use for it (`model` in requests); the file's stem
    /// when not given.
    #[arg(long, env = "S2T_LLM_SERVED_NAME")]
    name: Option<String>,
    #[arg(long, env = "S2T_LLM_LISTEN", default_value = "127.0.0.1:8091")]
    listen: SocketAddr,
    /// Context size in tokens (prompt and answer together).
    #[arg(long, env = "S2T_LLM_CTX", default_value_t = 4096)]
    ctx: u32,
    /// Threads for llama.cpp; 0 means one per core.
    #[arg(long, env = "S2T_LLM_THREADS", default_value_t = 0)]
    threads: usize,
    /// Requests that may wait for the model; more get 503.
    #[arg(long, env = "S2T_LLM_QUEUE", default_value_t = 8)]
    queue: usize,
    /// Answer length when a request gives none, and the most it may ask.
    #[arg(long, default_value_t = 256)]
    default_tokens: u32,
    #[arg(long, default_value_t = 1024)]
    max_tokens: u32,
    /// A bearer token clients must send; none means no check (listen on
    /// loopback only then).
    #[arg(long, env = "S2T_LLM_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
}

struct AppInner {
    engine: Engine,
    name: String,
    api_key: Option<String>,
    default_tokens: u32,
    max_tokens: u32,
    seq: AtomicU64,
}

type AppState = Arc<AppInner>;

fn err(status: StatusCode, message: &str, kind: &str, param: Option<&str>) -> Response {
    (status, Json(api::error_body(message, kind, param, None))).into_response()
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

async fn healthz(State(s): State<AppState>) -> Json<Value> {
    Json(json!({"status": "ok", "model": s.name}))
}

async fn models(State(s): State<AppState>) -> Json<Value> {
    Json(json!({"object": "list", "data": [
        {"id": s.name, "object": "model", "created": 0, "owned_by": "s2t-llm"}]}))
}

async fn chat(State(s): State<AppState>, headers: HeaderMap, body: axum::body::Bytes) -> Response {
    if let Some(key) = &s.api_key {
        let given = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        if given != Some(key.as_str()) {
            return err(
                StatusCode::UNAUTHORIZED,
                "missing or wrong API key (Authorization: Bearer ...)",
                "invalid_request_error",
                None,
            );
        }
    }
    let req: api::ChatRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return err(
                StatusCode::BAD_REQUEST,
                &format!("the body is not a chat completion request: {e}"),
                "invalid_request_error",
                None,
            )
        }
    };
    if let Some(m) = req.model.as_deref().filter(|m| *m != s.name) {
        return err(
            StatusCode::NOT_FOUND,
            &format!(
                "the model {m:?} does not exist here; this server has {:?}",
                s.name
            ),
            "invalid_request_error",
            Some("model"),
        );
    }
    let checked = match api::check(req, s.default_tokens, s.max_tokens) {
        Ok(c) => c,
        Err(e) => {
            return err(
                StatusCode::BAD_REQUEST,
                &e.message,
                "invalid_request_error",
                e.param,
            )
        }
    };
    let (tx, mut rx) = mpsc::channel::<Out>(64);
    let job = Job {
        messages: checked.messages,
        max_tokens: checked.max_tokens,
        stop: checked.stop,
        out: tx,
    };
    match s.engine.submit(job) {
        Ok(()) => {}
        Err(Refused::Busy) => {
            let mut r = err(
                StatusCode::SERVICE_UNAVAILABLE,
                "the model is busy; try again shortly",
                "server_error",
                None,
            );
            r.headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from_static("2"));
            return r;
        }
        Err(Refused::Stopped) => {
            return err(
                StatusCode::INTERNAL_SERVER_ERROR,
                "the model thread has stopped",
                "server_error",
                None,
            )
        }
    }
    let id = format!("chatcmpl-{}", s.seq.fetch_add(1, Ordering::Relaxed));
    let created = now();
    // The first message tells whether the request was accepted (a prompt
    // too long for the context is a 400 even when streaming).
    let prompt_tokens = match rx.recv().await {
        Some(Out::Started { prompt_tokens }) => prompt_tokens,
        Some(Out::Failed(m)) => {
            return err(
                StatusCode::BAD_REQUEST,
                &m,
                "invalid_request_error",
                Some("messages"),
            )
        }
        _ => {
            return err(
                StatusCode::INTERNAL_SERVER_ERROR,
                "the model ended without an answer",
                "server_error",
                None,
            )
        }
    };
    if !checked.stream {
        let mut text = String::new();
        loop {
            match rx.recv().await {
                Some(Out::Text(t)) => text.push_str(&t),
                Some(Out::Done {
                    finish,
                    completion_tokens,
                }) => {
                    return Json(api::completion(
                        &id,
                        &s.name,
                        created,
                        &text,
                        finish,
                        prompt_tokens,
                        completion_tokens,
                    ))
                    .into_response()
                }
                Some(Out::Failed(m)) => {
                    return err(StatusCode::INTERNAL_SERVER_ERROR, &m, "server_error", None)
                }
                Some(Out::Started { .. }) | None => {
                    return err(
                        StatusCode::INTERNAL_SERVER_ERROR,
                        "the model stopped mid-answer",
                        "server_error",
                        None,
                    )
                }
            }
        }
    }
    let name = s.name.clone();
    let first = api::chunk(
        &id,
        &name,
        created,
        json!({"role": "assistant", "content": ""}),
        None,
    );
    let head = futures_util::stream::iter([Ok::<_, std::convert::Infallible>(
        Event::default().data(first.to_string()),
    )]);
    // Dropping this stream (the client went away) closes the channel, and
    // the engine stops decoding at its next token.
    let body = futures_util::stream::unfold(Some(rx), move |rx| {
        let (id, name) = (id.clone(), name.clone());
        async move {
            let mut rx = rx?;
            let event = match rx.recv().await {
                Some(Out::Text(t)) => {
                    api::chunk(&id, &name, created, json!({"content": t}), None).to_string()
                }
                Some(Out::Done { finish, .. }) => {
                    let last = api::chunk(&id, &name, created, json!({}), Some(finish));
                    return Some((
                        vec![
                            Ok(Event::default().data(last.to_string())),
                            Ok(Event::default().data("[DONE]")),
                        ],
                        None,
                    ));
                }
                Some(Out::Failed(m)) => {
                    let e = api::error_body(&m, "server_error", None, None);
                    return Some((vec![Ok(Event::default().data(e.to_string()))], None));
                }
                Some(Out::Started { .. }) | None => return None,
            };
            Some((vec![Ok(Event::default().data(event))], Some(rx)))
        }
    })
    .flat_map(futures_util::stream::iter);
    Sse::new(head.chain(body)).into_response()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if !args.model.is_file() {
        anyhow::bail!(
            "no model file at {} (make models installs SmolLM2)",
            args.model.display()
        );
    }
    let threads = match args.threads {
        0 => std::thread::available_parallelism().map_or(2, |n| n.get()),
        n => n,
    };
    let name = args.name.clone().unwrap_or_else(|| {
        args.model
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "local".into())
    });
    let started = std::time::Instant::now();
    let engine = Engine::start(Settings {
        model: args.model.clone(),
        ctx: args.ctx,
        threads: threads as i32,
        queue: args.queue.max(1),
    })?;
    eprintln!(
        "s2t-llm: {} loaded in {:.1} s; serving {name:?} on http://{}/v1",
        args.model.display(),
        started.elapsed().as_secs_f32(),
        args.listen
    );
    let state = Arc::new(AppInner {
        engine,
        name,
        api_key: args.api_key.filter(|k| !k.is_empty()),
        default_tokens: args.default_tokens,
        max_tokens: args.max_tokens.max(1),
        seq: AtomicU64::new(1),
    });
    let app = Router::new()
        .route("/healthz", get(healthz))
        .route("/v1/models", get(models))
        .route("/v1/chat/completions", post(chat))
        .layer(axum::extract::DefaultBodyLimit::max(1024 * 1024))
        .with_state(state);
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}
