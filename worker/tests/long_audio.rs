//! A long recording through the transcription child's code path (file in,
//! counting pass, streaming decode and resampling, blocks, Whisper), with
//! blocks made small so that 3½ minutes span four of them: segment times
//! must stay on the recording's timeline across every block boundary.

mod common;

use s2t_worker::blocks::BlockPolicy;
use s2t_worker::isolate::{transcribe_job, ChildJob, ChildMessage};
use std::path::Path;
use std::sync::{Arc, Mutex};

/// (text, a word tiny.en reliably gets, pause after it in seconds)
const SENTENCES: [(&str, &str, f32); 3] = [
    (
        "The morning train was late again, so the station filled with tired commuters.",
        "train",
        2.0,
    ),
    (
        "Please remember to water the tomato plants on the balcony before you leave.",
        "tomato",
        3.0,
    ),
    (
        "Our library keeps old maps of the river valley in a quiet room.",
        "library",
        4.0,
    ),
];

/// 44.1 kHz stereo (so both downmix and resampling run): the three
/// sentences with their pauses, repeated `times`. Returns the path and,
/// per sentence, where it starts and ends inside one repetition.
fn recording(dir: &Path, times: usize) -> (std::path::PathBuf, f64, Vec<(f64, f64)>) {
    let mut parts = Vec::new();
    let mut spans = Vec::new();
    let mut at = 0.0;
    for (i, (text, _, pause)) in SENTENCES.iter().enumerate() {
        let raw = dir.join(format!("s{i}.raw.wav"));
        let part = dir.join(format!("s{i}.wav"));
        common::run(
            "espeak-ng",
            &[
                "-v",
                "en-us",
                "-s",
                "150",
                "-w",
                raw.to_str().unwrap(),
                text,
            ],
        );
        let pause = pause.to_string();
        common::run(
            "sox",
            &[
                "-V1",
                raw.to_str().unwrap(),
                "-r",
                "44100",
                "-c",
                "2",
                "-b",
                "16",
                part.to_str().unwrap(),
                "pad",
                "0",
                &pause,
            ],
        );
        let speech = seconds(&raw);
        spans.push((at, at + speech));
        at += seconds(&part);
        parts.push(part.to_str().unwrap().to_string());
    }
    let unit = dir.join("unit.wav");
    let mut args: Vec<&str> = vec!["-V1"];
    args.extend(parts.iter().map(String::as_str));
    args.push(unit.to_str().unwrap());
    common::run("sox", &args);
    let long = dir.join("long.wav");
    let repeat = (times - 1).to_string();
    common::run(
        "sox",
        &[
            "-V1",
            unit.to_str().unwrap(),
            long.to_str().unwrap(),
            "repeat",
            &repeat,
        ],
    );
    (long, seconds(&unit), spans)
}

fn seconds(wav: &Path) -> f64 {
    let out = std::process::Command::new("soxi")
        .args(["-D", wav.to_str().unwrap()])
        .output()
        .expect("soxi (sox) must be installed");
    String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .expect("soxi prints seconds")
}

fn job(audio: &Path, max_ms: Option<i32>) -> ChildJob {
    ChildJob {
        model: common::models_dir().join("ggml-tiny.en.bin"),
        language: "en".into(),
        threads: 2,
        // Greedy: the test is about times, and it halves the decode.
        beam_size: 1,
        fit_audio_ctx: true,
        multilingual: false,
        prompt: None,
        max_audio_secs: 3600,
        max_ms,
        extension: Some("wav".into()),
        audio: audio.to_path_buf(),
    }
}

fn run(job: &ChildJob, policy: BlockPolicy) -> (Vec<ChildMessage>, ChildMessage) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let sink = seen.clone();
    let last = transcribe_job(
        job,
        policy,
        Arc::new(move |m: &ChildMessage| sink.lock().unwrap().push(m.clone())),
    );
    let messages = seen.lock().unwrap().clone();
    (messages, last)
}

#[derive(serde::Deserialize)]
struct Seg {
    idx: i32,
    start_ms: i64,
    end_ms: i64,
    text: String,
}

#[test]
fn a_long_file_spans_blocks_with_times_on_the_recording_timeline() {
    let _turn = common::one_decoder_at_a_time();
    let dir = common::temp_dir("long-audio");
    let times = 9;
    let (audio, unit, spans) = recording(&dir, times);
    let total = seconds(&audio);
    assert!(total > 180.0, "{total} s");
    let policy = BlockPolicy::from_secs(60);

    let (messages, last) = run(&job(&audio, None), policy);
    // The exact length comes first, before any progress.
    let Some(ChildMessage::Decoded { audio_ms }) = messages.first() else {
        panic!("first message {:?}", messages.first());
    };
    assert!(
        (f64::from(*audio_ms) / 1000.0 - total).abs() < 0.01,
        "{audio_ms} ms for {total} s"
    );
    let progress: Vec<f32> = messages
        .iter()
        .filter_map(|m| match m {
            ChildMessage::Progress(f) => Some(*f),
            _ => None,
        })
        .collect();
    assert!(
        progress.windows(2).all(|w| w[0] <= w[1]),
        "progress runs forward over the whole file"
    );
    assert!(progress.last().copied().unwrap_or(0.0) > 0.99);
    assert!(progress.iter().filter(|f| **f < 0.5).count() > 0);
    let ChildMessage::Done {
        duration_ms,
        notice,
        segments,
        segment_count,
        ..
    } = last
    else {
        panic!("{last:?}");
    };
    assert_eq!(duration_ms, *audio_ms);
    assert_eq!(notice, None);
    let segs: Vec<Seg> = serde_json::from_value(segments).unwrap();
    assert_eq!(segs.len(), segment_count);
    assert_eq!(
        segs.iter().map(|s| s.idx).collect::<Vec<_>>(),
        (0..segs.len() as i32).collect::<Vec<_>>(),
        "numbered across blocks"
    );
    for pair in segs.windows(2) {
        assert!(pair[0].start_ms <= pair[1].start_ms, "monotonic starts");
    }
    for s in &segs {
        assert!(s.start_ms <= s.end_ms && s.end_ms <= i64::from(duration_ms));
    }
    // Every block has speech, so every block has segments.
    let block_secs = policy.max_samples as f64 / 16_000.0;
    let blocks_with_text: std::collections::BTreeSet<usize> = segs
        .iter()
        .map(|s| (s.start_ms as f64 / 1000.0 / block_secs) as usize)
        .collect();
    assert!(
        blocks_with_text.len() >= 4,
        "segments in blocks {blocks_with_text:?}"
    );
    // A segment that says a sentence starts near where that sentence is
    // spoken in some repetition, and each repetition is found once: a
    // block's offset missing, doubled or off by any other amount would
    // move its segments by tens of seconds. (Whisper's own segment times
    // on the VAD-shortened audio are off by up to a few seconds: one
    // sentence's start can land in the pause before it.)
    let describe = || {
        segs.iter()
            .map(|s| (s.start_ms, s.text.as_str()))
            .collect::<Vec<_>>()
    };
    for (i, (_, word, _)) in SENTENCES.iter().enumerate() {
        let starts: Vec<f64> = segs
            .iter()
            .filter(|s| {
                // One sentence per segment; a merged one starts at its first.
                let text = s.text.to_lowercase();
                text.contains(word)
                    && SENTENCES
                        .iter()
                        .filter(|(_, w, _)| text.contains(w))
                        .count()
                        == 1
            })
            .map(|s| s.start_ms as f64 / 1000.0)
            .collect();
        let mut reps = std::collections::BTreeSet::new();
        for t in &starts {
            let rep = ((t - spans[i].0) / unit).round();
            let off = t - (rep * unit + spans[i].0);
            assert!(
                off.abs() < 6.0,
                "{word:?} at {t} s is {off:.1} s from its repetition {rep}: {:?}",
                describe()
            );
            assert!(
                reps.insert(rep as i64),
                "{word:?} twice in repetition {rep}: {:?}",
                describe()
            );
        }
        assert!(
            reps.len() + 2 >= times,
            "{word:?} found in {} of {times} repetitions: {:?}",
            reps.len(),
            describe()
        );
    }
    let last_end = segs.last().map(|s| s.end_ms as f64 / 1000.0).unwrap_or(0.0);
    assert!(
        total - last_end < 6.0,
        "speech to the end: {last_end} of {total} s"
    );

    // Past the allowance: the length is still the whole file's, the
    // transcript stops at the cut, across a block boundary too.
    let (messages, last) = run(&job(&audio, Some(75_000)), policy);
    assert!(
        matches!(messages.first(), Some(ChildMessage::Decoded { audio_ms: a }) if a == audio_ms)
    );
    let ChildMessage::Done {
        duration_ms,
        notice,
        segments,
        ..
    } = last
    else {
        panic!("{last:?}");
    };
    assert_eq!(duration_ms, 75_000);
    let notice = notice.expect("a notice for the cut");
    assert!(notice.contains("first 75 s of"), "{notice}");
    let segs: Vec<Seg> = serde_json::from_value(segments).unwrap();
    assert!(segs.iter().all(|s| s.end_ms <= 75_000));
    assert!(
        segs.iter().any(|s| s.start_ms > 60_000),
        "the second block was transcribed"
    );
    std::fs::remove_dir_all(&dir).ok();
}
