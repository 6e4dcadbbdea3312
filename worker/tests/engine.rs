//! The recognition engine on real speech: VAD, timestamps on the original
//! timeline, word timings, language handling and silence.

mod common;

use common::{models_dir, samples, speech_wav, temp_dir, wer};
use s2t_worker::asr::{Engine, ModelPaths, TranscribeOptions};

fn engine() -> Engine {
    let dir = models_dir();
    Engine::load(&ModelPaths {
        english: Some(dir.join("ggml-tiny.en.bin")),
        multilingual: Some(dir.join("ggml-base.bin")),
    })
    .expect("load models")
}

fn opts(language: &str) -> TranscribeOptions {
    TranscribeOptions {
        // An unset flag must not disturb decoding (whisper-rs's safe abort
        // callback did).
        cancel: Some(std::sync::Arc::new(std::sync::atomic::AtomicBool::new(
            false,
        ))),
        ..TranscribeOptions::new(language, 2)
    }
}

const ENGLISH: &str =
    "The quick brown fox jumps over the lazy dog. Postgres stores every segment of the transcript.";

#[test]
fn english_with_silence_around_it_keeps_the_original_timeline() {
    let _turn = common::one_decoder_at_a_time();
    let dir = temp_dir("engine-en");
    let wav = speech_wav(ENGLISH, "en-us", 3.0, &dir, "en");
    let audio = samples(&wav);
    let duration_ms = (audio.len() * 1000 / 16_000) as i64;
    let progress = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = progress.clone();
    let t = engine()
        .transcribe(&audio, &opts("en"), move |p| seen.lock().unwrap().push(p))
        .expect("transcribe");
    let text = t
        .segments
        .iter()
        .map(|s| s.text.as_str())
        .collect::<Vec<_>>()
        .join(" ");
    // Synthetic voices are hard for tiny.en ("Postgres stores" comes out
    // as "post your store's"): a bound plus the words it always gets.
    assert!(wer(ENGLISH, &text) < 0.45, "WER too high: {text:?}");
    // One miss is allowed: machines differ in espeak-ng builds and float
    // rounding ("brown" came out as "round" on CI once).
    let lower = text.to_lowercase();
    let keys = ["quick", "brown", "fox", "lazy", "dog", "segment"];
    let missing: Vec<_> = keys.iter().filter(|w| !lower.contains(*w)).collect();
    assert!(missing.len() <= 1, "{missing:?} missing from {text:?}");
    assert_eq!(t.language.as_deref(), Some("en"));
    // Speech starts 3 s in: VAD cut the silence, the map put it back.
    let first = &t.segments[0];
    assert!(
        first.start_ms >= 2500,
        "first segment at {} ms",
        first.start_ms
    );
    let last = t.segments.last().unwrap();
    assert!(
        last.end_ms <= duration_ms - 2000,
        "last segment ends at {} of {duration_ms} ms",
        last.end_ms
    );
    for pair in t.segments.windows(2) {
        assert!(pair[0].start_ms <= pair[1].start_ms, "monotonic starts");
    }
    for (i, s) in t.segments.iter().enumerate() {
        assert_eq!(s.idx, i as i32);
        assert!(s.start_ms <= s.end_ms && s.end_ms <= duration_ms);
        assert!(!s.words.is_empty(), "word timings for {:?}", s.text);
        for w in &s.words {
            assert!(
                w.start_ms >= s.start_ms - 50 && w.end_ms <= s.end_ms + 50,
                "{w:?} in {s:?}"
            );
        }
    }
    assert!(
        t.speech_seconds < duration_ms as f64 / 1000.0 - 4.0,
        "silence was cut"
    );
    let p = progress.lock().unwrap();
    assert!(!p.is_empty() && p.iter().all(|v| (0.0..=1.0).contains(v)));
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn vietnamese_with_base_and_language_detection() {
    let _turn = common::one_decoder_at_a_time();
    let dir = temp_dir("engine-vi");
    let reference = "Xin chào các bạn. Hôm nay chúng ta sẽ họp về kế hoạch của dự án.";
    let audio = samples(&speech_wav(reference, "vi", 0.5, &dir, "vi"));
    let e = engine();
    let t = e
        .transcribe(&audio, &opts("vi"), |_| {})
        .expect("transcribe vi");
    let text = t
        .segments
        .iter()
        .map(|s| s.text.as_str())
        .collect::<Vec<_>>()
        .join(" ");
    assert!(text.to_lowercase().contains("xin chào"), "{text:?}");
    assert!(wer(reference, &text) < 0.5, "{text:?}");
    let t = e
        .transcribe(&audio, &opts("auto"), |_| {})
        .expect("transcribe auto");
    assert_eq!(t.language.as_deref(), Some("vi"), "detected language");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn a_cancelled_transcription_stops() {
    let _turn = common::one_decoder_at_a_time();
    let dir = temp_dir("engine-cancel");
    let audio = samples(&speech_wav(ENGLISH, "en-us", 0.2, &dir, "c"));
    let cancel = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let options = TranscribeOptions {
        cancel: Some(cancel),
        ..opts("en")
    };
    let err = engine().transcribe(&audio, &options, |_| {}).unwrap_err();
    assert!(
        matches!(err, s2t_worker::asr::EngineError::Cancelled),
        "{err}"
    );
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn silence_and_faint_noise_give_no_invented_text() {
    let _turn = common::one_decoder_at_a_time();
    let dir = temp_dir("engine-silence");
    let silence = dir.join("silence.wav");
    common::generated(&silence, &["trim", "0", "8"]);
    let noise = dir.join("noise.wav");
    common::generated(&noise, &["synth", "8", "pinknoise", "vol", "0.01"]);
    let e = engine();
    for wav in [&silence, &noise] {
        for language in ["en", "vi", "auto"] {
            let t = e
                .transcribe(&samples(wav), &opts(language), |_| {})
                .expect("transcribe");
            assert!(
                t.segments.is_empty(),
                "{} in {language}: invented {:?}",
                wav.display(),
                t.segments
            );
        }
    }
    std::fs::remove_dir_all(&dir).ok();
}
