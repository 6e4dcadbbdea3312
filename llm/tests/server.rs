//! The real `s2t-llm` binary with the real SmolLM2 model, over HTTP, and
//! through the official OpenAI Python client.

use serde_json::{json, Value};
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Server {
    child: Child,
    base: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn model_file() -> String {
    std::env::var("S2T_LLM_MODEL_FILE").expect("make test sets S2T_LLM_MODEL_FILE (make models)")
}

async fn start(extra: &[&str]) -> Server {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = Command::new(env!("CARGO_BIN_EXE_s2t-llm"))
        .args([
            "--model",
            &model_file(),
            "--listen",
            &format!("127.0.0.1:{port}"),
        ])
        .args(["--name", "smol"])
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start s2t-llm");
    let base = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(r) = reqwest::get(format!("{base}/healthz")).await {
            if r.status() == 200 {
                let v: Value = r.json().await.unwrap();
                assert_eq!(v["model"], "smol");
                break;
            }
        }
        assert!(Instant::now() < deadline, "s2t-llm did not become healthy");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Server { child, base }
}

fn ask(content: &str, max_tokens: u32, stream: bool) -> Value {
    json!({"model": "smol", "stream": stream, "max_tokens": max_tokens,
           "messages": [{"role": "system", "content": "Answer briefly."},
                        {"role": "user", "content": content}]})
}

/// The text of a streamed answer and its finish reason.
async fn streamed(http: &reqwest::Client, base: &str, body: &Value) -> (String, String) {
    let r = http
        .post(format!("{base}/v1/chat/completions"))
        .json(body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(r.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    let text = r.text().await.unwrap();
    let data: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .collect();
    assert_eq!(data.last(), Some(&"[DONE]"), "{text}");
    let chunks: Vec<Value> = data[..data.len() - 1]
        .iter()
        .map(|d| serde_json::from_str(d).unwrap())
        .collect();
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let content: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    let finish = chunks.last().unwrap()["choices"][0]["finish_reason"]
        .as_str()
        .unwrap()
        .to_string();
    (content, finish)
}

#[tokio::test]
async fn answers_stream_and_whole_alike_and_bad_requests_name_their_parameter() {
    let s = start(&[]).await;
    let http = reqwest::Client::new();
    let q = "What is the capital of France?";
    let whole: Value = http
        .post(format!("{}/v1/chat/completions", s.base))
        .json(&ask(q, 40, false))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let text = whole["choices"][0]["message"]["content"].as_str().unwrap();
    // What a 135M model knows is not ours to test; that it answers is.
    assert!(text.split_whitespace().count() >= 2, "{whole}");
    assert!(whole["usage"]["prompt_tokens"].as_u64().unwrap() > 10);
    let used = whole["usage"]["completion_tokens"].as_u64().unwrap();
    assert!((1..=40).contains(&used), "{whole}");
    // Greedy decoding: the streamed answer is the same text.
    let (streamed_text, finish) = streamed(&http, &s.base, &ask(q, 40, true)).await;
    assert_eq!(streamed_text, text);
    assert_eq!(
        finish,
        whole["choices"][0]["finish_reason"].as_str().unwrap()
    );
    // A limit of 3 tokens stops at 3, saying so.
    let (_, finish) = streamed(&http, &s.base, &ask("Count from one to twenty.", 3, true)).await;
    assert_eq!(finish, "length");

    let models: Value = reqwest::get(format!("{}/v1/models", s.base))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(models["data"][0]["id"], "smol");

    for (body, status, param) in [
        (json!({"messages": []}), 400, json!("messages")),
        (
            json!({"model": "gpt-9", "messages": [{"role": "user", "content": "x"}]}),
            404,
            json!("model"),
        ),
        (
            json!({"messages": [{"role": "user", "content": "x"}], "max_tokens": 100000}),
            400,
            json!("max_tokens"),
        ),
        (json!({"messages": "x"}), 400, Value::Null),
    ] {
        let r = http
            .post(format!("{}/v1/chat/completions", s.base))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), status, "{body}");
        let e: Value = r.json().await.unwrap();
        assert_eq!(e["error"]["param"], param, "{e}");
        assert!(!e["error"]["message"].as_str().unwrap().is_empty());
    }
    // A prompt longer than the context is refused before anything is
    // generated, even when streaming.
    let long = "budget ".repeat(5000);
    let r = http
        .post(format!("{}/v1/chat/completions", s.base))
        .json(&ask(&long, 10, true))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let e: Value = r.json().await.unwrap();
    assert!(
        e["error"]["message"].as_str().unwrap().contains("context"),
        "{e}"
    );
}

#[tokio::test]
async fn a_full_queue_is_refused_at_once_and_the_api_key_is_checked() {
    let s = start(&["--queue", "1", "--api-key", "k3y-for-the-test"]).await;
    let http = reqwest::Client::new();
    let r = http
        .post(format!("{}/v1/chat/completions", s.base))
        .json(&ask("hi", 5, false))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    // One answer decoding, one waiting: the rest get 503 with Retry-After.
    let mut calls = Vec::new();
    for _ in 0..5 {
        let (http, base) = (http.clone(), s.base.clone());
        calls.push(tokio::spawn(async move {
            let r = http
                .post(format!("{base}/v1/chat/completions"))
                .bearer_auth("k3y-for-the-test")
                .json(&ask("Write a long story about a cat.", 60, false))
                .send()
                .await
                .unwrap();
            let retry = r.headers().get("retry-after").is_some();
            (r.status().as_u16(), retry)
        }));
    }
    let mut ok = 0;
    let mut busy = 0;
    for c in calls {
        match c.await.unwrap() {
            (200, _) => ok += 1,
            (503, true) => busy += 1,
            other => panic!("unexpected {other:?}"),
        }
    }
    assert!(ok >= 1 && busy >= 1, "ok {ok}, busy {busy}");
    assert_eq!(ok + busy, 5);
}

#[tokio::test]
async fn the_official_openai_client_streams_from_it() {
    let Ok(python) = std::env::var("S2T_PYTHON") else {
        panic!("make test sets S2T_PYTHON (the venv with the openai package)");
    };
    let s = start(&[]).await;
    let script = r#"
import json, os, openai
c = openai.OpenAI(base_url=os.environ["BASE"] + "/v1", api_key="unused")
whole = c.chat.completions.create(model="smol", max_tokens=30,
    messages=[{"role": "user", "content": "What is the capital of France?"}])
parts = [ch.choices[0].delta.content or "" for ch in c.chat.completions.create(
    model="smol", max_tokens=30, stream=True,
    messages=[{"role": "user", "content": "What is the capital of France?"}])]
try:
    c.chat.completions.create(model="nope", messages=[{"role": "user", "content": "x"}])
    missing = None
except openai.NotFoundError as e:
    missing = e.status_code
print(json.dumps({"whole": whole.choices[0].message.content, "streamed": "".join(parts),
                  "chunks": len(parts), "missing": missing}))
"#;
    let base = s.base.clone();
    let out = tokio::task::spawn_blocking(move || {
        Command::new(python)
            .args(["-c", script])
            .env("BASE", base)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(!v["whole"].as_str().unwrap().trim().is_empty(), "{v}");
    assert_eq!(v["whole"], v["streamed"]);
    assert!(v["chunks"].as_u64().unwrap() > 3, "{v}");
    assert_eq!(v["missing"], 404);
}
