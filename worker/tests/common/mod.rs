//! Helpers shared by the worker's integration tests: real speech from
//! espeak-ng, files from sox, and the models `make models` built.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

static DECODING: Mutex<()> = Mutex::new(());
static DECODING_ASYNC: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Whisper's threads busy-wait: two decodes at once on 2 cores run ten
/// times slower, so tests that decode take turns.
pub fn one_decoder_at_a_time() -> MutexGuard<'static, ()> {
    DECODING
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The same, for async tests.
pub async fn one_decoder_at_a_time_async() -> tokio::sync::MutexGuard<'static, ()> {
    DECODING_ASYNC.lock().await
}

pub fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("s2t-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}

#[allow(unused_imports)]
pub use s2t_tests::run;

/// A 16 kHz mono 16-bit WAV made by sox from nothing, e.g.
/// `generated(&path, &["synth", "8", "pinknoise", "vol", "0.01"])` or
/// `generated(&path, &["trim", "0", "8"])` for silence.
pub fn generated(path: &Path, effects: &[&str]) {
    let mut args = vec!["-n"];
    args.extend_from_slice(&s2t_tests::SOX_16K_MONO);
    args.push(path.to_str().unwrap());
    args.extend_from_slice(effects);
    run("sox", &args);
}

#[allow(unused_imports)]
pub use s2t_tests::{models_dir, speech_wav};

/// 16 kHz mono f32 samples of a 16-bit WAV.
pub fn samples(wav: &Path) -> Vec<f32> {
    let mut reader = hound::WavReader::open(wav).expect("read wav");
    reader
        .samples::<i16>()
        .map(|s| f32::from(s.expect("sample")) / 32768.0)
        .collect()
}

pub fn model_packages() -> PathBuf {
    PathBuf::from(std::env::var("S2T_MODEL_PKGS").expect(
        "S2T_MODEL_PKGS is not set: run through `make test`, which installs the model packages",
    ))
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
