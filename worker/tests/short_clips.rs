//! Short clips (0.5-3.5 s: one word, a command, a realtime final) through
//! the engine with its defaults and the real tiny.en model. These are the
//! clips the fitted encoder window broke: a window of about 100 frames made
//! the decoder loop ("budgets, budgets, …", which the guard then dropped)
//! or double the word ("Firefox Firefox").
//!
//! The set is `tests/data/short_clips.tsv`, shared with `make bench-asr`,
//! which times it.

mod common;

use common::{models_dir, run, samples, temp_dir};
use s2t_tests::SOX_16K_MONO;
use s2t_worker::asr::{Engine, ModelPaths, TranscribeOptions};
use std::path::{Path, PathBuf};

const TESTDATA: &str = "/usr/share/pocketsphinx/test/data";

struct Clip {
    wav: PathBuf,
    reference: String,
    real: bool,
    /// A whole real recording, not a cut from one.
    whole_recording: bool,
}

/// Makes every clip of the list as a 16 kHz WAV, as bench/asr_corpus.py does.
fn clips(dir: &Path) -> Vec<Clip> {
    let list = std::fs::read_to_string(
        // The directory at run time (cargo sets it), not the compiled-in one.
        Path::new(
            &std::env::var("CARGO_MANIFEST_DIR")
                .unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").into()),
        )
        .join("tests/data/short_clips.tsv"),
    )
    .expect("short_clips.tsv");
    let mut out = Vec::new();
    for (i, line) in list
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .enumerate()
    {
        let (how, reference) = line.split_once('\t').expect("two columns");
        let parts: Vec<&str> = how.split_whitespace().collect();
        let wav = dir.join(format!("short{i:02}.wav"));
        let wav_s = wav.to_str().unwrap().to_string();
        if parts[0] == "espeak" {
            let raw = dir.join(format!("short{i:02}.raw.wav"));
            let raw_s = raw.to_str().unwrap().to_string();
            run(
                "espeak-ng",
                &["-v", parts[1], "-s", parts[2], "-w", &raw_s, reference],
            );
            let mut args = vec![raw_s.as_str()];
            args.extend_from_slice(&SOX_16K_MONO);
            args.extend_from_slice(&[&wav_s, "pad", "0.1", "0.1"]);
            run("sox", &args);
        } else {
            let source = format!("{TESTDATA}/{}", parts[1]);
            let mut args: Vec<&str> = Vec::new();
            if source.ends_with(".raw") {
                args.extend_from_slice(&["-t", "raw", "-r", "16000", "-e", "signed"]);
                args.extend_from_slice(&["-b", "16", "-c", "1"]);
            }
            args.push(&source);
            args.extend_from_slice(&SOX_16K_MONO);
            args.push(&wav_s);
            let end = parts.get(3).map(|e| format!("={e}"));
            if let (Some(start), Some(end)) = (parts.get(2), end.as_deref()) {
                args.extend_from_slice(&["trim", start, end]);
            }
            run("sox", &args);
        }
        out.push(Clip {
            wav,
            reference: reference.to_string(),
            real: parts[0] == "real",
            whole_recording: parts[0] == "real" && parts.len() == 2,
        });
    }
    out
}

/// Letters and digits only, numbers spelled out: "Fire fox." and "Firefox"
/// are the same answer, and so are "10 of clubs" and "ten of clubs".
fn letters(text: &str) -> String {
    const SMALL: [&str; 11] = [
        "zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
    ];
    text.split(|c: char| c.is_whitespace() || c == '-')
        .map(|w| {
            let w: String = w.chars().filter(|c| c.is_alphanumeric()).collect();
            let lower = w.to_lowercase();
            match lower.parse::<usize>() {
                Ok(n) if n <= 10 && !lower.starts_with('0') || lower == "0" => SMALL[n].to_string(),
                // Digit strings ("29340") are read digit by digit.
                Ok(_) => lower
                    .chars()
                    .map(|d| SMALL[d.to_digit(10).unwrap() as usize])
                    .collect(),
                Err(_) => lower,
            }
        })
        .collect()
}

#[test]
fn number_words_and_compounds_compare_equal() {
    assert_eq!(letters("Fire fox."), letters("Firefox"));
    assert_eq!(letters("10 of clubs."), letters("ten of clubs"));
    assert_eq!(letters("29340."), letters("two nine three four zero"));
    assert_ne!(letters("S."), letters("Yes"));
}

#[test]
fn short_clips_come_out_right_with_the_default_settings() {
    let _turn = common::one_decoder_at_a_time();
    let dir = temp_dir("short-clips");
    let engine = Engine::load(&ModelPaths {
        english: Some(models_dir().join("ggml-tiny.en.bin")),
        multilingual: None,
    })
    .expect("load tiny.en");
    let options = TranscribeOptions::new("en", 2);
    assert!(options.fit_audio_ctx, "the default is what is tested");
    let clips = clips(&dir);
    assert!(clips.len() >= 30, "the list has {} clips", clips.len());
    let mut wrong = Vec::new();
    for clip in &clips {
        let audio = samples(&clip.wav);
        let seconds = audio.len() as f64 / 16_000.0;
        assert!(
            (0.5..=3.6).contains(&seconds),
            "{} is {seconds} s",
            clip.reference
        );
        let t = engine
            .transcribe(&audio, &options, |_| {})
            .expect("transcribe");
        let text: Vec<&str> = t.segments.iter().map(|s| s.text.as_str()).collect();
        let text = text.join(" ");
        if letters(&text) != letters(&clip.reference) {
            wrong.push((clip.real, format!("{:?} -> {text:?}", clip.reference)));
        }
        // A loop or a doubled word is longer than what was said.
        assert!(
            letters(&text).len() <= letters(&clip.reference).len() + 4,
            "{:?} -> {text:?}",
            clip.reference
        );
        // What the old window dropped whole. (A cut from mid-sentence can
        // come back empty: whisper.cpp's own no-speech rule drops "john
        // dashwood" cut from a LibriVox sentence, on the full window too.)
        if clip.whole_recording {
            assert!(!text.is_empty(), "{:?} came back empty", clip.reference);
        }
    }
    // What is left are tiny.en's own misreadings, not the window's: on
    // these clips faster-whisper float32 also hears "Queen of Cloves" and
    // "four of close", and the full window also gives "old-sposed" and
    // nothing usable for the "john dashwood" cut. The synthetic words are
    // the reported failures and must come out right but for one.
    let synthetic = wrong.iter().filter(|(real, _)| !real).count();
    let real = wrong.len() - synthetic;
    let listing: Vec<&str> = wrong.iter().map(|(_, w)| w.as_str()).collect();
    assert!(
        synthetic <= 1 && real <= 4,
        "{synthetic} synthetic and {real} real clips wrong:\n{}",
        listing.join("\n")
    );
    std::fs::remove_dir_all(&dir).ok();
}
