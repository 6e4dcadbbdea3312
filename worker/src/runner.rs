//! The job loop: LISTEN plus polling, claiming with a lease, completion
//! exactly once, reconnection, maintenance and a graceful shutdown.
//!
//! Each slot owns one connection and runs one job at a time; `concurrency`
//! slots share the models and a thread budget, so decoding never runs more
//! busy-waiting ggml threads than the budget allows. From the moment of the
//! claim a [`LeaseKeeper`] renews the job's lease on its own connection;
//! when it gives the lease up, the job stops where it is and is neither
//! completed nor failed (the next claim redoes it).
//!
//! Faults, and what they cost:
//! - A database blip: every call that touches the database reconnects and
//!   tries again while the lease is held (completion is idempotent, so a
//!   repeat is harmless). Only transient errors are retried this way
//!   ([`faults::classify`]); a permanent one (the extension rejects the
//!   transcript with `S2V01`, undecodable or missing audio, a path outside
//!   the audio root, no model for the language) fails the job at once with
//!   the reason (`fail_job(..., retryable => false)`).
//! - A crash in decoding or Whisper (a panic, whisper.cpp's `GGML_ASSERT`
//!   abort, an allocation failure, the OOM killer) ends only the child
//!   process that runs that job's transcription ([`crate::isolate`]): the
//!   slot reports the attempt as failed (retryable), and the other slots'
//!   jobs carry on untouched. A job that crashes every time fails after
//!   `max_attempts` with the reason.
//! - If the worker process itself dies, each job it held loses its lease
//!   and is claimed again by its own expiry, one attempt per job.

use crate::asr::ModelPaths;
use crate::faults::{self, ErrorClass};
use crate::isolate::{self, ChildJob, ChildMessage};
use crate::jobs::{self, AudioSource, Claim};
use crate::lease::LeaseKeeper;
use crate::pgtls::{self, Target};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{watch, Notify};
use tokio::time::Instant;
use tokio_postgres::Client;

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
    /// `file://` audio must resolve under this directory; `None` refuses
    /// `file://` altogether.
    pub audio_root: Option<PathBuf>,
    /// Where stored audio is copied for the transcription child, one file
    /// per job in progress, removed when the job ends.
    pub spool_dir: PathBuf,
    /// The model files; each job's child process loads the one it needs.
    pub models: ModelPaths,
    /// This binary, run as `transcribe-job` for each job (see [`crate::isolate`]).
    pub worker_exe: PathBuf,
}

/// What became of one job, for logs and tests.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Done { segments: usize, duration_ms: i32 },
    AlreadyDone,
    Failed(String),
    Retry(String),
    Released,
    LeaseLost(String),
}

pub(crate) fn log(event: &str, fields: serde_json::Value) {
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
async fn connect(target: &Target, stop: &watch::Receiver<bool>) -> Option<Client> {
    let mut wait = Duration::from_millis(250);
    loop {
        match pgtls::connect(target).await {
            Ok(client) => return Some(client),
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

/// A slot's connection, reopened on demand after it breaks.
struct SlotDb {
    target: Target,
    client: Option<Client>,
}

impl SlotDb {
    async fn client(&mut self) -> Result<&Client, tokio_postgres::Error> {
        if self.client.as_ref().is_none_or(|c| c.is_closed()) {
            self.client = Some(pgtls::connect(&self.target).await?);
        }
        Ok(self.client.as_ref().expect("connected above"))
    }
}

/// Why a job's database call gave up.
enum Stop {
    LeaseLost(String),
    Permanent(tokio_postgres::Error),
}

/// Wait a little before the next try, or less if the lease is lost.
async fn pause(keeper: &LeaseKeeper) {
    tokio::select! {
        _ = tokio::time::sleep(Duration::from_millis(250)) => {}
        _ = keeper.lost_changed() => {}
    }
}

/// Run `$call` with the slot's client `$c`, reconnecting and trying again
/// on transient errors for as long as the lease is held.
macro_rules! retrying {
    ($db:expr, $keeper:expr, |$c:ident| $call:expr) => {
        loop {
            if let Some(reason) = $keeper.lost() {
                break Err(Stop::LeaseLost(reason));
            }
            let $c = match $db.client().await {
                Ok(c) => c,
                Err(e) => {
                    log("reconnect_failed", serde_json::json!({"error": e.to_string()}));
                    pause($keeper).await;
                    continue;
                }
            };
            match $call.await {
                Ok(v) => break Ok(v),
                Err(e) => match faults::classify(&e) {
                    ErrorClass::Transient => {
                        log("db_retry", serde_json::json!({"error": e.to_string()}));
                        pause($keeper).await;
                    }
                    ErrorClass::LeaseLost => break Err(Stop::LeaseLost(e.to_string())),
                    ErrorClass::Permanent => break Err(Stop::Permanent(e)),
                },
            }
        }
    };
}

/// The part of the audio a job may transcribe when the user's minutes
/// allow only `max_ms` of it: how many 16 kHz samples to keep, the length
/// to report, and the notice to store. `None` when it all fits.
pub fn cut_to_allowance(
    samples: usize,
    duration_ms: u64,
    max_ms: Option<i32>,
) -> Option<(usize, u64, String)> {
    let max = u64::try_from(max_ms?).unwrap_or(0);
    if duration_ms <= max {
        return None;
    }
    let keep = samples.min((max * 16) as usize);
    let secs = |ms: u64| {
        if ms.is_multiple_of(1000) {
            format!("{}", ms / 1000)
        } else {
            format!("{:.1}", ms as f64 / 1000.0)
        }
    };
    Some((
        keep,
        max,
        format!(
            "monthly minutes allowance reached: transcribed the first {} s of {} s",
            secs(max),
            secs(duration_ms)
        ),
    ))
}

struct Shared {
    settings: Settings,
    target: Target,
    wake: Notify,
}

/// Run until shutdown (or, with `once`, until the queue is empty).
pub async fn run(settings: Settings, stop: watch::Receiver<bool>) -> anyhow::Result<()> {
    let target = pgtls::target(&settings.database_url)?;
    let shared = Arc::new(Shared {
        settings: settings.clone(),
        target,
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
    loop {
        let waker = shared.clone();
        let connected =
            pgtls::connect_notifying(&shared.target, move |_| waker.wake.notify_waiters()).await;
        if let Ok(client) = connected {
            if client
                .batch_execute(&format!("LISTEN {}", crate::JOBS_CHANNEL))
                .await
                .is_ok()
            {
                // Anything queued while we were away is found by the next poll.
                shared.wake.notify_waiters();
                while !client.is_closed() {
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
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
        if let Some(client) = connect(&shared.target, &stop).await {
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
            let tickets = client.query_one("SELECT s2t.purge_ws_tickets()", &[]).await;
            log(
                "maintenance",
                serde_json::json!({
                    "cycles_reset": reset.map(|r| r.get::<_, i32>(0)).ok(),
                    "recordings_deleted": deleted,
                    "refresh_tokens_purged": tokens.map(|r| r.get::<_, i32>(0)).ok(),
                    "ws_tickets_purged": tickets.map(|r| r.get::<_, i32>(0)).ok(),
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
    let mut db = SlotDb {
        target: shared.target.clone(),
        client: None,
    };
    loop {
        if *stop.borrow() {
            return Ok(());
        }
        if db.client.as_ref().is_none_or(|c| c.is_closed()) {
            db.client = connect(&shared.target, &stop).await;
            if db.client.is_none() {
                return Ok(());
            }
        }
        let c = db.client.as_ref().expect("connected above");
        // Waiting for a wake-up starts before the claim: notify_waiters
        // keeps no permit, so a notification that lands while the claim is
        // in flight would otherwise be lost and cost a whole poll interval.
        let woken = shared.wake.notified();
        tokio::pin!(woken);
        woken.as_mut().enable();
        // The lease runs from the server's now, which is after this.
        let claimed_at = Instant::now();
        match jobs::claim(c, &name, s.lease_secs).await {
            Ok(Some(claim)) => {
                let outcome = process(&shared, &mut db, &claim, claimed_at, stop.clone()).await;
                log(
                    "job",
                    serde_json::json!({"worker": name, "job_id": claim.job_id, "recording_id": claim.recording_id.to_string(),
                                       "attempt": claim.attempt, "outcome": format!("{outcome:?}")}),
                );
            }
            Ok(None) if s.once => return Ok(()),
            Ok(None) => {
                // The database notifies only when a worker may be idle: an
                // upload that found no due job it could count on another
                // claim to take, a claim that left due jobs behind, minutes
                // given back, a released job (see trg_enqueue_upload). So an
                // idle slot is woken by a notification; the poll covers what
                // none announces: retries and deferred jobs coming due,
                // leases running out, and a job an upload counted on that
                // was deleted, or whose claim rolled back.
                let wait = Duration::from_secs(s.poll_secs.max(1));
                tokio::select! {
                    _ = &mut woken => {}
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

/// Read, decode, transcribe and complete one claimed job, with its lease
/// kept alive throughout.
async fn process(
    shared: &Arc<Shared>,
    db: &mut SlotDb,
    claim: &Claim,
    claimed_at: Instant,
    mut stop: watch::Receiver<bool>,
) -> Outcome {
    let s = &shared.settings;
    let keeper = LeaseKeeper::start(
        shared.target.clone(),
        claim.clone(),
        Duration::from_secs(s.lease_secs),
        claimed_at,
    );
    let root = s.audio_root.as_deref();
    let spool = s.spool_dir.as_path();
    let (audio_path, extension, _spool) =
        match retrying!(db, &keeper, |c| jobs::load_audio(c, claim, root, spool)) {
            Ok(AudioSource::File {
                path,
                extension,
                spool,
            }) => (path, extension, spool),
            Ok(AudioSource::Missing(reason)) => {
                return fail(db, &keeper, claim, &reason, false).await
            }
            Ok(AudioSource::Local(reason)) => return fail(db, &keeper, claim, &reason, true).await,
            Err(Stop::LeaseLost(reason)) => return Outcome::LeaseLost(reason),
            Err(Stop::Permanent(e)) => {
                return fail(
                    db,
                    &keeper,
                    claim,
                    &format!("could not read the audio: {e}"),
                    false,
                )
                .await
            }
        };
    keeper.set_progress(0.01);
    let multilingual = claim.model.as_deref().is_some_and(|m| !m.ends_with(".en"));
    let Some(model) = isolate::model_for(&s.models, &claim.language, multilingual) else {
        let reason = format!(
            "no model is configured for language {:?} on this worker",
            claim.language
        );
        return fail(db, &keeper, claim, &reason, false).await;
    };
    let job = ChildJob {
        model,
        language: claim.language.clone(),
        threads: (s.thread_budget / s.concurrency.max(1)).max(1) as i32,
        beam_size: s.beam_size,
        fit_audio_ctx: s.fit_audio_ctx,
        multilingual,
        prompt: claim.prompt.clone(),
        max_audio_secs: s.max_audio_secs,
        max_ms: claim.max_ms,
        extension,
        audio: audio_path,
    };
    let spawned = tokio::process::Command::new(&s.worker_exe)
        .args(job.args())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::inherit())
        // A dropped supervisor (lease lost, shutdown) takes its child along.
        .kill_on_drop(true)
        .spawn();
    let mut child = match spawned {
        Ok(c) => c,
        Err(e) => {
            let reason = format!("could not start the transcription process: {e}");
            return fail(db, &keeper, claim, &reason, true).await;
        }
    };
    log(
        "transcribe_started",
        serde_json::json!({"job_id": claim.job_id, "attempt": claim.attempt, "child_pid": child.id()}),
    );
    let stdout = child.stdout.take().expect("piped stdout");
    let mut lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(stdout));
    let grace = Duration::from_secs(s.shutdown_grace_secs);
    let mut shutdown_deadline: Option<Instant> = None;
    let mut answer: Option<ChildMessage> = None;
    loop {
        let deadline =
            shutdown_deadline.unwrap_or_else(|| Instant::now() + Duration::from_secs(86_400));
        tokio::select! {
            line = lines.next_line() => match line {
                Ok(Some(line)) => match serde_json::from_str::<ChildMessage>(&line) {
                    // Reading and decoding are the first 5 %, completion the last.
                    Ok(ChildMessage::Progress(f)) => keeper.set_progress(0.05 + 0.9 * f.clamp(0.0, 1.0)),
                    // Gives back the minutes the file does not need. A
                    // failure here only delays the user's other jobs until
                    // completion settles the reservation anyway.
                    Ok(ChildMessage::Decoded { audio_ms }) => {
                        if let Ok(c) = db.client().await {
                            if let Err(e) = jobs::settle_length(c, claim, audio_ms).await {
                                log("settle_failed", serde_json::json!({"job_id": claim.job_id, "error": e.to_string()}));
                            }
                        }
                    }
                    Ok(other) => answer = Some(other),
                    Err(_) => {}
                },
                _ => break,
            },
            reason = keeper.lost_changed() => {
                // Killing the child stops the decode at once; nothing is stored.
                let _ = child.kill().await;
                return Outcome::LeaseLost(reason);
            }
            _ = stop.changed(), if shutdown_deadline.is_none() => {
                shutdown_deadline = Some(Instant::now() + grace);
            }
            _ = tokio::time::sleep_until(deadline), if shutdown_deadline.is_some() => {
                let _ = child.kill().await;
                return match retrying!(db, &keeper, |c| jobs::release(c, claim)) {
                    Ok(_) => Outcome::Released,
                    Err(Stop::LeaseLost(reason)) => Outcome::LeaseLost(reason),
                    Err(Stop::Permanent(e)) => Outcome::Retry(format!("release failed: {e}")),
                };
            }
        }
    }
    let status = child.wait().await;
    if let Some(reason) = keeper.lost() {
        return Outcome::LeaseLost(reason);
    }
    let (duration_ms, notice, language, segments, segment_count) = match answer {
        Some(ChildMessage::Done {
            duration_ms,
            notice,
            language,
            segments,
            segment_count,
        }) => (duration_ms, notice, language, segments, segment_count),
        Some(ChildMessage::Failed { permanent, reason }) => {
            return fail(db, &keeper, claim, &reason, !permanent).await
        }
        // It died without answering: an abort, a signal, the OOM killer.
        // That costs this job one attempt and no other job anything.
        Some(ChildMessage::Progress(_) | ChildMessage::Decoded { .. }) | None => {
            let how = match status {
                Ok(st) => st.to_string(),
                Err(e) => e.to_string(),
            };
            let reason = format!("the transcription process crashed ({how})");
            return fail(db, &keeper, claim, &reason, true).await;
        }
    };
    let language = language.as_deref();
    let notice = notice.as_deref();
    match retrying!(db, &keeper, |c| jobs::complete(
        c,
        claim,
        duration_ms,
        &segments,
        language,
        notice
    )) {
        Ok(true) => Outcome::Done {
            segments: segment_count,
            duration_ms,
        },
        Ok(false) => Outcome::AlreadyDone,
        // S2S01 here: the recording was failed meanwhile.
        Err(Stop::LeaseLost(reason)) => Outcome::LeaseLost(reason),
        // The extension rejected the transcript (S2V01: a bad segment, too
        // many segments): the same audio would give the same transcript.
        Err(Stop::Permanent(e)) => {
            let why = e
                .as_db_error()
                .map(|d| d.message().to_string())
                .unwrap_or_else(|| e.to_string());
            fail(
                db,
                &keeper,
                claim,
                &format!("the transcript was rejected: {why}"),
                false,
            )
            .await
        }
    }
}

async fn fail(
    db: &mut SlotDb,
    keeper: &LeaseKeeper,
    claim: &Claim,
    reason: &str,
    retryable: bool,
) -> Outcome {
    match retrying!(db, keeper, |c| jobs::fail(c, claim, reason, retryable)) {
        Ok(state) if state == "queued" => Outcome::Retry(reason.to_string()),
        Ok(_) => Outcome::Failed(reason.to_string()),
        Err(Stop::LeaseLost(lost)) => Outcome::LeaseLost(lost),
        // The lease will expire and the job will be claimed again.
        Err(Stop::Permanent(e)) => {
            Outcome::Retry(format!("{reason} (and reporting it failed: {e})"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::cut_to_allowance;

    #[test]
    fn audio_past_the_allowance_is_cut_with_a_notice() {
        // 240 s of audio, 60 s allowed.
        let (keep, ms, notice) = cut_to_allowance(240 * 16_000, 240_000, Some(60_000)).unwrap();
        assert_eq!((keep, ms), (60 * 16_000, 60_000));
        assert_eq!(
            notice,
            "monthly minutes allowance reached: transcribed the first 60 s of 240 s"
        );
        assert_eq!(
            cut_to_allowance(16_000, 1_000, Some(1_000)),
            None,
            "exactly fits"
        );
        assert_eq!(cut_to_allowance(16_000, 1_000, None), None, "no cap");
        let (_, _, notice) = cut_to_allowance(40_000, 2_500, Some(1_500)).unwrap();
        assert!(notice.ends_with("first 1.5 s of 2.5 s"), "{notice}");
    }
}
