//! The realtime WebSocket protocol (`GET /ws/s2t`): the JSON messages in
//! both directions, the checks on `start`, the decoding of binary audio
//! frames, the pacing rules (flood, idle) and the close codes. The gateway
//! and the worker both speak it, so it lives here, free of I/O.
//!
//! Every JSON message is an object whose `type` names it. The client sends
//! `start`, then binary frames of mono audio in the encoding it chose, then
//! `stop`. The server numbers every message it sends (`seq`, from 1).

use serde::{Deserialize, Serialize};

/// Lowest and highest sample rate a client may send, in Hz.
pub const MIN_SAMPLE_RATE: u32 = 8_000;
pub const MAX_SAMPLE_RATE: u32 = 48_000;
/// Largest binary frame: 1 s of 48 kHz float audio is 192,000 bytes.
pub const MAX_FRAME_BYTES: usize = 256 * 1024;
/// Longest prompt, in characters.
pub const MAX_PROMPT_CHARS: usize = 500;
/// Audio may run ahead of the wall clock by this much (network bursts,
/// a client flushing its buffer after a stall) ...
pub const BURST_MS: u64 = 5_000;
/// ... and beyond that arrive at most this many times faster than real time.
pub const MAX_SPEED: u64 = 2;
/// A session that receives nothing for this long is closed.
pub const IDLE_TIMEOUT_MS: u64 = 30_000;

/// Sample encodings a client may send.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Encoding {
    /// Signed 16-bit little-endian integers.
    PcmS16le,
    /// 32-bit little-endian IEEE floats in [-1, 1].
    F32le,
}

impl Encoding {
    pub fn parse(name: &str) -> Option<Encoding> {
        match name {
            "pcm_s16le" => Some(Encoding::PcmS16le),
            "f32le" => Some(Encoding::F32le),
            _ => None,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Encoding::PcmS16le => "pcm_s16le",
            Encoding::F32le => "f32le",
        }
    }

    pub fn bytes_per_sample(self) -> usize {
        match self {
            Encoding::PcmS16le => 2,
            Encoding::F32le => 4,
        }
    }
}

/// What a client sends as text.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientMessage {
    Start(StartRequest),
    /// Commit what was said so far now, without waiting for a pause
    /// (push-to-talk); answered by the finals, then `committed`.
    Commit,
    Stop,
}

/// `start` as sent; [`StartRequest::check`] turns it into a [`Start`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StartRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub language: Option<String>,
    pub sample_rate: u32,
    pub encoding: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prompt: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interim: Option<bool>,
    /// From an earlier `ready`, to continue that recording.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resume_token: Option<String>,
    /// On resume: the last final's `idx` the client has (finals after it
    /// are sent again).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_idx: Option<i32>,
}

/// The first message a gateway sends to the worker it relays a session
/// to (not part of the client protocol): the one-time hand-off token whose
/// hash the database holds, the client's resume token (echoed in `ready`)
/// and the client's `start`. After it, the gateway relays the client's
/// frames and the worker's messages unchanged.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename = "handoff")]
pub struct Handoff {
    pub token: String,
    pub resume_token: String,
    pub start: StartRequest,
}

/// The longest a hand-off message may be (a start with a 500-character
/// prompt fits many times over).
pub const MAX_HANDOFF_BYTES: usize = 8 * 1024;

/// A checked `start`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Start {
    /// An ISO 639 code or "auto".
    pub language: String,
    pub sample_rate: u32,
    pub encoding: Encoding,
    pub prompt: Option<String>,
    /// Whether to send partials.
    pub interim: bool,
    pub resume_token: Option<String>,
    pub last_idx: Option<i32>,
}

impl StartRequest {
    pub fn check(self) -> Result<Start, ProtocolError> {
        if !(MIN_SAMPLE_RATE..=MAX_SAMPLE_RATE).contains(&self.sample_rate) {
            return Err(ProtocolError::new(
                ErrorCode::UnsupportedFormat,
                format!(
                    "sample_rate must be {MIN_SAMPLE_RATE} to {MAX_SAMPLE_RATE} Hz, got {}",
                    self.sample_rate
                ),
            ));
        }
        let encoding = Encoding::parse(&self.encoding).ok_or_else(|| {
            ProtocolError::new(
                ErrorCode::UnsupportedFormat,
                format!(
                    "encoding must be pcm_s16le or f32le, got {:?}",
                    self.encoding
                ),
            )
        })?;
        let language = self.language.unwrap_or_else(|| "auto".into());
        let valid_language = language == "auto"
            || ((2..=3).contains(&language.len())
                && language.chars().all(|c| c.is_ascii_lowercase()));
        if !valid_language {
            return Err(ProtocolError::new(
                ErrorCode::BadMessage,
                format!(
                    "language must be \"auto\" or an ISO 639 code such as \"en\", got {language:?}"
                ),
            ));
        }
        let prompt = self.prompt.filter(|p| !p.trim().is_empty());
        if prompt
            .as_ref()
            .is_some_and(|p| p.chars().count() > MAX_PROMPT_CHARS)
        {
            return Err(ProtocolError::new(
                ErrorCode::BadMessage,
                format!("prompt must be at most {MAX_PROMPT_CHARS} characters"),
            ));
        }
        Ok(Start {
            language,
            sample_rate: self.sample_rate,
            encoding,
            prompt,
            interim: self.interim.unwrap_or(true),
            resume_token: self.resume_token,
            last_idx: self.last_idx,
        })
    }
}

/// One word of a final, in ms on the recording's timeline.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FinalWord {
    pub word: String,
    pub start_ms: i64,
    pub end_ms: i64,
    pub probability: f32,
}

/// What the server sends as text (without its `seq`; see [`Numbered`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerMessage {
    Ready {
        recording_id: String,
        resume_token: String,
    },
    Partial {
        text: String,
        start_ms: i64,
    },
    Final {
        idx: i32,
        start_ms: i64,
        end_ms: i64,
        text: String,
        words: Vec<FinalWord>,
    },
    Lag {
        seconds: f64,
    },
    /// After a client `commit`: every word before `end_ms` of the
    /// recording is in the finals sent so far.
    Committed {
        end_ms: i64,
    },
    Error {
        code: ErrorCode,
        message: String,
    },
    Done {
        recording_id: String,
        duration_ms: i64,
        billed_seconds: i64,
    },
}

/// A server message with its sequence number.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Numbered {
    pub seq: u64,
    #[serde(flatten)]
    pub message: ServerMessage,
}

/// Numbers outgoing messages from 1.
#[derive(Debug, Default)]
pub struct Sequencer {
    last: u64,
}

impl Sequencer {
    /// Numbering that continues after `last` (a relay adding its own
    /// message to a stream another side numbered).
    pub fn after(last: u64) -> Sequencer {
        Sequencer { last }
    }

    /// The last number given.
    pub fn last(&self) -> u64 {
        self.last
    }

    pub fn number(&mut self, message: ServerMessage) -> Numbered {
        self.last += 1;
        Numbered {
            seq: self.last,
            message,
        }
    }

    pub fn encode(&mut self, message: ServerMessage) -> String {
        serde_json::to_string(&self.number(message)).expect("server messages serialise")
    }
}

/// The `code` of an `error` message; each maps to the close code that
/// follows it (when it ends the session).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// No, a bad, an expired or a used credential.
    Unauthorized,
    /// Text that is not JSON, has no known `type`, or breaks the order
    /// (audio or a second `start` before/after its time).
    BadMessage,
    /// A sample rate or encoding the server does not take.
    UnsupportedFormat,
    /// A binary frame that is not whole samples, not finite, or too large.
    BadFrame,
    /// Audio faster than [`MAX_SPEED`] times real time beyond the burst.
    TooFast,
    /// Nothing received for [`IDLE_TIMEOUT_MS`].
    IdleTimeout,
    /// The monthly minutes or transcriptions are used up.
    QuotaExceeded,
    /// No worker has room; retry later.
    Busy,
    /// The session cannot be resumed (unknown, ended or not yours).
    ResumeFailed,
    /// Something failed on our side; finals already sent are kept.
    Internal,
}

impl ErrorCode {
    /// Every code, in the order the schema lists them.
    pub const ALL: [ErrorCode; 10] = [
        ErrorCode::Unauthorized,
        ErrorCode::BadMessage,
        ErrorCode::UnsupportedFormat,
        ErrorCode::BadFrame,
        ErrorCode::TooFast,
        ErrorCode::IdleTimeout,
        ErrorCode::QuotaExceeded,
        ErrorCode::Busy,
        ErrorCode::ResumeFailed,
        ErrorCode::Internal,
    ];

    /// The WebSocket close code sent after this error.
    pub fn close_code(self) -> u16 {
        match self {
            ErrorCode::Unauthorized => 4401,
            ErrorCode::BadMessage => 4400,
            ErrorCode::UnsupportedFormat => 4415,
            ErrorCode::BadFrame => 4400,
            ErrorCode::TooFast => 4429,
            ErrorCode::IdleTimeout => 4408,
            ErrorCode::QuotaExceeded => 4402,
            ErrorCode::Busy => 4503,
            ErrorCode::ResumeFailed => 4404,
            ErrorCode::Internal => 1011,
        }
    }

    /// The code as it appears in JSON.
    pub fn name(self) -> &'static str {
        match self {
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::BadMessage => "bad_message",
            ErrorCode::UnsupportedFormat => "unsupported_format",
            ErrorCode::BadFrame => "bad_frame",
            ErrorCode::TooFast => "too_fast",
            ErrorCode::IdleTimeout => "idle_timeout",
            ErrorCode::QuotaExceeded => "quota_exceeded",
            ErrorCode::Busy => "busy",
            ErrorCode::ResumeFailed => "resume_failed",
            ErrorCode::Internal => "internal",
        }
    }
}

/// A protocol violation: the `error` to send, then close with its code.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{code:?}: {message}")]
pub struct ProtocolError {
    pub code: ErrorCode,
    pub message: String,
}

impl ProtocolError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> ProtocolError {
        ProtocolError {
            code,
            message: message.into(),
        }
    }

    pub fn to_message(&self) -> ServerMessage {
        ServerMessage::Error {
            code: self.code,
            message: self.message.clone(),
        }
    }
}

/// Parse a text frame from the client.
pub fn parse_client_text(text: &str) -> Result<ClientMessage, ProtocolError> {
    let value: serde_json::Value = serde_json::from_str(text).map_err(|e| {
        ProtocolError::new(
            ErrorCode::BadMessage,
            format!("text frames must be JSON objects: {e}"),
        )
    })?;
    let kind = value
        .get("type")
        .and_then(|t| t.as_str())
        .ok_or_else(|| {
            ProtocolError::new(
                ErrorCode::BadMessage,
                "every message is a JSON object with a \"type\" field",
            )
        })?
        .to_string();
    if !["start", "commit", "stop"].contains(&kind.as_str()) {
        return Err(ProtocolError::new(
            ErrorCode::BadMessage,
            format!("unknown message type {kind:?}: a client sends \"start\", audio frames (and \"commit\"), then \"stop\""),
        ));
    }
    serde_json::from_value(value).map_err(|e| {
        ProtocolError::new(
            ErrorCode::BadMessage,
            format!("bad \"{kind}\" message: {e}"),
        )
    })
}

/// Append the samples of one binary frame to `out`, as floats in [-1, 1].
pub fn decode_frame(
    encoding: Encoding,
    bytes: &[u8],
    out: &mut Vec<f32>,
) -> Result<(), ProtocolError> {
    if bytes.len() > MAX_FRAME_BYTES {
        return Err(ProtocolError::new(
            ErrorCode::BadFrame,
            format!(
                "an audio frame may be at most {MAX_FRAME_BYTES} bytes, got {}",
                bytes.len()
            ),
        ));
    }
    let width = encoding.bytes_per_sample();
    if !bytes.len().is_multiple_of(width) {
        return Err(ProtocolError::new(
            ErrorCode::BadFrame,
            format!(
                "{} bytes is not a whole number of {} samples ({width} bytes each)",
                bytes.len(),
                encoding.name()
            ),
        ));
    }
    out.reserve(bytes.len() / width);
    match encoding {
        Encoding::PcmS16le => out.extend(
            bytes
                .chunks_exact(2)
                .map(|b| i16::from_le_bytes([b[0], b[1]]) as f32 / 32768.0),
        ),
        Encoding::F32le => {
            for b in bytes.chunks_exact(4) {
                let x = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
                if !x.is_finite() {
                    return Err(ProtocolError::new(
                        ErrorCode::BadFrame,
                        "f32le samples must be finite numbers",
                    ));
                }
                out.push(x.clamp(-1.0, 1.0));
            }
        }
    }
    Ok(())
}

/// How much audio has arrived against the wall clock: refuses a flood,
/// notices an idle client.
#[derive(Debug, Clone)]
pub struct Pacing {
    sample_rate: u64,
    samples: u64,
    last_input_ms: u64,
}

impl Pacing {
    pub fn new(sample_rate: u32) -> Pacing {
        Pacing {
            sample_rate: sample_rate as u64,
            samples: 0,
            last_input_ms: 0,
        }
    }

    /// Milliseconds of audio received so far.
    pub fn audio_ms(&self) -> u64 {
        self.samples * 1000 / self.sample_rate
    }

    /// Count `samples` arriving `now_ms` after `start`.
    pub fn on_audio(&mut self, samples: usize, now_ms: u64) -> Result<(), ProtocolError> {
        self.samples += samples as u64;
        self.last_input_ms = now_ms;
        let allowed = MAX_SPEED * now_ms + BURST_MS;
        if self.audio_ms() > allowed {
            return Err(ProtocolError::new(
                ErrorCode::TooFast,
                format!(
                    "audio is arriving faster than {MAX_SPEED}x real time: {} ms of audio in {now_ms} ms",
                    self.audio_ms()
                ),
            ));
        }
        Ok(())
    }

    /// Count a text message (it also keeps the session alive).
    pub fn on_message(&mut self, now_ms: u64) {
        self.last_input_ms = now_ms;
    }

    /// The error to close with if the client has been silent too long.
    pub fn idle(&self, now_ms: u64) -> Option<ProtocolError> {
        (now_ms.saturating_sub(self.last_input_ms) >= IDLE_TIMEOUT_MS).then(|| {
            ProtocolError::new(
                ErrorCode::IdleTimeout,
                format!(
                    "nothing was received for {} s; send audio or \"stop\"",
                    IDLE_TIMEOUT_MS / 1000
                ),
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_handoff_carries_the_start_as_sent_and_names_its_type() {
        let start = StartRequest {
            language: Some("en".into()),
            sample_rate: 48_000,
            encoding: "pcm_s16le".into(),
            prompt: None,
            interim: Some(false),
            resume_token: None,
            last_idx: None,
        };
        let h = Handoff {
            token: "t".into(),
            resume_token: "r".into(),
            start: start.clone(),
        };
        let text = serde_json::to_string(&h).unwrap();
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["type"], "handoff");
        assert!(
            v["start"].get("prompt").is_none(),
            "absent fields stay absent"
        );
        assert_eq!(serde_json::from_str::<Handoff>(&text).unwrap(), h);
        assert!(serde_json::from_str::<Handoff>(r#"{"type":"start","token":"t"}"#).is_err());
        let mut seq = Sequencer::after(41);
        assert_eq!(seq.number(ServerMessage::Lag { seconds: 0.0 }).seq, 42);
        assert_eq!(seq.last(), 42);
    }

    fn start(json: &str) -> Result<Start, ProtocolError> {
        match parse_client_text(json)? {
            ClientMessage::Start(s) => s.check(),
            other => panic!("not a start: {other:?}"),
        }
    }

    #[test]
    fn a_start_is_checked_and_gets_defaults() {
        let s = start(r#"{"type":"start","sample_rate":48000,"encoding":"f32le"}"#).unwrap();
        assert_eq!(s.language, "auto");
        assert_eq!(s.encoding, Encoding::F32le);
        assert!(s.interim);
        let s = start(
            r#"{"type":"start","language":"vi","sample_rate":8000,"encoding":"pcm_s16le","prompt":"  ","interim":false}"#,
        )
        .unwrap();
        assert_eq!(
            (s.language.as_str(), s.prompt, s.interim),
            ("vi", None, false)
        );
        for (json, code, needle) in [
            (
                r#"{"type":"start","sample_rate":7999,"encoding":"f32le"}"#,
                ErrorCode::UnsupportedFormat,
                "7999",
            ),
            (
                r#"{"type":"start","sample_rate":96000,"encoding":"f32le"}"#,
                ErrorCode::UnsupportedFormat,
                "96000",
            ),
            (
                r#"{"type":"start","sample_rate":16000,"encoding":"opus"}"#,
                ErrorCode::UnsupportedFormat,
                "opus",
            ),
            (
                r#"{"type":"start","sample_rate":16000,"encoding":"f32le","language":"EN"}"#,
                ErrorCode::BadMessage,
                "EN",
            ),
            (
                r#"{"type":"start","encoding":"f32le"}"#,
                ErrorCode::BadMessage,
                "sample_rate",
            ),
            (
                r#"{"type":"start","sample_rate":16000,"encoding":"f32le","extra":1}"#,
                ErrorCode::BadMessage,
                "extra",
            ),
        ] {
            let err = start(json).unwrap_err();
            assert_eq!(err.code, code, "{json}");
            assert!(err.message.contains(needle), "{json}: {}", err.message);
        }
        let long = format!(
            r#"{{"type":"start","sample_rate":16000,"encoding":"f32le","prompt":"{}"}}"#,
            "a".repeat(MAX_PROMPT_CHARS + 1)
        );
        assert_eq!(start(&long).unwrap_err().code, ErrorCode::BadMessage);
    }

    #[test]
    fn text_that_is_not_the_protocol_is_named_precisely() {
        assert_eq!(
            parse_client_text(r#"{"type":"stop"}"#).unwrap(),
            ClientMessage::Stop
        );
        for (text, needle) in [
            ("hello", "JSON"),
            ("[1,2]", "\"type\""),
            (r#"{"kind":"start"}"#, "\"type\""),
            (r#"{"type":"pause"}"#, "pause"),
            (r#"{"type":7}"#, "\"type\""),
        ] {
            let err = parse_client_text(text).unwrap_err();
            assert_eq!(err.code, ErrorCode::BadMessage);
            assert!(err.message.contains(needle), "{text}: {}", err.message);
        }
    }

    #[test]
    fn frames_decode_to_floats_and_bad_frames_are_refused() {
        let mut out = Vec::new();
        let s16: Vec<u8> = [i16::MIN, 0, 16384, i16::MAX]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        decode_frame(Encoding::PcmS16le, &s16, &mut out).unwrap();
        assert_eq!(out[..3], [-1.0, 0.0, 0.5]);
        assert!((out[3] - 1.0).abs() < 1e-4);
        out.clear();
        let f: Vec<u8> = [0.25f32, -2.0]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        decode_frame(Encoding::F32le, &f, &mut out).unwrap();
        assert_eq!(out, [0.25, -1.0], "floats are clamped to [-1, 1]");

        let odd = decode_frame(Encoding::PcmS16le, &[1, 2, 3], &mut out).unwrap_err();
        assert_eq!(odd.code, ErrorCode::BadFrame);
        assert!(odd.message.contains("3 bytes"), "{}", odd.message);
        assert_eq!(
            decode_frame(Encoding::F32le, &[0; 6], &mut out)
                .unwrap_err()
                .code,
            ErrorCode::BadFrame
        );
        let nan: Vec<u8> = f32::NAN.to_le_bytes().to_vec();
        assert_eq!(
            decode_frame(Encoding::F32le, &nan, &mut out)
                .unwrap_err()
                .code,
            ErrorCode::BadFrame
        );
        let big = vec![0u8; MAX_FRAME_BYTES + 2];
        let err = decode_frame(Encoding::PcmS16le, &big, &mut out).unwrap_err();
        assert!(err.message.contains("at most"), "{}", err.message);
    }

    #[test]
    fn pacing_allows_real_time_and_bursts_but_not_floods_or_silence() {
        let mut p = Pacing::new(16_000);
        // Real time for a minute, 100 ms frames.
        for i in 1..=600u64 {
            p.on_audio(1600, i * 100).unwrap();
        }
        assert_eq!(p.audio_ms(), 60_000);
        // A 5 s burst on top is fine; more than 2x plus the burst is not.
        let mut p = Pacing::new(16_000);
        p.on_audio(16_000 * 5, 0).unwrap();
        let err = p.on_audio(16_000, 100).unwrap_err();
        assert_eq!(err.code, ErrorCode::TooFast);
        let mut p = Pacing::new(48_000);
        let mut flooded = None;
        for i in 1..=200u64 {
            if let Err(e) = p.on_audio(48_000 * 3 / 10, i * 100) {
                flooded = Some(i);
                assert_eq!(e.code, ErrorCode::TooFast);
                break;
            }
        }
        // 3x real time passes 2x + 5 s after 5 s of wall clock.
        assert_eq!(flooded, Some(51));
        let mut p = Pacing::new(16_000);
        p.on_message(1_000);
        assert!(p.idle(1_000 + IDLE_TIMEOUT_MS - 1).is_none());
        assert_eq!(
            p.idle(1_000 + IDLE_TIMEOUT_MS).unwrap().code,
            ErrorCode::IdleTimeout
        );
    }

    #[test]
    fn server_messages_are_numbered_objects_with_a_type() {
        let mut seq = Sequencer::default();
        let ready: serde_json::Value = serde_json::from_str(&seq.encode(ServerMessage::Ready {
            recording_id: "r".into(),
            resume_token: "t".into(),
        }))
        .unwrap();
        assert_eq!(ready["type"], "ready");
        assert_eq!(ready["seq"], 1);
        let err: serde_json::Value = serde_json::from_str(
            &seq.encode(ProtocolError::new(ErrorCode::TooFast, "slow down").to_message()),
        )
        .unwrap();
        assert_eq!(err["seq"], 2);
        assert_eq!(err["type"], "error");
        assert_eq!(err["code"], "too_fast");
        let back: Numbered = serde_json::from_value(err).unwrap();
        assert_eq!(back.seq, 2);
        for code in [ErrorCode::TooFast, ErrorCode::Busy, ErrorCode::Internal] {
            assert_eq!(serde_json::to_value(code).unwrap(), code.name());
        }
        assert_eq!(ErrorCode::TooFast.close_code(), 4429);
        // Close codes are in the application range, except the server's own failure.
        for code in ErrorCode::ALL {
            if code != ErrorCode::Internal {
                assert!((4000..5000).contains(&code.close_code()), "{code:?}");
            }
        }
    }

    /// The JSON Schema in `schema/realtime.schema.json` describes exactly
    /// what these types send and take: the required fields, no others, and
    /// every error code with its close code.
    #[test]
    fn the_json_schema_matches_the_messages() {
        let schema: serde_json::Value =
            serde_json::from_str(include_str!("../schema/realtime.schema.json")).unwrap();
        let defs = &schema["$defs"];
        let check = |value: serde_json::Value| {
            let kind = value["type"].as_str().unwrap().to_string();
            let def = &defs[&kind];
            assert!(def.is_object(), "no schema for {kind}");
            let props = def["properties"].as_object().unwrap();
            let obj = value.as_object().unwrap();
            for key in obj.keys() {
                assert!(props.contains_key(key), "{kind}.{key} is not in the schema");
            }
            for req in def["required"].as_array().unwrap() {
                assert!(
                    obj.contains_key(req.as_str().unwrap()),
                    "{kind} lacks {req}"
                );
            }
        };
        let mut seq = Sequencer::default();
        for m in [
            ServerMessage::Ready {
                recording_id: "r".into(),
                resume_token: "t".into(),
            },
            ServerMessage::Partial {
                text: "he".into(),
                start_ms: 0,
            },
            ServerMessage::Final {
                idx: 0,
                start_ms: 0,
                end_ms: 10,
                text: "hi".into(),
                words: vec![FinalWord {
                    word: "hi".into(),
                    start_ms: 0,
                    end_ms: 10,
                    probability: 0.5,
                }],
            },
            ServerMessage::Lag { seconds: 0.2 },
            ServerMessage::Committed { end_ms: 10 },
            ServerMessage::Error {
                code: ErrorCode::Busy,
                message: "m".into(),
            },
            ServerMessage::Done {
                recording_id: "r".into(),
                duration_ms: 1,
                billed_seconds: 1,
            },
        ] {
            let value = serde_json::to_value(seq.number(m)).unwrap();
            check(value);
        }
        let codes: Vec<&str> = defs["error"]["properties"]["code"]["enum"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c.as_str().unwrap())
            .collect();
        let all = ErrorCode::ALL;
        assert_eq!(codes, all.map(ErrorCode::name));
        let description = schema["description"].as_str().unwrap();
        for code in all {
            assert!(
                description.contains(&format!("{} {}", code.name(), code.close_code())),
                "the schema does not give {}'s close code",
                code.name()
            );
        }
        // The client side: every field a start may carry is in the schema.
        let start = serde_json::json!({
            "type": "start", "language": "en", "sample_rate": 16000, "encoding": "pcm_s16le",
            "prompt": "p", "interim": true, "resume_token": "t", "last_idx": 3
        });
        check(start.clone());
        let commit = serde_json::json!({"type": "commit"});
        check(commit.clone());
        assert_eq!(
            parse_client_text(&commit.to_string()).unwrap(),
            ClientMessage::Commit
        );
        assert!(matches!(
            parse_client_text(&start.to_string()).unwrap(),
            ClientMessage::Start(_)
        ));
        check(serde_json::json!({"type": "stop"}));
        assert_eq!(
            defs["start"]["properties"]["sample_rate"]["maximum"],
            MAX_SAMPLE_RATE
        );
        assert_eq!(
            defs["start"]["properties"]["prompt"]["maxLength"],
            MAX_PROMPT_CHARS
        );
        assert!(description.contains(&MAX_FRAME_BYTES.to_string()));
    }
}
