//! The embedding step: chunks that `complete_recording` cut get their
//! vectors here, in batches, with the same guarantees as transcription.
//!
//! `s2t.claim_chunks_to_embed` leases a batch; the vectors are computed off
//! the async threads and stored with `s2t.store_chunk_embeddings`, which
//! takes a vector only for a chunk that still has none (of this model) and
//! whose text is the one embedded. So:
//! - a worker that dies mid-batch loses its lease, and the chunks are
//!   claimed again when it expires; none is lost;
//! - a late or repeated store changes nothing, so each chunk is embedded
//!   (stored) exactly once;
//! - a chunk whose vector is of another model than this worker's is
//!   re-embedded after the missing ones (the model changed).
//!
//! The loop wakes on `NOTIFY s2t_embed` (sent by `chunk_recording`) and
//! polls as a fallback.

use crate::pgtls::{self, Target};
use crate::runner::log;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{watch, Notify};

pub const EMBED_CHANNEL: &str = "s2t_embed";

#[derive(Debug, Clone)]
pub struct Settings {
    pub database_url: String,
    pub model: s2t_embed::Config,
    /// Chunks per claim (and per model call).
    pub batch: i32,
    pub lease_secs: u64,
    pub poll_secs: u64,
    /// Embed what is waiting, then return.
    pub once: bool,
}

/// Load the model and embed until shutdown (or, with `once`, until nothing
/// is waiting). A model that does not load is logged and ends the step:
/// search then ranks those chunks by words only.
pub async fn run(settings: Settings, stop: watch::Receiver<bool>) -> anyhow::Result<()> {
    let target = pgtls::target(&settings.database_url)?;
    let cfg = settings.model.clone();
    let started = Instant::now();
    let loaded = tokio::task::spawn_blocking(move || s2t_embed::Embedder::load(&cfg)).await?;
    let model = match loaded {
        Ok(m) => Arc::new(Mutex::new(m)),
        Err(e) => {
            log(
                "embed_model_unavailable",
                serde_json::json!({"error": e.to_string()}),
            );
            return Ok(());
        }
    };
    log(
        "embed_model_loaded",
        serde_json::json!({"model": settings.model.name, "ms": started.elapsed().as_millis() as u64}),
    );
    let wake = Arc::new(Notify::new());
    let listener =
        (!settings.once).then(|| tokio::spawn(listen(target.clone(), wake.clone(), stop.clone())));
    let result = embed_loop(&settings, &target, model, &wake, stop).await;
    if let Some(l) = listener {
        l.abort();
    }
    result
}

async fn listen(target: Target, wake: Arc<Notify>, stop: watch::Receiver<bool>) {
    loop {
        let waker = wake.clone();
        if let Ok(client) = pgtls::connect_notifying(&target, move |_| waker.notify_one()).await {
            if client
                .batch_execute(&format!("LISTEN {EMBED_CHANNEL}"))
                .await
                .is_ok()
            {
                wake.notify_one();
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

async fn embed_loop(
    s: &Settings,
    target: &Target,
    model: Arc<Mutex<s2t_embed::Embedder>>,
    wake: &Notify,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let name = s.model.name.clone();
    let mut client: Option<tokio_postgres::Client> = None;
    loop {
        if *stop.borrow() {
            return Ok(());
        }
        if client.as_ref().is_none_or(|c| c.is_closed()) {
            match pgtls::connect(target).await {
                Ok(c) => client = Some(c),
                Err(e) => {
                    log(
                        "embed_connect_failed",
                        serde_json::json!({"error": e.to_string()}),
                    );
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            }
        }
        let c = client.as_ref().expect("connected above");
        match embed_batch(c, s, &name, &model).await {
            Ok(0) if s.once => return Ok(()),
            Ok(0) => {
                tokio::select! {
                    _ = wake.notified() => {}
                    _ = tokio::time::sleep(Duration::from_secs(s.poll_secs.max(1))) => {}
                    _ = stop.changed() => {}
                }
            }
            Ok(_) => {}
            Err(e) => {
                log("embed_failed", serde_json::json!({"error": e.to_string()}));
                // The lease runs out and the chunks are claimed again.
                client = None;
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

/// Claim, embed and store one batch; returns how many chunks it claimed.
async fn embed_batch(
    c: &tokio_postgres::Client,
    s: &Settings,
    name: &str,
    model: &Arc<Mutex<s2t_embed::Embedder>>,
) -> anyhow::Result<usize> {
    let rows = c
        .query(
            "SELECT chunk_id, content_hash, text FROM s2t.claim_chunks_to_embed($1, $2, make_interval(secs => $3))",
            &[&name, &s.batch, &(s.lease_secs.max(1) as f64)],
        )
        .await?;
    if rows.is_empty() {
        return Ok(0);
    }
    let ids: Vec<uuid::Uuid> = rows.iter().map(|r| r.get(0)).collect();
    let hashes: Vec<String> = rows.iter().map(|r| r.get(1)).collect();
    let texts: Vec<String> = rows.iter().map(|r| r.get(2)).collect();
    let started = Instant::now();
    let m = model.clone();
    let vectors = tokio::task::spawn_blocking(move || {
        let mut m = m.lock().unwrap_or_else(|e| e.into_inner());
        m.embed(&texts)
    })
    .await??;
    let embed_ms = started.elapsed().as_millis() as u64;
    let flat: Vec<f32> = vectors.into_iter().flatten().collect();
    let stored: i32 = c
        .query_one(
            "SELECT s2t.store_chunk_embeddings($1, $2, $3, $4)",
            &[&name, &ids, &hashes, &flat],
        )
        .await?
        .get(0);
    log(
        "chunks_embedded",
        serde_json::json!({"claimed": ids.len(), "stored": stored, "embed_ms": embed_ms}),
    );
    Ok(ids.len())
}
