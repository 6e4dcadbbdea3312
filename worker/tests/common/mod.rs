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

#[allow(unused_imports)]
pub use s2t_tests::{librivox, wer, words};
