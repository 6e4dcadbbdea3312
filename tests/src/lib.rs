//! Test harness: each test gets its own database, cloned from a template
//! that has `pg_s2t` installed, on the throwaway cluster `make test` starts.
//!
//! The cluster is described by two variables that `scripts/test.sh` sets:
//! `S2T_TEST_ADMIN_URL` (a superuser DSN) and `S2T_TEST_TEMPLATE`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use tokio_postgres::{Client, NoTls};
use uuid::Uuid;

/// A login role that is a member of `s2t_app`, created by the test script.
pub const APP_LOGIN: &str = "s2t_gateway";
/// A login role that is a member of `s2t_worker`.
pub const WORKER_LOGIN: &str = "s2t_worker_svc";

static COUNTER: AtomicU32 = AtomicU32::new(0);

fn admin_url() -> String {
    std::env::var("S2T_TEST_ADMIN_URL").expect(
        "S2T_TEST_ADMIN_URL is not set: run the SQL tests through `make test`, which starts their cluster",
    )
}

/// Connect and drive the connection on the runtime.
pub async fn connect(url: &str) -> Client {
    let (client, connection) = tokio_postgres::connect(url, NoTls)
        .await
        .unwrap_or_else(|e| panic!("connect to {url}: {e}"));
    tokio::spawn(async move {
        let _ = connection.await;
    });
    client
}

/// A fresh database with the extension installed.
pub struct TestDb {
    pub name: String,
    pub admin: Client,
}

impl TestDb {
    pub async fn new() -> TestDb {
        let template = std::env::var("S2T_TEST_TEMPLATE").unwrap_or_else(|_| "s2t_template".into());
        let name = format!(
            "t_{}_{}_{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::SeqCst),
            Uuid::new_v4()
                .simple()
                .to_string()
                .get(..8)
                .expect("uuid has 32 hex digits")
        );
        let root = connect(&admin_url()).await;
        root.batch_execute(&format!("CREATE DATABASE {name} TEMPLATE {template}"))
            .await
            .expect("create test database");
        // As make run sets it up: no temporary objects for the services.
        root.batch_execute(&format!("REVOKE TEMPORARY ON DATABASE {name} FROM PUBLIC"))
            .await
            .expect("revoke TEMP");
        let admin = connect(&Self::url_for(&name, "s2t")).await;
        TestDb { name, admin }
    }

    /// A fresh database without the extension (to test installing and
    /// upgrading it).
    pub async fn empty() -> TestDb {
        let name = format!(
            "e_{}_{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::SeqCst)
        );
        let root = connect(&admin_url()).await;
        root.batch_execute(&format!("CREATE DATABASE {name}"))
            .await
            .expect("create empty database");
        Self::reconnect(&name).await
    }

    /// A new handle on an existing database, e.g. after a server restart.
    pub async fn reconnect(name: &str) -> TestDb {
        let admin = connect(&Self::url_for(name, "s2t")).await;
        TestDb {
            name: name.to_string(),
            admin,
        }
    }

    fn url_for(db: &str, user: &str) -> String {
        let base = admin_url();
        let (_, rest) = base.split_once('@').expect("admin url has user@host");
        let host = rest
            .rsplit_once('/')
            .map(|(h, _)| h)
            .expect("admin url has /db");
        format!("postgres://{user}@{host}/{db}")
    }

    /// The DSN of this database for a login role.
    pub fn url(&self, user: &str) -> String {
        Self::url_for(&self.name, user)
    }

    /// A new connection as a login role (trust auth on the test cluster).
    pub async fn connect_as(&self, user: &str) -> Client {
        connect(&self.url(user)).await
    }

    /// A new superuser connection to this database.
    pub async fn connect_admin(&self) -> Client {
        connect(&self.url("s2t")).await
    }
}

/// The SQLSTATE of a database error, or a panic that shows what came back.
pub fn sqlstate(err: &tokio_postgres::Error) -> &str {
    err.as_db_error()
        .unwrap_or_else(|| panic!("expected a database error, got {err}"))
        .code()
        .code()
}

/// Assert that a call failed with `code`, and return the server's message
/// (message, detail, hint) for further checks.
pub fn expect_code<T: std::fmt::Debug>(
    result: Result<T, tokio_postgres::Error>,
    code: &str,
) -> (String, String, String) {
    let err = result.expect_err(&format!("expected SQLSTATE {code}"));
    let db = err
        .as_db_error()
        .unwrap_or_else(|| panic!("expected a database error, got {err}"));
    assert_eq!(
        db.code().code(),
        code,
        "wrong SQLSTATE; message: {}",
        db.message()
    );
    (
        db.message().to_string(),
        db.detail().unwrap_or_default().to_string(),
        db.hint().unwrap_or_default().to_string(),
    )
}

/// Register a user through the extension and return its id.
pub async fn register(client: &Client, user_name: &str) -> Uuid {
    client
        .query_one(
            "SELECT s2t.register_user($1, $2, '$argon2id$test', $3)",
            &[
                &format!("{user_name}@example.com"),
                &user_name,
                &format!("Name of {user_name}"),
            ],
        )
        .await
        .expect("register user")
        .get(0)
}

/// Put a user on a plan with the given limits (a private plan per call).
pub async fn set_limits(client: &Client, user: Uuid, usage_limit: i32, minutes: i32) {
    let code = format!("TEST_{}", Uuid::new_v4().simple());
    client
        .execute(
            "INSERT INTO s2t.plans (code, name, monthly_minutes, monthly_usage_limit) VALUES ($1, $1, $2, $3)",
            &[&code, &minutes, &usage_limit],
        )
        .await
        .expect("create plan");
    client
        .execute(
            "UPDATE s2t.user_subscriptions SET plan_id = (SELECT id FROM s2t.plans WHERE code = $1) WHERE user_id = $2",
            &[&code, &user],
        )
        .await
        .expect("move user to plan");
}

/// Seconds charged to the user's current cycle.
pub async fn used_seconds(db: &TestDb, user: Uuid) -> i32 {
    db.admin
        .query_one(
            "SELECT used_seconds FROM s2t.user_subscriptions WHERE user_id = $1",
            &[&user],
        )
        .await
        .expect("subscription")
        .get(0)
}

/// Create a recording as a trusted caller and return its id. An upload
/// declares a 1 s length, as the gateway does from the file's header; a
/// realtime session's length is unknown.
pub async fn new_recording(client: &Client, user: Uuid, source: &str) -> Uuid {
    let expected_ms: Option<i32> = (source == "upload").then_some(1000);
    client
        .query_one(
            "SELECT s2t.check_quota_and_create_recording($1, $2, 'en', '{}', NULL, $3)",
            &[&user, &source, &expected_ms],
        )
        .await
        .expect("create recording")
        .get(0)
}

/// Store `bytes` as the audio of the `db:` recording `rec`, as the gateway
/// does: 1 MiB chunks under a fresh audio id, then `s2t.attach_audio`.
/// Run it inside a transaction (the chunks' foreign key is checked at
/// commit, after the attach). Returns the audio id.
pub async fn store_audio(
    client: &Client,
    rec: Uuid,
    owner: Uuid,
    bytes: &[u8],
    content_type: &str,
) -> Uuid {
    let audio = Uuid::new_v4();
    for (i, piece) in bytes.chunks(1024 * 1024).enumerate() {
        client
            .execute(
                "INSERT INTO s2t.recording_audio_chunks (audio_id, byte_offset, user_id, data) VALUES ($1, $2, $3, $4)",
                &[&audio, &((i * 1024 * 1024) as i64), &owner, &piece],
            )
            .await
            .expect("store an audio chunk");
    }
    client
        .execute(
            "SELECT s2t.attach_audio($1, $2, $3)",
            &[&rec, &audio, &content_type],
        )
        .await
        .expect("attach the audio");
    audio
}

/// Start a transaction acting for `user` (as the gateway does).
pub async fn act_as(client: &Client, user: Uuid) {
    client.batch_execute("BEGIN").await.expect("begin");
    client
        .execute(
            "SELECT set_config('s2t.user_id', $1, true)",
            &[&user.to_string()],
        )
        .await
        .expect("set s2t.user_id");
}

/// One segment as JSON.
pub fn seg(idx: i32, start_ms: i32, end_ms: i32, text: &str) -> serde_json::Value {
    serde_json::json!({"idx": idx, "start_ms": start_ms, "end_ms": end_ms, "text": text})
}

/// LISTEN on `channel` from a new superuser connection; notifications arrive
/// on the receiver as `(channel, payload)`. Keep the client alive while
/// listening.
pub async fn listen(
    db: &TestDb,
    channel: &str,
) -> (
    Client,
    tokio::sync::mpsc::UnboundedReceiver<(String, String)>,
) {
    use futures_util::StreamExt;
    let (client, mut connection) = tokio_postgres::connect(&db.url("s2t"), NoTls)
        .await
        .expect("connect listener");
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
    tokio::spawn(async move {
        while let Some(Ok(message)) = messages.next().await {
            if let tokio_postgres::AsyncMessage::Notification(n) = message {
                let _ = tx.send((n.channel().to_string(), n.payload().to_string()));
            }
        }
    });
    client
        .batch_execute(&format!("LISTEN {channel}"))
        .await
        .expect("LISTEN");
    (client, rx)
}

/// Run a tool from apt and panic with its stderr if it fails.
pub fn run(program: &str, args: &[&str]) {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("{program} must be installed: {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// sox output options for what the tests feed the worker: 16 kHz mono 16-bit.
pub const SOX_16K_MONO: [&str; 6] = ["-r", "16000", "-c", "1", "-b", "16"];

/// `seconds` of 16 kHz mono s16 silence written to `path` by sox.
pub fn silence_wav(path: &Path, seconds: f32) {
    let p = path.to_str().expect("a UTF-8 path");
    let secs = seconds.to_string();
    run(
        "sox",
        &[
            "-n", "-r", "16000", "-c", "1", "-b", "16", p, "trim", "0", &secs,
        ],
    );
}

/// espeak-ng speech as a 16 kHz mono 16-bit WAV, with `pad_s` seconds of
/// silence before and after.
pub fn speech_wav(text: &str, voice: &str, pad_s: f32, dir: &Path, name: &str) -> PathBuf {
    let raw = dir.join(format!("{name}.raw.wav"));
    let wav = dir.join(format!("{name}.wav"));
    run(
        "espeak-ng",
        &["-v", voice, "-s", "150", "-w", raw.to_str().unwrap(), text],
    );
    let pad = pad_s.to_string();
    let mut args = vec![raw.to_str().unwrap()];
    args.extend_from_slice(&SOX_16K_MONO);
    args.extend_from_slice(&[wav.to_str().unwrap(), "pad", &pad, &pad]);
    run("sox", &args);
    wav
}

/// The models `make models` built (`S2T_MODELS_DIR`, set by `make test`).
pub fn models_dir() -> PathBuf {
    PathBuf::from(std::env::var("S2T_MODELS_DIR").expect("make test sets S2T_MODELS_DIR"))
}

/// `s2t-worker run` against this database, polling every second, with the
/// test models, two threads and no maintenance.
pub fn worker_command(bin: &Path, db: &TestDb) -> Command {
    let models = models_dir();
    let mut cmd = Command::new(bin);
    cmd.args([
        "run",
        "--poll-secs",
        "1",
        "--maintenance-secs",
        "0",
        "--threads",
        "2",
    ])
    .env("WORKER_DATABASE_URL", db.url(WORKER_LOGIN))
    .env("S2T_MODEL", models.join("ggml-base.bin"))
    .env("S2T_MODEL_EN", models.join("ggml-tiny.en.bin"));
    cmd
}

/// Lower-cased words without punctuation; hyphens split words and the
/// abbreviations Whisper writes are spelled out, as in the references.
pub fn words(text: &str) -> Vec<String> {
    text.replace('-', " ")
        .split_whitespace()
        .map(|w| {
            w.trim_matches(|c: char| !c.is_alphanumeric())
                .to_lowercase()
        })
        .filter(|w| !w.is_empty())
        .map(|w| match w.as_str() {
            "mr" => "mister".to_string(),
            "mrs" => "missus".to_string(),
            _ => w,
        })
        .collect()
}

/// The five read sentences of Debian's pocketsphinx-testdata, with their
/// reference transcripts.
pub fn librivox() -> Vec<(PathBuf, String)> {
    let dir = Path::new("/usr/share/pocketsphinx/test/data/librivox");
    let listing = std::fs::read_to_string(dir.join("transcription"))
        .expect("apt package pocketsphinx-testdata is installed");
    listing
        .lines()
        .filter_map(|line| {
            let (text, id) = line.rsplit_once(" (")?;
            let id = id.trim_end_matches(')');
            let text = text.replace("<s>", "").replace("</s>", "");
            Some((dir.join(format!("{id}.wav")), text.trim().to_string()))
        })
        .collect()
}

/// Word error rate of `hypothesis` against `reference` (Levenshtein over
/// words).
pub fn wer(reference: &str, hypothesis: &str) -> f64 {
    let r = words(reference);
    let h = words(hypothesis);
    let mut prev: Vec<usize> = (0..=h.len()).collect();
    for (i, rw) in r.iter().enumerate() {
        let mut cur = vec![i + 1; h.len() + 1];
        for (j, hw) in h.iter().enumerate() {
            let sub = prev[j] + usize::from(rw != hw);
            cur[j + 1] = sub.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[h.len()] as f64 / r.len().max(1) as f64
}

/// A done recording of `user` with these segments; returns its id.
pub async fn done_recording(
    c: &Client,
    user: Uuid,
    segments: serde_json::Value,
    language: &str,
) -> Uuid {
    let rec: Uuid = c
        .query_one(
            "SELECT s2t.check_quota_and_create_recording($1, 'upload', $2, '{}', NULL, 600000)",
            &[&user, &language],
        )
        .await
        .expect("create recording")
        .get(0);
    c.query_one(
        "SELECT s2t.complete_recording($1, 600000, $2)",
        &[&rec, &segments],
    )
    .await
    .expect("complete");
    rec
}

/// The embedding model `make models` installs (the extension's default).
pub const EMBED_MODEL: &str = "all-MiniLM-L6-v2-int8";

/// Embed every chunk waiting, the way a worker does: claim, embed (here
/// with the backend's own model), store.
pub async fn embed_all(c: &Client) -> i64 {
    let mut stored = 0i64;
    loop {
        let rows = c
            .query(
                "SELECT chunk_id, content_hash, text FROM s2t.claim_chunks_to_embed($1, 50)",
                &[&EMBED_MODEL],
            )
            .await
            .expect("claim");
        if rows.is_empty() {
            return stored;
        }
        let ids: Vec<Uuid> = rows.iter().map(|r| r.get(0)).collect();
        let hashes: Vec<String> = rows.iter().map(|r| r.get(1)).collect();
        let mut flat: Vec<f32> = Vec::new();
        for r in &rows {
            let v: Vec<f32> = c
                .query_one("SELECT s2t._embed_query($1)", &[&r.get::<_, String>(2)])
                .await
                .expect("embed")
                .get(0);
            flat.extend(v);
        }
        let n: i32 = c
            .query_one(
                "SELECT s2t.store_chunk_embeddings($1, $2, $3, $4)",
                &[&EMBED_MODEL, &ids, &hashes, &flat],
            )
            .await
            .expect("store")
            .get(0);
        stored += i64::from(n);
    }
}
