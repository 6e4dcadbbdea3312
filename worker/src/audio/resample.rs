//! Band-limited resampling by windowed-sinc interpolation.
//!
//! Each output sample is a weighted sum of the input around its position,
//! with a low-pass cutoff just under the lower of the two Nyquist rates so
//! downsampling (44.1 kHz → 16 kHz) does not alias. Blackman window, 32
//! zero crossings each side: far more than speech recognition needs, and
//! about 1 s of CPU per hour of audio.

use std::f64::consts::PI;

const HALF_TAPS: f64 = 32.0;
/// Fraction of the lower Nyquist rate kept: leaves room for the filter's
/// transition band.
const PASSBAND: f64 = 0.94;

fn sinc(x: f64) -> f64 {
    if x.abs() < 1e-12 {
        1.0
    } else {
        (PI * x).sin() / (PI * x)
    }
}

fn blackman(x: f64) -> f64 {
    // x in [-1, 1]
    let t = (x + 1.0) / 2.0;
    0.42 - 0.5 * (2.0 * PI * t).cos() + 0.08 * (4.0 * PI * t).cos()
}

/// Resample mono `input` from `from_hz` to `to_hz`.
pub fn resample(input: &[f32], from_hz: u32, to_hz: u32) -> Vec<f32> {
    if from_hz == to_hz || input.is_empty() {
        return input.to_vec();
    }
    let step = f64::from(from_hz) / f64::from(to_hz);
    // Cutoff in cycles per input sample.
    let cutoff = 0.5 * PASSBAND * (f64::from(to_hz) / f64::from(from_hz)).min(1.0);
    // Filter half-width in input samples.
    let half_width = HALF_TAPS / (2.0 * cutoff);
    let out_len = ((input.len() as f64) / step).round() as usize;
    let mut out = Vec::with_capacity(out_len);
    for n in 0..out_len {
        let t = n as f64 * step;
        let first = ((t - half_width).ceil().max(0.0)) as usize;
        let last = ((t + half_width).floor() as usize).min(input.len() - 1);
        let mut acc = 0.0f64;
        for (k, x) in input.iter().enumerate().take(last + 1).skip(first) {
            let d = t - k as f64;
            acc += f64::from(*x) * 2.0 * cutoff * sinc(2.0 * cutoff * d) * blackman(d / half_width);
        }
        out.push(acc as f32);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tone(hz: f64, rate: u32, seconds: f64) -> Vec<f32> {
        let n = (f64::from(rate) * seconds) as usize;
        (0..n)
            .map(|i| (2.0 * PI * hz * i as f64 / f64::from(rate)).sin() as f32 * 0.5)
            .collect()
    }

    /// Amplitude of `hz` in `x` by correlation (a one-bin DFT).
    fn amplitude(x: &[f32], hz: f64, rate: u32) -> f64 {
        let (mut re, mut im) = (0.0, 0.0);
        for (i, v) in x.iter().enumerate() {
            let phase = 2.0 * PI * hz * i as f64 / f64::from(rate);
            re += f64::from(*v) * phase.cos();
            im += f64::from(*v) * phase.sin();
        }
        2.0 * (re * re + im * im).sqrt() / x.len() as f64
    }

    #[test]
    fn keeps_length_and_passband_tones() {
        for from in [8_000, 22_050, 44_100, 48_000] {
            let input = tone(440.0, from, 1.0);
            let out = resample(&input, from, 16_000);
            assert!(
                (out.len() as i64 - 16_000).abs() <= 1,
                "{from}: {}",
                out.len()
            );
            // Skip the edges, where the filter sees zeros.
            let a = amplitude(&out[1000..15000], 440.0, 16_000);
            assert!((a - 0.5).abs() < 0.01, "{from} Hz: 440 Hz amplitude {a}");
        }
    }

    #[test]
    fn removes_what_would_alias() {
        // 12 kHz cannot exist at 16 kHz; without filtering it folds to 4 kHz.
        let input = tone(12_000.0, 48_000, 1.0);
        let out = resample(&input, 48_000, 16_000);
        let folded = amplitude(&out[1000..15000], 4_000.0, 16_000);
        assert!(folded < 0.005, "aliased energy {folded}");
    }

    #[test]
    fn identity_and_empty() {
        assert_eq!(resample(&[0.1, 0.2], 16_000, 16_000), vec![0.1, 0.2]);
        assert!(resample(&[], 44_100, 16_000).is_empty());
    }
}
