//! Band-limited resampling to Whisper's rate, chunk by chunk, with rubato's
//! synchronous FFT resampler.
//!
//! The ratios that matter (44.1 kHz → 16 kHz is 441:160, 48 kHz → 16 kHz is
//! 3:1) are fixed for a whole file, which is the case the FFT resampler is
//! made for: its anti-aliasing filter sits just under the lower Nyquist
//! rate, and the cost per sample does not depend on the filter's length.
//! [`StreamResampler`] takes the decoder's packets as they come, so nothing
//! longer than one FFT block is held, and it trims the resampler's delay and
//! tail so the output has exactly `round(len × to / from)` samples, as a
//! whole-buffer resampler would.
//!
//! Measured with `scripts/bench_memory.sh` (the `audio_bench` example) on
//! this 2-core machine: resampling one hour of mono audio to 16 kHz took
//! 0.77–0.96 s of CPU from 44.1 kHz and 0.75–0.91 s from 48 kHz over three
//! runs (bench/results/audio_pipeline.json). The windowed sinc it replaced
//! took 9.8 s (wall, one thread) per minute of 44.1 kHz audio here.

use rubato::audioadapter_buffers::direct::InterleavedSlice;
use rubato::{Fft, FixedSync, Indexing, Resampler};

/// Input frames per FFT block (rounded up to the ratio's smallest block):
/// large enough that the filter's cutoff is within 5 % of Nyquist, small
/// enough that the delay and the scratch buffers stay a few kilobytes.
const BLOCK: usize = 1536;

#[derive(Debug, thiserror::Error)]
pub enum ResampleError {
    #[error("cannot resample from {from} Hz to {to} Hz: {message}")]
    Setup { from: u32, to: u32, message: String },
}

/// A resampler fed in pieces of any length.
pub struct StreamResampler {
    /// None when the rates are equal.
    fft: Option<Box<Fft<f32>>>,
    from: u32,
    to: u32,
    /// Input waiting for a full block.
    pending: Vec<f32>,
    scratch: Vec<f32>,
    /// Output frames of the filter's delay still to drop.
    delay_left: usize,
    consumed: u64,
    produced: u64,
}

impl StreamResampler {
    pub fn new(from: u32, to: u32) -> Result<StreamResampler, ResampleError> {
        let fft = if from == to {
            None
        } else {
            let fft = Fft::<f32>::new(from as usize, to as usize, BLOCK, 1, FixedSync::Both)
                .map_err(|e| ResampleError::Setup {
                    from,
                    to,
                    message: e.to_string(),
                })?;
            Some(Box::new(fft))
        };
        let (block_in, block_out, delay) = fft
            .as_ref()
            .map(|f| {
                (
                    f.input_frames_next(),
                    f.output_frames_next(),
                    f.output_delay(),
                )
            })
            .unwrap_or((0, 0, 0));
        Ok(StreamResampler {
            fft,
            from,
            to,
            pending: Vec::with_capacity(block_in),
            scratch: vec![0.0; block_out],
            delay_left: delay,
            consumed: 0,
            produced: 0,
        })
    }

    pub fn from_rate(&self) -> u32 {
        self.from
    }

    /// The output length a whole-buffer resample of `input` frames has.
    pub fn output_len(&self, input: u64) -> u64 {
        // Rounded to nearest, as the previous resampler did.
        (input * u64::from(self.to) * 2 + u64::from(self.from)) / (2 * u64::from(self.from))
    }

    /// Resamples `input`, appending what is ready to `out`.
    pub fn push(&mut self, input: &[f32], out: &mut Vec<f32>) {
        self.consumed += input.len() as u64;
        if self.fft.is_none() {
            out.extend_from_slice(input);
            self.produced += input.len() as u64;
            return;
        }
        let mut rest = input;
        while !rest.is_empty() {
            let need = self.block_in() - self.pending.len();
            let take = need.min(rest.len());
            self.pending.extend_from_slice(&rest[..take]);
            rest = &rest[take..];
            if self.pending.len() == self.block_in() {
                let pending = std::mem::take(&mut self.pending);
                self.run_block(&pending, None, out, u64::MAX);
                self.pending = pending;
                self.pending.clear();
            }
        }
    }

    /// Flushes the filter: after this, `out` has received exactly
    /// [`StreamResampler::output_len`] of everything pushed.
    pub fn finish(mut self, out: &mut Vec<f32>) {
        let total = self.output_len(self.consumed);
        if self.fft.is_none() {
            return;
        }
        let pending = std::mem::take(&mut self.pending);
        if !pending.is_empty() {
            self.run_block(&pending, Some(pending.len()), out, total);
        }
        // The filter still holds the last delay's worth: pump silence.
        while self.produced < total {
            self.run_block(&[], Some(0), out, total);
        }
    }

    fn block_in(&self) -> usize {
        self.fft
            .as_ref()
            .map(|f| f.input_frames_next())
            .unwrap_or(0)
    }

    /// One FFT block; `partial` is how many input frames are real (the rest
    /// is silence). Emits at most up to `limit` frames in total.
    fn run_block(&mut self, input: &[f32], partial: Option<usize>, out: &mut Vec<f32>, limit: u64) {
        let fft = self.fft.as_mut().expect("run_block only with a resampler");
        let frames_in = fft.input_frames_next();
        let frames_out = fft.output_frames_next();
        let padded;
        let input = if input.len() < frames_in {
            let mut p = input.to_vec();
            p.resize(frames_in, 0.0);
            padded = p;
            &padded[..]
        } else {
            input
        };
        let source = InterleavedSlice::new(input, 1, frames_in).expect("input buffer sized");
        let mut sink = InterleavedSlice::new_mut(&mut self.scratch[..frames_out], 1, frames_out)
            .expect("output buffer sized");
        let indexing = partial.map(|n| Indexing::new().partial_len(n));
        let (_, written) = fft
            .process_into_buffer(&source, &mut sink, indexing.as_ref())
            .expect("buffers match the resampler's block sizes");
        let mut ready = &self.scratch[..written];
        let skip = self.delay_left.min(ready.len());
        self.delay_left -= skip;
        ready = &ready[skip..];
        let room = usize::try_from(limit.saturating_sub(self.produced)).unwrap_or(usize::MAX);
        let ready = &ready[..ready.len().min(room)];
        out.extend_from_slice(ready);
        self.produced += ready.len() as u64;
    }
}

/// Resample all of mono `input` from `from_hz` to `to_hz`.
pub fn resample(input: &[f32], from_hz: u32, to_hz: u32) -> Result<Vec<f32>, ResampleError> {
    let mut r = StreamResampler::new(from_hz, to_hz)?;
    let mut out = Vec::with_capacity(r.output_len(input.len() as u64) as usize);
    r.push(input, &mut out);
    r.finish(&mut out);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::f64::consts::PI;

    fn tone(hz: f64, rate: u32, seconds: f64) -> Vec<f32> {
        let n = (f64::from(rate) * seconds) as usize;
        (0..n)
            .map(|i| (2.0 * PI * hz * i as f64 / f64::from(rate)).sin() as f32 * 0.5)
            .collect()
    }

    /// Amplitude and phase of `hz` in `x` by correlation (a one-bin DFT).
    fn bin(x: &[f32], hz: f64, rate: u32, first: usize) -> (f64, f64) {
        let (mut re, mut im) = (0.0, 0.0);
        for (i, v) in x.iter().enumerate() {
            let phase = 2.0 * PI * hz * (i + first) as f64 / f64::from(rate);
            re += f64::from(*v) * phase.cos();
            im += f64::from(*v) * phase.sin();
        }
        (
            2.0 * (re * re + im * im).sqrt() / x.len() as f64,
            im.atan2(re),
        )
    }

    fn amplitude(x: &[f32], hz: f64, rate: u32) -> f64 {
        bin(x, hz, rate, 0).0
    }

    /// Feeds `input` in pieces of the given sizes, cycling.
    fn streamed(input: &[f32], from: u32, pieces: &[usize]) -> Vec<f32> {
        let mut r = StreamResampler::new(from, 16_000).unwrap();
        let mut out = Vec::new();
        let mut at = 0;
        for size in pieces.iter().cycle() {
            if at >= input.len() {
                break;
            }
            let end = (at + size).min(input.len());
            r.push(&input[at..end], &mut out);
            at = end;
        }
        r.finish(&mut out);
        out
    }

    #[test]
    fn keeps_length_and_passband_tones() {
        for from in [8_000, 22_050, 44_100, 48_000] {
            let input = tone(440.0, from, 1.0);
            let out = resample(&input, from, 16_000).unwrap();
            assert_eq!(out.len(), 16_000, "{from} Hz");
            // Skip the edges, where the filter sees zeros.
            let a = amplitude(&out[1000..15000], 440.0, 16_000);
            assert!((a - 0.5).abs() < 0.01, "{from} Hz: 440 Hz amplitude {a}");
        }
    }

    #[test]
    fn the_delay_is_trimmed_so_times_do_not_shift() {
        // Same phase in and out means the output is aligned to the input.
        for from in [44_100, 48_000] {
            let input = tone(440.0, from, 1.0);
            let out = resample(&input, from, 16_000).unwrap();
            let (_, phase_in) = bin(&input[from as usize / 4..], 440.0, from, from as usize / 4);
            let (_, phase_out) = bin(&out[4000..], 440.0, 16_000, 4000);
            assert!(
                (phase_in - phase_out).abs() < 0.05,
                "{from}: phase {phase_in} in, {phase_out} out"
            );
        }
    }

    #[test]
    fn removes_what_would_alias() {
        // 12 kHz cannot exist at 16 kHz; without filtering it folds to 4 kHz.
        let input = tone(12_000.0, 48_000, 1.0);
        let out = resample(&input, 48_000, 16_000).unwrap();
        let folded = amplitude(&out[1000..15000], 4_000.0, 16_000);
        assert!(folded < 0.005, "aliased energy {folded}");
        // 9 kHz at 44.1 kHz would fold to 7 kHz.
        let input = tone(9_000.0, 44_100, 1.0);
        let out = resample(&input, 44_100, 16_000).unwrap();
        let folded = amplitude(&out[1000..15000], 7_000.0, 16_000);
        assert!(folded < 0.005, "aliased energy {folded}");
    }

    #[test]
    fn pieces_of_any_size_give_the_whole_buffer_result() {
        let input = tone(440.0, 44_100, 2.3);
        let whole = resample(&input, 44_100, 16_000).unwrap();
        for pieces in [&[1usize][..], &[1152, 7, 4096], &[100_000]] {
            let out = streamed(&input, 44_100, pieces);
            assert_eq!(out.len(), whole.len(), "{pieces:?}");
            let worst = out
                .iter()
                .zip(&whole)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0f32, f32::max);
            assert!(worst < 1e-5, "{pieces:?}: differs by {worst}");
        }
    }

    #[test]
    fn identity_short_and_empty() {
        assert_eq!(
            resample(&[0.1, 0.2], 16_000, 16_000).unwrap(),
            vec![0.1, 0.2]
        );
        assert!(resample(&[], 44_100, 16_000).unwrap().is_empty());
        // Shorter than one block: still the rounded length.
        assert_eq!(resample(&[0.0; 100], 44_100, 16_000).unwrap().len(), 36);
        assert_eq!(resample(&[0.0; 3], 8_000, 16_000).unwrap().len(), 6);
    }
}
