//! The test stack: a database cloned from the template with pg_s2t, the
//! gateway bound to a loopback port, and (when asked) the release worker.
#![allow(dead_code)]

use reqwest::multipart::{Form, Part};
use reqwest::{Client, StatusCode};
use s2t_gateway::{AppState, Config};
use s2t_tests::{TestDb, APP_LOGIN};
use serde_json::{json, Value};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

pub const SECRET: &str = "test-secret-0123456789-abcdefghijklmnop";

pub struct Stack {
    pub db: TestDb,
    pub base: String,
    pub http: Client,
    pub spool: PathBuf,
    pub worker: Option<std::process::Child>,
}

impl Drop for Stack {
    fn drop(&mut self) {
        if let Some(mut w) = self.worker.take() {
            let _ = w.kill();
            let _ = w.wait();
        }
        let _ = std::fs::remove_dir_all(&self.spool);
    }
}

pub fn temp_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("s2t-gw-{tag}-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

pub async fn stack(max_upload_bytes: u64, with_worker: bool) -> Stack {
    stack_with(max_upload_bytes, with_worker, |_| {}).await
}

/// The test configuration for `db`, before any test's changes.
pub fn test_config(db: &TestDb, spool: &std::path::Path, max_upload_bytes: u64) -> Config {
    let mut config = Config::new(db.url(APP_LOGIN));
    config.listen = "127.0.0.1:0".parse().unwrap();
    config.jwt_secret = Some(SECRET.into());
    config.access_ttl_secs = 900;
    config.refresh_ttl_secs = 3600;
    config.max_upload_bytes = max_upload_bytes;
    config.cors_origins = vec!["http://app.test".into()];
    config.spool_dir = Some(spool.to_path_buf());
    config.db_pool = 4;
    config.model_names = vec!["tiny.en".into(), "base".into()];
    config.sync_max_bytes = max_upload_bytes;
    config.sync_timeout_secs = 120;
    config.trusted_proxies = vec!["127.0.0.1".parse().unwrap()];
    config
}

/// [`stack`] with the configuration changed by `tweak`.
pub async fn stack_with(
    max_upload_bytes: u64,
    with_worker: bool,
    tweak: impl FnOnce(&mut Config),
) -> Stack {
    let db = TestDb::new().await;
    let spool = temp_dir("spool");
    let mut config = test_config(&db, &spool, max_upload_bytes);
    tweak(&mut config);
    let base = serve(config).await.expect("gateway starts");
    let worker = with_worker.then(|| {
        let bin = std::env::var("S2T_WORKER_BIN").expect("make test sets S2T_WORKER_BIN");
        s2t_tests::worker_command(bin.as_ref(), &db)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the worker")
    });
    Stack {
        db,
        base,
        // No connection reuse: a refused upload closes its connection, and a
        // pooled client would send the next request into it.
        http: Client::builder().pool_max_idle_per_host(0).build().unwrap(),
        spool,
        worker,
    }
}

/// Start a gateway with `config` on a loopback port, as `main` does
/// (including its refusal to start); its base URL.
pub async fn serve(config: Config) -> anyhow::Result<String> {
    let state = AppState::connect(config).await?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(s2t_gateway::run(listener, state, std::future::pending()));
    Ok(base)
}

/// A gateway on `config` without the start-up checks, to see what a
/// running gateway says when things change under it.
pub async fn serve_unchecked(config: Config) -> String {
    let state = AppState::new(config).expect("gateway state");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(s2t_gateway::run(listener, state, std::future::pending()));
    base
}

impl Stack {
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub async fn post_json(
        &self,
        path: &str,
        body: Value,
        token: Option<&str>,
    ) -> (StatusCode, Value) {
        let mut req = self.http.post(self.url(path)).json(&body);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let res = req.send().await.unwrap();
        let status = res.status();
        (status, res.json().await.unwrap_or(Value::Null))
    }

    pub async fn get(&self, path: &str, token: &str) -> reqwest::Response {
        self.http
            .get(self.url(path))
            .bearer_auth(token)
            .send()
            .await
            .unwrap()
    }

    pub async fn get_json(&self, path: &str, token: &str) -> (StatusCode, Value) {
        let res = self.get(path, token).await;
        let status = res.status();
        (status, res.json().await.unwrap_or(Value::Null))
    }

    pub async fn login(&self, login: &str, password: &str) -> (StatusCode, Value) {
        self.post_json(
            "/auth/login",
            json!({"login": login, "password": password}),
            None,
        )
        .await
    }

    pub async fn refresh(&self, token: &str) -> (StatusCode, Value) {
        self.post_json("/auth/refresh", json!({"refresh_token": token}), None)
            .await
    }

    /// Register and log in at another gateway on this database.
    pub async fn user_at(&self, base: &str, name: &str) -> String {
        let res = self
            .http
            .post(format!("{base}/auth/register"))
            .json(
                &json!({"email": format!("{name}@example.com"), "user_name": name,
                          "password": "a good password"}),
            )
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::CREATED);
        let res = self
            .http
            .post(format!("{base}/auth/login"))
            .json(&json!({"login": name, "password": "a good password"}))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        let body: Value = res.json().await.unwrap();
        body["access_token"].as_str().unwrap().to_string()
    }

    /// Register and log in; returns (access, refresh).
    pub async fn user(&self, name: &str) -> (String, String) {
        let (s, body) = self
            .post_json(
                "/auth/register",
                json!({"email": format!("{name}@example.com"), "user_name": name,
                       "password": "a good password", "name": format!("Name {name}")}),
                None,
            )
            .await;
        assert_eq!(s, StatusCode::CREATED, "{body}");
        let (s, tokens) = self
            .post_json(
                "/auth/login",
                json!({"login": name, "password": "a good password"}),
                None,
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{tokens}");
        (
            tokens["access_token"].as_str().unwrap().to_string(),
            tokens["refresh_token"].as_str().unwrap().to_string(),
        )
    }

    /// `POST /recordings` with any multipart form.
    pub async fn post_form(&self, token: &str, form: Form) -> reqwest::Response {
        self.http
            .post(self.url("/recordings"))
            .bearer_auth(token)
            .multipart(form)
            .send()
            .await
            .unwrap()
    }

    pub async fn upload(&self, token: &str, bytes: Vec<u8>, language: &str) -> (StatusCode, Value) {
        let form = Form::new().text("language", language.to_string()).part(
            "file",
            Part::bytes(bytes)
                .file_name("speech.wav")
                .mime_str("audio/wav")
                .unwrap(),
        );
        let res = self.post_form(token, form).await;
        let status = res.status();
        (status, res.json().await.unwrap_or(Value::Null))
    }

    /// Follow the SSE stream to a final status; returns every event.
    pub async fn follow(&self, token: &str, id: &str) -> Vec<Value> {
        use futures_util::StreamExt;
        let res = self.get(&format!("/recordings/{id}/events"), token).await;
        assert_eq!(res.status(), StatusCode::OK);
        assert!(res.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream"));
        let mut stream = res.bytes_stream();
        let mut buf = String::new();
        let mut events = Vec::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
        while let Ok(Some(chunk)) = tokio::time::timeout_at(deadline, stream.next()).await {
            buf.push_str(&String::from_utf8_lossy(&chunk.unwrap()));
            while let Some(end) = buf.find("\n\n") {
                let block: String = buf.drain(..end + 2).collect();
                if let Some(data) = block.lines().find_map(|l| l.strip_prefix("data: ")) {
                    events.push(serde_json::from_str::<Value>(data).unwrap());
                }
            }
        }
        events
    }

    pub async fn count(&self, sql: &str) -> i64 {
        self.db.admin.query_one(sql, &[]).await.unwrap().get(0)
    }
}

/// espeak-ng English as WAV bytes.
pub fn speech_wav(text: &str) -> Vec<u8> {
    let dir = temp_dir("speech");
    let wav = s2t_tests::speech_wav(text, "en-us", 0.5, &dir, "speech");
    let bytes = std::fs::read(&wav).unwrap();
    std::fs::remove_dir_all(&dir).ok();
    bytes
}

/// Run one of this directory's Python clients (`gateway/tests/<script>`)
/// with the project's test Python against `base` with `token`; its stdout
/// as JSON. Fails the test with its stderr if it fails.
pub async fn python_client(script: &str, arg: &std::path::Path, base: &str, token: &str) -> Value {
    let python = std::env::var("S2T_PYTHON").expect("make test sets S2T_PYTHON");
    // The directory at run time (cargo sets it), not the one compiled in:
    // a build shared with another checkout would point there.
    let here =
        std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").into());
    let script = PathBuf::from(here).join("tests").join(script);
    let (arg, base, token) = (arg.to_path_buf(), base.to_string(), token.to_string());
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(python)
            .arg(script)
            .arg(&arg)
            .env("BASE_URL", base)
            .env("TOKEN", token)
            .output()
            .expect("run the Python client")
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("the client prints JSON")
}

/// The whole seconds of a response's `Retry-After` header (which must be
/// there).
pub fn retry_after(res: &reqwest::Response) -> u64 {
    res.headers()["retry-after"]
        .to_str()
        .expect("Retry-After is text")
        .parse()
        .expect("Retry-After is whole seconds")
}

/// Upload `wav` as `language` and follow it to done; returns its id.
pub async fn transcribed(s: &Stack, token: &str, wav: Vec<u8>, language: &str) -> String {
    let (status, body) = s.upload(token, wav, language).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let id = body["id"].as_str().unwrap().to_string();
    let events = s.follow(token, &id).await;
    assert_eq!(
        events.last().map(|e| e["status"].clone()),
        Some(Value::from("done")),
        "{events:?}"
    );
    id
}

/// Wait until every chunk has its vector (the worker embeds them).
pub async fn all_embedded(s: &Stack) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    loop {
        let waiting = s
            .count("SELECT unembedded FROM s2t.embedding_backlog()")
            .await;
        let chunks = s.count("SELECT count(*) FROM s2t.transcript_chunks").await;
        if waiting == 0 && chunks > 0 {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{waiting} of {chunks} chunks still without a vector"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}
