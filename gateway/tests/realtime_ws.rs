//! Realtime transcription end to end: a real WebSocket client
//! (tokio-tungstenite) talks to the gateway, which admits the session in
//! PostgreSQL and relays it to a real worker process serving realtime with
//! the tiny.en model. Speech is streamed at real-time pace in 100 ms frames.

mod common;

use common::{stack, Stack};
use futures_util::{SinkExt, StreamExt};
use reqwest::StatusCode;
use s2t_tests::{librivox, wer};
use serde_json::{json, Value};
use std::process::{Child, Stdio};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

/// A worker process serving realtime on a loopback port (and batch),
/// killed when dropped (also when a test fails).
struct Worker(Child);

impl Worker {
    /// SIGKILL, as a crash.
    fn crash(&mut self) {
        self.0.kill().unwrap();
        self.0.wait().unwrap();
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn realtime_worker(s: &Stack) -> Worker {
    let bin = std::env::var("S2T_WORKER_BIN").expect("make test sets S2T_WORKER_BIN");
    let child = s2t_tests::worker_command(bin.as_ref(), &s.db)
        .args([
            "--realtime-listen",
            "127.0.0.1:0",
            "--realtime-capacity",
            "4",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the worker");
    Worker(child)
}

/// Wait until `n` live workers are registered.
async fn registered(s: &Stack, n: i64) {
    for _ in 0..600 {
        let live = s
            .count("SELECT count(*) FROM s2t.workers WHERE heartbeat_at > now() - interval '15 seconds'")
            .await;
        if live >= n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("no realtime worker registered within 60 s");
}

/// What the client saw: every JSON message, and the close code.
#[derive(Debug, Default)]
struct Seen {
    messages: Vec<Value>,
    close: Option<u16>,
}

impl Seen {
    fn of(&self, kind: &str) -> Vec<&Value> {
        self.messages.iter().filter(|m| m["type"] == kind).collect()
    }
    fn finals_text(&self) -> String {
        let texts: Vec<&str> = self
            .of("final")
            .iter()
            .map(|m| m["text"].as_str().unwrap())
            .collect();
        texts.join(" ")
    }
    fn error_code(&self) -> Option<&str> {
        self.of("error").first().and_then(|m| m["code"].as_str())
    }
    /// Refused with `code`, then closed with `close`.
    fn refused(&self, close: u16, code: &str) {
        assert_eq!(
            (self.close, self.error_code()),
            (Some(close), Some(code)),
            "{self:?}"
        );
    }
}

type Sink = futures_util::stream::SplitSink<
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
    Message,
>;

struct Client {
    sink: Sink,
    events: mpsc::UnboundedReceiver<Result<Value, Option<u16>>>,
    reader: tokio::task::JoinHandle<()>,
    seen: Seen,
}

impl Client {
    /// Connect to `/ws/s2t` with `auth` as the Authorization header (or
    /// none) and `query` appended to the URL.
    async fn connect(s: &Stack, auth: Option<&str>, query: &str) -> Client {
        Client::connect_to(&s.base, auth, query).await
    }

    /// [`Client::connect`] to the gateway at `base`.
    async fn connect_to(base: &str, auth: Option<&str>, query: &str) -> Client {
        let url = format!("{}/ws/s2t{query}", base.replace("http://", "ws://"));
        let mut request = url.into_client_request().unwrap();
        if let Some(a) = auth {
            request
                .headers_mut()
                .insert("authorization", a.parse().unwrap());
        }
        let (ws, _) = tokio_tungstenite::connect_async(request)
            .await
            .expect("websocket upgrade");
        let (sink, mut stream) = ws.split();
        let (tx, events) = mpsc::unbounded_channel();
        let reader = tokio::spawn(async move {
            while let Some(m) = stream.next().await {
                match m {
                    Ok(Message::Text(t)) => {
                        let _ = tx.send(Ok(
                            serde_json::from_str(t.as_str()).expect("server messages are JSON")
                        ));
                    }
                    Ok(Message::Close(frame)) => {
                        let _ = tx.send(Err(frame.map(|f| u16::from(f.code))));
                        return;
                    }
                    Ok(_) => {}
                    Err(_) => break,
                }
            }
            let _ = tx.send(Err(None));
        });
        Client {
            sink,
            events,
            reader,
            seen: Seen::default(),
        }
    }

    /// Drop the TCP connection without a close frame (a network failure).
    fn drop_connection(self) {
        self.reader.abort();
        drop(self.sink);
    }

    async fn text(&mut self, v: Value) {
        self.sink.send(Message::text(v.to_string())).await.unwrap();
    }

    async fn start(&mut self, extra: Value) -> Value {
        let mut start = json!({"type": "start", "language": "en", "sample_rate": 48000, "encoding": "pcm_s16le"});
        start
            .as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        self.text(start).await;
        self.next().await.expect("ready")
    }

    /// The next message, or None at the close.
    async fn next(&mut self) -> Option<Value> {
        match tokio::time::timeout(Duration::from_secs(60), self.events.recv()).await {
            Ok(Some(Ok(v))) => {
                self.seen.messages.push(v.clone());
                Some(v)
            }
            Ok(Some(Err(code))) => {
                self.seen.close = code;
                None
            }
            Ok(None) => None,
            Err(_) => panic!("nothing from the server for 60 s: {:?}", self.seen),
        }
    }

    /// Take in what has arrived without waiting.
    fn drain(&mut self) {
        while let Ok(e) = self.events.try_recv() {
            match e {
                Ok(v) => self.seen.messages.push(v),
                Err(code) => self.seen.close = code,
            }
        }
    }

    /// Stream `pcm` (s16le at 48 kHz) in 100 ms frames, `speed` times real time.
    async fn stream(&mut self, pcm: &[u8], speed: f64) {
        let mut tick = tokio::time::interval(Duration::from_secs_f64(0.1 / speed));
        for frame in pcm.chunks(9600) {
            tick.tick().await;
            if self
                .sink
                .send(Message::binary(frame.to_vec()))
                .await
                .is_err()
            {
                break;
            }
            self.drain();
        }
    }

    /// Read until the server closes.
    async fn until_close(mut self) -> Seen {
        while self.next().await.is_some() {}
        self.seen
    }
}

/// `file` (16 kHz WAV) as 48 kHz s16le samples, as a browser sends.
fn pcm48(files: &[&std::path::Path], pause_s: f32) -> Vec<u8> {
    let dir = common::temp_dir("rt-audio");
    let pause = dir.join("pause.wav");
    s2t_tests::silence_wav(&pause, pause_s);
    let mut args: Vec<String> = Vec::new();
    for (i, f) in files.iter().enumerate() {
        if i > 0 {
            args.push(pause.display().to_string());
        }
        args.push(f.display().to_string());
    }
    let out = dir.join("out.raw");
    args.extend(["-t", "raw", "-e", "signed", "-b", "16", "-c", "1"].map(String::from));
    args.push(out.display().to_string());
    args.extend(["rate", "48000"].map(String::from));
    let refs: Vec<&str> = args.iter().map(String::as_str).collect();
    s2t_tests::run("sox", &refs);
    let bytes = std::fs::read(&out).unwrap();
    std::fs::remove_dir_all(&dir).ok();
    bytes
}

async fn batch_text(s: &Stack, token: &str, wav: &std::path::Path) -> String {
    let form = reqwest::multipart::Form::new().text("language", "en").part(
        "file",
        reqwest::multipart::Part::bytes(std::fs::read(wav).unwrap())
            .file_name("a.wav")
            .mime_str("audio/wav")
            .unwrap(),
    );
    let res = s
        .http
        .post(s.url("/v1/audio/transcriptions"))
        .bearer_auth(token)
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    res.json::<Value>().await.unwrap()["text"]
        .as_str()
        .unwrap()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn speech_streams_as_partials_then_finals_saved_as_segments_and_stop_flushes_the_last_words()
{
    let s = stack(50 << 20, false).await;
    let worker = realtime_worker(&s);
    registered(&s, 1).await;
    let (token, _) = s.user("rita").await;
    let sentences = librivox();
    let (first, second) = (&sentences[0], &sentences[1]);
    let pcm = pcm48(&[&first.0, &second.0], 1.5);
    let reference = format!("{} {}", first.1, second.1);

    let mut c = Client::connect(&s, Some(&format!("Bearer {token}")), "").await;
    let ready = c.start(json!({"interim": true})).await;
    assert_eq!(ready["type"], "ready", "{ready}");
    assert_eq!(ready["seq"], 1);
    let id = ready["recording_id"].as_str().unwrap().to_string();
    assert!(ready["resume_token"].as_str().unwrap().len() >= 40);
    c.stream(&pcm, 1.0).await;
    // Stop right after the last word: only the flush can commit it.
    c.text(json!({"type": "stop"})).await;
    let seen = c.until_close().await;
    drop(worker);

    assert_eq!(seen.close, Some(1000), "{seen:?}");
    let seqs: Vec<u64> = seen
        .messages
        .iter()
        .map(|m| m["seq"].as_u64().unwrap())
        .collect();
    assert!(
        seqs.windows(2).all(|w| w[1] == w[0] + 1),
        "seq counts up by one: {seqs:?}"
    );
    let first_final = seen
        .messages
        .iter()
        .position(|m| m["type"] == "final")
        .expect("a final");
    assert!(
        seen.messages[..first_final]
            .iter()
            .any(|m| m["type"] == "partial"),
        "a partial before the first final: {seen:?}"
    );
    let finals = seen.of("final");
    assert!(
        finals.len() >= 2,
        "the pause commits the first sentence: {finals:?}"
    );
    for (i, f) in finals.iter().enumerate() {
        assert_eq!(f["idx"], i as i64);
        assert!(!f["words"].as_array().unwrap().is_empty());
        assert!(f["start_ms"].as_i64() <= f["end_ms"].as_i64());
    }
    let done = seen.of("done");
    assert_eq!(done.len(), 1, "{seen:?}");
    assert_eq!(done[0]["recording_id"], id.as_str());
    let audio_ms = (pcm.len() / 2 * 1000 / 48_000) as i64;
    assert!(
        (done[0]["duration_ms"].as_i64().unwrap() - audio_ms).abs() <= 100,
        "{} vs {audio_ms}",
        done[0]
    );
    assert_eq!(
        done[0]["billed_seconds"].as_i64().unwrap(),
        (audio_ms + 999) / 1000
    );
    // The last words came only from the flush at stop: the second
    // sentence's end is in the finals.
    let streamed = seen.finals_text();
    let last_word = second.1.split_whitespace().last().unwrap().to_lowercase();
    assert!(
        streamed.to_lowercase().contains(&last_word),
        "{streamed:?} lacks {last_word:?}"
    );

    // Saved as it went: the segments are the finals, the audio is kept.
    let rows = s
        .db
        .admin
        .query(
            "SELECT idx, text FROM s2t.segments WHERE recording_id = $1::text::uuid ORDER BY idx",
            &[&id],
        )
        .await
        .unwrap();
    assert_eq!(rows.len(), finals.len());
    for (row, f) in rows.iter().zip(&finals) {
        assert_eq!(row.get::<_, String>(1), f["text"].as_str().unwrap());
    }
    let (status, stored): (String, i64) = {
        let r = s
            .db
            .admin
            .query_one(
                "SELECT r.status::text, a.size_bytes FROM s2t.recordings r JOIN s2t.recording_audio a ON a.recording_id = r.id WHERE r.id = $1::text::uuid",
                &[&id],
            )
            .await
            .unwrap();
        (r.get(0), r.get(1))
    };
    assert_eq!(status, "done");
    assert_eq!(
        stored,
        44 + pcm.len() as i64,
        "every byte received is stored after a WAV header"
    );
    let wav = s.get(&format!("/recordings/{id}/audio"), &token).await;
    assert_eq!(wav.status(), StatusCode::OK);
    let wav = wav.bytes().await.unwrap();
    assert_eq!(&wav[..4], b"RIFF");
    assert_eq!(
        u32::from_le_bytes(wav[40..44].try_into().unwrap()) as usize,
        pcm.len(),
        "the header has the sizes"
    );

    // As good as batch on the same audio (the batch job runs on a worker
    // started for it).
    let batch_worker = realtime_worker(&s);
    let dir = common::temp_dir("rt-batch");
    let wav_path = dir.join("same.wav");
    std::fs::write(&wav_path, &wav).unwrap();
    let batch = batch_text(&s, &token, &wav_path).await;
    drop(batch_worker);
    let (w_stream, w_batch) = (wer(&reference, &streamed), wer(&reference, &batch));
    eprintln!("streamed WER {w_stream:.3}: {streamed}\nbatch WER {w_batch:.3}: {batch}");
    assert!(
        w_stream <= w_batch + 0.02,
        "streamed {w_stream:.3} against batch {w_batch:.3}"
    );
}

/// The user id behind `token`.
async fn user_id(s: &Stack, token: &str) -> uuid::Uuid {
    let (status, me) = s.get_json("/me", token).await;
    assert_eq!(status, StatusCode::OK);
    me["id"].as_str().unwrap().parse().unwrap()
}

/// 48 kHz s16le silence.
fn silence(seconds: f32) -> Vec<u8> {
    vec![0u8; (seconds * 48_000.0) as usize * 2]
}

/// The first final, received already or read now (None at the close).
async fn until_final(c: &mut Client) -> Option<Value> {
    c.drain();
    if let Some(f) = c.seen.of("final").first() {
        return Some((*f).clone());
    }
    loop {
        match c.next().await {
            Some(m) if m["type"] == "final" => return Some(m),
            Some(_) => {}
            None => return None,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_connection_resumes_the_same_recording_and_no_final_is_lost_or_repeated() {
    let s = stack(50 << 20, false).await;
    let worker = realtime_worker(&s);
    registered(&s, 1).await;
    let (token, _) = s.user("remy").await;
    let sentences = librivox();
    let mut part1 = pcm48(&[&sentences[0].0], 0.0);
    part1.extend(silence(1.0));
    let part2 = pcm48(&[&sentences[1].0], 0.0);
    let bearer = format!("Bearer {token}");

    let mut c = Client::connect(&s, Some(&bearer), "").await;
    let ready = c.start(json!({})).await;
    let (id, resume) = (ready["recording_id"].clone(), ready["resume_token"].clone());
    c.stream(&part1, 1.0).await;
    until_final(&mut c)
        .await
        .expect("the pause commits a final");
    c.drain();
    let before: Vec<Value> = c.seen.of("final").into_iter().cloned().collect();
    let first_seen = format!("{:?}", c.seen);
    // The connection drops: no close frame, no stop.
    c.drop_connection();
    tokio::time::sleep(Duration::from_millis(500)).await;

    // Resume, saying we have none of the finals: they are sent again.
    let mut c = Client::connect(&s, Some(&bearer), "").await;
    let ready = c
        .start(json!({"resume_token": resume, "last_idx": -1}))
        .await;
    if ready["type"] != "ready" {
        let row = s
            .db
            .admin
            .query_one(
                "SELECT r.status::text, coalesce(r.failure_reason, ''), r.duration_ms::int, x.ended, (x.ended_at - x.opened_at)::text, (now() - x.heartbeat_at)::text
                   FROM s2t.recordings r JOIN s2t.realtime_sessions x ON x.recording_id = r.id WHERE r.id = $1::text::uuid",
                &[&id.as_str().unwrap()],
            )
            .await
            .unwrap();
        let row: (String, String, i32, bool, Option<String>, Option<String>) = (
            row.get(0),
            row.get(1),
            row.get(2),
            row.get(3),
            row.get(4),
            row.get(5),
        );
        panic!("{ready}: the recording is {row:?} after {first_seen}");
    }
    assert_eq!(ready["recording_id"], id);
    assert_eq!(ready["resume_token"], resume);
    for f in &before {
        let again = c.next().await.expect("a replayed final");
        assert_eq!((&again["idx"], &again["text"]), (&f["idx"], &f["text"]));
    }
    c.stream(&part2, 1.0).await;
    c.text(json!({"type": "stop"})).await;
    let seen = c.until_close().await;
    drop(worker);
    assert_eq!(seen.close, Some(1000), "{seen:?}");
    let finals = seen.of("final");
    let idxs: Vec<i64> = finals.iter().map(|f| f["idx"].as_i64().unwrap()).collect();
    assert_eq!(
        idxs,
        (0..idxs.len() as i64).collect::<Vec<_>>(),
        "no final repeated or skipped"
    );
    assert!(finals.len() > before.len(), "the second part added finals");
    let saved = s
        .count(&format!(
            "SELECT count(*) FROM s2t.segments WHERE recording_id = '{}'",
            id.as_str().unwrap()
        ))
        .await;
    assert_eq!(saved, finals.len() as i64);
    let total_ms = ((part1.len() + part2.len()) / 2 * 1000 / 48_000) as i64;
    let done = seen.of("done")[0].clone();
    assert!(
        (done["duration_ms"].as_i64().unwrap() - total_ms).abs() <= 200,
        "{done} vs {total_ms}"
    );
    let text = seen.finals_text();
    let reference = format!("{} {}", sentences[0].1, sentences[1].1);
    assert!(wer(&reference, &text) <= 0.25, "{text:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_credentials_and_bad_input_get_precise_errors_and_close_codes() {
    let s = stack(50 << 20, false).await;
    let worker = realtime_worker(&s);
    registered(&s, 1).await;
    let (token, _) = s.user("bea").await;
    let bearer = format!("Bearer {token}");
    // Someone else speaks on the same worker the whole time.
    let (good_token, _) = s.user("gus").await;
    let sentence = librivox().swap_remove(2);
    let mut good = Client::connect(&s, Some(&format!("Bearer {good_token}")), "").await;
    let good = tokio::spawn(async move {
        assert_eq!(good.start(json!({})).await["type"], "ready");
        good.stream(&pcm48(&[&sentence.0], 0.0), 1.0).await;
        good.stream(&silence(10.0), 1.0).await;
        good.text(json!({"type": "stop"})).await;
        (sentence.1, good.until_close().await)
    });

    // No credential, a forged one, a bad ticket: refused before any audio.
    for (auth, query) in [
        (None, ""),
        (
            Some("Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.forged"),
            "",
        ),
        (None, "?ticket=made-up"),
    ] {
        let seen = Client::connect(&s, auth, query).await.until_close().await;
        assert_eq!(seen.close, Some(4401), "{auth:?} {query}: {seen:?}");
        assert_eq!(seen.error_code(), Some("unauthorized"));
    }
    // A ticket works once, at any gateway: this one issues it, a second
    // gateway on the same database redeems it.
    let spool = common::temp_dir("second-gateway");
    let second = common::serve(common::test_config(&s.db, &spool, 50 << 20))
        .await
        .expect("a second gateway");
    let (status, t) = s.post_json("/ws/ticket", json!({}), Some(&token)).await;
    assert_eq!(status, StatusCode::OK, "{t}");
    assert_eq!(t["expires_in"], 30);
    let query = format!("?ticket={}", t["ticket"].as_str().unwrap());
    let mut c = Client::connect_to(&second, None, &query).await;
    assert_eq!(c.start(json!({})).await["type"], "ready");
    c.text(json!({"type": "stop"})).await;
    let seen = c.until_close().await;
    assert_eq!(seen.close, Some(1000), "{seen:?}");
    let again = Client::connect(&s, None, &query).await.until_close().await;
    assert_eq!(again.close, Some(4401), "a spent ticket: {again:?}");
    // Twenty unused at most; the next is refused with when to retry.
    for _ in 0..20 {
        let (status, t) = s.post_json("/ws/ticket", json!({}), Some(&token)).await;
        assert_eq!(status, StatusCode::OK, "{t}");
    }
    let res = s
        .http
        .post(s.url("/ws/ticket"))
        .bearer_auth(&token)
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry = common::retry_after(&res);
    assert!((1..=30).contains(&retry), "{retry}");
    let problem: Value = res.json().await.unwrap();
    assert_eq!(problem["code"], "S2L01", "{problem}");
    std::fs::remove_dir_all(&spool).ok();

    // Audio before start; a sample rate nobody records at; text that is
    // not the protocol.
    let mut c = Client::connect(&s, Some(&bearer), "").await;
    c.sink.send(Message::binary(vec![0u8; 960])).await.unwrap();
    let seen = c.until_close().await;
    seen.refused(4400, "bad_message");
    let mut c = Client::connect(&s, Some(&bearer), "").await;
    c.text(json!({"type": "start", "sample_rate": 96000, "encoding": "pcm_s16le"}))
        .await;
    let seen = c.until_close().await;
    seen.refused(4415, "unsupported_format");
    let mut c = Client::connect(&s, Some(&bearer), "").await;
    c.sink.send(Message::text("hello")).await.unwrap();
    let seen = c.until_close().await;
    seen.refused(4400, "bad_message");

    // After start: an odd number of bytes, then a flood.
    let mut c = Client::connect(&s, Some(&bearer), "").await;
    c.start(json!({})).await;
    c.stream(&silence(0.5), 1.0).await;
    c.sink.send(Message::binary(vec![0u8; 961])).await.unwrap();
    let seen = c.until_close().await;
    seen.refused(4400, "bad_frame");
    assert_eq!(
        seen.of("done").len(),
        1,
        "the session ends, billed for what came: {seen:?}"
    );
    let mut c = Client::connect(&s, Some(&bearer), "").await;
    c.start(json!({})).await;
    c.stream(&silence(12.0), 100.0).await;
    let seen = c.until_close().await;
    seen.refused(4429, "too_fast");
    // A frame over the protocol's 256 KiB.
    let mut c = Client::connect(&s, Some(&bearer), "").await;
    c.start(json!({})).await;
    c.sink
        .send(Message::binary(vec![0u8; 300_000]))
        .await
        .unwrap();
    c.until_close().await.refused(4400, "bad_frame");
    // A second start is out of order.
    let mut c = Client::connect(&s, Some(&bearer), "").await;
    c.start(json!({})).await;
    c.start(json!({})).await;
    let seen = c.until_close().await;
    seen.refused(4400, "bad_message");

    // The other session was not disturbed.
    let (reference, seen) = good.await.unwrap();
    assert_eq!(seen.close, Some(1000), "{seen:?}");
    let w = wer(&reference, &seen.finals_text());
    assert!(w <= 0.25, "{w:.3}: {seen:?}");

    // Nothing is left half-done: every session ended exactly once.
    let open = s
        .count("SELECT count(*) FROM s2t.realtime_sessions WHERE NOT ended")
        .await;
    let processing = s
        .count("SELECT count(*) FROM s2t.recordings WHERE source = 'realtime' AND status = 'processing'")
        .await;
    drop(worker);
    assert_eq!((open, processing), (0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn minutes_running_out_mid_stream_close_the_session_cleanly_with_every_final_kept() {
    let s = stack(50 << 20, false).await;
    let worker = realtime_worker(&s);
    registered(&s, 1).await;
    let (token, _) = s.user("quinn").await;
    let user = user_id(&s, &token).await;
    // Six seconds of the month are left.
    s.db.admin
        .execute(
            "UPDATE s2t.user_subscriptions u SET used_seconds = p.monthly_minutes * 60 - 6
               FROM s2t.plans p WHERE p.id = u.plan_id AND u.user_id = $1",
            &[&user],
        )
        .await
        .unwrap();
    let sentences = librivox();
    let pcm = pcm48(&[&sentences[0].0, &sentences[1].0], 1.0);
    assert!(pcm.len() > 9 * 96_000, "more audio than the minutes left");
    let mut c = Client::connect(&s, Some(&format!("Bearer {token}")), "").await;
    let id = c.start(json!({})).await["recording_id"]
        .as_str()
        .unwrap()
        .to_string();
    c.stream(&pcm, 1.0).await;
    let seen = c.until_close().await;
    drop(worker);
    seen.refused(4402, "quota_exceeded");
    let done = seen.of("done")[0].clone();
    assert!(done["billed_seconds"].as_i64().unwrap() <= 6, "{done}");
    assert!(done["duration_ms"].as_i64().unwrap() <= 6_000, "{done}");
    let saved = s
        .count(&format!(
            "SELECT count(*) FROM s2t.segments WHERE recording_id = '{id}'"
        ))
        .await;
    assert!(saved >= 1, "the words before the cut are a final");
    assert_eq!(saved, seen.of("final").len() as i64);
    let used = s2t_tests::used_seconds(&s.db, user).await;
    let limit = s
        .count(&format!(
            "SELECT (p.monthly_minutes * 60)::bigint FROM s2t.user_subscriptions u JOIN s2t.plans p ON p.id = u.plan_id WHERE u.user_id = '{user}'"
        ))
        .await;
    assert!(
        used as i64 <= limit,
        "never past the month: {used} of {limit}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_mid_session_keeps_its_finals_and_the_session_resumes_on_another() {
    let s = stack(50 << 20, false).await;
    let mut first = realtime_worker(&s);
    registered(&s, 1).await;
    let (token, _) = s.user("kim").await;
    let bearer = format!("Bearer {token}");
    let sentences = librivox();
    let mut part1 = pcm48(&[&sentences[0].0], 0.0);
    part1.extend(silence(1.0));
    let mut c = Client::connect(&s, Some(&bearer), "").await;
    let ready = c.start(json!({})).await;
    let (id, resume) = (ready["recording_id"].clone(), ready["resume_token"].clone());
    c.stream(&part1, 1.0).await;
    let kept = until_final(&mut c).await.expect("a final before the crash");
    let dead: uuid::Uuid =
        s.db.admin
            .query_one("SELECT id FROM s2t.workers", &[])
            .await
            .unwrap()
            .get(0);
    first.crash();
    let seen = c.until_close().await;
    seen.refused(1011, "internal");

    // A worker that died looks live until its heartbeat is 15 s old; keep
    // it looking live, so the gateway must find out by connecting.
    let looks_live = || async {
        s.db.admin
            .execute(
                "UPDATE s2t.workers SET heartbeat_at = now() WHERE id = $1",
                &[&dead],
            )
            .await
            .unwrap();
    };
    let second = realtime_worker(&s);
    looks_live().await;
    registered(&s, 2).await;
    looks_live().await;
    let mut resumed = Client::connect(&s, Some(&bearer), "").await;
    let ready = resumed
        .start(json!({"resume_token": resume, "last_idx": kept["idx"]}))
        .await;
    assert_eq!(
        ready["type"], "ready",
        "resumed on the live worker at once: {ready}"
    );
    // Now the dead worker is the least loaded (0 of 4 against 1 of 4): a
    // new session is offered to it first and lands on the live one.
    looks_live().await;
    let (other, _) = s.user("lee").await;
    let mut fresh = Client::connect(&s, Some(&format!("Bearer {other}")), "").await;
    let opened = fresh.start(json!({})).await;
    assert_eq!(opened["type"], "ready", "{opened}");
    fresh.text(json!({"type": "stop"})).await;
    let closed = fresh.until_close().await;
    assert_eq!(closed.close, Some(1000), "{closed:?}");
    let elsewhere = s
        .count(&format!(
            "SELECT count(*) FROM s2t.realtime_sessions WHERE worker_id <> '{dead}'"
        ))
        .await;
    assert_eq!(elsewhere, 2, "both sessions are on the live worker");
    let mut c = resumed;
    c.stream(&pcm48(&[&sentences[1].0], 0.0), 1.0).await;
    c.text(json!({"type": "stop"})).await;
    let seen = c.until_close().await;
    drop(second);
    assert_eq!(seen.close, Some(1000), "{seen:?}");
    let idxs: Vec<i64> = seen
        .of("final")
        .iter()
        .map(|f| f["idx"].as_i64().unwrap())
        .collect();
    assert!(
        !idxs.is_empty() && idxs[0] == kept["idx"].as_i64().unwrap() + 1,
        "{idxs:?}"
    );
    let status =
        s.db.admin
            .query_one(
                "SELECT status::text FROM s2t.recordings WHERE id = $1::text::uuid",
                &[&id.as_str().unwrap()],
            )
            .await
            .unwrap()
            .get::<_, String>(0);
    assert_eq!(status, "done");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_sessions_at_once_of_read_and_generated_speech_are_all_transcribed_and_a_minute_of_silence_gives_no_text(
) {
    let s = stack(50 << 20, false).await;
    let worker = realtime_worker(&s);
    registered(&s, 1).await;
    // Three read sentences and one generated by espeak-ng.
    let mut sentences: Vec<_> = librivox().into_iter().take(3).collect();
    let generated = "The budget for the new office was approved on Tuesday morning.";
    let dir = common::temp_dir("rt-espeak");
    sentences.push((
        s2t_tests::speech_wav(generated, "en-us", 0.3, &dir, "budget"),
        generated.to_string(),
    ));
    let mut runs = Vec::new();
    for (i, (wav, reference)) in sentences.iter().enumerate() {
        let (token, _) = s.user(&format!("four{i}")).await;
        let mut pcm = pcm48(&[wav], 0.0);
        pcm.extend(silence(0.5));
        let mut c = Client::connect(&s, Some(&format!("Bearer {token}")), "").await;
        let reference = reference.clone();
        runs.push(tokio::spawn(async move {
            assert_eq!(c.start(json!({})).await["type"], "ready");
            c.stream(&pcm, 1.0).await;
            c.text(json!({"type": "stop"})).await;
            (reference, c.until_close().await)
        }));
    }
    for run in runs {
        let (reference, seen) = run.await.unwrap();
        assert_eq!(seen.close, Some(1000), "{seen:?}");
        let text = seen.finals_text();
        let w = wer(&reference, &text);
        eprintln!("WER {w:.3}: {text}");
        assert!(w <= 0.25, "{reference:?} came back as {text:?}");
    }
    std::fs::remove_dir_all(&dir).ok();

    let (token, _) = s.user("quiet").await;
    let mut c = Client::connect(&s, Some(&format!("Bearer {token}")), "").await;
    c.start(json!({})).await;
    c.stream(&silence(60.0), 2.0).await;
    c.text(json!({"type": "stop"})).await;
    let seen = c.until_close().await;
    drop(worker);
    assert_eq!(seen.close, Some(1000), "{seen:?}");
    assert!(
        seen.of("final").is_empty() && seen.of("partial").is_empty(),
        "{seen:?}"
    );
    assert_eq!(seen.of("done")[0]["duration_ms"], 60_000);
}

/// Every event of `kind` in one session of the Python client's output.
fn events<'a>(session: &'a Value, kind: &str) -> Vec<&'a Value> {
    session["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"] == kind)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_official_openai_clients_realtime_transcription_works_against_the_gateway() {
    let s = stack(50 << 20, false).await;
    let _worker = realtime_worker(&s);
    registered(&s, 1).await;
    let (token, _) = s.user("otto").await;
    let sentences = librivox();
    let (first, second) = (&sentences[1], &sentences[4]);
    let dir = common::temp_dir("rt-openai");
    let pause = dir.join("pause.wav");
    s2t_tests::silence_wav(&pause, 1.2);
    let pcm24 = dir.join("speech24.raw");
    s2t_tests::run(
        "sox",
        &[
            first.0.to_str().unwrap(),
            pause.to_str().unwrap(),
            second.0.to_str().unwrap(),
            "-t",
            "raw",
            "-e",
            "signed",
            "-b",
            "16",
            "-c",
            "1",
            pcm24.to_str().unwrap(),
            "rate",
            "24000",
        ],
    );
    let reference = format!("{} {}", first.1, second.1);
    let r = common::python_client("openai_realtime.py", &pcm24, &s.base, &token).await;

    // Server VAD: one item per sentence, each started, stopped, committed
    // and completed, its deltas adding up to its transcript.
    let vad = &r["vad"];
    assert_eq!(vad["events"][0]["type"], "session.created", "{vad}");
    assert_eq!(events(vad, "session.updated").len(), 1);
    let completed = events(vad, "conversation.item.input_audio_transcription.completed");
    assert!(completed.len() >= 2, "the pause splits the items: {vad}");
    for c in &completed {
        let item = &c["item_id"];
        let deltas: String = events(vad, "conversation.item.input_audio_transcription.delta")
            .iter()
            .filter(|d| &d["item_id"] == item)
            .map(|d| d["delta"].as_str().unwrap())
            .collect();
        assert_eq!(
            deltas,
            c["transcript"].as_str().unwrap(),
            "deltas are incremental"
        );
        for kind in [
            "input_audio_buffer.speech_started",
            "input_audio_buffer.speech_stopped",
            "input_audio_buffer.committed",
        ] {
            assert_eq!(
                events(vad, kind)
                    .iter()
                    .filter(|e| &e["item_id"] == item)
                    .count(),
                1,
                "{kind} for {item}"
            );
        }
    }
    // Words arrive while a sentence is spoken: some item has a delta
    // before its speech_stopped (how many depends on how busy the CPU is).
    let order = vad["events"].as_array().unwrap();
    let early = completed.iter().any(|c| {
        let item = &c["item_id"];
        let first_delta = order.iter().position(|e| {
            e["type"] == "conversation.item.input_audio_transcription.delta"
                && &e["item_id"] == item
        });
        let stopped = order.iter().position(|e| {
            e["type"] == "input_audio_buffer.speech_stopped" && &e["item_id"] == item
        });
        matches!((first_delta, stopped), (Some(d), Some(s)) if d < s)
    });
    assert!(early, "words arrive while the sentence is spoken: {vad}");
    let text: Vec<&str> = completed
        .iter()
        .map(|c| c["transcript"].as_str().unwrap())
        .collect();
    let w = wer(&reference, &text.join(" "));
    assert!(w <= 0.25, "{w:.3}: {text:?}");
    let bad = events(vad, "error");
    assert_eq!(bad.len(), 1, "{vad}");
    assert_eq!(bad[0]["error"]["type"], "invalid_request_error");

    // Manual turns: nothing is committed until the client commits, then
    // one item holds both sentences.
    let manual = &r["manual"];
    assert_eq!(events(manual, "transcription_session.updated").len(), 1);
    let completed = events(
        manual,
        "conversation.item.input_audio_transcription.completed",
    );
    assert_eq!(completed.len(), 1, "{manual}");
    assert_eq!(events(manual, "input_audio_buffer.committed").len(), 1);
    let w = wer(&reference, completed[0]["transcript"].as_str().unwrap());
    assert!(w <= 0.25, "{w:.3}: {}", completed[0]);

    // Both were real sessions: saved, ended once and counted.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let user = user_id(&s, &token).await;
    let done = s
        .count(&format!(
            "SELECT count(*) FROM s2t.recordings WHERE user_id = '{user}' AND source = 'realtime' AND status = 'done'"
        ))
        .await;
    assert_eq!(done, 2);
    std::fs::remove_dir_all(&dir).ok();
}
