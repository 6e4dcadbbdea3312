//! The sentence-embedding model, shared by the worker (chunks, in batches)
//! and the extension (queries, inside a backend).
//!
//! The model is loaded from local files only: an ONNX graph and the
//! Hugging Face tokenizer files beside it, run by an ONNX Runtime shared
//! library loaded at run time (`ort-load-dynamic`; the library is the one
//! the PyPI `onnxruntime` wheel ships, installed by `make models`). Nothing
//! is fetched from a model hub.
//!
//! A model directory holds `model.onnx`, `tokenizer.json`, `config.json`,
//! `special_tokens_map.json` and `tokenizer_config.json`. Vectors are
//! mean-pooled and L2-normalised, so cosine distance and inner product
//! agree.

use fastembed::{
    InitOptionsUserDefined, Pooling, TextEmbedding, TokenizerFiles, UserDefinedEmbeddingModel,
};
use ort::environment::Environment;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// The dimension of `transcript_chunks.embedding`; a model of another
/// dimension is refused at load.
pub const DIMENSION: usize = 384;

/// The name stored with every vector made by the default model.
pub const DEFAULT_MODEL: &str = "all-MiniLM-L6-v2-int8";

/// Longest input, in model tokens; longer text is truncated. MiniLM was
/// trained on 128 and accepts 256.
pub const MAX_TOKENS: usize = 256;

#[derive(Debug, thiserror::Error)]
pub enum EmbedError {
    #[error("ONNX Runtime could not be loaded from {path}: {reason}")]
    Runtime { path: String, reason: String },
    #[error("cannot read the embedding model file {path}: {reason}")]
    File { path: String, reason: String },
    #[error("the embedding model in {dir} does not load: {reason}")]
    Model { dir: String, reason: String },
    #[error("the embedding model {name} gives {got}-dimensional vectors; the chunk column holds {DIMENSION}")]
    Dimension { name: String, got: usize },
    #[error("embedding failed: {0}")]
    Embed(String),
}

/// Where the model is and what to call it.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// `libonnxruntime.so.*`.
    pub runtime: PathBuf,
    /// The model directory (see the module docs).
    pub model_dir: PathBuf,
    /// Stored in `transcript_chunks.embedding_model`.
    pub name: String,
    /// ONNX Runtime intra-op threads (1 inside a PostgreSQL backend).
    pub threads: usize,
}

/// The runtime is loaded once per process, with one environment that every
/// model shares; a second, different path is an error rather than a silent
/// use of the first.
static RUNTIME: Mutex<Option<(PathBuf, Environment)>> = Mutex::new(None);

fn load_runtime(path: &Path) -> Result<Environment, EmbedError> {
    let fail = |reason: String| EmbedError::Runtime {
        path: path.display().to_string(),
        reason,
    };
    let mut loaded = RUNTIME.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((prev, env)) = loaded.as_ref() {
        if prev == path {
            return Ok(env.clone());
        }
        return Err(fail(format!(
            "this process already loaded {}; restart it to change",
            prev.display()
        )));
    }
    if !path.is_file() {
        return Err(fail("no such file".into()));
    }
    let env = ort::init_from(path)
        .map_err(|e| fail(e.to_string()))?
        .with_name("s2t-embed")
        .build()
        .map_err(|e| fail(e.to_string()))?;
    *loaded = Some((path.to_path_buf(), env.clone()));
    Ok(env)
}

fn read(dir: &Path, file: &str) -> Result<Vec<u8>, EmbedError> {
    let path = dir.join(file);
    std::fs::read(&path).map_err(|e| EmbedError::File {
        path: path.display().to_string(),
        reason: e.to_string(),
    })
}

/// A loaded model.
pub struct Embedder {
    model: TextEmbedding,
    name: String,
}

impl Embedder {
    /// Load the runtime (once per process) and the model. Checks the
    /// dimension with one probe embedding.
    pub fn load(cfg: &Config) -> Result<Self, EmbedError> {
        let env = load_runtime(&cfg.runtime)?;
        let dir = &cfg.model_dir;
        let files = TokenizerFiles {
            tokenizer_file: read(dir, "tokenizer.json")?,
            config_file: read(dir, "config.json")?,
            special_tokens_map_file: read(dir, "special_tokens_map.json")?,
            tokenizer_config_file: read(dir, "tokenizer_config.json")?,
        };
        let onnx = read(dir, "model.onnx")?;
        let user = UserDefinedEmbeddingModel::new(onnx, files).with_pooling(Pooling::Mean);
        let options = InitOptionsUserDefined::new()
            .with_environment(env)
            .with_max_length(MAX_TOKENS)
            .with_intra_threads(cfg.threads.max(1));
        let model = TextEmbedding::try_new_from_user_defined(user, options).map_err(|e| {
            EmbedError::Model {
                dir: dir.display().to_string(),
                reason: e.to_string(),
            }
        })?;
        let mut me = Embedder {
            model,
            name: cfg.name.clone(),
        };
        let probe = me.embed(&["probe"])?;
        let got = probe.first().map_or(0, Vec::len);
        if got != DIMENSION {
            return Err(EmbedError::Dimension {
                name: cfg.name.clone(),
                got,
            });
        }
        Ok(me)
    }

    /// The name stored with the vectors this model makes.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Embed `texts` (one batch), each vector L2-normalised.
    pub fn embed<S: AsRef<str> + Send + Sync>(
        &mut self,
        texts: &[S],
    ) -> Result<Vec<Vec<f32>>, EmbedError> {
        if texts.is_empty() {
            return Ok(Vec::new());
        }
        let mut out = self
            .model
            .embed(texts, Some(texts.len()))
            .map_err(|e| EmbedError::Embed(e.to_string()))?;
        for v in &mut out {
            normalise(v);
        }
        Ok(out)
    }
}

/// Keep tokenization on the calling thread (inside a PostgreSQL backend,
/// which must stay single-threaded). Call before the first load.
pub fn single_threaded() {
    tokenizers::utils::parallelism::set_parallelism(false);
}

/// Scale `v` to unit length (a zero vector stays zero).
pub fn normalise(v: &mut [f32]) {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm > 0.0 {
        for x in v.iter_mut() {
            *x /= norm;
        }
    }
}

/// Cosine similarity of two unit vectors.
pub fn cosine(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The installed model, when `make models` has run; tests that need it
    /// say so instead of passing silently.
    fn installed() -> Config {
        let models = std::env::var("S2T_MODELS_DIR").unwrap_or_else(|_| {
            format!(
                "{}/.cache/pg_s2t/models",
                std::env::var("HOME").unwrap_or_default()
            )
        });
        let root = PathBuf::from(models).join("embed");
        Config {
            runtime: root.join("libonnxruntime.so"),
            model_dir: root.join(DEFAULT_MODEL),
            name: DEFAULT_MODEL.into(),
            threads: 1,
        }
    }

    #[test]
    fn normalise_gives_unit_length_and_keeps_zero() {
        let mut v = vec![3.0, 4.0];
        normalise(&mut v);
        assert!((v[0] - 0.6).abs() < 1e-6 && (v[1] - 0.8).abs() < 1e-6);
        let mut z = vec![0.0; 3];
        normalise(&mut z);
        assert_eq!(z, vec![0.0; 3]);
    }

    #[test]
    fn the_installed_model_ranks_a_paraphrase_above_an_unrelated_sentence() {
        let cfg = installed();
        assert!(
            cfg.model_dir.join("model.onnx").is_file(),
            "run `make models` first: no model in {}",
            cfg.model_dir.display()
        );
        let mut m = Embedder::load(&cfg).expect("model loads");
        let v = m
            .embed(&[
                "We agreed to cut the travel budget next quarter.",
                "The decision was to spend less on trips in the coming months.",
                "The cat sat quietly on the warm window sill.",
            ])
            .unwrap();
        assert_eq!(v.len(), 3);
        assert!(v.iter().all(|x| x.len() == DIMENSION));
        let norm: f32 = v[0].iter().map(|x| x * x).sum();
        assert!((norm - 1.0).abs() < 1e-4);
        assert!(cosine(&v[0], &v[1]) > cosine(&v[0], &v[2]) + 0.2);
        // Deterministic: the same text gives the same vector.
        let again = m
            .embed(&["We agreed to cut the travel budget next quarter."])
            .unwrap();
        assert!(cosine(&v[0], &again[0]) > 0.9999);
    }

    #[test]
    fn missing_files_are_clear_errors() {
        let mut cfg = installed();
        cfg.model_dir = PathBuf::from("/nonexistent/model");
        let err = Embedder::load(&cfg).err().expect("must fail");
        let msg = err.to_string();
        assert!(
            msg.contains("/nonexistent/model") || msg.contains("ONNX Runtime"),
            "{msg}"
        );
        let other = Config {
            runtime: PathBuf::from("/nonexistent/libonnxruntime.so"),
            ..installed()
        };
        // Either "no such file" or "already loaded another": both name the path.
        let msg = Embedder::load(&other).err().expect("must fail").to_string();
        assert!(msg.contains("/nonexistent/libonnxruntime.so"), "{msg}");
    }
}
