//! The worker's realtime WebSocket server: gateways hand it sessions, it
//! transcribes them with the process's shared model and keeps every final
//! in PostgreSQL as it is committed.
//!
//! - [`serve`] registers the worker (its address and capacity) and beats
//!   every [`HEARTBEAT`] with the sessions it serves; the database picks a
//!   worker with room for each new session and ends the sessions of a
//!   worker that stopped beating.
//! - A connection starts with the gateway's [`Handoff`]: the one-time token
//!   the database knows the hash of ([`take_realtime_session`]), then the
//!   client's frames, relayed. The worker answers in the client protocol
//!   ([`s2t_core::realtime`]); the gateway relays that back unchanged.
//! - Decodes go to the shared [`DecodePool`]; the session keeps one in
//!   flight and asks again for what became due meanwhile.
//! - Audio is stored with each final and every [`STORE_EVERY`] in between,
//!   minutes are reserved ahead of the audio ([`GRANT_AHEAD_MS`]), and
//!   the session ends exactly once: `stop`, a protocol error and a used-up
//!   quota end it here (done, billed for the audio received); a dropped
//!   connection leaves it open for resume, and the database ends it 60 s
//!   after its last heartbeat if nobody resumes it.
//!
//! [`take_realtime_session`]: ../../../pg_s2t/src/sql/realtime.sql

use super::policy::{Action, PolicySettings, Word};
use super::pool::{DecodePool, Decoded, Request};
use super::session::SessionAudio;
use crate::asr::{Engine, TranscribeOptions};
use crate::pgtls::{self, Target};
use crate::runner::log;
use futures_util::{SinkExt, StreamExt};
use s2t_core::realtime::{
    ErrorCode, FinalWord, Handoff, ProtocolError, Sequencer, ServerMessage, Start, MAX_FRAME_BYTES,
    MAX_HANDOFF_BYTES,
};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{oneshot, watch};
use tokio_postgres::Client;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::Message;
use uuid::Uuid;

/// How often the worker beats (the database calls a worker live for 15 s).
pub const HEARTBEAT: Duration = Duration::from_secs(5);
/// Audio is stored at least this often, so a crash loses at most this much.
pub const STORE_EVERY: Duration = Duration::from_secs(2);
/// Minutes are reserved this far ahead of the audio received.
pub const GRANT_AHEAD_MS: i64 = 60_000;
/// A gateway must send its hand-off this soon after connecting.
pub const HANDOFF_WAIT: Duration = Duration::from_secs(10);
/// A `lag` message goes out this often.
pub const LAG_EVERY: Duration = Duration::from_secs(5);

#[derive(Debug, Clone)]
pub struct ServerSettings {
    pub database_url: String,
    pub name: String,
    pub listen: SocketAddr,
    /// The address gateways reach this worker at (`ws://host:port`);
    /// default: the listening address.
    pub advertise: Option<String>,
    pub capacity: usize,
    /// Decoding threads of the pool, and Whisper threads per decode.
    pub decoders: usize,
    pub threads_per_decode: i32,
    /// Beam size of finals (partials are greedy).
    pub final_beam: i32,
    /// Partials of sessions further behind than this are shed.
    pub shed_ms: i64,
    pub policy: PolicySettings,
}

struct Ctx {
    settings: ServerSettings,
    target: Target,
    engine: Arc<Engine>,
    pool: DecodePool,
    worker_id: Uuid,
    /// The sessions served now; a session taken again (resumed) stops the
    /// connection that had it.
    live: Mutex<HashMap<Uuid, Live>>,
    next_session: std::sync::atomic::AtomicU64,
}

/// The connection serving a session: its key, the signal that makes it let
/// go, and the turn a successor waits for.
struct Live {
    key: u64,
    stop: watch::Sender<bool>,
    turn: Arc<tokio::sync::Mutex<()>>,
}

fn sha256(token: &str) -> Vec<u8> {
    Sha256::digest(token.as_bytes()).to_vec()
}

/// Serve realtime sessions on `listener` until `stop` turns true, with
/// `engine` shared by every session.
pub async fn serve(
    settings: ServerSettings,
    listener: TcpListener,
    engine: Arc<Engine>,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let target = pgtls::target(&settings.database_url)?;
    let address = match &settings.advertise {
        Some(a) => a.clone(),
        None => format!("ws://{}", listener.local_addr()?),
    };
    let db = pgtls::connect(&target).await?;
    let worker_id: Uuid = db
        .query_one(
            "SELECT s2t.register_worker($1, $2, $3)",
            &[&settings.name, &address, &(settings.capacity as i32)],
        )
        .await?
        .get(0);
    log(
        "realtime_listening",
        serde_json::json!({"worker_id": worker_id, "address": address,
                           "capacity": settings.capacity, "decoders": settings.decoders}),
    );
    let decode_engine = engine.clone();
    let threads = settings.threads_per_decode;
    let final_beam = settings.final_beam;
    let pool = DecodePool::start(
        settings.decoders,
        settings.shed_ms,
        Arc::new(move |r: &Request, cancel: &Arc<AtomicBool>| {
            decode(&decode_engine, r, cancel, threads, final_beam)
        }),
    );
    let ctx = Arc::new(Ctx {
        settings,
        target,
        engine,
        pool,
        worker_id,
        live: Mutex::new(HashMap::new()),
        next_session: std::sync::atomic::AtomicU64::new(1),
    });
    let beat = tokio::spawn(heartbeat(ctx.clone(), db));
    let (detach_tx, detach_rx) = watch::channel(false);
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let ctx = ctx.clone();
                    let detach = detach_rx.clone();
                    tokio::spawn(async move {
                        if let Err(e) = connection(ctx, stream, detach).await {
                            log("realtime_connection_error",
                                serde_json::json!({"peer": peer.to_string(), "error": e.to_string()}));
                        }
                    });
                }
                Err(e) => {
                    log("realtime_accept_error", serde_json::json!({"error": e.to_string()}));
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            _ = stop.changed() => break,
        }
    }
    // Shutdown: no new sessions reach this worker; the open ones store
    // what they have and close so their clients resume elsewhere.
    let _ = detach_tx.send(true);
    beat.abort();
    if let Ok(db) = pgtls::connect(&ctx.target).await {
        let _ = db
            .execute("SELECT s2t.unregister_worker($1)", &[&ctx.worker_id])
            .await;
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while !ctx.live.lock().expect("live").is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

async fn heartbeat(ctx: Arc<Ctx>, mut db: Client) {
    loop {
        tokio::time::sleep(HEARTBEAT).await;
        let live: Vec<Uuid> = ctx.live.lock().expect("live").keys().copied().collect();
        let beat = db
            .query_one(
                "SELECT s2t.heartbeat_worker($1, $2)",
                &[&ctx.worker_id, &live],
            )
            .await;
        match beat {
            Ok(row) => {
                let ended: i32 = row.get(0);
                if ended > 0 {
                    log(
                        "realtime_orphans_ended",
                        serde_json::json!({"sessions": ended}),
                    );
                }
            }
            Err(e) => {
                log(
                    "realtime_heartbeat_failed",
                    serde_json::json!({"error": e.to_string()}),
                );
                if db.is_closed() {
                    if let Ok(c) = pgtls::connect(&ctx.target).await {
                        db = c;
                    }
                }
            }
        }
    }
}

/// One decode on the pool's thread: greedy for partials, the final beam
/// for finals, the encoder fitted to the window.
fn decode(
    engine: &Engine,
    r: &Request,
    cancel: &Arc<AtomicBool>,
    threads: i32,
    final_beam: i32,
) -> Result<Vec<Word>, String> {
    let opts = TranscribeOptions {
        beam_size: if r.action == Action::Partial || r.greedy {
            1
        } else {
            final_beam
        },
        prompt: r.prompt.clone(),
        cancel: Some(cancel.clone()),
        ..TranscribeOptions::new(r.language.clone(), threads)
    };
    let t = engine
        .transcribe(&r.window, &opts, |_| {})
        .map_err(|e| e.to_string())?;
    Ok(t.segments
        .into_iter()
        .flat_map(|s| s.words)
        .map(Word::from)
        .collect())
}

type Socket = tokio_tungstenite::WebSocketStream<TcpStream>;

/// How a session's loop ended.
enum Exit {
    /// `stop`: flush, end, `done`.
    Stop,
    /// A protocol error: flush, end, the error.
    Refused(ProtocolError),
    /// The monthly minutes ran out at the grant.
    Quota,
    /// The connection dropped: flush into the database, keep it open.
    Dropped,
    /// Taken over by a resumed connection, or the worker is shutting down.
    Detached(&'static str),
    /// Our side failed (the database); the finals sent are kept.
    Internal(String),
}

async fn send(ws: &mut Socket, seq: &mut Sequencer, message: ServerMessage) -> bool {
    ws.send(Message::text(seq.encode(message))).await.is_ok()
}

async fn close(ws: &mut Socket, code: u16, reason: &str) {
    let _ = ws
        .send(Message::Close(Some(CloseFrame {
            code: CloseCode::from(code),
            reason: reason.chars().take(100).collect::<String>().into(),
        })))
        .await;
    let _ = ws.flush().await;
    // The closing handshake: read (and drop) what the peer still sends
    // until its close, so our close is not lost to a reset of a socket
    // with unread data.
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        while let Some(Ok(m)) = ws.next().await {
            if matches!(m, Message::Close(_)) {
                break;
            }
        }
    })
    .await;
}

async fn refuse(ws: &mut Socket, seq: &mut Sequencer, e: ProtocolError) {
    send(ws, seq, e.to_message()).await;
    close(ws, e.code.close_code(), e.code.name()).await;
}

/// The first message: the gateway's hand-off.
async fn read_handoff(ws: &mut Socket) -> Result<Handoff, ProtocolError> {
    let first = tokio::time::timeout(HANDOFF_WAIT, ws.next())
        .await
        .map_err(|_| ProtocolError::new(ErrorCode::Unauthorized, "no hand-off arrived"))?;
    match first {
        Some(Ok(Message::Text(text))) if text.len() <= MAX_HANDOFF_BYTES => {
            serde_json::from_str(&text).map_err(|e| {
                ProtocolError::new(
                    ErrorCode::Unauthorized,
                    format!("the first message must be a gateway hand-off: {e}"),
                )
            })
        }
        _ => Err(ProtocolError::new(
            ErrorCode::Unauthorized,
            "the first message must be a gateway hand-off",
        )),
    }
}

/// What `take_realtime_session` gave.
struct Taken {
    recording_id: Uuid,
    language: String,
    sample_rate: i32,
    encoding: String,
    next_idx: i32,
    stored_ms: i64,
    granted_ms: i64,
    prompt: Option<String>,
}

async fn take(db: &Client, worker: Uuid, token: &str) -> Result<Taken, ProtocolError> {
    let row = db
        .query_opt(
            "SELECT recording_id, language, sample_rate, encoding, next_idx, stored_ms, granted_ms, prompt
               FROM s2t.take_realtime_session($1, $2)",
            &[&worker, &sha256(token)],
        )
        .await
        .map_err(|e| match e.code().map(|c| c.code()) {
            Some("S2N01") => ProtocolError::new(
                ErrorCode::Unauthorized,
                "unknown, used or expired session hand-off",
            ),
            _ => ProtocolError::new(ErrorCode::Internal, format!("taking the session: {e}")),
        })?
        .ok_or_else(|| ProtocolError::new(ErrorCode::Internal, "the session has no recording"))?;
    Ok(Taken {
        recording_id: row.get(0),
        language: row
            .get::<_, Option<String>>(1)
            .unwrap_or_else(|| "auto".into()),
        sample_rate: row.get(2),
        encoding: row.get(3),
        next_idx: row.get(4),
        stored_ms: row.get(5),
        granted_ms: row.get(6),
        prompt: row.get(7),
    })
}

async fn connection(
    ctx: Arc<Ctx>,
    stream: TcpStream,
    mut detach: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let _ = stream.set_nodelay(true);
    // Frames up to the gateway's limit are read, so the protocol's own
    // check refuses those over MAX_FRAME_BYTES with a proper error.
    let config = WebSocketConfig::default()
        .max_message_size(Some(4 * MAX_FRAME_BYTES + 1024))
        .max_frame_size(Some(4 * MAX_FRAME_BYTES + 1024));
    let mut ws = tokio_tungstenite::accept_async_with_config(stream, Some(config)).await?;
    let mut seq = Sequencer::default();
    let handoff = match read_handoff(&mut ws).await {
        Ok(h) => h,
        Err(e) => {
            refuse(&mut ws, &mut seq, e).await;
            return Ok(());
        }
    };
    let start = match handoff.start.clone().check() {
        Ok(s) => s,
        Err(e) => {
            refuse(&mut ws, &mut seq, e).await;
            return Ok(());
        }
    };
    let db = match pgtls::connect(&ctx.target).await {
        Ok(db) => db,
        Err(e) => {
            let e = ProtocolError::new(ErrorCode::Internal, format!("database: {e}"));
            refuse(&mut ws, &mut seq, e).await;
            return Ok(());
        }
    };
    let taken = match take(&db, ctx.worker_id, &handoff.token).await {
        Ok(t) => t,
        Err(e) => {
            refuse(&mut ws, &mut seq, e).await;
            return Ok(());
        }
    };
    let id = taken.recording_id;
    // A resumed session: the connection that had it (if any) lets go, and
    // this one waits until it has stored what it had, then continues from
    // what the database holds.
    let session = ctx
        .next_session
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let (mine_tx, mut mine) = watch::channel(false);
    let turn = {
        let mut map = ctx.live.lock().expect("live");
        let turn = map.get(&id).map(|l| l.turn.clone()).unwrap_or_default();
        if let Some(old) = map.insert(
            id,
            Live {
                key: session,
                stop: mine_tx,
                turn: turn.clone(),
            },
        ) {
            let _ = old.stop.send(true);
        }
        turn
    };
    let _turn = turn.lock_owned().await;
    let taken = match position(&db, taken).await {
        Ok(t) => t,
        Err(e) => {
            refuse(&mut ws, &mut seq, e).await;
            release(&ctx, id, session);
            return Ok(());
        }
    };
    let mut live = Session::new(&ctx, db, session, taken, &start);
    let exit = match live.check_format(&start, &ctx.engine) {
        Err(e) => Exit::Refused(e),
        Ok(()) => {
            live.run(&mut ws, &mut seq, &start, handoff, &mut mine, &mut detach)
                .await
        }
    };
    live.finish(&mut ws, &mut seq, exit).await;
    release(&ctx, id, session);
    Ok(())
}

/// Forget a connection's session unless a newer connection has it.
fn release(ctx: &Ctx, id: Uuid, session: u64) {
    let mut map = ctx.live.lock().expect("live");
    if map.get(&id).is_some_and(|l| l.key == session) {
        map.remove(&id);
    }
}

/// Where the session stands in the database now (after any connection
/// that had it stored its last audio and finals).
async fn position(db: &Client, mut t: Taken) -> Result<Taken, ProtocolError> {
    let row = db
        .query_one(
            "SELECT coalesce((SELECT max(idx) + 1 FROM s2t.segments WHERE recording_id = $1), 0)::int,
                    coalesce((SELECT greatest(size_bytes - 44, 0) FROM s2t.recording_audio WHERE recording_id = $1), 0)::bigint,
                    (SELECT reserved_seconds::bigint * 1000 FROM s2t.recordings WHERE id = $1)",
            &[&t.recording_id],
        )
        .await
        .map_err(|e| ProtocolError::new(ErrorCode::Internal, format!("reading the session: {e}")))?;
    let width = if t.encoding == "f32le" { 4 } else { 2 };
    t.next_idx = row.get(0);
    t.stored_ms = row.get::<_, i64>(1) / width * 1000 / i64::from(t.sample_rate);
    t.granted_ms = row.get::<_, Option<i64>>(2).unwrap_or(t.granted_ms);
    Ok(t)
}

struct Session<'a> {
    ctx: &'a Ctx,
    db: Client,
    key: u64,
    recording_id: Uuid,
    language: String,
    sample_rate: i32,
    encoding: String,
    next_idx: i32,
    offset_ms: i64,
    granted_ms: i64,
    /// The last committed words, the next decodes' prompt.
    committed: String,
    user_prompt: Option<String>,
    audio: Option<SessionAudio>,
    inflight: Option<(Action, usize, oneshot::Receiver<Decoded>)>,
    /// Session timeline ms up to which decodes have caught up.
    decoded_through_ms: i64,
    lag_ms: i64,
    last_store: Instant,
    started: Instant,
}

impl<'a> Session<'a> {
    fn new(ctx: &'a Ctx, db: Client, key: u64, t: Taken, start: &Start) -> Session<'a> {
        Session {
            ctx,
            db,
            key,
            recording_id: t.recording_id,
            // The recording's language: what the session was opened with.
            language: t.language,
            sample_rate: t.sample_rate,
            encoding: t.encoding,
            next_idx: t.next_idx,
            offset_ms: t.stored_ms,
            granted_ms: t.granted_ms,
            committed: t.prompt.unwrap_or_default(),
            user_prompt: start.prompt.clone(),
            audio: None,
            inflight: None,
            decoded_through_ms: t.stored_ms,
            lag_ms: 0,
            last_store: Instant::now(),
            started: Instant::now(),
        }
    }

    fn check_format(&self, start: &Start, engine: &Engine) -> Result<(), ProtocolError> {
        if start.sample_rate as i32 != self.sample_rate || start.encoding.name() != self.encoding {
            return Err(ProtocolError::new(
                ErrorCode::UnsupportedFormat,
                format!(
                    "this session's audio is {} at {} Hz; a resumed session keeps its format",
                    self.encoding, self.sample_rate
                ),
            ));
        }
        if !engine.supports(&self.language) {
            return Err(ProtocolError::new(
                ErrorCode::UnsupportedFormat,
                format!(
                    "no model on this worker serves language {:?}",
                    self.language
                ),
            ));
        }
        Ok(())
    }

    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// Ms on the session's timeline received so far.
    fn received_ms(&self) -> i64 {
        self.offset_ms + self.audio.as_ref().map_or(0, |a| a.received_ms() as i64)
    }

    fn prompt(&self) -> Option<String> {
        let tail: String = {
            let chars: Vec<char> = self.committed.chars().collect();
            chars[chars.len().saturating_sub(200)..].iter().collect()
        };
        match (&self.user_prompt, tail.trim().is_empty()) {
            (Some(p), true) => Some(p.clone()),
            (Some(p), false) => Some(format!("{p} {tail}")),
            (None, false) => Some(tail),
            (None, true) => None,
        }
    }

    async fn run(
        &mut self,
        ws: &mut Socket,
        seq: &mut Sequencer,
        start: &Start,
        handoff: Handoff,
        mine: &mut watch::Receiver<bool>,
        detach: &mut watch::Receiver<bool>,
    ) -> Exit {
        let ready = ServerMessage::Ready {
            recording_id: self.recording_id.to_string(),
            resume_token: handoff.resume_token.clone(),
        };
        if !send(ws, seq, ready).await {
            return Exit::Dropped;
        }
        if let Some(after) = start.last_idx.or(start.resume_token.as_ref().map(|_| -1)) {
            if let Err(e) = self.replay(ws, seq, after).await {
                return Exit::Internal(e);
            }
        }
        self.audio =
            match SessionAudio::new(start.clone(), self.ctx.settings.policy, self.offset_ms) {
                Ok(a) => Some(a),
                Err(e) => return Exit::Refused(e),
            };
        let mut tick = tokio::time::interval(Duration::from_millis(250));
        let mut last_lag = Instant::now();
        loop {
            tokio::select! {
                message = ws.next() => {
                    let now = self.now_ms();
                    match message {
                        Some(Ok(Message::Binary(bytes))) => {
                            if let Some(exit) = self.on_audio(&bytes, now).await {
                                return exit;
                            }
                            if let Err(e) = self.advance(ws, seq).await {
                                return Exit::Internal(e);
                            }
                        }
                        Some(Ok(Message::Text(text))) => {
                            self.audio_mut().on_message(now);
                            match s2t_core::realtime::parse_client_text(&text) {
                                Ok(s2t_core::realtime::ClientMessage::Stop) => return Exit::Stop,
                                Ok(s2t_core::realtime::ClientMessage::Commit) => {
                                    if let Err(e) = self.commit(ws, seq).await {
                                        return Exit::Internal(e);
                                    }
                                }
                                Ok(s2t_core::realtime::ClientMessage::Start(_)) => {
                                    return Exit::Refused(ProtocolError::new(
                                        ErrorCode::BadMessage,
                                        "\"start\" was already sent; send audio or \"stop\"",
                                    ))
                                }
                                Err(e) => return Exit::Refused(e),
                            }
                        }
                        Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
                        Some(Ok(Message::Close(_))) | None => return Exit::Dropped,
                        Some(Err(e)) => {
                            return match e {
                                tokio_tungstenite::tungstenite::Error::Capacity(_) => {
                                    Exit::Refused(ProtocolError::new(
                                        ErrorCode::BadFrame,
                                        format!("an audio frame may be at most {MAX_FRAME_BYTES} bytes"),
                                    ))
                                }
                                _ => Exit::Dropped,
                            }
                        }
                    }
                }
                answer = async { (&mut self.inflight.as_mut().expect("guarded").2).await },
                    if self.inflight.is_some() =>
                {
                    let (action, decoded, _) = self.inflight.take().expect("in flight");
                    let answer = answer.unwrap_or(Decoded::Failed("the decode pool stopped".into()));
                    let step = match self.on_decoded(ws, seq, action, decoded, answer, true).await {
                        Ok(()) => self.advance(ws, seq).await,
                        Err(e) => Err(e),
                    };
                    if let Err(e) = step {
                        return Exit::Internal(e);
                    }
                }
                _ = tick.tick() => {
                    let now = self.now_ms();
                    // A client waiting for a decode we owe it is not idle.
                    if self.inflight.is_none() {
                        if let Some(e) = self.audio_mut().idle(now) {
                            return Exit::Refused(e);
                        }
                    }
                    if self.last_store.elapsed() >= STORE_EVERY {
                        if let Err(e) = self.store(None).await {
                            return Exit::Internal(e);
                        }
                    }
                    if last_lag.elapsed() >= LAG_EVERY {
                        last_lag = Instant::now();
                        let seconds = (self.lag_ms.max(0) as f64 / 100.0).round() / 10.0;
                        if !send(ws, seq, ServerMessage::Lag { seconds }).await {
                            return Exit::Dropped;
                        }
                    }
                }
                _ = mine.changed() => return Exit::Detached("the session was resumed on another connection"),
                _ = detach.changed() => return Exit::Detached("the worker is shutting down; resume with your resume_token"),
            }
        }
    }

    fn audio_mut(&mut self) -> &mut SessionAudio {
        self.audio.as_mut().expect("audio after start")
    }

    /// One binary frame: the grant, then the audio path.
    async fn on_audio(&mut self, bytes: &[u8], now: u64) -> Option<Exit> {
        let width = if self.encoding == "f32le" { 4 } else { 2 };
        let frame_ms = (bytes.len() / width) as i64 * 1000 / self.sample_rate as i64;
        let through = self.received_ms() + frame_ms;
        if through > self.granted_ms - GRANT_AHEAD_MS / 2 {
            match self
                .db
                .query_one(
                    "SELECT s2t.extend_realtime_grant($1, $2, $3)",
                    &[
                        &self.recording_id,
                        &self.ctx.worker_id,
                        &(through + GRANT_AHEAD_MS),
                    ],
                )
                .await
            {
                Ok(row) => self.granted_ms = row.get(0),
                Err(e) => return Some(Exit::Internal(format!("reserving minutes: {e}"))),
            }
            if through > self.granted_ms {
                return Some(Exit::Quota);
            }
        }
        if let Err(e) = self.audio_mut().on_frame(bytes, now) {
            return Some(Exit::Refused(e));
        }
        None
    }

    /// Ask the pool for what the policy made due, if nothing is in flight;
    /// a final that a speculative decode already heard is committed at
    /// once instead.
    async fn advance(&mut self, ws: &mut Socket, seq: &mut Sequencer) -> Result<(), String> {
        while self.inflight.is_none() {
            let Some(action) = self.audio_mut().take_due() else {
                return Ok(());
            };
            match self.audio_mut().take_speculation(action) {
                Some((words, decoded)) => {
                    self.on_decoded(ws, seq, action, decoded, Decoded::Speculated(words), true)
                        .await?
                }
                None => self.submit(action),
            }
        }
        Ok(())
    }

    fn submit(&mut self, action: Action) {
        let prompt = self.prompt();
        let received = self.received_ms();
        let audio = self.audio.as_ref().expect("audio after start");
        let window = audio.window(action).to_vec();
        let decoded = window.len();
        let request = Request {
            session: self.key,
            action,
            window,
            language: self.language.clone(),
            prompt,
            lag_ms: received - self.decoded_through_ms,
            greedy: false,
        };
        self.inflight = Some((action, decoded, self.ctx.pool.submit(request)));
    }

    /// Apply a decode's answer: send the partial or the final (when
    /// `connected`), store a final with the audio before it.
    async fn on_decoded(
        &mut self,
        ws: &mut Socket,
        seq: &mut Sequencer,
        action: Action,
        decoded: usize,
        answer: Decoded,
        connected: bool,
    ) -> Result<(), String> {
        let words = match answer {
            Decoded::Words {
                words,
                queued_ms,
                decode_ms,
                greedy,
            } => {
                if action != Action::Partial {
                    // One line per final: where its latency went.
                    log(
                        "realtime_final_decoded",
                        serde_json::json!({"recording_id": self.recording_id,
                            "speculative": action == Action::Speculate,
                            "window_ms": decoded as u64 * 1000 / 16_000,
                            "queued_ms": queued_ms, "decode_ms": decode_ms, "greedy": greedy}),
                    );
                }
                words
            }
            Decoded::Speculated(words) => words,
            // A shed partial: the next decode carries its words.
            Decoded::Shed => return Ok(()),
            Decoded::Failed(e) if matches!(action, Action::Partial | Action::Speculate) => {
                log(
                    "realtime_decode_failed",
                    serde_json::json!({"recording_id": self.recording_id, "error": e}),
                );
                return Ok(());
            }
            Decoded::Failed(e) => return Err(format!("decoding a final: {e}")),
        };
        let audio = self.audio.as_mut().expect("audio after start");
        let start = audio.window_start_ms();
        let outcome = audio.apply(action, words, decoded);
        self.decoded_through_ms = start + (decoded as i64 * 1000 / 16_000);
        self.lag_ms = self.received_ms() - self.decoded_through_ms;
        if !outcome.commit.is_empty() {
            let text = join(&outcome.commit);
            let message = ServerMessage::Final {
                idx: self.next_idx,
                start_ms: outcome.commit[0].start_ms,
                end_ms: outcome.commit.last().map_or(0, |w| w.end_ms),
                text: text.clone(),
                words: outcome
                    .commit
                    .iter()
                    .map(|w| FinalWord {
                        word: w.text.clone(),
                        start_ms: w.start_ms,
                        end_ms: w.end_ms,
                        probability: w.probability,
                    })
                    .collect(),
            };
            self.store(Some(&message)).await?;
            self.next_idx += 1;
            self.committed.push(' ');
            self.committed.push_str(&text);
            if self.committed.len() > 2000 {
                let cut = self.committed.len() - 1000;
                let cut = (cut..self.committed.len())
                    .find(|i| self.committed.is_char_boundary(*i))
                    .unwrap_or(0);
                self.committed.drain(..cut);
            }
            if connected {
                send(ws, seq, message).await;
            }
        }
        if connected && !outcome.partial.is_empty() {
            let message = ServerMessage::Partial {
                text: join(&outcome.partial),
                start_ms: outcome.partial[0].start_ms,
            };
            send(ws, seq, message).await;
        }
        Ok(())
    }

    /// Store the audio not yet stored and, if given, a final, in one call.
    async fn store(&mut self, final_: Option<&ServerMessage>) -> Result<(), String> {
        let bytes = self
            .audio
            .as_mut()
            .map(|a| a.take_unsaved())
            .unwrap_or_default();
        self.last_store = Instant::now();
        let segment = match final_ {
            Some(ServerMessage::Final {
                idx,
                start_ms,
                end_ms,
                text,
                words,
            }) => Some(serde_json::json!({
                "idx": idx, "start_ms": start_ms, "end_ms": end_ms, "text": text, "words": words,
            })),
            _ => None,
        };
        if bytes.is_empty() && segment.is_none() {
            return Ok(());
        }
        self.db
            .execute(
                "SELECT s2t.add_realtime_final($1, $2, $3, $4)",
                &[&self.recording_id, &self.ctx.worker_id, &bytes, &segment],
            )
            .await
            .map(|_| ())
            .map_err(|e| format!("storing the session: {e}"))
    }

    /// Send again the finals after `after` (a resumed client's last one).
    async fn replay(
        &mut self,
        ws: &mut Socket,
        seq: &mut Sequencer,
        after: i32,
    ) -> Result<(), String> {
        let rows = self
            .db
            .query(
                "SELECT idx::int, start_ms::int, end_ms::int, text, coalesce(words, '[]'::jsonb)
                   FROM s2t.segments WHERE recording_id = $1 AND idx > $2 ORDER BY idx",
                &[&self.recording_id, &after],
            )
            .await
            .map_err(|e| format!("reading the finals: {e}"))?;
        for row in rows {
            let words: serde_json::Value = row.get(4);
            let message = ServerMessage::Final {
                idx: row.get(0),
                start_ms: i64::from(row.get::<_, i32>(1)),
                end_ms: i64::from(row.get::<_, i32>(2)),
                text: row.get(3),
                words: serde_json::from_value(words).unwrap_or_default(),
            };
            send(ws, seq, message).await;
        }
        Ok(())
    }

    /// Wait for the decode in flight, then decode what speech is left as a
    /// final (`last`: the stream ends too): every word the client said is
    /// committed.
    async fn settle(
        &mut self,
        ws: &mut Socket,
        seq: &mut Sequencer,
        connected: bool,
        last: bool,
    ) -> Result<(), String> {
        if self.audio.is_none() {
            return Ok(());
        }
        if let Some((action, decoded, answer)) = self.inflight.take() {
            let answer = answer
                .await
                .unwrap_or(Decoded::Failed("the decode pool stopped".into()));
            self.on_decoded(ws, seq, action, decoded, answer, connected)
                .await?;
        }
        let audio = self.audio_mut();
        let due = if last { audio.finish() } else { audio.commit() };
        if let Some(action) = due {
            if let Some((words, decoded)) = self.audio_mut().take_speculation(action) {
                let answer = Decoded::Speculated(words);
                return self
                    .on_decoded(ws, seq, action, decoded, answer, connected)
                    .await;
            }
            self.submit(action);
            let (action, decoded, answer) = self.inflight.take().expect("just submitted");
            let answer = answer
                .await
                .unwrap_or(Decoded::Failed("the decode pool stopped".into()));
            self.on_decoded(ws, seq, action, decoded, answer, connected)
                .await?;
        }
        Ok(())
    }

    async fn flush(
        &mut self,
        ws: &mut Socket,
        seq: &mut Sequencer,
        connected: bool,
    ) -> Result<(), String> {
        self.settle(ws, seq, connected, true).await?;
        self.store(None).await
    }

    /// A client `commit`: the finals of what was said, then `committed`.
    async fn commit(&mut self, ws: &mut Socket, seq: &mut Sequencer) -> Result<(), String> {
        self.settle(ws, seq, true, false).await?;
        let end_ms = self.received_ms();
        send(ws, seq, ServerMessage::Committed { end_ms }).await;
        Ok(())
    }

    async fn end(&mut self, failure: Option<&str>) -> Result<(), String> {
        self.db
            .execute(
                "SELECT s2t.end_realtime_session($1, $2, NULL, $3)",
                &[&self.recording_id, &self.ctx.worker_id, &failure],
            )
            .await
            .map(|_| ())
            .map_err(|e| format!("ending the session: {e}"))
    }

    async fn done(&mut self, ws: &mut Socket, seq: &mut Sequencer) {
        let row = self
            .db
            .query_opt(
                "SELECT coalesce(duration_ms, 0)::bigint, billed_seconds::bigint
                   FROM s2t.recordings WHERE id = $1",
                &[&self.recording_id],
            )
            .await;
        let (duration_ms, billed_seconds) = match row {
            Ok(Some(r)) => (r.get(0), r.get(1)),
            _ => (self.received_ms(), 0),
        };
        send(
            ws,
            seq,
            ServerMessage::Done {
                recording_id: self.recording_id.to_string(),
                duration_ms,
                billed_seconds,
            },
        )
        .await;
    }

    async fn finish(&mut self, ws: &mut Socket, seq: &mut Sequencer, exit: Exit) {
        let why = match &exit {
            Exit::Stop => "stop".to_string(),
            Exit::Refused(e) => format!("refused: {}", e.code.name()),
            Exit::Quota => "quota".into(),
            Exit::Dropped => "dropped".into(),
            Exit::Detached(_) => "detached".into(),
            Exit::Internal(e) => format!("internal: {e}"),
        };
        log(
            "realtime_session_exit",
            serde_json::json!({"recording_id": self.recording_id, "exit": why,
                               "received_ms": self.received_ms()}),
        );
        let outcome = match exit {
            Exit::Stop => match self.flush(ws, seq, true).await {
                Ok(()) => self.end(None).await.map(|_| None),
                Err(e) => Err(e),
            },
            Exit::Quota => match self.flush(ws, seq, true).await {
                Ok(()) => self.end(None).await.map(|_| {
                    Some(ProtocolError::new(
                        ErrorCode::QuotaExceeded,
                        "the monthly minutes are used up; every final so far is saved",
                    ))
                }),
                Err(e) => Err(e),
            },
            Exit::Refused(e) => {
                let flushed = self.flush(ws, seq, true).await;
                let ended = if self.received_ms() > 0 {
                    self.end(None).await
                } else {
                    self.end(Some(&format!("refused: {}", e.message))).await
                };
                flushed.and(ended).map(|_| Some(e))
            }
            Exit::Dropped => {
                // Kept open for a resume; nothing can be sent.
                if let Err(e) = self.flush(ws, seq, false).await {
                    log(
                        "realtime_flush_failed",
                        serde_json::json!({"recording_id": self.recording_id, "error": e}),
                    );
                }
                return;
            }
            Exit::Detached(why) => {
                let _ = self.flush(ws, seq, true).await;
                send(
                    ws,
                    seq,
                    ServerMessage::Error {
                        code: ErrorCode::Internal,
                        message: why.into(),
                    },
                )
                .await;
                close(ws, 1012, "resume").await;
                return;
            }
            Exit::Internal(e) => Err(e),
        };
        match outcome {
            Ok(None) => {
                self.done(ws, seq).await;
                close(ws, 1000, "done").await;
            }
            Ok(Some(e)) => {
                send(ws, seq, e.to_message()).await;
                self.done(ws, seq).await;
                close(ws, e.code.close_code(), e.code.name()).await;
            }
            Err(e) => {
                log(
                    "realtime_session_failed",
                    serde_json::json!({"recording_id": self.recording_id, "error": e}),
                );
                let e = ProtocolError::new(
                    ErrorCode::Internal,
                    "the server failed; the finals sent are saved, resume with your resume_token",
                );
                refuse(ws, seq, e).await;
            }
        }
    }
}

fn join(words: &[Word]) -> String {
    let mut text = String::new();
    for w in words {
        if !text.is_empty() {
            text.push(' ');
        }
        text.push_str(&w.text);
    }
    text
}
