//! Load generator for `make bench-realtime`: real speech streamed through
//! the gateway's `/ws/s2t` at real-time pace by 1, 2, 4 and 8 concurrent
//! sessions, then one long session. For each run it reports
//! end-of-speech → final latency (p50, p95), first-partial latency, the
//! partial cadence, the `lag` the server reports, and the WER of the finals
//! against the batch transcript of the same audio.
//!
//! Latency is measured on the client's clock: the audio at `t` ms of the
//! stream is sent at `t` ms after the first frame, so a final whose last
//! word ends at `end_ms` arrived `received - sent(end_ms)` after that word
//! was spoken (this includes the pause the VAD waits for).

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use std::time::{Duration, Instant};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

#[derive(clap::Parser)]
struct Args {
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    base: String,
    /// 48 kHz mono s16le, raw.
    #[arg(long)]
    pcm: String,
    /// The batch transcript of one pass of `pcm`.
    #[arg(long)]
    reference: String,
    /// Concurrent sessions per run, e.g. 1,2,4,8.
    #[arg(long, value_delimiter = ',', default_value = "1,2,4,8")]
    sessions: Vec<usize>,
    #[arg(long, default_value_t = 60)]
    seconds: u64,
    /// The long single session (0: none).
    #[arg(long, default_value_t = 600)]
    long_seconds: u64,
    #[arg(long, default_value = "bench/results/realtime.json")]
    out: String,
    #[arg(long = "ready-file")]
    ready: Option<String>,
    #[arg(long = "go-file")]
    go: Option<String>,
}

fn percentile(sorted: &[f64], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    Some((sorted[i] * 1000.0).round() / 1000.0)
}

fn mean(v: &[f64]) -> Option<f64> {
    (!v.is_empty()).then(|| (v.iter().sum::<f64>() / v.len() as f64 * 1000.0).round() / 1000.0)
}

/// What one session saw, in seconds since its first frame.
#[derive(Default)]
struct Trace {
    /// (received at, message)
    messages: Vec<(f64, Value)>,
    closed_with: Option<u16>,
    audio_seconds: f64,
}

async fn register(http: &reqwest::Client, base: &str, name: &str) -> String {
    let body = json!({"email": format!("{name}@bench.test"), "user_name": name,
                      "password": "bench password 1", "name": name});
    let res = http
        .post(format!("{base}/auth/register"))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert!(
        res.status().is_success(),
        "register {name}: {}",
        res.status()
    );
    let res = http
        .post(format!("{base}/auth/login"))
        .json(&json!({"login": name, "password": "bench password 1"}))
        .send()
        .await
        .unwrap();
    let tokens: Value = res.json().await.unwrap();
    tokens["access_token"].as_str().unwrap().to_string()
}

/// Stream `pcm` looped to `seconds` at real-time pace, then stop.
async fn session(base: String, token: String, pcm: std::sync::Arc<Vec<u8>>, seconds: u64) -> Trace {
    let url = format!("{}/ws/s2t", base.replace("http://", "ws://"));
    let mut request = url.into_client_request().unwrap();
    request
        .headers_mut()
        .insert("authorization", format!("Bearer {token}").parse().unwrap());
    let (ws, _) = tokio_tungstenite::connect_async(request)
        .await
        .expect("upgrade");
    let (mut sink, mut stream) = ws.split();
    let start =
        json!({"type": "start", "language": "en", "sample_rate": 48000, "encoding": "pcm_s16le"});
    sink.send(Message::text(start.to_string())).await.unwrap();
    let t0 = Instant::now();
    let reader = tokio::spawn(async move {
        let mut trace = Trace::default();
        while let Some(m) = stream.next().await {
            match m {
                Ok(Message::Text(t)) => trace.messages.push((
                    t0.elapsed().as_secs_f64(),
                    serde_json::from_str(t.as_str()).unwrap(),
                )),
                Ok(Message::Close(f)) => {
                    trace.closed_with = f.map(|f| u16::from(f.code));
                    break;
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
        trace
    });
    let frame = 9600; // 100 ms
    let frames = (seconds * 10) as usize;
    let per_pass = pcm.len() / frame;
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    for i in 0..frames {
        tick.tick().await;
        let at = (i % per_pass) * frame;
        if sink
            .send(Message::binary(pcm[at..at + frame].to_vec()))
            .await
            .is_err()
        {
            break;
        }
    }
    let _ = sink.send(Message::text(r#"{"type":"stop"}"#)).await;
    let mut trace = tokio::time::timeout(Duration::from_secs(120), reader)
        .await
        .expect("the session ends")
        .unwrap();
    trace.audio_seconds = frames as f64 / 10.0;
    trace
}

/// The numbers of one run (all its sessions together).
fn summarise(traces: &[Trace], reference_pass: &str, pass_seconds: f64) -> Value {
    let mut eos = Vec::new();
    let mut first_partial = Vec::new();
    let mut cadence = Vec::new();
    let mut lags = Vec::new();
    let mut wers = Vec::new();
    let mut errors = Vec::new();
    for t in traces {
        let mut last_final_at = 0.0;
        let mut partials_since: Vec<f64> = Vec::new();
        let mut finals = Vec::new();
        for (at, m) in &t.messages {
            match m["type"].as_str() {
                Some("partial") => partials_since.push(*at),
                Some("final") => {
                    let end = m["end_ms"].as_f64().unwrap() / 1000.0;
                    let begin = m["start_ms"].as_f64().unwrap() / 1000.0;
                    eos.push(at - end);
                    if let Some(first) = partials_since.first() {
                        if *first >= last_final_at {
                            first_partial.push(first - begin);
                        }
                    }
                    cadence.extend(partials_since.windows(2).map(|w| w[1] - w[0]));
                    partials_since.clear();
                    last_final_at = *at;
                    finals.push(m["text"].as_str().unwrap_or_default().to_string());
                }
                Some("lag") => lags.push((*at, m["seconds"].as_f64().unwrap_or(0.0))),
                Some("error") => errors.push(m.clone()),
                _ => {}
            }
        }
        let passes = (t.audio_seconds / pass_seconds).floor() as usize;
        if passes == 0 {
            continue; // Less than one pass: nothing whole to compare.
        }
        let whole = passes as f64 * pass_seconds;
        // Only the whole passes are compared (the last pass may be cut).
        let reference = vec![reference_pass; passes].join(" ");
        let hyp: Vec<&str> = t
            .messages
            .iter()
            .filter(|(_, m)| {
                m["type"] == "final" && m["end_ms"].as_f64().unwrap_or(0.0) / 1000.0 <= whole + 0.5
            })
            .map(|(_, m)| m["text"].as_str().unwrap_or_default())
            .collect();
        wers.push(s2t_tests::wer(&reference, &hyp.join(" ")));
    }
    for v in [&mut eos, &mut first_partial, &mut cadence, &mut wers] {
        v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    }
    let lag_values: Vec<f64> = lags.iter().map(|(_, l)| *l).collect();
    let end = lags.iter().map(|(at, _)| *at).fold(0.0, f64::max);
    let first_minute: Vec<f64> = lags
        .iter()
        .filter(|(at, _)| *at <= 60.0)
        .map(|(_, l)| *l)
        .collect();
    let last_minute: Vec<f64> = lags
        .iter()
        .filter(|(at, _)| *at >= end - 60.0)
        .map(|(_, l)| *l)
        .collect();
    json!({
        "sessions": traces.len(),
        "finals": eos.len(),
        "end_of_speech_to_final_s": {"p50": percentile(&eos, 0.5), "p95": percentile(&eos, 0.95), "max": percentile(&eos, 1.0)},
        "first_partial_s": {"p50": percentile(&first_partial, 0.5), "p95": percentile(&first_partial, 0.95)},
        "partial_cadence_s": {"mean": mean(&cadence), "p50": percentile(&cadence, 0.5)},
        "lag_s": {"mean": mean(&lag_values), "max": lag_values.iter().cloned().fold(None, |m: Option<f64>, x| Some(m.map_or(x, |m| m.max(x)))),
                  "first_minute_mean": mean(&first_minute), "last_minute_mean": mean(&last_minute)},
        "wer_vs_batch": {"mean": mean(&wers), "max": percentile(&wers, 1.0)},
        "closed_with": traces.iter().map(|t| t.closed_with).collect::<Vec<_>>(),
        "errors": errors,
    })
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let a = <Args as clap::Parser>::parse();
    let pcm = std::sync::Arc::new(std::fs::read(&a.pcm).expect("--pcm"));
    let reference = std::fs::read_to_string(&a.reference).expect("--reference");
    let pass_seconds = pcm.len() as f64 / 96_000.0;
    let http = reqwest::Client::new();
    let most = a.sessions.iter().copied().max().unwrap_or(1);
    let mut tokens = Vec::new();
    for i in 0..most {
        tokens.push(register(&http, &a.base, &format!("rt{i}")).await);
    }
    if let Some(ready) = &a.ready {
        std::fs::write(ready, "").unwrap();
        let go = a.go.clone().expect("--go-file with --ready-file");
        while !std::path::Path::new(&go).exists() {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let mut runs = Vec::new();
    let mut plan: Vec<(usize, u64)> = a.sessions.iter().map(|n| (*n, a.seconds)).collect();
    if a.long_seconds > 0 {
        plan.push((1, a.long_seconds));
    }
    for (n, seconds) in plan {
        eprintln!("{n} session(s) for {seconds} s");
        let handles: Vec<_> = tokens[..n]
            .iter()
            .map(|t| tokio::spawn(session(a.base.clone(), t.clone(), pcm.clone(), seconds)))
            .collect();
        let mut traces = Vec::new();
        for h in handles {
            traces.push(h.await.unwrap());
        }
        let mut summary = summarise(&traces, reference.trim(), pass_seconds);
        summary["seconds"] = json!(seconds);
        eprintln!("{summary}");
        runs.push(summary);
    }
    let report = json!({
        "what": "realtime sessions through /ws/s2t at real-time pace (48 kHz s16le, 100 ms frames), tiny.en on CPU",
        "audio_pass_seconds": pass_seconds,
        "runs": runs,
    });
    std::fs::write(&a.out, serde_json::to_string_pretty(&report).unwrap()).unwrap();
    println!("wrote {}", a.out);
}
