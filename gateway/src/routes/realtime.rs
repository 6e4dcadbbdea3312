//! `GET /ws/s2t`, realtime transcription, and `POST /ws/ticket`.
//!
//! The gateway only authenticates, admits and relays: it reads the client's
//! `start`, opens (or resumes) the session in the database, which admits
//! the recording against the quota and picks a worker with room, then
//! connects to that worker, hands it the session with a one-time token and
//! relays frames both ways unchanged. Errors before the relay are sent in
//! the client protocol, then the socket closes with the code that
//! [`ErrorCode::close_code`] documents.

use super::{AuthUser, Caller};
use crate::error::ApiError;
use crate::AppState;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Query, State};
use axum::response::Response;
use axum::Json;
use futures_util::{SinkExt, StreamExt};
use s2t_core::realtime::{
    parse_client_text, ClientMessage, ErrorCode, Handoff, ProtocolError, Sequencer, ServerMessage,
    StartRequest, MAX_FRAME_BYTES,
};
use serde::Deserialize;
use serde_json::{json, Value};
use std::time::Duration;
use tokio_tungstenite::tungstenite::Message as WorkerMessage;
use uuid::Uuid;

/// A client must send `start` this soon after connecting.
const START_WAIT: Duration = Duration::from_secs(10);
/// Connecting to the worker may take this long.
const WORKER_CONNECT: Duration = Duration::from_secs(5);

/// How long a WebSocket ticket is good for.
pub const TICKET_TTL: Duration = Duration::from_secs(30);

/// `POST /ws/ticket`: a one-time ticket for a browser's WebSocket, stored
/// (as its SHA-256) in the database, so any gateway redeems it.
pub async fn ticket(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
) -> Result<Json<Value>, ApiError> {
    let ticket = crate::tokens::new_refresh_token();
    let mut client = crate::db::client(&state.pool).await?;
    let tx = crate::db::begin_as(&mut client, user).await?;
    tx.query_one(
        "SELECT s2t.issue_ws_ticket($1, $2, make_interval(secs => $3::float8))",
        &[
            &user,
            &crate::tokens::token_hash(&ticket),
            &(TICKET_TTL.as_secs() as f64),
        ],
    )
    .await?;
    tx.commit().await?;
    Ok(Json(json!({
        "ticket": ticket,
        "expires_in": TICKET_TTL.as_secs(),
        "url": format!("/ws/s2t?ticket={ticket}"),
    })))
}

/// The user a ticket was issued to, spending it.
async fn redeem(state: &AppState, ticket: &str) -> Result<Uuid, ProtocolError> {
    let internal = |e: ApiError| ProtocolError::new(ErrorCode::Internal, e.problem.detail);
    let client = crate::db::client(&state.pool).await.map_err(internal)?;
    let user: Option<Uuid> = client
        .query_one(
            "SELECT s2t.redeem_ws_ticket($1)",
            &[&crate::tokens::token_hash(ticket)],
        )
        .await
        .map_err(|e| internal(e.into()))?
        .get(0);
    user.ok_or_else(|| {
        ProtocolError::new(
            ErrorCode::Unauthorized,
            "unknown, used or expired WebSocket ticket",
        )
    })
}

#[derive(Deserialize)]
pub struct WsQuery {
    ticket: Option<String>,
}

pub async fn ws(
    State(state): State<AppState>,
    Query(query): Query<WsQuery>,
    headers: axum::http::HeaderMap,
    caller: Result<Caller, ApiError>,
    upgrade: WebSocketUpgrade,
) -> Response {
    // The header when there is one (a bad header is not rescued by a
    // ticket), else the ticket; either way the verdict is sent after the
    // upgrade, where a browser can read it.
    let who = match query.ticket.as_deref() {
        Some(ticket) if !headers.contains_key(axum::http::header::AUTHORIZATION) => {
            redeem(&state, ticket).await
        }
        _ => caller
            .map(|c| c.user)
            .map_err(|e| ProtocolError::new(ErrorCode::Unauthorized, e.problem.detail)),
    };
    upgrade
        // Larger frames than the protocol's limit reach the worker, which
        // refuses them in the protocol; far larger ones stop here.
        .max_message_size(4 * MAX_FRAME_BYTES)
        .max_frame_size(4 * MAX_FRAME_BYTES)
        .on_upgrade(move |socket| session(state, socket, who))
}

async fn send(socket: &mut WebSocket, seq: &mut Sequencer, message: ServerMessage) {
    let _ = socket.send(Message::text(seq.encode(message))).await;
}

async fn refuse(socket: &mut WebSocket, seq: &mut Sequencer, e: ProtocolError) {
    send(socket, seq, e.to_message()).await;
    let frame = CloseFrame {
        code: e.code.close_code(),
        reason: e.code.name().into(),
    };
    close_client(socket, Some(frame)).await;
}

/// Close the client's socket with `frame` and wait (at most 2 s, reading
/// and dropping what it still sends) for its close in reply. Dropping the
/// socket at once while the client still sends would reset the connection,
/// and a reset makes the client's kernel discard what it had not read yet:
/// the last finals, the error, the close code.
pub(crate) async fn close_client(socket: &mut WebSocket, frame: Option<CloseFrame>) {
    if socket.send(Message::Close(frame)).await.is_err() {
        return;
    }
    let linger = async {
        while let Some(Ok(m)) = socket.recv().await {
            if matches!(m, Message::Close(_)) {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(2), linger).await;
}

/// The client's `start`, the first message.
async fn read_start(socket: &mut WebSocket) -> Result<StartRequest, ProtocolError> {
    let first = tokio::time::timeout(START_WAIT, socket.recv())
        .await
        .map_err(|_| {
            ProtocolError::new(
                ErrorCode::IdleTimeout,
                format!(
                    "send \"start\" within {} s of connecting",
                    START_WAIT.as_secs()
                ),
            )
        })?;
    match first {
        Some(Ok(Message::Text(text))) => match parse_client_text(text.as_str())? {
            ClientMessage::Start(start) => {
                start.clone().check()?;
                Ok(start)
            }
            ClientMessage::Stop | ClientMessage::Commit => Err(ProtocolError::new(
                ErrorCode::BadMessage,
                "the first message must be \"start\"",
            )),
        },
        Some(Ok(Message::Binary(_))) => Err(ProtocolError::new(
            ErrorCode::BadMessage,
            "audio before \"start\": send the start message first",
        )),
        _ => Err(ProtocolError::new(
            ErrorCode::BadMessage,
            "the first message must be \"start\"",
        )),
    }
}

/// A database refusal in the protocol's terms.
fn refusal(e: &tokio_postgres::Error, resuming: bool) -> ProtocolError {
    let Some(db) = e.as_db_error() else {
        return ProtocolError::new(ErrorCode::Internal, "the database is unavailable; retry");
    };
    let code = match db.code().code() {
        "S2B01" => ErrorCode::Busy,
        "S2Q01" | "S2Q02" => ErrorCode::QuotaExceeded,
        "S2N01" if resuming => ErrorCode::ResumeFailed,
        "S2S01" => ErrorCode::Unauthorized,
        "S2V01" => ErrorCode::BadMessage,
        _ => {
            tracing_log(&format!("opening a realtime session: {e}"));
            return ProtocolError::new(ErrorCode::Internal, "the session could not be opened");
        }
    };
    let mut message = db.message().to_string();
    if code == ErrorCode::Busy {
        message.push_str("; retry in 5 s");
    }
    ProtocolError::new(code, message)
}

fn tracing_log(what: &str) {
    eprintln!("{}", json!({"event": "realtime_error", "error": what}));
}

/// Where a session is to be served: its recording and the worker.
struct Assigned {
    recording: Uuid,
    worker: Uuid,
    address: String,
}

/// Open or resume: the recording and the worker to connect to. `moving`
/// names a worker this gateway could not reach: the session (opened or
/// resumed a moment ago under `resume`) goes to another one.
async fn admit(
    state: &AppState,
    user: Uuid,
    start: &StartRequest,
    handoff: &str,
    resume: &str,
    moving: Option<Uuid>,
) -> Result<Assigned, ProtocolError> {
    let mut client = crate::db::client(&state.pool).await.map_err(|_| {
        ProtocolError::new(
            ErrorCode::Busy,
            "the gateway's database pool is busy; retry in 5 s",
        )
    })?;
    let tx = crate::db::begin_as(&mut client, user)
        .await
        .map_err(|e| ProtocolError::new(ErrorCode::Unauthorized, e.problem.detail))?;
    let (handoff_hash, resume_hash) = (
        crate::tokens::token_hash(handoff),
        crate::tokens::token_hash(resume),
    );
    // The client's own resume (an unknown token is its error) or a move.
    let client_resume = start.resume_token.is_some();
    let row = if client_resume || moving.is_some() {
        tx.query_one(
            "SELECT recording_id, worker_id, worker_address
               FROM s2t.resume_realtime_session($1, $2, $3, $4)",
            &[&user, &resume_hash, &handoff_hash, &moving],
        )
        .await
    } else {
        let language = start.language.clone().unwrap_or_else(|| "auto".into());
        tx.query_one(
            "SELECT recording_id, worker_id, worker_address
               FROM s2t.open_realtime_session($1, $2, $3, $4, '{}'::jsonb, $5, $6)",
            &[
                &user,
                &language,
                &(start.sample_rate as i32),
                &start.encoding,
                &handoff_hash,
                &resume_hash,
            ],
        )
        .await
    }
    .map_err(|e| refusal(&e, client_resume))?;
    tx.commit().await.map_err(|e| refusal(&e, client_resume))?;
    Ok(Assigned {
        recording: row.get(0),
        worker: row.get(1),
        address: row.get(2),
    })
}

async fn session(state: AppState, mut socket: WebSocket, who: Result<Uuid, ProtocolError>) {
    let mut seq = Sequencer::default();
    let user = match who {
        Ok(u) => u,
        Err(e) => return refuse(&mut socket, &mut seq, e).await,
    };
    let start = match read_start(&mut socket).await {
        Ok(s) => s,
        Err(e) => return refuse(&mut socket, &mut seq, e).await,
    };
    match connect_worker(&state, user, start).await {
        Ok(worker) => relay(socket, worker, seq).await,
        Err(e) => refuse(&mut socket, &mut seq, e).await,
    }
}

pub(crate) type WorkerSocket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Workers tried for one session before the client is told to retry: a
/// worker that died still looks live for up to 15 s, so the session moves
/// on to the next one at once.
const WORKER_ATTEMPTS: usize = 3;

/// Admit the session (open or resume), connect to its worker and hand it
/// over; what comes back on the socket is the worker's protocol. A worker
/// that does not answer is named to the database, which moves the session
/// to another live worker with room.
pub(crate) async fn connect_worker(
    state: &AppState,
    user: Uuid,
    start: StartRequest,
) -> Result<WorkerSocket, ProtocolError> {
    let resume = start
        .resume_token
        .clone()
        .unwrap_or_else(crate::tokens::new_refresh_token);
    let mut moving = None;
    for _ in 0..WORKER_ATTEMPTS {
        // A fresh hand-off each time: one sent to an unreachable worker is
        // never reused.
        let handoff = crate::tokens::new_refresh_token();
        let at = admit(state, user, &start, &handoff, &resume, moving).await?;
        match hand_over(&at.address, handoff, &resume, &start).await {
            Some(worker) => return Ok(worker),
            None => {
                tracing_log(&format!(
                    "worker {} ({}) for recording {} did not answer; moving the session",
                    at.worker, at.address, at.recording
                ));
                moving = Some(at.worker);
            }
        }
    }
    Err(ProtocolError::new(
        ErrorCode::Busy,
        "no worker for this session answered; retry in 5 s",
    ))
}

/// Connect to a worker and give it the session, or None if it does not
/// answer in time.
async fn hand_over(
    address: &str,
    token: String,
    resume: &str,
    start: &StartRequest,
) -> Option<WorkerSocket> {
    let (mut worker, _) =
        tokio::time::timeout(WORKER_CONNECT, tokio_tungstenite::connect_async(address))
            .await
            .ok()?
            .ok()?;
    let hello = Handoff {
        token,
        resume_token: resume.to_string(),
        start: start.clone(),
    };
    let hello = serde_json::to_string(&hello).expect("a hand-off serialises");
    worker.send(WorkerMessage::text(hello)).await.ok()?;
    Some(worker)
}

#[derive(Deserialize)]
struct Numbered {
    seq: u64,
}

/// After a failed send: the worker's last messages and its close, passed
/// on. True if it closed (the client has its close too).
async fn drain(client: &mut WebSocket, worker: &mut WorkerSocket, last_seq: &mut u64) -> bool {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    while let Ok(Some(Ok(m))) = tokio::time::timeout_at(deadline, worker.next()).await {
        match m {
            WorkerMessage::Text(t) => {
                if let Ok(n) = serde_json::from_str::<Numbered>(t.as_str()) {
                    *last_seq = n.seq;
                }
                let _ = client.send(Message::text(t.as_str())).await;
            }
            WorkerMessage::Close(frame) => {
                let frame = frame.map(|f| CloseFrame {
                    code: f.code.into(),
                    reason: f.reason.as_str().into(),
                });
                close_client(client, frame).await;
                return true;
            }
            _ => {}
        }
    }
    false
}

/// Frames both ways until one side closes. The worker numbers its messages;
/// an error of our own continues its numbering.
async fn relay(mut client: WebSocket, mut worker: WorkerSocket, seq: Sequencer) {
    let mut last_seq = 0u64;
    loop {
        tokio::select! {
            from_client = client.recv() => match from_client {
                Some(Ok(Message::Binary(b))) => {
                    if worker.send(WorkerMessage::Binary(b)).await.is_err() {
                        // The worker may have closed on purpose: pass on what it said.
                        if drain(&mut client, &mut worker, &mut last_seq).await { return; }
                        break;
                    }
                }
                Some(Ok(Message::Text(t))) => {
                    if worker.send(WorkerMessage::text(t.as_str())).await.is_err() {
                        if drain(&mut client, &mut worker, &mut last_seq).await { return; }
                        break;
                    }
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                Some(Ok(Message::Close(_))) | None | Some(Err(_)) => {
                    // The worker keeps the session open for a resume.
                    let _ = worker.close(None).await;
                    return;
                }
            },
            from_worker = worker.next() => match from_worker {
                Some(Ok(WorkerMessage::Text(t))) => {
                    if let Ok(n) = serde_json::from_str::<Numbered>(t.as_str()) {
                        last_seq = n.seq;
                    }
                    if client.send(Message::text(t.as_str())).await.is_err() {
                        let _ = worker.close(None).await;
                        return;
                    }
                }
                Some(Ok(WorkerMessage::Close(frame))) => {
                    let frame = frame.map(|f| CloseFrame { code: f.code.into(), reason: f.reason.as_str().into() });
                    close_client(&mut client, frame).await;
                    return;
                }
                Some(Ok(_)) => {}
                Some(Err(_)) | None => break,
            },
        }
    }
    // The worker went away without closing: tell the client how to go on.
    let mut seq = Sequencer::after(last_seq.max(seq.last()));
    let e = ProtocolError::new(
        ErrorCode::Internal,
        "the worker serving this session stopped; the finals sent are saved, resume with your resume_token",
    );
    refuse(&mut client, &mut seq, e).await;
}
