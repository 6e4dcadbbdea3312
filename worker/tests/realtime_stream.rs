//! A realtime session's audio path with the real tiny.en model: real read
//! speech at 48 kHz streamed in 100 ms frames through [`SessionAudio`],
//! decoded whenever the streaming policy asks. Partials come before the
//! finals, a pause commits a final, and the finals' text is as good as the
//! batch transcript of the same audio. (The clock is simulated: real-time
//! pace is what the frames' timestamps say, so the test does not sleep.)

mod common;

use common::{librivox, models_dir, temp_dir, wer};
use s2t_core::realtime::StartRequest;
use s2t_worker::asr::{Engine, ModelPaths, TranscribeOptions};
use s2t_worker::realtime::policy::{Action, PolicySettings, Word};
use s2t_worker::realtime::session::SessionAudio;

fn s16_48k(wav: &std::path::Path) -> Vec<u8> {
    let mut reader = hound::WavReader::open(wav).expect("wav");
    assert_eq!(reader.spec().sample_rate, 48_000);
    reader
        .samples::<i16>()
        .flat_map(|s| s.expect("sample").to_le_bytes())
        .collect()
}

fn decode(engine: &Engine, window: &[f32], beam: i32) -> Vec<Word> {
    let opts = TranscribeOptions {
        beam_size: beam,
        ..TranscribeOptions::new("en", 2)
    };
    let t = engine.transcribe(window, &opts, |_| {}).expect("decode");
    t.segments
        .into_iter()
        .flat_map(|s| s.words)
        .map(Word::from)
        .collect()
}

#[test]
fn read_speech_streamed_gives_partials_then_finals_as_good_as_batch() {
    let _turn = common::one_decoder_at_a_time();
    let dir = temp_dir("realtime-stream");
    let sentences: Vec<_> = librivox().into_iter().take(2).collect();
    let joined = dir.join("two.wav");
    // Two sentences with a 1.5 s pause between them, at 48 kHz as browsers send.
    let mut args: Vec<String> = vec![sentences[0].0.display().to_string()];
    args.push(dir.join("pause.wav").display().to_string());
    args.push(sentences[1].0.display().to_string());
    s2t_tests::silence_wav(&dir.join("pause.wav"), 1.5);
    let mut sox: Vec<&str> = args.iter().map(String::as_str).collect();
    sox.extend_from_slice(&[joined.to_str().unwrap(), "rate", "48000"]);
    common::run("sox", &sox);
    let reference = format!("{} {}", sentences[0].1, sentences[1].1);

    let engine = Engine::load(&ModelPaths {
        english: Some(models_dir().join("ggml-tiny.en.bin")),
        multilingual: None,
    })
    .expect("model");
    let start = StartRequest {
        language: Some("en".into()),
        sample_rate: 48_000,
        encoding: "pcm_s16le".into(),
        prompt: None,
        interim: Some(true),
        resume_token: None,
        last_idx: None,
    }
    .check()
    .unwrap();
    let mut session = SessionAudio::new(start, PolicySettings::default(), 0).unwrap();
    let bytes = s16_48k(&joined);
    let mut events: Vec<(&str, String)> = Vec::new();
    let mut finals: Vec<String> = Vec::new();
    let mut stored = 0usize;
    let speculated = std::cell::Cell::new(0);
    let run = |session: &mut SessionAudio,
               action: Action,
               events: &mut Vec<(&str, String)>,
               finals: &mut Vec<String>| {
        // A final that the speculative decode at the pause heard is not
        // decoded again (as the server does).
        let (words, decoded) = match session.take_speculation(action) {
            Some(adopted) => {
                eprintln!("{action:?}: the speculative decode's words");
                adopted
            }
            None => {
                let beam = if action == Action::Partial { 1 } else { 5 };
                let began = std::time::Instant::now();
                let decoded = session.window(action).len();
                let words = decode(&engine, session.window(action), beam);
                // For the record, not asserted: timing is make bench-realtime's.
                eprintln!(
                    "{action:?}: {} ms window decoded in {} ms",
                    decoded / 16,
                    began.elapsed().as_millis()
                );
                (words, decoded)
            }
        };
        if action == Action::Speculate {
            speculated.set(speculated.get() + 1);
        }
        let o = session.apply(action, words, decoded);
        if !o.commit.is_empty() {
            let text: Vec<&str> = o.commit.iter().map(|w| w.text.as_str()).collect();
            finals.push(text.join(" "));
            events.push(("final", text.join(" ")));
        }
        if !o.partial.is_empty() {
            let text: Vec<&str> = o.partial.iter().map(|w| w.text.as_str()).collect();
            events.push(("partial", text.join(" ")));
        }
    };
    for (i, frame) in bytes.chunks(9600).enumerate() {
        session.on_frame(frame, i as u64 * 100).expect("frame");
        stored += session.take_unsaved().len();
        if let Some(action) = session.take_due() {
            run(&mut session, action, &mut events, &mut finals);
        }
    }
    if let Some(action) = session.finish() {
        run(&mut session, action, &mut events, &mut finals);
    }
    assert_eq!(stored, bytes.len(), "every byte is kept for storage");
    assert!(
        speculated.get() >= 1,
        "the pause starts a speculative final"
    );
    let first_final = events
        .iter()
        .position(|(k, _)| *k == "final")
        .expect("a final");
    assert!(
        events[..first_final].iter().any(|(k, _)| *k == "partial"),
        "a partial comes before the first final: {events:?}"
    );
    assert!(
        finals.len() >= 2,
        "the pause commits the first sentence: {finals:?}"
    );

    let mut batch_audio = Vec::new();
    let mut r = s2t_worker::audio::resample::StreamResampler::new(48_000, 16_000).unwrap();
    let floats: Vec<f32> = bytes
        .chunks_exact(2)
        .map(|b| i16::from_le_bytes([b[0], b[1]]) as f32 / 32768.0)
        .collect();
    r.push(&floats, &mut batch_audio);
    r.finish(&mut batch_audio);
    let batch: Vec<String> = engine
        .transcribe(&batch_audio, &TranscribeOptions::new("en", 2), |_| {})
        .unwrap()
        .segments
        .into_iter()
        .map(|s| s.text)
        .collect();
    let streamed = finals.join(" ");
    let (w_stream, w_batch) = (
        wer(&reference, &streamed),
        wer(&reference, &batch.join(" ")),
    );
    eprintln!(
        "streamed WER {w_stream:.3}, batch WER {w_batch:.3}\nstreamed: {streamed}\nbatch: {}",
        batch.join(" ")
    );
    assert!(
        w_stream <= w_batch + 0.02,
        "streamed finals {w_stream:.3} against batch {w_batch:.3}: {streamed:?}"
    );
}
