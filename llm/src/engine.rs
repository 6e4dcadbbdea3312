//! The model: one thread owns llama.cpp's backend, the model and one
//! context, and answers requests one at a time (two cores have no room for
//! a second decode). Requests wait in a bounded queue; a full queue is
//! refused at once rather than left to time out.

use crate::api::{StopFilter, Utf8Stream};
use anyhow::{anyhow, Context as _};
use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::model::{LlamaChatMessage, LlamaChatTemplate, LlamaModel};
use llama_cpp_2::sampling::LlamaSampler;
use std::num::NonZeroU32;
use std::path::PathBuf;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use tokio::sync::mpsc;

/// What the engine sends back for one request, in this order: `Started`,
/// any number of `Text`, then `Done` (or `Failed` at any point).
#[derive(Debug)]
pub enum Out {
    Started {
        prompt_tokens: usize,
    },
    Text(String),
    Done {
        finish: &'static str,
        completion_tokens: usize,
    },
    Failed(String),
}

pub struct Job {
    pub messages: Vec<(String, String)>,
    pub max_tokens: u32,
    pub stop: Vec<String>,
    pub out: mpsc::Sender<Out>,
}

#[derive(Debug, Clone)]
pub struct Settings {
    pub model: PathBuf,
    pub ctx: u32,
    pub threads: i32,
    pub queue: usize,
}

/// A handle to the engine thread.
#[derive(Clone)]
pub struct Engine {
    jobs: SyncSender<Job>,
}

pub enum Refused {
    /// The queue is full: try again later.
    Busy,
    /// The engine thread is gone.
    Stopped,
}

impl Engine {
    /// Loads the model (an error if it cannot) and starts the thread.
    pub fn start(s: Settings) -> anyhow::Result<Engine> {
        let (jobs, rx) = sync_channel::<Job>(s.queue);
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<anyhow::Result<()>>();
        std::thread::Builder::new()
            .name("llama".into())
            .spawn(move || run(s, rx, ready_tx))
            .context("starting the model thread")?;
        ready_rx
            .recv()
            .map_err(|_| anyhow!("the model thread ended while loading"))??;
        Ok(Engine { jobs })
    }

    pub fn submit(&self, job: Job) -> Result<(), Refused> {
        self.jobs.try_send(job).map_err(|e| match e {
            TrySendError::Full(_) => Refused::Busy,
            TrySendError::Disconnected(_) => Refused::Stopped,
        })
    }
}

fn run(s: Settings, rx: Receiver<Job>, ready: std::sync::mpsc::Sender<anyhow::Result<()>>) {
    let loaded = (|| -> anyhow::Result<(LlamaBackend, LlamaModel)> {
        let mut backend = LlamaBackend::init().context("initialising llama.cpp")?;
        backend.void_logs();
        let model = LlamaModel::load_from_file(&backend, &s.model, &LlamaModelParams::default())
            .with_context(|| format!("loading {}", s.model.display()))?;
        Ok((backend, model))
    })();
    let (backend, model) = match loaded {
        Ok(v) => v,
        Err(e) => {
            let _ = ready.send(Err(e));
            return;
        }
    };
    let template = model
        .chat_template(None)
        .or_else(|_| LlamaChatTemplate::new("chatml"))
        .expect("a static template name has no NUL");
    let params = LlamaContextParams::default()
        .with_n_ctx(NonZeroU32::new(s.ctx))
        .with_n_batch(512)
        .with_n_threads(s.threads)
        .with_n_threads_batch(s.threads);
    let mut ctx = match model.new_context(&backend, params) {
        Ok(c) => c,
        Err(e) => {
            let _ = ready.send(Err(anyhow!("creating a context of {} tokens: {e}", s.ctx)));
            return;
        }
    };
    let _ = ready.send(Ok(()));
    while let Ok(job) = rx.recv() {
        if job.out.is_closed() {
            continue; // the client left while it waited
        }
        ctx.clear_kv_cache();
        if let Err(e) = answer(&model, &template, &mut ctx, s.ctx, &job) {
            let _ = job.out.blocking_send(Out::Failed(e.to_string()));
        }
    }
}

fn answer(
    model: &LlamaModel,
    template: &LlamaChatTemplate,
    ctx: &mut llama_cpp_2::context::LlamaContext,
    n_ctx: u32,
    job: &Job,
) -> anyhow::Result<()> {
    let chat = job
        .messages
        .iter()
        .map(|(r, c)| LlamaChatMessage::new(r.clone(), c.clone()))
        .collect::<Result<Vec<_>, _>>()
        .context("a message holds a NUL character")?;
    let prompt = model
        .apply_chat_template(template, &chat, true)
        .context("applying the chat template")?;
    let vocab = model.vocab();
    let tokens = vocab.tokenize(prompt.as_bytes(), false, true);
    let budget = n_ctx as usize;
    if tokens.len() + job.max_tokens as usize > budget {
        anyhow::bail!(
            "the prompt is {} tokens and max_tokens {}; together they must fit the context of {budget}",
            tokens.len(),
            job.max_tokens
        );
    }
    if job
        .out
        .blocking_send(Out::Started {
            prompt_tokens: tokens.len(),
        })
        .is_err()
    {
        return Ok(());
    }
    // Read the prompt in batches; logits only for its last token.
    let mut batch = LlamaBatch::new(512, 1);
    let mut pos = 0i32;
    for piece in tokens.chunks(512) {
        batch.clear();
        for (i, t) in piece.iter().enumerate() {
            let last = pos as usize + i + 1 == tokens.len();
            batch.add(*t, pos + i as i32, &[0], last)?;
        }
        ctx.decode(&mut batch).context("reading the prompt")?;
        pos += piece.len() as i32;
    }
    let mut sampler = LlamaSampler::greedy();
    let mut utf8 = Utf8Stream::default();
    let mut stop = StopFilter::new(job.stop.clone());
    let mut produced = 0usize;
    let mut finish = "length";
    while produced < job.max_tokens as usize {
        let token = sampler.sample(ctx, batch.n_tokens() - 1);
        if vocab.is_eog(token) {
            finish = "stop";
            break;
        }
        produced += 1;
        let text = stop.push(&utf8.push(&vocab.token_to_piece(token, false, None)));
        if !text.is_empty() && job.out.blocking_send(Out::Text(text)).is_err() {
            return Ok(()); // the client is gone: stop decoding
        }
        if stop.stopped() {
            finish = "stop";
            break;
        }
        batch.clear();
        batch.add(token, pos, &[0], true)?;
        pos += 1;
        ctx.decode(&mut batch).context("generating")?;
    }
    if !stop.stopped() {
        let rest = stop.push(&utf8.finish()) + &stop.finish();
        if !rest.is_empty() {
            let _ = job.out.blocking_send(Out::Text(rest));
        }
    }
    let _ = job.out.blocking_send(Out::Done {
        finish,
        completion_tokens: produced,
    });
    Ok(())
}
