//! Speech regions and the time map back to the original recording.
//!
//! Silence is cut before decoding: Whisper is slower on it and invents text
//! in it. webrtc-vad labels 30 ms frames; voiced frames are padded and
//! nearby regions merged, so words are not clipped and short pauses stay.
//! The regions are concatenated for Whisper, and [`TimeMap`] turns times on
//! that shortened timeline back into times on the original.

use webrtc_vad::{SampleRate, Vad, VadMode};

pub const RATE: usize = 16_000;
/// webrtc-vad accepts 10, 20 or 30 ms frames.
pub const FRAME: usize = RATE * 30 / 1000;

/// How regions are grown and merged, in milliseconds.
#[derive(Debug, Clone, Copy)]
pub struct VadPolicy {
    /// Kept before and after each voiced run.
    pub pad_ms: usize,
    /// Pauses shorter than this do not split a region.
    pub merge_gap_ms: usize,
    /// Voiced runs shorter than this are treated as noise.
    pub min_speech_ms: usize,
}

impl Default for VadPolicy {
    fn default() -> Self {
        VadPolicy {
            pad_ms: 240,
            merge_gap_ms: 600,
            min_speech_ms: 120,
        }
    }
}

/// A half-open range of samples `[start, end)` on the original timeline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Region {
    pub start: usize,
    pub end: usize,
}

/// Per-frame voice decisions for 16 kHz audio (the last partial frame is
/// dropped).
pub fn voiced_frames(samples: &[f32]) -> Vec<bool> {
    let mut vad = Vad::new_with_rate_and_mode(SampleRate::Rate16kHz, VadMode::Aggressive);
    let mut pcm = [0i16; FRAME];
    samples
        .chunks_exact(FRAME)
        .map(|frame| {
            for (dst, src) in pcm.iter_mut().zip(frame) {
                *dst = (src.clamp(-1.0, 1.0) * 32767.0) as i16;
            }
            vad.is_voice_segment(&pcm).unwrap_or(false)
        })
        .collect()
}

/// Regions of speech from frame decisions; pure, so the policy is testable.
pub fn regions_from_frames(
    voiced: &[bool],
    total_samples: usize,
    policy: VadPolicy,
) -> Vec<Region> {
    let ms = |m: usize| m * RATE / 1000;
    let mut runs: Vec<Region> = Vec::new();
    let mut i = 0;
    while i < voiced.len() {
        if !voiced[i] {
            i += 1;
            continue;
        }
        let start = i;
        while i < voiced.len() && voiced[i] {
            i += 1;
        }
        if (i - start) * FRAME >= ms(policy.min_speech_ms) {
            runs.push(Region {
                start: start * FRAME,
                end: i * FRAME,
            });
        }
    }
    let mut merged: Vec<Region> = Vec::new();
    for run in runs {
        let padded = Region {
            start: run.start.saturating_sub(ms(policy.pad_ms)),
            end: (run.end + ms(policy.pad_ms)).min(total_samples),
        };
        match merged.last_mut() {
            Some(last) if padded.start <= last.end + ms(policy.merge_gap_ms) => {
                last.end = padded.end
            }
            _ => merged.push(padded),
        }
    }
    merged
}

/// Maps times on the concatenated speech back to the original recording.
#[derive(Debug, Clone)]
pub struct TimeMap {
    /// (start on the concatenation, start on the original, length), samples.
    pieces: Vec<(usize, usize, usize)>,
}

impl TimeMap {
    pub fn new(regions: &[Region]) -> TimeMap {
        let mut at = 0;
        let pieces = regions
            .iter()
            .map(|r| {
                let piece = (at, r.start, r.end - r.start);
                at += r.end - r.start;
                piece
            })
            .collect();
        TimeMap { pieces }
    }

    /// Where each piece starts on the concatenation, in samples: the cut
    /// silences lie just before these points.
    pub fn piece_starts(&self) -> Vec<usize> {
        self.pieces.iter().map(|&(at, _, _)| at).collect()
    }

    /// The original time of a concatenation time, both in milliseconds. A
    /// time inside a piece maps linearly; past the end it clamps.
    pub fn to_original_ms(&self, concat_ms: i64) -> i64 {
        let pos = (concat_ms.max(0) as usize) * RATE / 1000;
        let mut mapped = 0;
        for &(at, orig, len) in &self.pieces {
            if pos < at + len {
                mapped = orig + pos.saturating_sub(at);
                return (mapped * 1000 / RATE) as i64;
            }
            mapped = orig + len;
        }
        (mapped * 1000 / RATE) as i64
    }
}

/// The speech of `samples`, concatenated, with its time map. Empty when
/// there is no speech at all.
pub fn speech_only(samples: &[f32], policy: VadPolicy) -> (Vec<f32>, TimeMap) {
    let regions = regions_from_frames(&voiced_frames(samples), samples.len(), policy);
    let mut speech = Vec::with_capacity(regions.iter().map(|r| r.end - r.start).sum());
    for r in &regions {
        speech.extend_from_slice(&samples[r.start..r.end]);
    }
    (speech, TimeMap::new(&regions))
}

/// How `len` samples of concatenated speech are split into pieces of at
/// most `max` samples, each decoded on its own in one encoder window. A
/// cut goes at the latest piece start (`starts`, where a pause was cut out)
/// in the second half of the allowed span; inside one long stretch of
/// speech, at the latest unvoiced frame there; failing both, at `max`, or
/// earlier so that the last piece is not a sliver.
/// Pieces that fit a window end at a pause, so whisper.cpp's seek never
/// needs a window for the few seconds left after the last one, and each
/// piece gets a fitted encoder context.
pub fn window_cuts(
    starts: &[usize],
    voiced: &[bool],
    len: usize,
    max: usize,
) -> Vec<std::ops::Range<usize>> {
    let mut out = Vec::new();
    if len == 0 || max == 0 {
        return out;
    }
    // The last piece is at least this long: whisper.cpp ignores input under
    // 100 ms, so a cut at the limit must not leave a sliver of speech.
    let min_last = (max / 4).min(RATE);
    let mut start = 0;
    while len - start > max {
        let limit = (start + max).min(len - min_last);
        let earliest = start + max / 2;
        let at_pause = starts
            .iter()
            .copied()
            .filter(|&s| s > earliest && s <= limit)
            .max();
        let at_unvoiced = || {
            (earliest.div_ceil(FRAME)..limit / FRAME)
                .rev()
                .find(|&f| !voiced.get(f).copied().unwrap_or(true))
                .map(|f| f * FRAME + FRAME / 2)
        };
        let cut = at_pause.or_else(at_unvoiced).unwrap_or(limit);
        out.push(start..cut);
        start = cut;
    }
    out.push(start..len);
    out
}

/// Audio after the last decoded timestamp that is skipped without looking:
/// whisper.cpp's timestamps land up to a few hundred ms before the word's
/// real end, so the word just decoded is not counted as new speech.
pub const TAIL_GRACE_MS: usize = 300;
/// Voiced audio left after that grace for which another window is worth
/// encoding.
pub const TAIL_MIN_SPEECH_MS: usize = 210;

/// Whether the audio from `from_ms` on (on the timeline `voiced` was
/// computed on, one flag per [`FRAME`]) still holds speech worth another
/// encoder window. whisper.cpp moves its window to the last timestamp it
/// decoded and encodes again, even when what is left is the silence after
/// the last word: on clips and on the end of each file that second window
/// is a full encoder run that decodes nothing. The tail is encoded again
/// only when it has at least [`TAIL_MIN_SPEECH_MS`] of voiced frames after
/// a [`TAIL_GRACE_MS`] grace.
pub fn tail_has_speech(voiced: &[bool], from_ms: usize) -> bool {
    let frame_ms = FRAME * 1000 / RATE;
    let first = (from_ms + TAIL_GRACE_MS).div_ceil(frame_ms);
    let voiced_ms = voiced.iter().skip(first).filter(|&&v| v).count() * frame_ms;
    voiced_ms >= TAIL_MIN_SPEECH_MS
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frames(pattern: &str) -> Vec<bool> {
        pattern.chars().map(|c| c == '#').collect()
    }

    const NO_PAD: VadPolicy = VadPolicy {
        pad_ms: 0,
        merge_gap_ms: 0,
        min_speech_ms: 60,
    };

    #[test]
    fn runs_become_regions_and_short_blips_are_noise() {
        let v = frames("..###...#....##.");
        let r = regions_from_frames(&v, v.len() * FRAME, NO_PAD);
        assert_eq!(
            r,
            vec![
                Region {
                    start: 2 * FRAME,
                    end: 5 * FRAME
                },
                Region {
                    start: 13 * FRAME,
                    end: 15 * FRAME
                }
            ]
        );
    }

    #[test]
    fn padding_and_merging() {
        let v = frames("....##......##....");
        let policy = VadPolicy {
            pad_ms: 30,
            merge_gap_ms: 120,
            min_speech_ms: 60,
        };
        // 6 silent frames between runs; 1 frame of padding each side leaves
        // a 4-frame (120 ms) gap, which merges.
        let r = regions_from_frames(&v, v.len() * FRAME, policy);
        assert_eq!(
            r,
            vec![Region {
                start: 3 * FRAME,
                end: 15 * FRAME
            }]
        );
        let policy = VadPolicy {
            merge_gap_ms: 60,
            ..policy
        };
        assert_eq!(regions_from_frames(&v, v.len() * FRAME, policy).len(), 2);
    }

    #[test]
    fn padding_stays_inside_the_recording() {
        let v = frames("#####");
        let r = regions_from_frames(&v, 5 * FRAME, VadPolicy::default());
        assert_eq!(
            r,
            vec![Region {
                start: 0,
                end: 5 * FRAME
            }]
        );
    }

    #[test]
    fn time_map_restores_original_times() {
        // Speech at 1.0–2.0 s and 5.0–5.5 s.
        let map = TimeMap::new(&[
            Region {
                start: RATE,
                end: 2 * RATE,
            },
            Region {
                start: 5 * RATE,
                end: 5 * RATE + RATE / 2,
            },
        ]);
        assert_eq!(map.to_original_ms(0), 1000);
        assert_eq!(map.to_original_ms(500), 1500);
        assert_eq!(map.to_original_ms(1000), 5000);
        assert_eq!(map.to_original_ms(1250), 5250);
        assert_eq!(map.to_original_ms(9999), 5500, "clamped to the end");
        assert_eq!(map.to_original_ms(-5), 1000);
    }

    #[test]
    fn silence_has_no_speech() {
        let silence = vec![0.0f32; RATE * 3];
        let (speech, _) = speech_only(&silence, VadPolicy::default());
        assert!(speech.is_empty());
    }
    #[test]
    fn a_silent_tail_is_not_encoded_again() {
        // 10 s of speech then 1.5 s of silence, decoded up to 10.1 s.
        let mut voiced = vec![true; 10_000 / 30];
        voiced.extend(vec![false; 1_500 / 30]);
        assert!(!tail_has_speech(&voiced, 10_100));
        // Nothing at all left.
        assert!(!tail_has_speech(&voiced, 11_500));
        assert!(!tail_has_speech(&[], 0));
    }

    #[test]
    fn a_word_left_after_the_last_timestamp_is_encoded_again() {
        // Decoded up to 51.3 s; a 0.5 s word starts at 51.7 s.
        let mut voiced = vec![true; 51_300 / 30];
        voiced.extend(vec![false; 400 / 30]);
        voiced.extend(vec![true; 500 / 30]);
        voiced.extend(vec![false; 600 / 30]);
        assert!(tail_has_speech(&voiced, 51_300));
    }

    #[test]
    fn the_grace_covers_the_end_of_the_word_just_decoded() {
        // The timestamp lands 250 ms before the word really ends.
        let mut voiced = vec![true; 5_250 / 30];
        voiced.extend(vec![false; 2_000 / 30]);
        assert!(!tail_has_speech(&voiced, 5_000));
        // A timestamp 1 s early leaves speech that must be decoded.
        assert!(tail_has_speech(&voiced, 4_250));
    }
    #[test]
    fn speech_is_cut_at_the_latest_pause_that_fits_a_window() {
        let max = 28 * RATE;
        // Pieces start at 0, 10, 20, 27 and 40 s; 52 s in all.
        let starts = [0, 10 * RATE, 20 * RATE, 27 * RATE, 40 * RATE];
        let voiced = vec![true; 52 * RATE / FRAME];
        let cuts = window_cuts(&starts, &voiced, 52 * RATE, max);
        assert_eq!(cuts, vec![0..27 * RATE, 27 * RATE..52 * RATE]);
        // Short speech is one piece; none at all is none.
        assert_eq!(
            window_cuts(&starts, &voiced, 5 * RATE, max),
            vec![0..5 * RATE]
        );
        assert!(window_cuts(&starts, &voiced, 0, max).is_empty());
    }

    #[test]
    fn one_long_stretch_is_cut_at_an_unvoiced_frame_or_at_the_limit() {
        let max = 28 * RATE;
        // 70 s of one piece, with a breath (unvoiced frame) at 25 s.
        let mut voiced = vec![true; 70 * RATE / FRAME];
        let breath = 25 * RATE / FRAME;
        voiced[breath] = false;
        let cuts = window_cuts(&[0], &voiced, 70 * RATE, max);
        let first_cut = breath * FRAME + FRAME / 2;
        assert_eq!(cuts[0], 0..first_cut);
        // No pause after it: the next cut is at the limit.
        assert_eq!(cuts[1], first_cut..first_cut + max);
        assert_eq!(cuts.last().unwrap().end, 70 * RATE);
        // 28 s and 10 ms of unbroken speech: the last piece is 1 s, not
        // 10 ms that whisper.cpp would drop.
        let voiced = vec![true; 29 * RATE / FRAME];
        let cuts = window_cuts(&[0], &voiced, max + 160, max);
        assert_eq!(cuts, vec![0..max + 160 - RATE, max + 160 - RATE..max + 160]);
        assert!(cuts.iter().all(|c| c.len() <= max && !c.is_empty()));
        // Pieces are contiguous.
        assert!(cuts.windows(2).all(|w| w[0].end == w[1].start));
    }
}
