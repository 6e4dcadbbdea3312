use anyhow::Context;
use clap::{Parser, Subcommand};
use std::path::PathBuf;

#[derive(Parser)]
#[command(name = "s2t-worker", version, about = "pg_s2t transcription worker")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Claim and transcribe queued recordings until stopped (SIGTERM or
    /// SIGINT finish or release the current job first).
    Run(Box<RunArgs>),
    /// Transcribe audio files without a database and print one JSON line
    /// per file, then a summary line (used by make bench-asr).
    Transcribe(TranscribeArgs),
    /// One job's transcription, run by `s2t-worker run` as a child process
    /// per job: the audio file in, JSON lines on stdout (internal).
    #[command(hide = true)]
    TranscribeJob(TranscribeJobArgs),
    /// Convert a CTranslate2 (faster-whisper) Whisper model directory to a
    /// whisper.cpp ggml file.
    ConvertModel {
        /// Directory holding model.bin and vocabulary.txt.
        #[arg(long)]
        ct2: PathBuf,
        /// The ggml file to write.
        #[arg(long)]
        out: PathBuf,
        /// Load the written file in whisper.cpp and compare its
        /// hyper-parameters.
        #[arg(long)]
        verify: bool,
        /// Storage of the large matrices: f16 (as the source) or q8_0
        /// (ggml's 8-bit blocks: about half the size, faster on CPU).
        #[arg(long, default_value = "f16")]
        weights: s2t_worker::model::WeightType,
    },
}

#[derive(clap::Args)]
struct RunArgs {
    /// PostgreSQL connection string (a member of s2t_worker).
    #[arg(long, env = "WORKER_DATABASE_URL")]
    database_url: String,
    /// Multilingual ggml model: Vietnamese, other languages and 'auto'.
    #[arg(long, env = "S2T_MODEL")]
    model: Option<PathBuf>,
    /// English-only ggml model (such as tiny.en), used for language 'en'.
    #[arg(long, env = "S2T_MODEL_EN")]
    model_en: Option<PathBuf>,
    /// Jobs decoded at the same time.
    #[arg(long, env = "S2T_WORKER_CONCURRENCY", default_value_t = 1)]
    concurrency: usize,
    /// Decoding threads across all jobs; default: the number of cores.
    #[arg(long, env = "S2T_WORKER_THREADS")]
    threads: Option<usize>,
    /// Beam size (1 = greedy).
    #[arg(long, env = "S2T_BEAM_SIZE", default_value_t = 5)]
    beam_size: i32,
    /// Encode only as much of Whisper's 30 s window as short speech needs
    /// (much faster for short clips; false = always the full window).
    #[arg(long, env = "S2T_FIT_AUDIO_CTX", default_value_t = true, action = clap::ArgAction::Set)]
    fit_audio_ctx: bool,
    /// Lease on a claimed job; a heartbeat renews it every third of it from
    /// the claim on, and the job stops if it cannot be renewed by a sixth
    /// before its end.
    #[arg(long, default_value_t = 60)]
    lease_secs: u64,
    /// Poll the queue this often even without notifications.
    #[arg(long, default_value_t = 5)]
    poll_secs: u64,
    /// Longest audio accepted, in seconds.
    #[arg(long, env = "S2T_MAX_AUDIO_SECS", default_value_t = 4 * 3600)]
    max_audio_secs: u64,
    /// Name in the queue's locked_by column; default: host and pid.
    #[arg(long)]
    name: Option<String>,
    /// Process what is queued now, then exit.
    #[arg(long)]
    once: bool,
    /// Run the monthly reset and retention cleanup this often (0 = never).
    #[arg(long, default_value_t = 3600)]
    maintenance_secs: u64,
    /// Retention for finished recordings, in days.
    #[arg(long, default_value_t = 90)]
    retention_days: i32,
    /// On SIGTERM, let the current job finish for this long, then release it.
    #[arg(long, default_value_t = 30)]
    shutdown_grace_secs: u64,
    /// Directory that `file://` audio must resolve under (after `..` and
    /// symlinks); without it, `file://` recordings are refused.
    #[arg(long, env = "S2T_AUDIO_ROOT")]
    audio_root: Option<PathBuf>,
    /// Where stored audio is copied for each job's transcription process
    /// (removed when the job ends); default: the system temp directory.
    #[arg(long, env = "S2T_WORKER_SPOOL")]
    spool_dir: Option<PathBuf>,
    /// Serve realtime sessions on this address (such as 0.0.0.0:7071);
    /// without it this worker does batch jobs only.
    #[arg(long, env = "S2T_REALTIME_LISTEN")]
    realtime_listen: Option<std::net::SocketAddr>,
    /// The address gateways reach the realtime server at
    /// (ws://host:port); default: ws:// and the listening address.
    #[arg(long, env = "S2T_REALTIME_ADDRESS")]
    realtime_address: Option<String>,
    /// Realtime sessions this worker takes at once.
    #[arg(long, env = "S2T_REALTIME_CAPACITY", default_value_t = 4)]
    realtime_capacity: usize,
    /// Realtime decodes run at once (each with --threads / this many
    /// Whisper threads).
    #[arg(long, env = "S2T_REALTIME_DECODERS", default_value_t = 1)]
    realtime_decoders: usize,
    /// Embed transcript chunks for search (a worker without it leaves them
    /// to others).
    #[arg(long, env = "S2T_EMBED", default_value_t = true, action = clap::ArgAction::Set)]
    embed: bool,
    /// The embedding model's directory (model.onnx and tokenizer files);
    /// default: embed/<--embed-model> beside the Whisper models.
    #[arg(long, env = "S2T_EMBED_MODEL_DIR")]
    embed_model_dir: Option<PathBuf>,
    /// The name stored with each vector; it must match the extension's
    /// s2t.embedding_model, or the chunks are re-embedded.
    #[arg(long, env = "S2T_EMBED_MODEL", default_value = s2t_embed::DEFAULT_MODEL)]
    embed_model: String,
    /// ONNX Runtime's shared library; default: embed/libonnxruntime.so
    /// beside the Whisper models.
    #[arg(long, env = "S2T_ONNXRUNTIME")]
    onnxruntime: Option<PathBuf>,
    /// Chunks per claim and model call.
    #[arg(long, env = "S2T_EMBED_BATCH", default_value_t = 16)]
    embed_batch: i32,
    /// Seconds a claim of chunks holds them.
    #[arg(long, default_value_t = 120)]
    embed_lease_secs: u64,
}

#[derive(clap::Args)]
struct TranscribeJobArgs {
    #[arg(long)]
    model: PathBuf,
    #[arg(long)]
    language: String,
    #[arg(long)]
    threads: i32,
    #[arg(long)]
    beam_size: i32,
    #[arg(long, action = clap::ArgAction::Set)]
    fit_audio_ctx: bool,
    #[arg(long)]
    multilingual: bool,
    #[arg(long)]
    prompt: Option<String>,
    #[arg(long)]
    max_audio_secs: u64,
    #[arg(long)]
    max_ms: Option<i32>,
    #[arg(long)]
    extension: Option<String>,
    #[arg(long)]
    audio: PathBuf,
    /// The longest block transcribed at once, in seconds (inherited from
    /// the worker's environment).
    #[arg(long, env = "S2T_TRANSCRIBE_BLOCK_SECS", default_value_t = 600)]
    block_secs: u32,
}

#[derive(clap::Args)]
struct TranscribeArgs {
    /// Multilingual ggml model.
    #[arg(long, env = "S2T_MODEL")]
    model: Option<PathBuf>,
    /// English-only ggml model, used for language 'en'.
    #[arg(long, env = "S2T_MODEL_EN")]
    model_en: Option<PathBuf>,
    /// ISO 639-1 code or 'auto'.
    #[arg(long, default_value = "auto")]
    language: String,
    /// Decoding threads in total (at most the number of cores).
    #[arg(long)]
    threads: Option<usize>,
    /// Files decoded at the same time, sharing the model and the threads.
    #[arg(long, default_value_t = 1)]
    parallel: usize,
    #[arg(long, default_value_t = 5)]
    beam_size: i32,
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    fit_audio_ctx: bool,
    /// Longest audio accepted, in seconds.
    #[arg(long, default_value_t = 4 * 3600)]
    max_audio_secs: u64,
    /// The longest block transcribed at once, in seconds.
    #[arg(long, env = "S2T_TRANSCRIBE_BLOCK_SECS", default_value_t = 600)]
    block_secs: u32,
    files: Vec<PathBuf>,
}

fn cores() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

fn transcribe_files(args: TranscribeArgs) -> anyhow::Result<()> {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let started = std::time::Instant::now();
    let engine = s2t_worker::asr::Engine::load(&s2t_worker::asr::ModelPaths {
        english: args.model_en.clone(),
        multilingual: args.model.clone(),
    })?;
    let load_seconds = started.elapsed().as_secs_f64();
    let budget = args.threads.unwrap_or_else(cores).clamp(1, cores());
    let parallel = args.parallel.clamp(1, budget);
    let options = s2t_worker::asr::TranscribeOptions {
        beam_size: args.beam_size.max(1),
        fit_audio_ctx: args.fit_audio_ctx,
        ..s2t_worker::asr::TranscribeOptions::new(args.language.clone(), (budget / parallel) as i32)
    };
    let plan =
        s2t_worker::blocks::Plan::new(s2t_worker::blocks::BlockPolicy::from_secs(args.block_secs));
    let next = AtomicUsize::new(0);
    let failures = AtomicUsize::new(0);
    let audio_ms = AtomicUsize::new(0);
    let began = std::time::Instant::now();
    std::thread::scope(|scope| {
        for _ in 0..parallel {
            scope.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(path) = args.files.get(i) else { break };
                let t0 = std::time::Instant::now();
                let result = s2t_worker::blocks::transcribe_path(
                    &engine,
                    path,
                    None,
                    args.max_audio_secs,
                    &options,
                    &plan,
                )
                .map(|(t, lengths)| (lengths.duration_ms(), t))
                .map_err(|e| e.to_string());
                let line = match result {
                    Ok((ms, t)) => {
                        audio_ms.fetch_add(ms as usize, Ordering::Relaxed);
                        let text: Vec<&str> = t.segments.iter().map(|s| s.text.as_str()).collect();
                        let segments: Vec<_> = t
                            .segments
                            .iter()
                            .map(|s| serde_json::json!({"idx": s.idx, "start_ms": s.start_ms, "end_ms": s.end_ms, "text": s.text}))
                            .collect();
                        serde_json::json!({
                            "file": path, "language": t.language, "text": text.join(" "),
                            "segments": segments,
                            "audio_seconds": ms as f64 / 1000.0,
                            "seconds": t0.elapsed().as_secs_f64(),
                        })
                    }
                    Err(e) => {
                        failures.fetch_add(1, Ordering::Relaxed);
                        serde_json::json!({"file": path, "error": e})
                    }
                };
                println!("{line}");
            });
        }
    });
    let wall = began.elapsed().as_secs_f64();
    let audio_seconds = audio_ms.load(Ordering::Relaxed) as f64 / 1000.0;
    println!(
        "{}",
        serde_json::json!({
            "summary": true, "files": args.files.len(),
            "failed": failures.load(Ordering::Relaxed),
            "audio_seconds": audio_seconds, "wall_seconds": wall,
            "load_seconds": load_seconds,
            "realtime_factor": audio_seconds / wall.max(1e-9),
            "threads": budget, "parallel": parallel,
        })
    );
    anyhow::ensure!(failures.load(Ordering::Relaxed) == 0, "some files failed");
    Ok(())
}

async fn run_worker(args: RunArgs) -> anyhow::Result<()> {
    let models = s2t_worker::asr::ModelPaths {
        english: args.model_en.clone(),
        multilingual: args.model.clone(),
    };
    // Each job's child loads its model; loading them once here refuses a
    // bad path or file at start rather than at the first job. The realtime
    // server keeps this one: every session shares it.
    let engine = std::sync::Arc::new(s2t_worker::asr::Engine::load(&models)?);
    let cores = cores();
    let budget = args.threads.unwrap_or(cores).clamp(1, cores);
    let realtime = match args.realtime_listen.filter(|_| !args.once) {
        Some(listen) => {
            let listener = tokio::net::TcpListener::bind(listen)
                .await
                .with_context(|| format!("listening for realtime sessions on {listen}"))?;
            let decoders = args.realtime_decoders.clamp(1, budget);
            Some((
                listener,
                s2t_worker::realtime::server::ServerSettings {
                    database_url: args.database_url.clone(),
                    name: args.name.clone().unwrap_or_else(|| {
                        let host = std::fs::read_to_string("/etc/hostname").unwrap_or_default();
                        format!("{}:{}", host.trim(), std::process::id())
                    }),
                    listen,
                    advertise: args.realtime_address.clone(),
                    capacity: args.realtime_capacity,
                    decoders,
                    threads_per_decode: (budget / decoders).max(1) as i32,
                    final_beam: args.beam_size.max(1),
                    shed_ms: 3_000,
                    policy: Default::default(),
                },
            ))
        }
        None => None,
    };
    let models_dir = args
        .model
        .as_ref()
        .or(args.model_en.as_ref())
        .and_then(|m| m.parent())
        .map(|d| d.join("embed"))
        .unwrap_or_else(|| PathBuf::from("embed"));
    let embed = args.embed.then(|| s2t_worker::embed::Settings {
        database_url: args.database_url.clone(),
        model: s2t_embed::Config {
            runtime: args
                .onnxruntime
                .clone()
                .unwrap_or_else(|| models_dir.join("libonnxruntime.so")),
            model_dir: args
                .embed_model_dir
                .clone()
                .unwrap_or_else(|| models_dir.join(&args.embed_model)),
            name: args.embed_model.clone(),
            // One thread: the cores belong to Whisper.
            threads: 1,
        },
        batch: args.embed_batch.clamp(1, 1000),
        lease_secs: args.embed_lease_secs.max(1),
        poll_secs: args.poll_secs.max(1),
        once: args.once,
    });
    // Batch-only workers free the model here.
    let engine = realtime.is_some().then_some(engine);
    let settings = s2t_worker::runner::Settings {
        database_url: args.database_url,
        worker_name: args.name.unwrap_or_else(|| {
            let host = std::fs::read_to_string("/etc/hostname").unwrap_or_default();
            format!("{}:{}", host.trim(), std::process::id())
        }),
        concurrency: args.concurrency.max(1),
        // More busy-waiting ggml threads than cores makes decoding 10x slower.
        thread_budget: budget,
        beam_size: args.beam_size.max(1),
        fit_audio_ctx: args.fit_audio_ctx,
        lease_secs: args.lease_secs.max(3),
        poll_secs: args.poll_secs,
        max_audio_secs: args.max_audio_secs,
        once: args.once,
        maintenance_secs: args.maintenance_secs,
        retention_days: args.retention_days,
        shutdown_grace_secs: args.shutdown_grace_secs,
        audio_root: args.audio_root,
        spool_dir: args
            .spool_dir
            .unwrap_or_else(|| std::env::temp_dir().join("s2t-worker")),
        models,
        worker_exe: std::env::current_exe().context("locating the worker binary")?,
    };
    let (tx, rx) = tokio::sync::watch::channel(false);
    // With --once, the chunks to embed are those the jobs leave: embed after.
    let (embed_now, embed_after) = match embed {
        Some(e) if e.once => (None, Some(e)),
        other => (other, None),
    };
    let embedding = embed_now.map(|e| tokio::spawn(s2t_worker::embed::run(e, rx.clone())));
    tokio::spawn(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        eprintln!(
            "{}",
            serde_json::json!({"event": "shutdown", "reason": "signal"})
        );
        let _ = tx.send(true);
    });
    let server = realtime.zip(engine).map(|((listener, rt), engine)| {
        tokio::spawn(s2t_worker::realtime::server::serve(
            rt,
            listener,
            engine,
            rx.clone(),
        ))
    });
    let batch = s2t_worker::runner::run(settings, rx.clone()).await;
    if let Some(e) = embed_after {
        s2t_worker::embed::run(e, rx).await?;
    }
    if let Some(server) = server {
        server.await??;
    }
    if let Some(embedding) = embedding {
        embedding.await??;
    }
    batch
}

fn verify(path: &std::path::Path, h: &s2t_worker::model::HParams) -> anyhow::Result<()> {
    use whisper_rs::{WhisperContext, WhisperContextParameters};
    whisper_rs::install_logging_hooks();
    let ctx = WhisperContext::new_with_params(path, WhisperContextParameters::default())
        .map_err(|e| anyhow::anyhow!("whisper.cpp could not load {}: {e}", path.display()))?;
    let loaded = [
        ctx.model_n_vocab(),
        ctx.model_n_audio_ctx(),
        ctx.model_n_audio_state(),
        ctx.model_n_audio_head(),
        ctx.model_n_audio_layer(),
        ctx.model_n_text_ctx(),
        ctx.model_n_text_state(),
        ctx.model_n_text_head(),
        ctx.model_n_text_layer(),
        ctx.model_n_mels(),
        ctx.model_ftype(),
    ];
    let mut written = h.fields();
    // whisper.cpp strips the quantisation version from the ftype it reports.
    written[10] %= 1000;
    anyhow::ensure!(
        loaded == written,
        "whisper.cpp reads {loaded:?}, the converter wrote {written:?}"
    );
    Ok(())
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Run(args) => {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()?;
            runtime.block_on(run_worker(*args))?;
        }
        Command::Transcribe(args) => transcribe_files(args)?,
        Command::TranscribeJob(a) => s2t_worker::isolate::run_child(
            &s2t_worker::isolate::ChildJob {
                model: a.model,
                language: a.language,
                threads: a.threads,
                beam_size: a.beam_size,
                fit_audio_ctx: a.fit_audio_ctx,
                multilingual: a.multilingual,
                prompt: a.prompt,
                max_audio_secs: a.max_audio_secs,
                max_ms: a.max_ms,
                extension: a.extension,
                audio: a.audio,
            },
            s2t_worker::blocks::BlockPolicy::from_secs(a.block_secs),
        ),
        Command::ConvertModel {
            ct2,
            out,
            verify: check,
            weights,
        } => {
            let started = std::time::Instant::now();
            let report = s2t_worker::model::convert_ct2_to_ggml(&ct2, &out, weights)
                .with_context(|| format!("converting {}", ct2.display()))?;
            println!(
                "wrote {} ({} bytes, {} tensors, {} tokens) in {:.1} s; hparams {:?}",
                out.display(),
                report.bytes,
                report.tensors,
                report.vocabulary,
                started.elapsed().as_secs_f64(),
                report.hparams
            );
            if check {
                verify(&out, &report.hparams)?;
                println!(
                    "verified: whisper.cpp loads {} with these hyper-parameters",
                    out.display()
                );
            }
        }
    }
    Ok(())
}
