//! The lease keeper: one background task per claimed job that renews its
//! lease on a fixed beat from the moment of the claim, whatever the job is
//! doing (reading the audio, decoding, resampling, Whisper, storing).
//!
//! It has its own connection, so a slot busy in a long query cannot delay
//! a renewal, and it reconnects by itself after a database blip. If the
//! lease cannot be renewed before its end (minus a margin), or the
//! extension says another worker holds it, the keeper raises the job's
//! cancel flag (whisper.cpp's abort callback reads it) and reports the
//! lease lost: the job then stops and is neither completed nor failed, so
//! no job is transcribed twice in full.

use crate::faults::{self, ErrorClass};
use crate::jobs::{self, Claim};
use crate::pgtls::{self, Target};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::time::Instant;

/// A running keeper. Dropping it stops the renewals.
pub struct LeaseKeeper {
    task: tokio::task::JoinHandle<()>,
    lost: watch::Receiver<Option<String>>,
    /// Overall progress 0..1 as `f32` bits, sent with each renewal.
    pub progress: Arc<AtomicU32>,
    /// Raised when the lease is lost; the decoder stops on it.
    pub cancel: Arc<AtomicBool>,
}

impl Drop for LeaseKeeper {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl LeaseKeeper {
    /// Start renewing `claim`, whose lease of `lease` was granted no
    /// earlier than `claimed_at`.
    pub fn start(
        target: Target,
        claim: Claim,
        lease: Duration,
        claimed_at: Instant,
    ) -> LeaseKeeper {
        let (tx, lost) = watch::channel(None);
        let progress = Arc::new(AtomicU32::new(0f32.to_bits()));
        let cancel = Arc::new(AtomicBool::new(false));
        let task = tokio::spawn(keep(
            target,
            claim,
            lease,
            claimed_at,
            progress.clone(),
            cancel.clone(),
            tx,
        ));
        LeaseKeeper {
            task,
            lost,
            progress,
            cancel,
        }
    }

    pub fn set_progress(&self, p: f32) {
        self.progress.store(p.to_bits(), Ordering::Relaxed);
    }

    /// Why the lease is lost, if it is.
    pub fn lost(&self) -> Option<String> {
        self.lost.borrow().clone()
    }

    /// Resolves once the lease is lost (never, while it is held).
    pub async fn lost_changed(&self) -> String {
        let mut rx = self.lost.clone();
        loop {
            if let Some(reason) = rx.borrow_and_update().clone() {
                return reason;
            }
            if rx.changed().await.is_err() {
                // The keeper ended without losing the lease: wait forever.
                std::future::pending::<()>().await;
            }
        }
    }
}

async fn keep(
    target: Target,
    claim: Claim,
    lease: Duration,
    claimed_at: Instant,
    progress: Arc<AtomicU32>,
    cancel: Arc<AtomicBool>,
    lost: watch::Sender<Option<String>>,
) {
    let timing = faults::lease_timing(lease);
    let lease_secs = lease.as_secs().max(1);
    let mut until = claimed_at + lease;
    let mut client: Option<tokio_postgres::Client> = None;
    let give_up = |reason: String| {
        cancel.store(true, Ordering::Relaxed);
        crate::runner::log(
            "lease_lost",
            serde_json::json!({"job_id": claim.job_id, "attempt": claim.attempt, "reason": reason}),
        );
        let _ = lost.send(Some(reason));
    };
    let mut next = claimed_at + timing.every;
    loop {
        tokio::time::sleep_until(next).await;
        let deadline = until - timing.margin;
        // Renew, reconnecting as often as needed, until the deadline.
        let renewed = loop {
            let now = Instant::now();
            if now >= deadline {
                break Err(format!(
                    "the lease could not be renewed within {:.1} s of its end; stopped locally so that the next worker does the job alone",
                    timing.margin.as_secs_f64()
                ));
            }
            if client.as_ref().is_none_or(|c| c.is_closed()) {
                client = match tokio::time::timeout(deadline - now, pgtls::connect(&target)).await {
                    Ok(Ok(c)) => Some(c),
                    Ok(Err(e)) => {
                        crate::runner::log(
                            "heartbeat_connect_failed",
                            serde_json::json!({"job_id": claim.job_id, "error": e.to_string()}),
                        );
                        tokio::time::sleep(
                            Duration::from_millis(200)
                                .min(deadline.saturating_duration_since(Instant::now())),
                        )
                        .await;
                        continue;
                    }
                    Err(_) => continue,
                };
            }
            let c = client.as_ref().expect("connected above");
            let p = f32::from_bits(progress.load(Ordering::Relaxed));
            let sent = Instant::now();
            match tokio::time::timeout(deadline - sent, jobs::heartbeat(c, &claim, lease_secs, p))
                .await
            {
                // The server extended the lease from its own now, which is
                // after `sent`: counting from `sent` is on the safe side.
                Ok(Ok(())) => break Ok(sent + lease),
                Ok(Err(e)) if faults::classify(&e) == ErrorClass::LeaseLost => {
                    break Err(
                        "another worker holds the lease now (it expired or the job ended)"
                            .to_string(),
                    )
                }
                Ok(Err(e)) => {
                    crate::runner::log(
                        "heartbeat_failed",
                        serde_json::json!({"job_id": claim.job_id, "error": e.to_string()}),
                    );
                    if faults::classify(&e) == ErrorClass::Permanent {
                        break Err(format!("renewing the lease failed: {e}"));
                    }
                    client = None;
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Err(_) => {
                    // A renewal stuck on a dead socket: drop the connection.
                    client = None;
                }
            }
        };
        match renewed {
            Ok(new_until) => {
                until = new_until;
                next = Instant::now() + timing.every;
            }
            Err(reason) => {
                give_up(reason);
                return;
            }
        }
    }
}
