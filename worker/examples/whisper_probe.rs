//! Where whisper.cpp spends its time on one file, and how a setting changes
//! the text: `cargo run --release -p s2t-worker --example whisper_probe --
//! MODEL [key=value ...] FILE.wav ...` (16 kHz mono 16-bit WAV).
//!
//! It drives whisper.cpp's C API directly, with a context that owns its
//! state, because only then does `whisper_print_timings` report the
//! encoder, decoder and sampling times and the temperature fallbacks; the
//! engine's own states keep those counters private. The speech goes
//! through the engine's VAD first, so the decoder sees what the engine's
//! does, but in one `whisper_full` call (the engine decodes pieces of at
//! most 28 s, `vad::window_cuts`; give the probe such pieces to compare).
//! Settings (defaults are the engine's):
//! `ctx=fit|full|N` (N is a floor on the fitted context), `beam=5`,
//! `threads=2`, `single=0|1`, `fallback=1|0`, `flash=0|1`, `nctx=0|N`
//! (`n_max_text_ctx`), `maxlen=0` (max tokens per segment), `tail=1|0` (1: a
//! later window runs only if the audio after the last decoded segment has
//! speech, as in the engine; 0: whisper.cpp's own seek).

use s2t_worker::asr::engine::{fitted_audio_ctx_with_floor, skip_silent_tail, TailHook};
use s2t_worker::asr::vad::{self, VadPolicy};
use std::ffi::{c_char, c_void, CStr, CString};
use std::time::Instant;
use whisper_rs::whisper_rs_sys as sys;

unsafe extern "C" fn keep_timings(_level: u32, text: *const c_char, _user: *mut c_void) {
    // SAFETY: whisper.cpp passes a NUL-terminated message.
    let line = unsafe { CStr::from_ptr(text) }.to_string_lossy();
    if line.contains("fallbacks")
        || line.contains(" time =")
        || line.contains("rror")
        || line.contains("arn")
    {
        eprint!("    {line}");
    }
}

struct Settings {
    ctx: String,
    beam: i32,
    threads: i32,
    single: bool,
    fallback: bool,
    flash: bool,
    n_max_text_ctx: i32,
    max_tokens: i32,
    tail: bool,
}

fn main() {
    let mut args = std::env::args().skip(1);
    let model = CString::new(
        args.next()
            .expect("usage: whisper_probe MODEL [k=v] FILE..."),
    )
    .expect("model path");
    let mut s = Settings {
        ctx: "fit".into(),
        beam: 5,
        threads: 2,
        single: false,
        fallback: true,
        flash: false,
        n_max_text_ctx: 16384,
        max_tokens: 0,
        tail: true,
    };
    let mut files = Vec::new();
    for a in args {
        match a.split_once('=') {
            Some(("ctx", v)) => s.ctx = v.into(),
            Some(("beam", v)) => s.beam = v.parse().expect("beam"),
            Some(("threads", v)) => s.threads = v.parse().expect("threads"),
            Some(("single", v)) => s.single = v == "1",
            Some(("fallback", v)) => s.fallback = v == "1",
            Some(("flash", v)) => s.flash = v == "1",
            Some(("nctx", v)) => s.n_max_text_ctx = v.parse().expect("nctx"),
            Some(("maxlen", v)) => s.max_tokens = v.parse().expect("maxlen"),
            Some(("tail", v)) => s.tail = v == "1",
            _ => files.push(a),
        }
    }
    let language = CString::new("en").expect("language");
    let (mut total_audio, mut total_wall) = (0.0, 0.0);
    for file in &files {
        let mut reader = hound::WavReader::open(file).expect("a 16-bit WAV");
        let samples: Vec<f32> = reader
            .samples::<i16>()
            .map(|x| f32::from(x.expect("sample")) / 32768.0)
            .collect();
        let (speech, _) = vad::speech_only(&samples, VadPolicy::default());
        // SAFETY: plain C calls on a context this loop owns and frees; the
        // CStrings outlive every call that reads them.
        unsafe {
            sys::whisper_log_set(Some(keep_timings), std::ptr::null_mut());
            let mut cparams = sys::whisper_context_default_params();
            cparams.flash_attn = s.flash;
            let ctx = sys::whisper_init_from_file_with_params(model.as_ptr(), cparams);
            assert!(!ctx.is_null(), "cannot load the model");
            let n_audio_ctx = sys::whisper_model_n_audio_ctx(ctx);
            let audio_ctx = match s.ctx.as_str() {
                "full" => 0,
                "fit" => fitted_audio_ctx_with_floor(speech.len(), n_audio_ctx, 0),
                floor => fitted_audio_ctx_with_floor(
                    speech.len(),
                    n_audio_ctx,
                    floor.parse().expect("ctx=fit|full|N"),
                ),
            };
            let strategy = if s.beam > 1 {
                sys::whisper_sampling_strategy_WHISPER_SAMPLING_BEAM_SEARCH
            } else {
                sys::whisper_sampling_strategy_WHISPER_SAMPLING_GREEDY
            };
            let mut p = sys::whisper_full_default_params(strategy as _);
            p.n_threads = s.threads;
            p.beam_search.beam_size = s.beam;
            p.greedy.best_of = if s.beam > 1 { 5 } else { 1 };
            p.audio_ctx = audio_ctx;
            p.language = language.as_ptr();
            p.token_timestamps = true;
            p.no_context = true;
            p.suppress_blank = true;
            p.single_segment = s.single;
            p.n_max_text_ctx = s.n_max_text_ctx;
            p.max_tokens = s.max_tokens;
            p.print_progress = false;
            p.print_realtime = false;
            p.print_special = false;
            p.print_timestamps = false;
            let voiced = vad::voiced_frames(&speech);
            let mut tail = TailHook {
                voiced: &voiced,
                windows: 0,
            };
            if s.tail {
                p.encoder_begin_callback = Some(skip_silent_tail);
                p.encoder_begin_callback_user_data = &mut tail as *mut TailHook<'_> as *mut c_void;
            }
            if !s.fallback {
                p.temperature_inc = 0.0;
            }
            let t0 = Instant::now();
            let rc = sys::whisper_full(ctx, p, speech.as_ptr(), speech.len() as i32);
            let wall = t0.elapsed().as_secs_f64();
            assert_eq!(rc, 0, "whisper_full failed");
            let audio = samples.len() as f64 / vad::RATE as f64;
            total_audio += audio;
            total_wall += wall;
            println!(
                "{file}: {audio:.2} s audio, {:.2} s speech, audio_ctx {audio_ctx}, {wall:.3} s ({:.1}x)",
                speech.len() as f64 / vad::RATE as f64,
                audio / wall
            );
            for i in 0..sys::whisper_full_n_segments(ctx) {
                let text = CStr::from_ptr(sys::whisper_full_get_segment_text(ctx, i));
                println!(
                    "  [{:>5} {:>5}] nosp {:.2} {}",
                    sys::whisper_full_get_segment_t0(ctx, i),
                    sys::whisper_full_get_segment_t1(ctx, i),
                    sys::whisper_full_get_segment_no_speech_prob(ctx, i),
                    text.to_string_lossy()
                );
            }
            sys::whisper_print_timings(ctx);
            sys::whisper_free(ctx);
        }
    }
    println!(
        "total: {total_audio:.1} s audio in {total_wall:.2} s ({:.2}x)",
        total_audio / total_wall.max(1e-9)
    );
}
