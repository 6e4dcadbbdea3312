//! Whisper through whisper-rs: model choice by language, decoding of the
//! speech regions, timestamps mapped back to the original timeline, word
//! timings, and the hallucination guards.

use super::guard;
use super::vad::{self, VadPolicy};
use serde::Serialize;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use whisper_rs::{FullParams, SamplingStrategy, WhisperContext, WhisperContextParameters};

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("cannot load model {path}: {message}")]
    Load { path: PathBuf, message: String },
    #[error("no model is configured for language {0:?}")]
    NoModel(String),
    #[error("whisper failed: {0}")]
    Whisper(String),
    #[error("transcription was cancelled")]
    Cancelled,
}

/// Which ggml files to use. `english` (an `.en` model) serves `language =
/// 'en'` when given; `multilingual` serves every other language and
/// detection.
#[derive(Debug, Clone, Default)]
pub struct ModelPaths {
    pub english: Option<PathBuf>,
    pub multilingual: Option<PathBuf>,
}

#[derive(Debug, Clone)]
pub struct TranscribeOptions {
    /// An ISO 639-1 code, or "auto" to detect.
    pub language: String,
    pub threads: i32,
    /// 1 means greedy decoding.
    pub beam_size: i32,
    /// Set to stop decoding early (lease lost, shutdown).
    pub cancel: Option<Arc<AtomicBool>>,
    /// Encode only as much of the 30 s window as the speech needs (see
    /// [`fitted_audio_ctx`]).
    pub fit_audio_ctx: bool,
    /// Use the multilingual model even for English.
    pub multilingual: bool,
    /// Text that conditions the first window (spellings of names, terms).
    pub prompt: Option<String>,
}

impl TranscribeOptions {
    /// Defaults for `language` on `threads` threads: beam 5,
    /// fitted encoder context, the model chosen by language, no prompt.
    pub fn new(language: impl Into<String>, threads: i32) -> TranscribeOptions {
        TranscribeOptions {
            language: language.into(),
            threads,
            beam_size: 5,
            cancel: None,
            fit_audio_ctx: true,
            multilingual: false,
            prompt: None,
        }
    }
}

/// The longest piece of speech decoded in one `whisper_full` call: 28 s,
/// so that with [`AUDIO_CTX_MARGIN`] its fitted context stays inside the
/// 1500-frame (30 s) window. Longer speech is cut at pauses
/// ([`vad::window_cuts`]).
pub const MAX_WINDOW: usize = 28 * vad::RATE;

/// Encoder frames per second of audio (one per 20 ms).
const ENCODER_FRAMES_PER_SECOND: usize = 50;
/// Frames added after the speech so the last word is not cut.
const AUDIO_CTX_MARGIN: usize = 64;
/// Fewest encoder frames the decoder is given: about 15 s of the 30 s
/// window. Whisper only ever saw 1500-frame windows in training, and on
/// much shorter ones its decoder does not find the end of the speech. With
/// the fitted value alone (about 100 frames for a one-word clip) tiny.en
/// doubled the word ("Firefox Firefox") or looped ("budgets, budgets, …"
/// up to whisper.cpp's 220-token limit, which the guard then drops as a
/// loop, leaving nothing). A loop is a failed decode, so whisper.cpp tries
/// five more temperatures with five decoders each: 4009 sampling steps for
/// the 0.9 s "Firefox" clip instead of about 40. Measured with
/// examples/whisper_probe on 32 clips of 0.8-3.5 s: at 256 frames several
/// still looped or repeated, at 512 one did, at 640 and 768 none did.
pub const AUDIO_CTX_FLOOR: usize = 768;

/// The encoder context for `samples` of 16 kHz speech: whisper.cpp always
/// encodes a full window (`n_audio_ctx`, 30 s), so a 3 s clip costs as much
/// as a 30 s one. The speech plus a margin, at least [`AUDIO_CTX_FLOOR`];
/// 0 (the full window) when that does not fit in one window.
pub fn fitted_audio_ctx(samples: usize, n_audio_ctx: i32) -> i32 {
    fitted_audio_ctx_with_floor(samples, n_audio_ctx, AUDIO_CTX_FLOOR)
}

/// [`fitted_audio_ctx`] with another floor (examples/whisper_probe
/// measures floors with it).
pub fn fitted_audio_ctx_with_floor(samples: usize, n_audio_ctx: i32, floor: usize) -> i32 {
    let frames =
        ((samples * ENCODER_FRAMES_PER_SECOND).div_ceil(vad::RATE) + AUDIO_CTX_MARGIN).max(floor);
    if frames >= n_audio_ctx.max(0) as usize {
        0
    } else {
        frames as i32
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Word {
    pub word: String,
    pub start_ms: i64,
    pub end_ms: i64,
    pub probability: f32,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Segment {
    pub idx: i32,
    pub start_ms: i64,
    pub end_ms: i64,
    pub text: String,
    pub words: Vec<Word>,
}

#[derive(Debug, Clone)]
pub struct Transcript {
    /// The language used or detected; None when nothing was decoded in
    /// "auto" mode.
    pub language: Option<String>,
    pub segments: Vec<Segment>,
    /// Seconds of audio left after VAD.
    pub speech_seconds: f64,
}

/// whisper.cpp's abort callback: the user data is an `AtomicBool`.
unsafe extern "C" fn abort_if_set(user_data: *mut std::ffi::c_void) -> bool {
    // SAFETY: set_abort_callback_user_data above passes a live AtomicBool.
    let flag = unsafe { &*(user_data as *const AtomicBool) };
    flag.load(Ordering::Relaxed)
}

/// What [`skip_silent_tail`] reads: the voice flags of the audio given to
/// whisper.cpp and how many windows it has begun.
pub struct TailHook<'a> {
    pub voiced: &'a [bool],
    pub windows: u32,
}

/// whisper.cpp's encoder-begin hook: the first window always runs; a later
/// one only when the audio after the last decoded segment still has speech
/// ([`vad::tail_has_speech`]). Returning false ends `whisper_full` with
/// what it has decoded, as success.
///
/// # Safety
/// `user_data` must point to a live [`TailHook`] that nothing else uses
/// during the `whisper_full` call, and `state` must be whisper.cpp's.
pub unsafe extern "C" fn skip_silent_tail(
    _ctx: *mut whisper_rs::whisper_rs_sys::whisper_context,
    state: *mut whisper_rs::whisper_rs_sys::whisper_state,
    user_data: *mut std::ffi::c_void,
) -> bool {
    use whisper_rs::whisper_rs_sys as sys;
    // SAFETY: the caller's contract (see above).
    let hook = unsafe { &mut *(user_data as *mut TailHook<'_>) };
    hook.windows += 1;
    if hook.windows == 1 {
        return true;
    }
    // SAFETY: whisper.cpp passes the state it is decoding into; these only
    // read its finished segments.
    let decoded_cs = unsafe {
        match sys::whisper_full_n_segments_from_state(state) {
            n if n > 0 => sys::whisper_full_get_segment_t1_from_state(state, n - 1),
            _ => 0,
        }
    };
    vad::tail_has_speech(hook.voiced, decoded_cs.max(0) as usize * 10)
}

struct Loaded {
    ctx: WhisperContext,
    multilingual: bool,
}

/// Loaded models. Contexts are shared; each transcription makes its own
/// state, so one engine serves concurrent jobs.
pub struct Engine {
    english: Option<Loaded>,
    multilingual: Option<Loaded>,
}

fn load(path: &PathBuf) -> Result<Loaded, EngineError> {
    let ctx = WhisperContext::new_with_params(path, WhisperContextParameters::default()).map_err(
        |e| EngineError::Load {
            path: path.clone(),
            message: e.to_string(),
        },
    )?;
    let multilingual = ctx.is_multilingual();
    Ok(Loaded { ctx, multilingual })
}

impl Engine {
    pub fn load(paths: &ModelPaths) -> Result<Engine, EngineError> {
        // whisper.cpp prints every load and decode step to stderr; route it
        // into whisper-rs's hooks, which drop it.
        whisper_rs::install_logging_hooks();
        let english = paths.english.as_ref().map(load).transpose()?;
        let multilingual = paths.multilingual.as_ref().map(load).transpose()?;
        if let Some(m) = &multilingual {
            if !m.multilingual {
                return Err(EngineError::Load {
                    path: paths.multilingual.clone().unwrap_or_default(),
                    message: "this is an English-only model; give it as the English model".into(),
                });
            }
        }
        if english.is_none() && multilingual.is_none() {
            return Err(EngineError::NoModel("any".into()));
        }
        Ok(Engine {
            english,
            multilingual,
        })
    }

    /// Whether a loaded model transcribes `language` (an ISO code or "auto").
    pub fn supports(&self, language: &str) -> bool {
        self.model_for(language, false).is_ok()
    }

    fn model_for(&self, language: &str, multilingual: bool) -> Result<&Loaded, EngineError> {
        let english_first = language == "en" && !multilingual;
        let pick = if english_first {
            self.english.as_ref().or(self.multilingual.as_ref())
        } else {
            self.multilingual.as_ref()
        };
        pick.ok_or_else(|| EngineError::NoModel(language.to_string()))
    }

    /// Transcribe 16 kHz mono samples. `progress` receives 0.0–1.0.
    pub fn transcribe(
        &self,
        samples: &[f32],
        opts: &TranscribeOptions,
        progress: impl FnMut(f32) + 'static,
    ) -> Result<Transcript, EngineError> {
        let model = self.model_for(&opts.language, opts.multilingual)?;
        let duration_ms = (samples.len() * 1000 / vad::RATE) as i64;
        let (speech, map) = vad::speech_only(samples, VadPolicy::default());
        let speech_seconds = speech.len() as f64 / vad::RATE as f64;
        let fixed_language = (opts.language != "auto").then(|| opts.language.clone());
        if speech.is_empty() {
            return Ok(Transcript {
                language: fixed_language,
                segments: Vec::new(),
                speech_seconds,
            });
        }
        // A fresh state for every transcription, realtime decodes included:
        // whisper.cpp seeds its first decoder's random generator (used by the
        // temperature fallback) only when a state is made, so a reused state
        // would make each result depend on the decodes before it.
        let mut state = model
            .ctx
            .create_state()
            .map_err(|e| EngineError::Whisper(e.to_string()))?;
        let voiced = vad::voiced_frames(&speech);
        let windows = vad::window_cuts(&map.piece_starts(), &voiced, speech.len(), MAX_WINDOW);
        let total = speech.len().max(1) as f32;
        let progress = std::rc::Rc::new(std::cell::RefCell::new(progress));
        let mut language = if model.multilingual {
            opts.language.clone()
        } else {
            "en".to_string()
        };
        let mut detected: Option<String> = None;
        let mut segments: Vec<Segment> = Vec::new();
        for window in windows {
            let piece = &speech[window.clone()];
            let base = window.start as f32;
            let len = piece.len() as f32;
            let report = progress.clone();
            let mut params = window_params(model, opts, &language, piece.len(), move |pct| {
                (report.borrow_mut())((base + len * pct as f32 / 100.0) / total)
            });
            let frames = window.start / vad::FRAME..(window.end / vad::FRAME).min(voiced.len());
            let mut tail = TailHook {
                voiced: &voiced[frames],
                windows: 0,
            };
            // SAFETY: `tail` lives on this frame until after `state.full`,
            // the only call that reads the pointer.
            unsafe {
                params.set_start_encoder_callback(Some(skip_silent_tail));
                params.set_start_encoder_callback_user_data(
                    &mut tail as *mut TailHook<'_> as *mut std::ffi::c_void,
                );
            }
            let result = state.full(params, piece);
            if opts
                .cancel
                .as_ref()
                .is_some_and(|c| c.load(Ordering::Relaxed))
            {
                return Err(EngineError::Cancelled);
            }
            result.map_err(|e| EngineError::Whisper(e.to_string()))?;
            if detected.is_none() {
                detected =
                    whisper_rs::get_lang_str(state.full_lang_id_from_state()).map(str::to_string);
                // Later windows keep the language the first one found.
                if language == "auto" {
                    if let Some(found) = &detected {
                        language = found.clone();
                    }
                }
            }
            let offset_ms = (window.start * 1000 / vad::RATE) as i64;
            collect_segments(
                model,
                &state,
                |concat_ms| map.to_original_ms(offset_ms + concat_ms).min(duration_ms),
                &mut segments,
            )?;
        }
        Ok(Transcript {
            language: fixed_language.or(detected),
            segments,
            speech_seconds,
        })
    }
}

/// whisper.cpp's parameters for one piece of `samples` speech samples.
fn window_params<'a>(
    model: &Loaded,
    opts: &TranscribeOptions,
    language: &'a str,
    samples: usize,
    progress: impl FnMut(i32) + 'static,
) -> FullParams<'a, 'static> {
    let strategy = if opts.beam_size > 1 {
        SamplingStrategy::BeamSearch {
            beam_size: opts.beam_size,
            patience: -1.0,
        }
    } else {
        SamplingStrategy::Greedy { best_of: 1 }
    };
    let mut params = FullParams::new(strategy);
    params.set_n_threads(opts.threads.max(1));
    if opts.fit_audio_ctx {
        let ctx = fitted_audio_ctx(samples, model.ctx.model_n_audio_ctx());
        if ctx > 0 {
            params.set_audio_ctx(ctx);
        }
    }
    params.set_language(Some(language));
    params.set_token_timestamps(true);
    if let Some(prompt) = opts.prompt.as_deref().filter(|p| !p.trim().is_empty()) {
        params.set_initial_prompt(prompt);
    }
    // Each 30 s window decodes on its own: conditioning on the previous
    // text is what lets one hallucination repeat for minutes.
    params.set_no_context(true);
    params.set_suppress_blank(true);
    params.set_print_progress(false);
    params.set_print_realtime(false);
    params.set_print_special(false);
    params.set_print_timestamps(false);
    params.set_progress_callback_safe(progress);
    if let Some(cancel) = &opts.cancel {
        // whisper-rs 0.16's set_abort_callback_safe calls the closure
        // through the wrong type (it aborted encoding at random here), so
        // hand whisper.cpp the flag itself.
        // SAFETY: `cancel` is borrowed from `opts`, which outlives every
        // `state.full` call these parameters are given to.
        unsafe {
            params.set_abort_callback(Some(abort_if_set));
            params.set_abort_callback_user_data(Arc::as_ptr(cancel) as *mut std::ffi::c_void);
        }
    }
    params
}

/// The segments of one decoded piece, with words, guarded against
/// hallucination, on the original timeline (`to_original` maps a time in
/// the piece, in ms), appended to `segments` in order.
fn collect_segments(
    model: &Loaded,
    state: &whisper_rs::WhisperState,
    to_original: impl Fn(i64) -> i64,
    segments: &mut Vec<Segment>,
) -> Result<(), EngineError> {
    let eot = model.ctx.token_eot();
    for seg in state.as_iter() {
        let text = seg
            .to_str_lossy()
            .map_err(|e| EngineError::Whisper(e.to_string()))?;
        let mut words: Vec<Word> = Vec::new();
        let mut probs = Vec::new();
        for t in 0..seg.n_tokens() {
            let Some(token) = seg.get_token(t) else {
                continue;
            };
            if token.token_id() >= eot {
                continue;
            }
            let data = token.token_data();
            probs.push(data.p);
            let piece = token
                .to_str_lossy()
                .map(|c| c.into_owned())
                .unwrap_or_default();
            let start = to_original(data.t0 * 10);
            let end = to_original(data.t1 * 10).max(start);
            match words.last_mut() {
                Some(last) if !piece.starts_with(' ') => {
                    last.word.push_str(&piece);
                    last.end_ms = end.max(last.end_ms);
                    last.probability = last.probability.min(data.p);
                }
                _ => words.push(Word {
                    word: piece,
                    start_ms: start,
                    end_ms: end,
                    probability: data.p,
                }),
            }
        }
        for w in &mut words {
            w.word = w.word.trim().to_string();
        }
        words.retain(|w| !w.word.is_empty());
        let mean_prob = if probs.is_empty() {
            0.0
        } else {
            probs.iter().sum::<f32>() / probs.len() as f32
        };
        if !guard::keep_segment(&text, seg.no_speech_probability(), mean_prob) {
            continue;
        }
        let mut start_ms = to_original(seg.start_timestamp() * 10);
        let end_ms = to_original(seg.end_timestamp() * 10);
        // Monotonic, whatever the decoder did at window edges.
        if let Some(prev) = segments.last() {
            start_ms = start_ms.max(prev.start_ms);
        }
        segments.push(Segment {
            idx: segments.len() as i32,
            start_ms,
            end_ms: end_ms.max(start_ms),
            text: text.trim().to_string(),
            words,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_speech_gets_the_floor_longer_speech_a_fitted_context_and_long_speech_the_window() {
        // A one-word clip gets the floor, not the 50 frames/s it holds.
        assert_eq!(fitted_audio_ctx(16_000, 1500), AUDIO_CTX_FLOOR as i32);
        assert_eq!(fitted_audio_ctx(1, 1500), AUDIO_CTX_FLOOR as i32);
        // 20 s: 1000 frames plus the margin, above the floor.
        assert_eq!(fitted_audio_ctx(20 * 16_000, 1500), 1000 + 64);
        // A partial frame rounds up.
        assert_eq!(fitted_audio_ctx_with_floor(1, 1500, 0), 1 + 64);
        // 28.8 s plus the margin no longer fits: use the whole window.
        assert_eq!(fitted_audio_ctx(28 * 16_000 + 12_800, 1500), 0);
        assert_eq!(fitted_audio_ctx(60 * 16_000, 1500), 0);
        // A model whose window is below the floor always gets its window.
        assert_eq!(fitted_audio_ctx(16_000, 500), 0);
    }
}
