//! Long recordings transcribed in blocks, so a two-hour file needs no more
//! memory than a ten-minute one.
//!
//! The 16 kHz stream ([`crate::audio::stream::Stream16k`]) fills a block of
//! at most [`BlockPolicy::max_samples`]; the block ends at the longest pause
//! the VAD finds in its last [`BlockPolicy::search_samples`] (or, in
//! unbroken speech, at the quietest 30 ms there), so a cut falls between
//! words. Each block goes through [`Engine::transcribe`] on its own, which
//! is what a whisper.cpp run does anyway every 30 s window; its segment and
//! word times are shifted by the block's start and the segments renumbered,
//! so the transcript reads as one.

use crate::asr::vad::{self, FRAME};
use crate::asr::{Engine, EngineError, Segment, TranscribeOptions, Transcript};
use crate::audio::stream::{Lengths, Source, Stream16k};
use crate::audio::{AudioError, TARGET_RATE};
use std::path::Path;
use std::sync::Arc;

/// Samples of one 30 ms VAD frame, as the unit every cut is made in: block
/// starts stay multiples of 16 samples, whole milliseconds.
const FRAME_SAMPLES: usize = FRAME;
/// Pauses shorter than this are not trusted as a boundary (a stop
/// consonant is about 100 ms of near-silence); 300 ms.
const MIN_PAUSE_FRAMES: usize = 10;

/// How long blocks are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockPolicy {
    /// The longest block, in 16 kHz samples (a multiple of 30 ms).
    pub max_samples: usize,
    /// How far back from the longest block a cut may be looked for.
    pub search_samples: usize,
}

impl BlockPolicy {
    /// Blocks of at most `max_secs` (at least 30 s), cut in their last
    /// fifth (at most two minutes of it).
    pub fn from_secs(max_secs: u32) -> BlockPolicy {
        let frames = |secs: usize| secs * TARGET_RATE as usize / FRAME_SAMPLES;
        let max_frames = frames(max_secs.max(30) as usize);
        let search_frames = (max_frames / 5).min(frames(120)).max(1);
        BlockPolicy {
            max_samples: max_frames * FRAME_SAMPLES,
            search_samples: search_frames * FRAME_SAMPLES,
        }
    }
}

impl Default for BlockPolicy {
    /// Ten minutes: 38 MB of samples, a few times that inside whisper.cpp,
    /// and few enough boundaries that they do not matter to accuracy.
    fn default() -> BlockPolicy {
        BlockPolicy::from_secs(600)
    }
}

/// Where to end a block, as a frame index into the searched window, from
/// its per-frame voice decisions and energies: the middle of the longest
/// unvoiced run when it is a real pause, else the quietest frame (the
/// later one on ties, for longer blocks).
pub fn cut_frame(voiced: &[bool], energy: &[f32]) -> usize {
    let mut best: Option<(usize, usize)> = None; // (start, len)
    let mut i = 0;
    while i < voiced.len() {
        if voiced[i] {
            i += 1;
            continue;
        }
        let start = i;
        while i < voiced.len() && !voiced[i] {
            i += 1;
        }
        let len = i - start;
        if best.is_none_or(|(_, l)| len >= l) {
            best = Some((start, len));
        }
    }
    match best {
        Some((start, len)) if len >= MIN_PAUSE_FRAMES => start + len / 2,
        _ => {
            energy
                .iter()
                .enumerate()
                .fold(
                    (0, f32::INFINITY),
                    |(bi, be), (i, &e)| {
                        if e <= be {
                            (i, e)
                        } else {
                            (bi, be)
                        }
                    },
                )
                .0
        }
    }
}

/// Mean square of each whole frame.
fn frame_energies(samples: &[f32]) -> Vec<f32> {
    samples
        .chunks_exact(FRAME_SAMPLES)
        .map(|f| f.iter().map(|s| s * s).sum::<f32>() / FRAME_SAMPLES as f32)
        .collect()
}

/// A stretch of the 16 kHz timeline.
#[derive(Debug)]
pub struct Block {
    /// The first sample's index on the whole recording.
    pub start: u64,
    pub samples: Vec<f32>,
}

impl Block {
    pub fn start_ms(&self) -> i64 {
        (self.start * 1000 / u64::from(TARGET_RATE)) as i64
    }
}

/// Collects the stream and hands out blocks as they fill.
pub struct Blocks {
    policy: BlockPolicy,
    pending: Vec<f32>,
    start: u64,
}

impl Blocks {
    pub fn new(policy: BlockPolicy) -> Blocks {
        Blocks {
            policy,
            pending: Vec::with_capacity(Blocks::capacity(policy)),
            start: 0,
        }
    }

    /// A block and a packet or two: sized once, so the buffer never
    /// doubles past what a block needs.
    fn capacity(policy: BlockPolicy) -> usize {
        policy.max_samples + TARGET_RATE as usize
    }

    pub fn push(&mut self, samples: &[f32]) {
        self.pending.extend_from_slice(samples);
    }

    /// The next full block, if the audio so far fills one.
    pub fn next_full(&mut self) -> Option<Block> {
        let max = self.policy.max_samples;
        if self.pending.len() < max {
            return None;
        }
        let search = self.policy.search_samples.min(max);
        let window = &self.pending[max - search..max];
        let cut = max - search
            + cut_frame(&vad::voiced_frames(window), &frame_energies(window)) * FRAME_SAMPLES;
        // Never an empty block: a window of one frame cuts after it.
        let cut = cut.max(FRAME_SAMPLES.min(max));
        let mut rest = Vec::with_capacity(Blocks::capacity(self.policy));
        rest.extend_from_slice(&self.pending[cut..]);
        self.pending.truncate(cut);
        let samples = std::mem::replace(&mut self.pending, rest);
        let block = Block {
            start: self.start,
            samples,
        };
        self.start += cut as u64;
        Some(block)
    }

    /// What is left at the end of the stream.
    pub fn finish(self) -> Option<Block> {
        (!self.pending.is_empty()).then_some(Block {
            start: self.start,
            samples: self.pending,
        })
    }
}

/// Appends one block's segments, moved to the recording's timeline and
/// numbered after the ones before; starts stay monotonic across blocks.
pub fn append_shifted(all: &mut Vec<Segment>, block: Vec<Segment>, offset_ms: i64) {
    for mut s in block {
        s.start_ms += offset_ms;
        s.end_ms += offset_ms;
        for w in &mut s.words {
            w.start_ms += offset_ms;
            w.end_ms += offset_ms;
        }
        if let Some(prev) = all.last() {
            s.start_ms = s.start_ms.max(prev.start_ms);
            s.end_ms = s.end_ms.max(s.start_ms);
        }
        s.idx = all.len() as i32;
        all.push(s);
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LongError {
    #[error(transparent)]
    Audio(#[from] AudioError),
    #[error(transparent)]
    Engine(#[from] EngineError),
}

/// What to transcribe of a stream, and how to report it.
#[derive(Clone)]
pub struct Plan {
    pub policy: BlockPolicy,
    /// Stop after this many 16 kHz samples (the allowance cut).
    pub keep_samples: Option<u64>,
    /// The samples progress is counted against (0: progress unknown).
    pub total_samples: u64,
    /// Receives 0..1 over `total_samples`.
    pub progress: Arc<dyn Fn(f32) + Send + Sync>,
}

impl Plan {
    pub fn new(policy: BlockPolicy) -> Plan {
        Plan {
            policy,
            keep_samples: None,
            total_samples: 0,
            progress: Arc::new(|_| {}),
        }
    }
}

fn fraction(at: u64, total: u64) -> f32 {
    if total == 0 {
        0.0
    } else {
        (at as f64 / total as f64).min(1.0) as f32
    }
}

/// Transcribes a stream block by block. Returns the transcript and the
/// length decoded (all of the file unless `keep_samples` stopped it).
pub fn transcribe_stream(
    engine: &Engine,
    mut stream: Stream16k,
    options: &TranscribeOptions,
    plan: &Plan,
) -> Result<(Transcript, Lengths), LongError> {
    let keep = plan.keep_samples.unwrap_or(u64::MAX);
    let mut options = options.clone();
    let mut transcript = Transcript {
        language: None,
        segments: Vec::new(),
        speech_seconds: 0.0,
    };
    let mut blocks = Blocks::new(plan.policy);
    let mut taken = 0u64;
    let mut piece = Vec::new();
    let mut run = |block: Block, options: &mut TranscribeOptions| -> Result<(), LongError> {
        let len = block.samples.len() as u64;
        let progress = plan.progress.clone();
        let (base, total) = (block.start, plan.total_samples);
        let t = engine.transcribe(&block.samples, options, move |f| {
            progress(fraction(base + (len as f64 * f64::from(f)) as u64, total))
        })?;
        drop(block.samples);
        append_shifted(
            &mut transcript.segments,
            t.segments,
            (base * 1000 / u64::from(TARGET_RATE)) as i64,
        );
        transcript.speech_seconds += t.speech_seconds;
        if transcript.language.is_none() {
            if let Some(lang) = t.language.clone() {
                transcript.language = Some(lang.clone());
                if options.language == "auto" {
                    // whisper.cpp detects once per run; later blocks keep
                    // what the first detected, on the same (multilingual)
                    // model.
                    options.language = lang;
                    options.multilingual = true;
                }
            }
        }
        (plan.progress)(fraction(base + len, total));
        Ok(())
    };
    loop {
        piece.clear();
        let more = stream.pull(&mut piece)?;
        let room = usize::try_from(keep - taken).unwrap_or(usize::MAX);
        let n = piece.len().min(room);
        blocks.push(&piece[..n]);
        taken += n as u64;
        while let Some(block) = blocks.next_full() {
            run(block, &mut options)?;
        }
        if !more || taken >= keep {
            break;
        }
    }
    let lengths = stream.lengths().clone();
    if let Some(block) = blocks.finish() {
        run(block, &mut options)?;
    }
    if transcript.language.is_none() && options.language != "auto" {
        transcript.language = Some(options.language.clone());
    }
    Ok((transcript, lengths))
}

/// Opens `path` and transcribes it block by block.
pub fn transcribe_path(
    engine: &Engine,
    path: &Path,
    extension: Option<&str>,
    max_seconds: u64,
    options: &TranscribeOptions,
    plan: &Plan,
) -> Result<(Transcript, Lengths), LongError> {
    let source = Source::open_path(path, extension)?;
    transcribe_stream(engine, Stream16k::new(source, max_seconds), options, plan)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::asr::Word;

    fn frames(pattern: &str) -> Vec<bool> {
        pattern.chars().map(|c| c == '#').collect()
    }

    #[test]
    fn cuts_in_the_middle_of_the_longest_pause() {
        //            0         1         2         3
        //            0123456789012345678901234567890123456
        let v = frames("####.....#####............####....###");
        let flat = vec![1.0; v.len()];
        // The 12-frame pause at 14..26; its middle is 20.
        assert_eq!(cut_frame(&v, &flat), 20);
    }

    #[test]
    fn unbroken_speech_is_cut_at_its_quietest_frame() {
        let v = frames("########..########");
        let mut energy = vec![0.5; v.len()];
        energy[3] = 0.01;
        energy[12] = 0.01;
        // A two-frame gap is no pause: the quietest frame, the later of two.
        assert_eq!(cut_frame(&v, &energy), 12);
        assert_eq!(cut_frame(&[], &[]), 0);
    }

    #[test]
    fn policy_is_in_whole_frames() {
        let p = BlockPolicy::default();
        assert_eq!(p.max_samples, 600 * 16_000);
        assert_eq!(p.search_samples, 120 * 16_000);
        let p = BlockPolicy::from_secs(45);
        assert_eq!(p.max_samples % FRAME_SAMPLES, 0);
        assert_eq!(p.search_samples % FRAME_SAMPLES, 0);
        assert_eq!(p.search_samples, 9 * 16_000);
        assert_eq!(BlockPolicy::from_secs(1), BlockPolicy::from_secs(30));
    }

    /// `secs` seconds of a voice-like buzz (150 Hz and its harmonics,
    /// which webrtc-vad calls voiced throughout; a pure tone it does not)
    /// with a pause of silence at `pause`.
    fn buzz_with_pause(secs: f32, pause: (f32, f32)) -> Vec<f32> {
        let n = (secs * 16_000.0) as usize;
        (0..n)
            .map(|i| {
                let t = i as f32 / 16_000.0;
                if t >= pause.0 && t < pause.1 {
                    0.0
                } else {
                    (1..20)
                        .map(|k| {
                            let k = k as f32;
                            0.3 / k * (2.0 * std::f32::consts::PI * 150.0 * k * t).sin()
                        })
                        .sum()
                }
            })
            .collect()
    }

    #[test]
    fn blocks_end_in_the_pause_and_cover_the_stream_once() {
        let policy = BlockPolicy::from_secs(30);
        // 70 s; silence at 25.5–26.4 s, inside the searched last 6 s (and
        // not in its middle, where a blind cut would land too).
        let audio = buzz_with_pause(70.0, (25.5, 26.4));
        let mut blocks = Blocks::new(policy);
        let mut out = Vec::new();
        // In packet-sized pieces, as the decoder gives them.
        for piece in audio.chunks(1152) {
            blocks.push(piece);
            while let Some(b) = blocks.next_full() {
                out.push(b);
            }
        }
        out.extend(blocks.finish());
        let first_end = out[0].samples.len() as f32 / 16_000.0;
        assert!(
            (25.5..26.4).contains(&first_end),
            "first block ends at {first_end} s"
        );
        let mut at = 0u64;
        for b in &out {
            assert_eq!(b.start, at, "blocks are contiguous");
            assert!(b.samples.len() <= policy.max_samples);
            assert_eq!(b.start % 16, 0, "whole milliseconds");
            at += b.samples.len() as u64;
        }
        assert_eq!(at, audio.len() as u64);
        assert_eq!(out.len(), 3);
        let joined: Vec<f32> = out.iter().flat_map(|b| b.samples.iter().copied()).collect();
        assert!(joined == audio, "nothing lost or repeated");
    }

    fn seg(idx: i32, start: i64, end: i64) -> Segment {
        Segment {
            idx,
            start_ms: start,
            end_ms: end,
            text: format!("s{start}"),
            words: vec![Word {
                word: "w".into(),
                start_ms: start,
                end_ms: end,
                probability: 0.9,
            }],
        }
    }

    #[test]
    fn segments_move_to_the_recording_timeline_and_are_renumbered() {
        let mut all = Vec::new();
        append_shifted(&mut all, vec![seg(0, 500, 2000), seg(1, 2500, 4000)], 0);
        append_shifted(
            &mut all,
            vec![seg(0, 100, 900), seg(1, 1000, 1500)],
            270_000,
        );
        assert_eq!(
            all.iter()
                .map(|s| (s.idx, s.start_ms, s.end_ms))
                .collect::<Vec<_>>(),
            vec![
                (0, 500, 2000),
                (1, 2500, 4000),
                (2, 270_100, 270_900),
                (3, 271_000, 271_500)
            ]
        );
        assert_eq!(all[2].words[0].start_ms, 270_100);
        assert_eq!(all[3].words[0].end_ms, 271_500);
        // A block whose first segment claims to start before the previous
        // one's start is held monotonic.
        append_shifted(&mut all, vec![seg(0, -5000, -4000)], 271_500);
        assert_eq!((all[4].start_ms, all[4].end_ms), (271_000, 271_000));
    }
}
