//! Decoding every supported format, made from one reference signal with sox,
//! ffmpeg and opusenc from apt.

use s2t_worker::audio::{decode, AudioError, TARGET_RATE};
use std::path::{Path, PathBuf};

mod common;
use common::run;

fn temp_dir() -> PathBuf {
    common::temp_dir("audio")
}

/// 2 s of a 440 Hz tone at 44.1 kHz stereo, 16-bit: the reference.
fn reference(dir: &Path) -> PathBuf {
    let path = dir.join("ref.wav");
    run(
        "sox",
        &[
            "-n",
            "-r",
            "44100",
            "-c",
            "2",
            "-b",
            "16",
            path.to_str().unwrap(),
            "synth",
            "2",
            "sine",
            "440",
            "vol",
            "0.5",
        ],
    );
    path
}

/// Amplitude of 440 Hz in the middle of a 16 kHz signal.
fn tone_amplitude(x: &[f32]) -> f64 {
    let mid = &x[x.len() / 4..x.len() * 3 / 4];
    let (mut re, mut im) = (0.0f64, 0.0f64);
    for (i, v) in mid.iter().enumerate() {
        let phase = 2.0 * std::f64::consts::PI * 440.0 * i as f64 / f64::from(TARGET_RATE);
        re += f64::from(*v) * phase.cos();
        im += f64::from(*v) * phase.sin();
    }
    2.0 * (re * re + im * im).sqrt() / mid.len() as f64
}

fn check(path: &Path, ext: &str, tolerance_ms: u64) {
    let bytes = std::fs::read(path).unwrap();
    let decoded =
        decode(bytes, Some(ext), 3600).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert!(
        decoded.duration_ms.abs_diff(2000) <= tolerance_ms,
        "{ext}: {} ms",
        decoded.duration_ms
    );
    let expected = decoded.duration_ms as f64 * 16.0;
    assert!(
        // duration_ms is rounded up to the millisecond: 16 samples.
        (decoded.samples.len() as f64 - expected).abs() <= 16.0,
        "{ext}: {} samples for {} ms",
        decoded.samples.len(),
        decoded.duration_ms
    );
    let a = tone_amplitude(&decoded.samples);
    assert!(
        (a - 0.5).abs() < 0.06,
        "{ext} ({}): tone amplitude {a}",
        decoded.codec
    );
}

#[test]
fn decodes_every_supported_format() {
    let dir = temp_dir();
    let src = reference(&dir);
    let s = src.to_str().unwrap();
    let out = |name: &str| dir.join(name).to_str().unwrap().to_string();
    // (file, how to make it, extension hint, duration tolerance in ms)
    let cases: Vec<(String, Vec<&str>, &str, u64)> = vec![
        (out("pcm16.wav"), vec!["sox", s, "-b", "16"], "wav", 1),
        (out("pcm24.wav"), vec!["sox", s, "-b", "24"], "wav", 1),
        (out("pcm32.wav"), vec!["sox", s, "-b", "32"], "wav", 1),
        (
            out("float.wav"),
            vec!["sox", s, "-e", "floating-point", "-b", "32"],
            "wav",
            1,
        ),
        (
            out("mono8k.wav"),
            vec!["sox", s, "-r", "8000", "-c", "1"],
            "wav",
            1,
        ),
        (out("a.flac"), vec!["sox", s], "flac", 1),
        (out("a.ogg"), vec!["sox", s, "-C", "3"], "ogg", 30),
        (
            out("a.mp3"),
            vec![
                "ffmpeg",
                "-loglevel",
                "error",
                "-y",
                "-i",
                s,
                "-b:a",
                "128k",
            ],
            "mp3",
            80,
        ),
        (
            out("a.m4a"),
            vec![
                "ffmpeg",
                "-loglevel",
                "error",
                "-y",
                "-i",
                s,
                "-c:a",
                "aac",
                "-b:a",
                "96k",
            ],
            "m4a",
            80,
        ),
        (out("a.opus"), vec!["opusenc", "--quiet", s], "opus", 30),
        (
            out("a.webm"),
            vec![
                "ffmpeg",
                "-loglevel",
                "error",
                "-y",
                "-i",
                s,
                "-c:a",
                "libopus",
                "-b:a",
                "64k",
            ],
            "webm",
            30,
        ),
    ];
    for (path, cmd, ext, tolerance) in &cases {
        let mut args: Vec<&str> = cmd[1..].to_vec();
        args.push(path);
        run(cmd[0], &args);
        check(Path::new(path), ext, *tolerance);
        // The extension is only a hint: content sniffing works without it
        // for every container that has a signature.
        if *ext != "mp3" {
            let bytes = std::fs::read(path).unwrap();
            assert!(decode(bytes, None, 3600).is_ok(), "{ext} without a hint");
        }
    }
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn corrupt_and_overlong_audio_fail_with_a_reason() {
    let dir = temp_dir().join("bad");
    std::fs::create_dir_all(&dir).unwrap();
    let src = reference(&dir);
    let flac = dir.join("a.flac");
    run("sox", &[src.to_str().unwrap(), flac.to_str().unwrap()]);
    // Keep the header, replace the frames with noise.
    let mut bytes = std::fs::read(&flac).unwrap();
    for (i, b) in bytes.iter_mut().enumerate().skip(100) {
        *b = (i.wrapping_mul(2_654_435_761) >> 7) as u8;
    }
    let err = decode(bytes, Some("flac"), 3600).unwrap_err();
    // Depending on where the damage starts the probe or the decoder gives up.
    assert!(
        matches!(
            err,
            AudioError::Corrupt(_) | AudioError::NoSamples | AudioError::NotAudio(_)
        ),
        "{err:?}"
    );
    assert!(!err.to_string().is_empty());

    // Over the limit: refused.
    let long = dir.join("long.wav");
    common::generated(&long, &["synth", "30", "sine", "300"]);
    let err = decode(std::fs::read(&long).unwrap(), Some("wav"), 10).unwrap_err();
    assert_eq!(err, AudioError::TooLong { max_seconds: 10 });
    assert!(err.to_string().contains("10 s"));

    // A WAV header with no samples.
    let empty = dir.join("empty.wav");
    common::generated(&empty, &["trim", "0", "0"]);
    let err = decode(std::fs::read(&empty).unwrap(), Some("wav"), 10).unwrap_err();
    assert!(
        matches!(err, AudioError::NoSamples | AudioError::NotAudio(_)),
        "{err:?}"
    );
    std::fs::remove_dir_all(&dir).ok();
}
