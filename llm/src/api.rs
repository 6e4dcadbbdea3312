//! The OpenAI chat-completions wire format, as far as `s2t-llm` serves it,
//! and the two pieces of streaming logic that need no model: cutting bytes
//! into whole UTF-8 characters and holding back text that may be the start
//! of a stop sequence.

use serde::Deserialize;
use serde_json::{json, Value};

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Message {
    pub role: String,
    /// A string, or OpenAI's list of content parts (only text parts are
    /// read).
    pub content: Value,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ChatRequest {
    pub model: Option<String>,
    pub messages: Vec<Message>,
    #[serde(default)]
    pub stream: bool,
    /// `max_completion_tokens` is the newer name of the same limit.
    pub max_tokens: Option<u32>,
    pub max_completion_tokens: Option<u32>,
    // Sampling settings (temperature, top_p, seed) are accepted and
    // ignored: decoding is greedy, so the same prompt gets the same answer.
    pub stop: Option<Value>,
}

/// A request that was checked: what the engine needs.
#[derive(Debug, Clone, PartialEq)]
pub struct Checked {
    pub messages: Vec<(String, String)>,
    pub max_tokens: u32,
    pub stop: Vec<String>,
    pub stream: bool,
}

/// A request the server refuses, with the parameter at fault.
#[derive(Debug, Clone, PartialEq)]
pub struct Invalid {
    pub message: String,
    pub param: Option<&'static str>,
}

fn invalid(message: impl Into<String>, param: &'static str) -> Invalid {
    Invalid {
        message: message.into(),
        param: Some(param),
    }
}

const ROLES: [&str; 4] = ["system", "user", "assistant", "developer"];

/// Checks a parsed request against the limits: at least one message with a
/// known role and text content, `max_tokens` within `1..=cap` (`default`
/// when absent), at most 4 stop sequences of 1 to 64 characters.
pub fn check(req: ChatRequest, default_tokens: u32, cap: u32) -> Result<Checked, Invalid> {
    if req.messages.is_empty() {
        return Err(invalid("messages must not be empty", "messages"));
    }
    let mut messages = Vec::with_capacity(req.messages.len());
    for m in req.messages {
        if !ROLES.contains(&m.role.as_str()) {
            return Err(invalid(
                format!(
                    "role {:?} is not one of system, developer, user, assistant",
                    m.role
                ),
                "messages",
            ));
        }
        let text = match &m.content {
            Value::String(s) => s.clone(),
            Value::Array(parts) => {
                let mut out = String::new();
                for p in parts {
                    match (p["type"].as_str(), p["text"].as_str()) {
                        (Some("text"), Some(t)) => out.push_str(t),
                        _ => {
                            return Err(invalid(
                                "only text content parts are supported",
                                "messages",
                            ))
                        }
                    }
                }
                out
            }
            _ => return Err(invalid("content must be a string", "messages")),
        };
        // The developer role is the newer name of system.
        let role = if m.role == "developer" {
            "system".to_string()
        } else {
            m.role
        };
        messages.push((role, text));
    }
    let max_tokens = req
        .max_completion_tokens
        .or(req.max_tokens)
        .unwrap_or(default_tokens);
    if !(1..=cap).contains(&max_tokens) {
        return Err(invalid(
            format!("max_tokens must be from 1 to {cap}"),
            "max_tokens",
        ));
    }
    let stop = match req.stop {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::String(s)) => vec![s],
        Some(Value::Array(list)) => {
            let mut out = Vec::new();
            for s in list {
                match s {
                    Value::String(s) => out.push(s),
                    _ => return Err(invalid("stop must be strings", "stop")),
                }
            }
            out
        }
        Some(_) => return Err(invalid("stop must be a string or a list", "stop")),
    };
    if stop.len() > 4 || stop.iter().any(|s| s.is_empty() || s.chars().count() > 64) {
        return Err(invalid(
            "stop takes at most 4 sequences of 1 to 64 characters",
            "stop",
        ));
    }
    Ok(Checked {
        messages,
        max_tokens,
        stop,
        stream: req.stream,
    })
}

/// OpenAI's error body.
pub fn error_body(message: &str, kind: &str, param: Option<&str>, code: Option<&str>) -> Value {
    json!({"error": {"message": message, "type": kind, "param": param, "code": code}})
}

/// One streamed chunk (`chat.completion.chunk`).
pub fn chunk(id: &str, model: &str, created: u64, delta: Value, finish: Option<&str>) -> Value {
    json!({
        "id": id, "object": "chat.completion.chunk", "created": created, "model": model,
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    })
}

/// The whole answer (`chat.completion`).
pub fn completion(
    id: &str,
    model: &str,
    created: u64,
    text: &str,
    finish: &str,
    prompt_tokens: usize,
    completion_tokens: usize,
) -> Value {
    json!({
        "id": id, "object": "chat.completion", "created": created, "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish}],
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                  "total_tokens": prompt_tokens + completion_tokens},
    })
}

/// Turns token bytes into text: a character split across tokens is held
/// until it is whole; bytes that can never be UTF-8 become U+FFFD.
#[derive(Debug, Default)]
pub struct Utf8Stream {
    pending: Vec<u8>,
}

impl Utf8Stream {
    pub fn push(&mut self, bytes: &[u8]) -> String {
        self.pending.extend_from_slice(bytes);
        let mut out = String::new();
        loop {
            match std::str::from_utf8(&self.pending) {
                Ok(s) => {
                    out.push_str(s);
                    self.pending.clear();
                    return out;
                }
                Err(e) => {
                    let good = e.valid_up_to();
                    out.push_str(std::str::from_utf8(&self.pending[..good]).unwrap_or_default());
                    match e.error_len() {
                        // An incomplete character at the end: wait for more.
                        None => {
                            self.pending.drain(..good);
                            return out;
                        }
                        Some(bad) => {
                            out.push('\u{FFFD}');
                            self.pending.drain(..good + bad);
                        }
                    }
                }
            }
        }
    }

    /// What is left at the end of the stream.
    pub fn finish(&mut self) -> String {
        let rest = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending.clear();
        rest
    }
}

/// Holds back generated text that could be the start of a stop sequence,
/// so that a stop sequence is never sent, not even in part.
#[derive(Debug)]
pub struct StopFilter {
    stops: Vec<String>,
    held: String,
    stopped: bool,
}

impl StopFilter {
    pub fn new(stops: Vec<String>) -> StopFilter {
        StopFilter {
            stops,
            held: String::new(),
            stopped: false,
        }
    }

    pub fn stopped(&self) -> bool {
        self.stopped
    }

    /// Adds `text`; returns what may be sent now. After a stop sequence
    /// appears, returns the text before it and nothing more.
    pub fn push(&mut self, text: &str) -> String {
        if self.stopped {
            return String::new();
        }
        self.held.push_str(text);
        if let Some(at) = self.stops.iter().filter_map(|s| self.held.find(s)).min() {
            self.stopped = true;
            let out = self.held[..at].to_string();
            self.held.clear();
            return out;
        }
        // Keep the longest tail that is a proper prefix of a stop sequence.
        let keep = self
            .held
            .char_indices()
            .map(|(i, _)| i)
            .find(|&i| {
                let tail = &self.held[i..];
                self.stops.iter().any(|s| s.starts_with(tail))
            })
            .unwrap_or(self.held.len());
        let out = self.held[..keep].to_string();
        self.held.drain(..keep);
        out
    }

    /// The text still held when generation ends without a stop sequence.
    pub fn finish(&mut self) -> String {
        std::mem::take(&mut self.held)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(v: Value) -> ChatRequest {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn requests_are_checked_with_the_parameter_at_fault() {
        let ok = check(
            req(
                json!({"messages": [{"role": "developer", "content": "be brief"},
                                    {"role": "user", "content": [{"type": "text", "text": "hi"}]}],
                        "stop": "\n\n", "max_completion_tokens": 5}),
            ),
            256,
            1024,
        )
        .unwrap();
        assert_eq!(
            ok.messages,
            vec![
                ("system".into(), "be brief".into()),
                ("user".into(), "hi".into())
            ]
        );
        assert_eq!(
            (ok.max_tokens, ok.stop.clone(), ok.stream),
            (5, vec!["\n\n".to_string()], false)
        );
        let default = check(
            req(json!({"messages": [{"role": "user", "content": "x"}]})),
            256,
            1024,
        );
        assert_eq!(default.unwrap().max_tokens, 256);
        for (body, param) in [
            (json!({"messages": []}), "messages"),
            (
                json!({"messages": [{"role": "tool", "content": "x"}]}),
                "messages",
            ),
            (
                json!({"messages": [{"role": "user", "content": 3}]}),
                "messages",
            ),
            (
                json!({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}),
                "messages",
            ),
            (
                json!({"messages": [{"role": "user", "content": "x"}], "max_tokens": 0}),
                "max_tokens",
            ),
            (
                json!({"messages": [{"role": "user", "content": "x"}], "max_tokens": 5000}),
                "max_tokens",
            ),
            (
                json!({"messages": [{"role": "user", "content": "x"}], "stop": [1]}),
                "stop",
            ),
            (
                json!({"messages": [{"role": "user", "content": "x"}], "stop": ["a","b","c","d","e"]}),
                "stop",
            ),
            (
                json!({"messages": [{"role": "user", "content": "x"}], "stop": ""}),
                "stop",
            ),
        ] {
            let e = check(req(body.clone()), 256, 1024).unwrap_err();
            assert_eq!(e.param, Some(param), "{body}: {}", e.message);
        }
    }

    #[test]
    fn utf8_characters_split_across_tokens_come_out_whole() {
        let text = "Họp kế hoạch 😀";
        let bytes = text.as_bytes();
        let mut s = Utf8Stream::default();
        let mut out = String::new();
        for b in bytes {
            out.push_str(&s.push(&[*b]));
        }
        out.push_str(&s.finish());
        assert_eq!(out, text);
        // A byte that can never start a character is replaced, and what
        // follows still comes through.
        let mut s = Utf8Stream::default();
        assert_eq!(s.push(&[b'a', 0xff, b'b']), "a\u{FFFD}b");
        assert_eq!(s.push(&[0xe1, 0xbb]), "");
        assert_eq!(s.finish(), "\u{FFFD}");
    }

    #[test]
    fn stop_sequences_are_never_sent_even_in_part() {
        let mut f = StopFilter::new(vec!["<END>".into()]);
        let mut sent = String::new();
        for piece in ["The budget", " was cut <", "EN", "D> and more"] {
            sent.push_str(&f.push(piece));
            assert!(!sent.contains('<'), "{sent:?}");
        }
        assert!(f.stopped());
        assert_eq!(sent, "The budget was cut ");
        // A held prefix that turns out not to be a stop is released.
        let mut f = StopFilter::new(vec!["<END>".into()]);
        assert_eq!(f.push("a <E"), "a ");
        assert_eq!(f.push("x"), "<Ex");
        assert_eq!(f.push("<"), "");
        assert_eq!(f.finish(), "<");
        // No stops: everything passes at once.
        let mut f = StopFilter::new(Vec::new());
        assert_eq!(f.push("all of it"), "all of it");
    }
}
