//! The job loop: LISTEN plus polling, claiming with a lease, heartbeats with
//! progress, completion exactly once, reconnection, maintenance and a
//! graceful shutdown.
//!
//! Each slot owns one connection and runs one job at a time; `concurrency`
//! slots share the models and a thread budget, so decoding never runs more
//! busy-waiting ggml threads than the budget allows.

use crate::asr::{Engine, TranscribeOptions};
use crate::audio::{self, AudioError};
use crate::jobs::{self, AudioSource, Claim};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{watch, Notify};
use tokio_postgres::{Client, NoTls};

#[derive(Debug, Clone)]
pub struct Settings {
    pub database_url: String,
    pub worker_name: String,
    pub concurrency: usize,
    /// Decoding threads across all slots.
    pub thread_budget: usize,
    pub beam_size: i32,
    /// Fit the encoder context to short audio (see `asr::fitted_audio_ctx`).
    pub fit_audio_ctx: bool,
    pub lease_secs: u64,
    pub poll_secs: u64,
    pub max_audio_secs: u64,
    /// Process what is queued, then exit.
    pub once: bool,
    pub maintenance_secs: u64,
    pub retention_days: i32,
    pub shutdown_grace_secs: u64,
}

/// What became of one job, for logs and tests.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Done { segments: usize, duration_ms: i32 },
    AlreadyDone,
    Failed(String),
    Retry(String),
    Released,
    LeaseLost,
}

fn log(event: &str, fields: serde_json::Value) {
    let mut line = serde_json::json!({
        "ts": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        "event": event,
    });
    if let (Some(obj), serde_json::Value::Object(extra)) = (line.as_object_mut(), fields) {
        obj.extend(extra);
    }
    eprintln!("{line}");
}

/// Connect, retrying with backoff until it works or shutdown starts.
async fn connect(url: &str, stop: &watch::Receiver<bool>) -> Option<Client> {
    let mut wait = Duration::from_millis(250);
    loop {
        match tokio_postgres::connect(url, NoTls).await {
            Ok((client, connection)) => {
                tokio::spawn(async move {
                    let _ = connection.await;
                });
                return Some(client);
            }
            Err(e) => {
                log(
                    "connect_failed",
                    serde_json::json!({"error": e.to_string(), "retry_ms": wait.as_millis() as u64}),
                );
                if *stop.borrow() {
                    return None;
                }
                tokio::time::sleep(wait).await;
                wait = (wait * 2).min(Duration::from_secs(15));
            }
        }
    }
}

struct Shared {
    settings: Settings,
    engine: Arc<Engine>,
    wake: Notify,
}

/// Run until shutdown (or, with `once`, until the queue is empty).
pub async fn run(
    settings: Settings,
    engine: Engine,
    stop: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let shared = Arc::new(Shared {
        settings: settings.clone(),
        engine: Arc::new(engine),
        wake: Notify::new(),
    });
    let listener = tokio::spawn(listen(shared.clone(), stop.clone()));
    let maintenance = (!settings.once && settings.maintenance_secs > 0)
        .then(|| tokio::spawn(maintain(shared.clone(), stop.clone())));
    let mut slots = Vec::new();
    for slot in 0..settings.concurrency.max(1) {
        slots.push(tokio::spawn(slot_loop(shared.clone(), slot, stop.clone())));
    }
    for s in slots {
        s.await??;
    }
    listener.abort();
    if let Some(m) = maintenance {
        m.abort();
    }
    Ok(())
}

/// LISTEN on the queue channel and wake the slots; reconnects on its own.
async fn listen(shared: Arc<Shared>, stop: watch::Receiver<bool>) {
    use futures_util::StreamExt;
    loop {
        let Ok((client, mut connection)) =
            tokio_postgres::connect(&shared.settings.database_url, NoTls).await
        else {
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        };
        let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
        let shared2 = shared.clone();
        let pump = tokio::spawn(async move {
            while let Some(Ok(message)) = messages.next().await {
                if let tokio_postgres::AsyncMessage::Notification(_) = message {
                    shared2.wake.notify_waiters();
                }
            }
        });
        if client
            .batch_execute(&format!("LISTEN {}", crate::JOBS_CHANNEL))
            .await
            .is_ok()
        {
            // Anything queued while we were away is found by the next poll.
            shared.wake.notify_waiters();
            let _ = pump.await;
        } else {
            pump.abort();
        }
        if *stop.borrow() {
            return;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Monthly reset, retention cleanup and old refresh tokens, on a timer.
async fn maintain(shared: Arc<Shared>, stop: watch::Receiver<bool>) {
    let every = Duration::from_secs(shared.settings.maintenance_secs);
    loop {
        if let Some(client) = connect(&shared.settings.database_url, &stop).await {
            let reset = client
                .query_one("SELECT s2t.reset_monthly_cycles()", &[])
                .await;
            let mut deleted = 0i64;
            loop {
                match client
                    .query_one(
                        "SELECT deleted_recordings FROM s2t.sp_cleanup_old_recordings($1, 1000)",
                        &[&shared.settings.retention_days],
                    )
                    .await
                {
                    Ok(row) if row.get::<_, i32>(0) > 0 => {
                        deleted += i64::from(row.get::<_, i32>(0))
                    }
                    _ => break,
                }
            }
            let tokens = client
                .query_one("SELECT s2t.purge_refresh_tokens()", &[])
                .await;
            log(
                "maintenance",
                serde_json::json!({
                    "cycles_reset": reset.map(|r| r.get::<_, i32>(0)).ok(),
                    "recordings_deleted": deleted,
                    "refresh_tokens_purged": tokens.map(|r| r.get::<_, i32>(0)).ok(),
                }),
            );
        }
        tokio::time::sleep(every).await;
    }
}

async fn slot_loop(
    shared: Arc<Shared>,
    slot: usize,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let s = &shared.settings;
    let name = format!("{}#{slot}", s.worker_name);
    let mut client: Option<Client> = None;
    loop {
        if *stop.borrow() {
            return Ok(());
        }
        if client.as_ref().is_none_or(|c| c.is_closed()) {
            client = connect(&s.database_url, &stop).await;
            if client.is_none() {
                return Ok(());
            }
        }
        let c = client.as_ref().expect("connected above");
        match jobs::claim(c, &name, s.lease_secs).await {
            Ok(Some(claim)) => {
                let outcome = process(&shared, c, &claim, stop.clone()).await;
                log(
                    "job",
                    serde_json::json!({"worker": name, "job_id": claim.job_id, "recording_id": claim.recording_id.to_string(),
                                       "attempt": claim.attempt, "outcome": format!("{outcome:?}")}),
                );
            }
            Ok(None) if s.once => return Ok(()),
            Ok(None) => {
                let wait = Duration::from_secs(s.poll_secs.max(1));
                tokio::select! {
                    _ = shared.wake.notified() => {}
                    _ = tokio::time::sleep(wait) => {}
                    _ = stop.changed() => {}
                }
            }
            Err(e) => {
                log(
                    "claim_failed",
                    serde_json::json!({"worker": name, "error": e.to_string()}),
                );
                if s.once && !c.is_closed() {
                    return Err(e.into());
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

/// Decode, transcribe and complete one claimed job.
async fn process(
    shared: &Arc<Shared>,
    client: &Client,
    claim: &Claim,
    mut stop: watch::Receiver<bool>,
) -> Outcome {
    let s = &shared.settings;
    let audio = match jobs::load_audio(client, claim).await {
        Ok(AudioSource::Bytes(bytes, ext)) => (bytes, ext),
        Ok(AudioSource::Missing(reason)) => return fail(client, claim, &reason, false).await,
        Err(e) => {
            return fail(
                client,
                claim,
                &format!("could not read the audio: {e}"),
                true,
            )
            .await
        }
    };
    let max = s.max_audio_secs;
    let decoded =
        tokio::task::spawn_blocking(move || audio::decode(audio.0, audio.1.as_deref(), max)).await;
    let decoded = match decoded {
        Ok(Ok(d)) => d,
        // Bad input never gets better: fail now, no retries.
        Ok(Err(e)) => return fail(client, claim, &describe_audio_error(&e), false).await,
        Err(e) => return fail(client, claim, &format!("decoder crashed: {e}"), false).await,
    };
    let duration_ms = i32::try_from(decoded.duration_ms).unwrap_or(i32::MAX);

    let progress = Arc::new(AtomicU32::new(0));
    let cancel = Arc::new(AtomicBool::new(false));
    let threads = (s.thread_budget / s.concurrency.max(1)).max(1) as i32;
    let options = TranscribeOptions {
        language: claim.language.clone(),
        threads,
        beam_size: s.beam_size,
        cancel: Some(cancel.clone()),
        fit_audio_ctx: s.fit_audio_ctx,
        multilingual: claim.model.as_deref().is_some_and(|m| !m.ends_with(".en")),
        prompt: claim.prompt.clone(),
    };
    let engine = shared.engine.clone();
    let p = progress.clone();
    let mut work = tokio::task::spawn_blocking(move || {
        engine.transcribe(&decoded.samples, &options, move |f| {
            p.store(f.to_bits(), Ordering::Relaxed)
        })
    });

    let beat = Duration::from_secs((s.lease_secs / 3).max(1));
    let grace = Duration::from_secs(s.shutdown_grace_secs);
    let mut shutdown_deadline: Option<tokio::time::Instant> = None;
    let mut lease_lost = false;
    let result = loop {
        let deadline = shutdown_deadline
            .unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_secs(86_400));
        tokio::select! {
            r = &mut work => break r,
            _ = tokio::time::sleep(beat) => {
                // Decoding is the first 5 %, completion the last.
                let p = 0.05 + 0.9 * f32::from_bits(progress.load(Ordering::Relaxed));
                match jobs::heartbeat(client, claim, s.lease_secs, p).await {
                    Err(e) if jobs::is_lease_lost(&e) => {
                        lease_lost = true;
                        cancel.store(true, Ordering::Relaxed);
                    }
                    _ => {}
                }
            }
            _ = stop.changed(), if shutdown_deadline.is_none() => {
                shutdown_deadline = Some(tokio::time::Instant::now() + grace);
            }
            _ = tokio::time::sleep_until(deadline), if shutdown_deadline.is_some() => {
                cancel.store(true, Ordering::Relaxed);
            }
        }
    };
    let transcript = match result {
        Ok(Ok(t)) => t,
        Ok(Err(crate::asr::EngineError::Cancelled)) if lease_lost => return Outcome::LeaseLost,
        Ok(Err(crate::asr::EngineError::Cancelled)) => {
            return match jobs::release(client, claim).await {
                Ok(_) => Outcome::Released,
                Err(e) => Outcome::Retry(format!("release failed: {e}")),
            }
        }
        Ok(Err(e)) => {
            return fail(client, claim, &format!("transcription failed: {e}"), true).await
        }
        Err(e) => return fail(client, claim, &format!("transcription crashed: {e}"), true).await,
    };
    let segments = serde_json::to_value(&transcript.segments).expect("segments serialise");
    match jobs::complete(
        client,
        claim,
        duration_ms,
        &segments,
        transcript.language.as_deref(),
    )
    .await
    {
        Ok(true) => Outcome::Done {
            segments: transcript.segments.len(),
            duration_ms,
        },
        Ok(false) => Outcome::AlreadyDone,
        Err(e) => {
            fail(
                client,
                claim,
                &format!("storing the transcript failed: {e}"),
                true,
            )
            .await
        }
    }
}

fn describe_audio_error(e: &AudioError) -> String {
    match e {
        AudioError::Empty | AudioError::NoSamples => format!("{e}: nothing to transcribe"),
        _ => e.to_string(),
    }
}

async fn fail(client: &Client, claim: &Claim, reason: &str, retryable: bool) -> Outcome {
    match jobs::fail(client, claim, reason, retryable).await {
        Ok(state) if state == "queued" => Outcome::Retry(reason.to_string()),
        Ok(_) => Outcome::Failed(reason.to_string()),
        Err(e) if jobs::is_lease_lost(&e) => Outcome::LeaseLost,
        // The lease will expire and the job will be claimed again.
        Err(e) => Outcome::Retry(format!("{reason} (and reporting it failed: {e})")),
    }
}
