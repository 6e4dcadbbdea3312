//! A client of any OpenAI-compatible chat-completions server (`s2t-llm`,
//! llama.cpp's server, vLLM, OpenAI itself): streamed answers with a
//! deadline, so that a slow, dead or killed model ends in an error the
//! caller can fall back from, never in a hang.

use futures_util::{Stream, StreamExt};
use serde_json::{json, Value};
use std::time::Duration;
use tokio::time::Instant;

#[derive(Debug, Clone)]
pub struct Llm {
    http: reqwest::Client,
    url: String,
    pub model: String,
    key: Option<String>,
    /// The whole answer must arrive within this.
    timeout: Duration,
    /// And no gap between two pieces may be longer than this.
    idle: Duration,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum LlmError {
    #[error("the chat model at {0} cannot be reached: {1}")]
    Unreachable(String, String),
    #[error("the chat model answered HTTP {0}: {1}")]
    Status(u16, String),
    #[error("the chat model did not answer within {0} s")]
    Timeout(u64),
    #[error("the chat model's answer broke off: {0}")]
    Broken(String),
}

impl Llm {
    /// The configured model, if any: `S2T_LLM_URL` is the API's base (for
    /// example `http://127.0.0.1:8091/v1`).
    pub fn from_config(c: &crate::Config) -> anyhow::Result<Option<Llm>> {
        let Some(url) = c.llm_url.as_deref().filter(|u| !u.is_empty()) else {
            return Ok(None);
        };
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            anyhow::bail!("S2T_LLM_URL must be an http:// or https:// URL, got {url:?}");
        }
        let Some(model) = c.llm_model.clone().filter(|m| !m.is_empty()) else {
            anyhow::bail!("S2T_LLM_URL is set but S2T_LLM_MODEL is not: name the chat model");
        };
        let timeout = Duration::from_secs(c.llm_timeout_secs.max(1));
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(3))
            .build()?;
        Ok(Some(Llm {
            http,
            url: format!("{}/chat/completions", url.trim_end_matches('/')),
            model,
            key: c.llm_api_key.clone().filter(|k| !k.is_empty()),
            idle: timeout.min(Duration::from_secs(15)),
            timeout,
        }))
    }

    /// Starts a streamed answer to `messages`; yields its text piece by
    /// piece. Every wait is bounded by the deadline.
    pub async fn stream(
        &self,
        messages: &Value,
        max_tokens: u32,
    ) -> Result<impl Stream<Item = Result<String, LlmError>> + Send + 'static, LlmError> {
        let deadline = Instant::now() + self.timeout;
        let secs = self.timeout.as_secs();
        let mut req = self.http.post(&self.url).json(&json!({
            "model": self.model, "messages": messages, "stream": true,
            "max_tokens": max_tokens, "temperature": 0,
        }));
        if let Some(k) = &self.key {
            req = req.bearer_auth(k);
        }
        let resp = match tokio::time::timeout_at(deadline, req.send()).await {
            Err(_) => return Err(LlmError::Timeout(secs)),
            Ok(Err(e)) => return Err(LlmError::Unreachable(self.url.clone(), root(&e))),
            Ok(Ok(r)) => r,
        };
        let status = resp.status();
        if !status.is_success() {
            let body = tokio::time::timeout_at(deadline, resp.text())
                .await
                .ok()
                .and_then(|r| r.ok())
                .unwrap_or_default();
            return Err(LlmError::Status(status.as_u16(), error_message(&body)));
        }
        let idle = self.idle;
        let bytes = resp.bytes_stream();
        let state = (bytes, SseLines::default(), false);
        Ok(futures_util::stream::unfold(
            state,
            move |(mut bytes, mut lines, done)| async move {
                if done {
                    return None;
                }
                loop {
                    if let Some(line) = lines.next_line() {
                        match parse_line(&line) {
                            Line::Skip => continue,
                            Line::Text(t) => return Some((Ok(t), (bytes, lines, false))),
                            Line::Done => return None,
                            Line::Error(m) => {
                                return Some((Err(LlmError::Broken(m)), (bytes, lines, true)))
                            }
                        }
                    }
                    let wait = deadline.min(Instant::now() + idle);
                    match tokio::time::timeout_at(wait, bytes.next()).await {
                        Err(_) => {
                            return Some((Err(LlmError::Timeout(secs)), (bytes, lines, true)))
                        }
                        Ok(None) => {
                            let e = LlmError::Broken("the stream ended before [DONE]".into());
                            return Some((Err(e), (bytes, lines, true)));
                        }
                        Ok(Some(Err(e))) => {
                            let e = LlmError::Broken(root(&e));
                            return Some((Err(e), (bytes, lines, true)));
                        }
                        Ok(Some(Ok(chunk))) => lines.push(&chunk),
                    }
                }
            },
        ))
    }
}

/// The innermost cause of an HTTP error ("connection refused").
fn root(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}

/// An OpenAI error body's message, or the body itself (cut short).
fn error_message(body: &str) -> String {
    serde_json::from_str::<Value>(body)
        .ok()
        .and_then(|v| v["error"]["message"].as_str().map(str::to_string))
        .unwrap_or_else(|| body.chars().take(200).collect())
}

/// Server-Sent Event lines from arbitrary byte chunks.
#[derive(Debug, Default)]
struct SseLines {
    buf: Vec<u8>,
}

impl SseLines {
    fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    fn next_line(&mut self) -> Option<String> {
        let end = self.buf.iter().position(|&b| b == b'\n')?;
        let line: Vec<u8> = self.buf.drain(..=end).collect();
        Some(
            String::from_utf8_lossy(&line)
                .trim_end_matches(['\r', '\n'])
                .to_string(),
        )
    }
}

#[derive(Debug, PartialEq)]
enum Line {
    Skip,
    Text(String),
    Done,
    Error(String),
}

/// One line of an OpenAI chat-completions stream.
fn parse_line(line: &str) -> Line {
    let Some(data) = line.strip_prefix("data:") else {
        return Line::Skip; // blank separators, comments, event names
    };
    let data = data.trim();
    if data == "[DONE]" {
        return Line::Done;
    }
    let Ok(v) = serde_json::from_str::<Value>(data) else {
        return Line::Error(format!(
            "not JSON: {}",
            data.chars().take(80).collect::<String>()
        ));
    };
    if let Some(m) = v["error"]["message"].as_str() {
        return Line::Error(m.to_string());
    }
    match v["choices"][0]["delta"]["content"].as_str() {
        Some(t) if !t.is_empty() => Line::Text(t.to_string()),
        _ => Line::Skip,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stream_lines_are_read_across_chunks() {
        let mut l = SseLines::default();
        l.push(b"data: {\"choices\":[{\"delta\":{\"content\":\"Hel");
        assert_eq!(l.next_line(), None);
        l.push(b"lo\"}}]}\r\n\r\ndata: [DONE]\n");
        let first = l.next_line().unwrap();
        assert_eq!(parse_line(&first), Line::Text("Hello".into()));
        assert_eq!(parse_line(&l.next_line().unwrap()), Line::Skip);
        assert_eq!(parse_line(&l.next_line().unwrap()), Line::Done);
        assert_eq!(l.next_line(), None);
    }

    #[test]
    fn roles_empty_deltas_errors_and_garbage_are_told_apart() {
        assert_eq!(
            parse_line(r#"data: {"choices":[{"delta":{"role":"assistant","content":""}}]}"#),
            Line::Skip
        );
        assert_eq!(parse_line(": keep-alive"), Line::Skip);
        assert_eq!(
            parse_line(r#"data: {"error":{"message":"overloaded"}}"#),
            Line::Error("overloaded".into())
        );
        assert!(matches!(parse_line("data: <html>"), Line::Error(_)));
        assert_eq!(
            error_message(r#"{"error":{"message":"bad model"}}"#),
            "bad model"
        );
        assert_eq!(error_message("plain"), "plain");
    }
}
