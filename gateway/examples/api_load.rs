//! Load generator for `make bench-api`, run as its own process against a
//! gateway on loopback: login throughput, `GET /recordings` latency at 64
//! concurrent clients, and upload-to-done latency for a 30 s file.

use futures_util::StreamExt;
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(clap::Parser)]
struct Args {
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    base: String,
    #[arg(long, default_value_t = 8)]
    users: usize,
    #[arg(long)]
    wav: String,
    #[arg(long, default_value = "bench/results/api.json")]
    out: String,
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Written once the users exist; the run continues when `go` exists
    /// (the bench script seeds recordings in between).
    #[arg(long = "ready-file")]
    ready: Option<String>,
    #[arg(long = "go-file")]
    go: Option<String>,
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

/// Run `clients` loops of `call` for `seconds`; returns (ok, errors,
/// sorted latencies in ms, wall seconds).
async fn hammer<F, Fut>(clients: usize, seconds: u64, call: F) -> (usize, usize, Vec<f64>, f64)
where
    F: Fn(usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = bool> + Send,
{
    let call = Arc::new(call);
    let started = Instant::now();
    let deadline = started + Duration::from_secs(seconds);
    let mut tasks = Vec::new();
    for c in 0..clients {
        let call = call.clone();
        tasks.push(tokio::spawn(async move {
            let (mut ok, mut err, mut lat) = (0, 0, Vec::new());
            while Instant::now() < deadline {
                let t = Instant::now();
                if call(c).await {
                    ok += 1;
                    lat.push(t.elapsed().as_secs_f64() * 1000.0);
                } else {
                    err += 1;
                }
            }
            (ok, err, lat)
        }));
    }
    let (mut ok, mut err, mut lat) = (0, 0, Vec::new());
    for t in tasks {
        let (o, e, l) = t.await.expect("client task");
        ok += o;
        err += e;
        lat.extend(l);
    }
    lat.sort_by(|a, b| a.partial_cmp(b).expect("no NaN"));
    (ok, err, lat, started.elapsed().as_secs_f64())
}

fn summary(name: &str, clients: usize, r: &(usize, usize, Vec<f64>, f64)) -> Value {
    let (ok, err, lat, wall) = r;
    let v = json!({
        "name": name, "clients": clients, "requests": ok, "errors": err,
        "per_second": (*ok as f64 / wall * 10.0).round() / 10.0,
        "p50_ms": (percentile(lat, 0.5) * 100.0).round() / 100.0,
        "p95_ms": (percentile(lat, 0.95) * 100.0).round() / 100.0,
        "p99_ms": (percentile(lat, 0.99) * 100.0).round() / 100.0,
    });
    println!(
        "{name:32} {clients:>3} clients {:>9.1} /s  p50 {:>8.2} ms  p95 {:>8.2} ms  errors {err}",
        v["per_second"].as_f64().unwrap_or_default(),
        v["p50_ms"].as_f64().unwrap_or_default(),
        v["p95_ms"].as_f64().unwrap_or_default()
    );
    v
}

#[tokio::main]
async fn main() {
    let a = <Args as clap::Parser>::parse();
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(128)
        .build()
        .expect("http client");
    let base = a.base.clone();
    let password = "bench password 1";
    let stamp = std::process::id();
    let mut tokens = Vec::new();
    for i in 0..a.users {
        let name = format!("bench{stamp}u{i}");
        let r = http
            .post(format!("{base}/auth/register"))
            .json(&json!({"email": format!("{name}@bench.test"), "user_name": name, "password": password}))
            .send()
            .await
            .expect("register");
        assert!(
            r.status().is_success(),
            "register: {}",
            r.text().await.unwrap_or_default()
        );
        let t: Value = http
            .post(format!("{base}/auth/login"))
            .json(&json!({"login": name, "password": password}))
            .send()
            .await
            .expect("login")
            .json()
            .await
            .expect("tokens");
        tokens.push(
            t["access_token"]
                .as_str()
                .expect("access token")
                .to_string(),
        );
    }
    if let (Some(ready), Some(go)) = (&a.ready, &a.go) {
        std::fs::write(ready, "users registered\n").expect("ready file");
        let waited = Instant::now();
        while !std::path::Path::new(go).exists() {
            assert!(waited.elapsed() < Duration::from_secs(120), "no go file");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let names: Arc<Vec<String>> =
        Arc::new((0..a.users).map(|i| format!("bench{stamp}u{i}")).collect());

    // Logins: argon2id makes each one deliberately expensive.
    let (h, b, n) = (http.clone(), base.clone(), names.clone());
    let login = hammer(8, a.seconds, move |c| {
        let (h, b, n) = (h.clone(), b.clone(), n.clone());
        async move {
            h.post(format!("{b}/auth/login"))
                .json(&json!({"login": n[c % n.len()], "password": password}))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success())
        }
    })
    .await;
    let login = summary("POST /auth/login", 8, &login);

    // Listing: each user has recordings (seeded by the bench script).
    let tokens = Arc::new(tokens);
    let (h, b, t) = (http.clone(), base.clone(), tokens.clone());
    let list = hammer(64, a.seconds, move |c| {
        let (h, b, t) = (h.clone(), b.clone(), t.clone());
        async move {
            h.get(format!("{b}/recordings?limit=20"))
                .bearer_auth(&t[c % t.len()])
                .send()
                .await
                .is_ok_and(|r| r.status().is_success())
        }
    })
    .await;
    let list = summary("GET /recordings?limit=20", 64, &list);

    // Upload to done, a 30 s file, three times, one at a time.
    let bytes = std::fs::read(&a.wav).expect("--wav file");
    let mut runs = Vec::new();
    for _ in 0..3 {
        let started = Instant::now();
        let form = reqwest::multipart::Form::new().text("language", "en").part(
            "file",
            reqwest::multipart::Part::bytes(bytes.clone()).file_name("speech30.wav"),
        );
        let r: Value = http
            .post(format!("{base}/recordings"))
            .bearer_auth(&tokens[0])
            .multipart(form)
            .send()
            .await
            .expect("upload")
            .json()
            .await
            .expect("upload answer");
        let accepted = started.elapsed().as_secs_f64();
        let id = r["id"].as_str().expect("recording id").to_string();
        let mut stream = http
            .get(format!("{base}/recordings/{id}/events"))
            .bearer_auth(&tokens[0])
            .send()
            .await
            .expect("events")
            .bytes_stream();
        let mut status = String::new();
        let mut buf = String::new();
        while let Some(Ok(chunk)) = stream.next().await {
            buf.push_str(&String::from_utf8_lossy(&chunk));
            for line in buf.lines() {
                if let Some(data) = line.strip_prefix("data: ") {
                    if let Ok(e) = serde_json::from_str::<Value>(data) {
                        status = e["status"].as_str().unwrap_or_default().to_string();
                    }
                }
            }
            if status == "done" || status == "failed" {
                break;
            }
        }
        let done = started.elapsed().as_secs_f64();
        println!("upload 30 s file: accepted in {accepted:.3} s, {status} in {done:.2} s");
        assert_eq!(status, "done");
        runs.push(json!({"accepted_s": (accepted * 1000.0).round() / 1000.0, "done_s": (done * 100.0).round() / 100.0}));
    }
    let mut done: Vec<f64> = runs
        .iter()
        .map(|r| r["done_s"].as_f64().unwrap_or_default())
        .collect();
    done.sort_by(|a, b| a.partial_cmp(b).expect("no NaN"));
    let report = json!({
        "benchmark": "api",
        "date": chrono::Utc::now().to_rfc3339(),
        "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        "login": login,
        "list_recordings": list,
        "upload_to_done_30s": {"runs": runs, "median_s": done[done.len() / 2]},
    });
    std::fs::write(
        &a.out,
        serde_json::to_string_pretty(&report).expect("json") + "\n",
    )
    .expect("write results");
    println!("wrote {}", a.out);
}
