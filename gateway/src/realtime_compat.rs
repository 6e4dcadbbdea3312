//! OpenAI's realtime transcription protocol (`/v1/realtime?intent=transcription`)
//! translated to and from ours, without I/O: the route feeds it the
//! client's events and the worker's messages and sends what it returns.
//!
//! - Client → us: `session.update` / `transcription_session.update` (the
//!   language, prompt and turn detection, in the GA or the beta shape),
//!   `input_audio_buffer.append` (base64 pcm16, mono, 24 kHz) becomes a
//!   binary frame, `input_audio_buffer.commit` our `commit`,
//!   `input_audio_buffer.clear` is acknowledged.
//! - Us → client: a `final` becomes `input_audio_buffer.speech_stopped`,
//!   `input_audio_buffer.committed`, the last `...transcription.delta` and
//!   `...transcription.completed` of one item. Deltas are really
//!   incremental: a word is sent once two consecutive partials agree on it
//!   (it is not taken back later); the completed transcript is the final's
//!   text. With `turn_detection: null` nothing is committed until the
//!   client commits; the finals in between are gathered into that item.

use base64::Engine as _;
use s2t_core::realtime::{StartRequest, MAX_FRAME_BYTES};
use serde_json::{json, Value};

/// The sample rate OpenAI's `pcm16` has.
pub const RATE: u32 = 24_000;

/// What a client event asks of the route.
#[derive(Debug, PartialEq)]
pub enum Step {
    /// Send to the client.
    Reply(Value),
    /// Audio for the worker (opens the session first if it is not open).
    Audio(Vec<u8>),
    /// Our `commit`, to the worker.
    Commit,
}

#[derive(Debug, Default)]
pub struct Compat {
    next_event: u64,
    next_item: u64,
    language: Option<String>,
    prompt: Option<String>,
    /// Server VAD (the default); false with `turn_detection: null`.
    manual: bool,
    /// The item being spoken, once speech started.
    item: Option<String>,
    previous_item: Option<String>,
    /// Text of this item already sent as deltas.
    sent: String,
    /// The last partial's words.
    last_partial: Vec<String>,
    /// Finals gathered for a manual commit.
    gathered: Vec<String>,
}

fn agreed(a: &[String], b: &[&str]) -> usize {
    a.iter()
        .zip(b)
        .take_while(|(x, y)| x.as_str() == **y)
        .count()
}

impl Compat {
    fn event(&mut self, kind: &str, mut body: Value) -> Value {
        self.next_event += 1;
        body["type"] = json!(kind);
        body["event_id"] = json!(format!("event_{}", self.next_event));
        body
    }

    /// An `error` event in OpenAI's shape.
    pub fn error(&mut self, code: &str, message: &str) -> Value {
        let kind = match code {
            "internal" | "busy" => "server_error",
            _ => "invalid_request_error",
        };
        self.event(
            "error",
            json!({"error": {"type": kind, "code": code, "message": message, "param": null, "event_id": null}}),
        )
    }

    fn session(&self) -> Value {
        json!({
            "type": "transcription",
            "object": "realtime.transcription_session",
            "input_audio_format": "pcm16",
            "input_audio_transcription": {"model": "whisper-1", "language": self.language, "prompt": self.prompt},
            "turn_detection": if self.manual { Value::Null } else { json!({"type": "server_vad"}) },
        })
    }

    /// The first event, sent on connect.
    pub fn created(&mut self) -> Value {
        let session = self.session();
        self.event("session.created", json!({ "session": session }))
    }

    /// Our `start` for the session, from the configuration so far.
    pub fn start(&self) -> StartRequest {
        StartRequest {
            language: self.language.clone(),
            sample_rate: RATE,
            encoding: "pcm_s16le".into(),
            prompt: self.prompt.clone(),
            interim: Some(true),
            resume_token: None,
            last_idx: None,
        }
    }

    fn configure(&mut self, session: &Value) {
        // GA: session.audio.input.{transcription, turn_detection};
        // beta: session.{input_audio_transcription, turn_detection}.
        let input = &session["audio"]["input"];
        let transcription = if input["transcription"].is_object() {
            &input["transcription"]
        } else {
            &session["input_audio_transcription"]
        };
        if let Some(l) = transcription["language"].as_str() {
            self.language = Some(l.to_string()).filter(|l| !l.is_empty());
        }
        if let Some(p) = transcription["prompt"].as_str() {
            self.prompt = Some(p.to_string()).filter(|p| !p.trim().is_empty());
        }
        let turn = if input.get("turn_detection").is_some() {
            input.get("turn_detection")
        } else {
            session.get("turn_detection")
        };
        if let Some(t) = turn {
            self.manual = t.is_null();
        }
    }

    /// One text message from the client; `open` says whether audio has
    /// started (the configuration is fixed from then on).
    pub fn on_client(&mut self, text: &str, open: bool) -> Vec<Step> {
        let Ok(event) = serde_json::from_str::<Value>(text) else {
            return vec![Step::Reply(
                self.error("invalid_json", "events are JSON objects"),
            )];
        };
        match event["type"].as_str().unwrap_or_default() {
            kind @ ("session.update" | "transcription_session.update") => {
                if !open {
                    self.configure(&event["session"]);
                }
                let updated = kind.replace("update", "updated");
                let session = self.session();
                vec![Step::Reply(
                    self.event(&updated, json!({ "session": session })),
                )]
            }
            "input_audio_buffer.append" => {
                let audio = event["audio"].as_str().unwrap_or_default();
                match base64::engine::general_purpose::STANDARD.decode(audio) {
                    Ok(bytes) if bytes.len() % 2 == 0 && bytes.len() <= MAX_FRAME_BYTES => {
                        vec![Step::Audio(bytes)]
                    }
                    Ok(bytes) if bytes.len() > MAX_FRAME_BYTES => vec![Step::Reply(self.error(
                        "bad_frame",
                        &format!("append at most {MAX_FRAME_BYTES} bytes of audio at a time"),
                    ))],
                    _ => vec![Step::Reply(self.error(
                        "invalid_audio",
                        "audio must be base64 of 16-bit little-endian mono samples at 24 kHz",
                    ))],
                }
            }
            "input_audio_buffer.commit" => vec![Step::Commit],
            "input_audio_buffer.clear" => {
                vec![Step::Reply(
                    self.event("input_audio_buffer.cleared", json!({})),
                )]
            }
            other => vec![Step::Reply(self.error(
                "unknown_event",
                &format!("{other:?} is not supported by a transcription session"),
            ))],
        }
    }

    fn item(&mut self, start_ms: i64, out: &mut Vec<Value>) -> String {
        if let Some(item) = &self.item {
            return item.clone();
        }
        self.next_item += 1;
        let item = format!("item_{}", self.next_item);
        self.item = Some(item.clone());
        let started = self.event(
            "input_audio_buffer.speech_started",
            json!({"audio_start_ms": start_ms, "item_id": item}),
        );
        out.push(started);
        item
    }

    /// Send what of `text` is new, if it only extends what was sent.
    fn advance(&mut self, item: &str, text: &str, out: &mut Vec<Value>) {
        if text.len() > self.sent.len() && text.starts_with(&self.sent) {
            let delta = text[self.sent.len()..].to_string();
            self.sent = text.to_string();
            out.push(self.event(
                "conversation.item.input_audio_transcription.delta",
                json!({"item_id": item, "content_index": 0, "delta": delta}),
            ));
        }
    }

    fn complete(&mut self, item: &str, end_ms: i64, transcript: String, out: &mut Vec<Value>) {
        let stopped = self.event(
            "input_audio_buffer.speech_stopped",
            json!({"audio_end_ms": end_ms, "item_id": item}),
        );
        out.push(stopped);
        let previous = self.previous_item.clone();
        let committed = self.event(
            "input_audio_buffer.committed",
            json!({"item_id": item, "previous_item_id": previous}),
        );
        out.push(committed);
        self.advance(item, &transcript, out);
        out.push(self.event(
            "conversation.item.input_audio_transcription.completed",
            json!({"item_id": item, "content_index": 0, "transcript": transcript}),
        ));
        self.previous_item = Some(item.to_string());
        self.item = None;
        self.sent.clear();
        self.last_partial.clear();
        self.gathered.clear();
    }

    fn joined(&self, more: &[&str]) -> String {
        let mut parts: Vec<&str> = self.gathered.iter().map(String::as_str).collect();
        parts.extend_from_slice(more);
        parts.join(" ")
    }

    /// One message of ours from the worker; the events for the client.
    pub fn on_server(&mut self, message: &Value) -> Vec<Value> {
        let mut out = Vec::new();
        let start_ms = message["start_ms"].as_i64().unwrap_or(0);
        match message["type"].as_str().unwrap_or_default() {
            "partial" => {
                let item = self.item(start_ms, &mut out);
                let words: Vec<&str> = message["text"]
                    .as_str()
                    .unwrap_or_default()
                    .split_whitespace()
                    .collect();
                let stable = agreed(&self.last_partial, &words);
                let text = self.joined(&words[..stable]);
                self.advance(&item, &text, &mut out);
                self.last_partial = words.iter().map(|w| w.to_string()).collect();
            }
            "final" => {
                let item = self.item(start_ms, &mut out);
                let text = message["text"].as_str().unwrap_or_default().to_string();
                if self.manual {
                    self.gathered.push(text);
                    self.last_partial.clear();
                    let so_far = self.joined(&[]);
                    self.advance(&item, &so_far, &mut out);
                } else {
                    let end_ms = message["end_ms"].as_i64().unwrap_or(start_ms);
                    self.complete(&item, end_ms, text, &mut out);
                }
            }
            // After the client's commit, the finals before it are in.
            "committed" if self.manual || self.item.is_some() => {
                let end_ms = message["end_ms"].as_i64().unwrap_or(0);
                let item = self.item(end_ms, &mut out);
                let text = self.joined(&[]);
                self.complete(&item, end_ms, text, &mut out);
            }
            "error" => {
                let code = message["code"].as_str().unwrap_or("internal").to_string();
                let text = message["message"].as_str().unwrap_or_default().to_string();
                out.push(self.error(&code, &text));
            }
            _ => {}
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kinds(events: &[Value]) -> Vec<&str> {
        events.iter().map(|e| e["type"].as_str().unwrap()).collect()
    }

    #[test]
    fn partials_give_deltas_only_of_agreed_words_and_a_final_completes_the_item() {
        let mut c = Compat::default();
        assert_eq!(c.created()["type"], "session.created");
        let e = c.on_server(&json!({"type": "partial", "text": "the quick brow", "start_ms": 300}));
        assert_eq!(kinds(&e), ["input_audio_buffer.speech_started"]);
        assert_eq!(e[0]["audio_start_ms"], 300);
        let e = c
            .on_server(&json!({"type": "partial", "text": "the quick brown fox", "start_ms": 300}));
        assert_eq!(
            kinds(&e),
            ["conversation.item.input_audio_transcription.delta"]
        );
        assert_eq!(e[0]["delta"], "the quick");
        // A revision of an unstable word sends nothing.
        let e = c.on_server(
            &json!({"type": "partial", "text": "the quick brown box jumps", "start_ms": 300}),
        );
        assert_eq!(e[0]["delta"], " brown");
        let e = c.on_server(
            &json!({"type": "final", "idx": 0, "text": "the quick brown fox jumps.",
                                    "start_ms": 300, "end_ms": 2100, "words": []}),
        );
        assert_eq!(
            kinds(&e),
            [
                "input_audio_buffer.speech_stopped",
                "input_audio_buffer.committed",
                "conversation.item.input_audio_transcription.delta",
                "conversation.item.input_audio_transcription.completed"
            ]
        );
        assert_eq!(e[2]["delta"], " fox jumps.");
        assert_eq!(e[3]["transcript"], "the quick brown fox jumps.");
        assert_eq!(e[1]["previous_item_id"], Value::Null);
        let item = e[3]["item_id"].clone();
        // The next utterance is a new item that follows the first.
        let e = c.on_server(
            &json!({"type": "final", "idx": 1, "text": "Yes.", "start_ms": 3000, "end_ms": 3400}),
        );
        assert_eq!(e[0]["type"], "input_audio_buffer.speech_started");
        assert_eq!(e[2]["previous_item_id"], item);
        assert_ne!(e[2]["item_id"], item);
        let ids: Vec<&str> = e.iter().map(|x| x["event_id"].as_str().unwrap()).collect();
        assert!(ids.windows(2).all(|w| w[0] != w[1]));
    }

    #[test]
    fn without_turn_detection_finals_wait_for_the_clients_commit() {
        let mut c = Compat::default();
        let steps = c.on_client(
            &json!({"type": "transcription_session.update", "session": {
                "input_audio_transcription": {"model": "whisper-1", "language": "en", "prompt": "Dashwood"},
                "turn_detection": null}})
            .to_string(),
            false,
        );
        match &steps[..] {
            [Step::Reply(r)] => {
                assert_eq!(r["type"], "transcription_session.updated");
                assert_eq!(r["session"]["turn_detection"], Value::Null);
            }
            other => panic!("{other:?}"),
        }
        let start = c.start();
        assert_eq!(
            (
                start.language.as_deref(),
                start.prompt.as_deref(),
                start.sample_rate
            ),
            (Some("en"), Some("Dashwood"), 24_000)
        );
        let e = c.on_server(
            &json!({"type": "final", "idx": 0, "text": "One.", "start_ms": 0, "end_ms": 500}),
        );
        assert!(!kinds(&e).contains(&"input_audio_buffer.committed"));
        c.on_server(
            &json!({"type": "final", "idx": 1, "text": "Two.", "start_ms": 900, "end_ms": 1400}),
        );
        assert_eq!(
            c.on_client(r#"{"type":"input_audio_buffer.commit"}"#, true),
            vec![Step::Commit]
        );
        let e = c.on_server(&json!({"type": "committed", "end_ms": 1500}));
        let done = e
            .iter()
            .find(|x| x["type"] == "conversation.item.input_audio_transcription.completed")
            .unwrap();
        assert_eq!(done["transcript"], "One. Two.");
        assert!(kinds(&e).contains(&"input_audio_buffer.committed"));
    }

    #[test]
    fn audio_is_decoded_and_bad_events_get_errors_in_openais_shape() {
        let mut c = Compat::default();
        let audio = base64::engine::general_purpose::STANDARD.encode([1u8, 0, 2, 0]);
        assert_eq!(
            c.on_client(
                &json!({"type": "input_audio_buffer.append", "audio": audio}).to_string(),
                true
            ),
            vec![Step::Audio(vec![1, 0, 2, 0])]
        );
        for bad in [
            json!({"type": "input_audio_buffer.append", "audio": "***"}).to_string(),
            json!({"type": "input_audio_buffer.append", "audio": base64::engine::general_purpose::STANDARD.encode([1u8])}).to_string(),
            json!({"type": "response.create"}).to_string(),
            "not json".to_string(),
        ] {
            match &c.on_client(&bad, true)[..] {
                [Step::Reply(e)] => {
                    assert_eq!(e["type"], "error", "{bad}");
                    assert_eq!(e["error"]["type"], "invalid_request_error");
                    assert!(e["error"]["message"].as_str().unwrap().len() > 5);
                }
                other => panic!("{bad}: {other:?}"),
            }
        }
        let e =
            c.on_server(&json!({"type": "error", "code": "quota_exceeded", "message": "used up"}));
        assert_eq!(e[0]["error"]["code"], "quota_exceeded");
    }
}
