//! The mel filterbank whisper.cpp stores in its model file: the Slaney mel
//! scale with Slaney area normalisation, as librosa's
//! `filters.mel(sr=16000, n_fft=400, n_mels=...)` computes it (and as
//! OpenAI's `mel_filters.npz` holds it). Computed in f64 and rounded to f32,
//! which can differ from librosa's float32 arithmetic by one ulp; that is far
//! below what changes a transcript.

pub const SAMPLE_RATE: f64 = 16_000.0;
pub const N_FFT: usize = 400;
/// Frequency bins of a 400-point real FFT.
pub const N_FREQS: usize = N_FFT / 2 + 1;

const F_SP: f64 = 200.0 / 3.0;
const MIN_LOG_HZ: f64 = 1000.0;
const MIN_LOG_MEL: f64 = MIN_LOG_HZ / F_SP;

fn log_step() -> f64 {
    6.4f64.ln() / 27.0
}

fn hz_to_mel(hz: f64) -> f64 {
    if hz >= MIN_LOG_HZ {
        MIN_LOG_MEL + (hz / MIN_LOG_HZ).ln() / log_step()
    } else {
        hz / F_SP
    }
}

fn mel_to_hz(mel: f64) -> f64 {
    if mel >= MIN_LOG_MEL {
        MIN_LOG_HZ * (log_step() * (mel - MIN_LOG_MEL)).exp()
    } else {
        F_SP * mel
    }
}

/// `n_mels × N_FREQS` weights, row-major.
pub fn mel_filters(n_mels: usize) -> Vec<f32> {
    let fft_freqs: Vec<f64> = (0..N_FREQS)
        .map(|i| i as f64 * (SAMPLE_RATE / 2.0) / (N_FREQS - 1) as f64)
        .collect();
    let (mel_min, mel_max) = (hz_to_mel(0.0), hz_to_mel(SAMPLE_RATE / 2.0));
    let mel_f: Vec<f64> = (0..n_mels + 2)
        .map(|i| mel_to_hz(mel_min + (mel_max - mel_min) * i as f64 / (n_mels + 1) as f64))
        .collect();
    let mut weights = vec![0f32; n_mels * N_FREQS];
    for m in 0..n_mels {
        let (lo, center, hi) = (mel_f[m], mel_f[m + 1], mel_f[m + 2]);
        let enorm = 2.0 / (hi - lo);
        for (k, f) in fft_freqs.iter().enumerate() {
            let lower = (f - lo) / (center - lo);
            let upper = (hi - f) / (hi - center);
            weights[m * N_FREQS + k] = (lower.min(upper).max(0.0) * enorm) as f32;
        }
    }
    weights
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mel_scale_round_trips() {
        for hz in [0.0, 100.0, 999.0, 1000.0, 4000.0, 8000.0] {
            assert!((mel_to_hz(hz_to_mel(hz)) - hz).abs() < 1e-9, "{hz}");
        }
        assert!((hz_to_mel(1000.0) - 15.0).abs() < 1e-12);
    }

    #[test]
    fn filters_are_triangles_with_slaney_area() {
        for n_mels in [80, 128] {
            let w = mel_filters(n_mels);
            assert_eq!(w.len(), n_mels * N_FREQS);
            assert!(w.iter().all(|v| *v >= 0.0 && v.is_finite()));
            for m in 0..n_mels {
                let row = &w[m * N_FREQS..(m + 1) * N_FREQS];
                // Each filter has one contiguous run of non-zero weights.
                let nz: Vec<usize> = (0..N_FREQS).filter(|k| row[*k] > 0.0).collect();
                if let (Some(first), Some(last)) = (nz.first(), nz.last()) {
                    assert_eq!(nz.len(), last - first + 1, "filter {m} is contiguous");
                }
            }
            // Slaney normalisation: weight × bin width integrates each
            // triangle to about 1 (exactly, for wide triangles).
            let bin_hz = SAMPLE_RATE / N_FFT as f64;
            let m = n_mels - 1;
            let area: f64 = w[m * N_FREQS..(m + 1) * N_FREQS]
                .iter()
                .map(|v| *v as f64 * bin_hz)
                .sum();
            assert!((area - 1.0).abs() < 0.05, "area {area}");
        }
    }

    #[test]
    fn matches_known_librosa_values() {
        // librosa.filters.mel(sr=16000, n_fft=400, n_mels=80): the first
        // filter peaks in bin 1 at 0.02486259 (OpenAI's mel_filters.npz).
        let w = mel_filters(80);
        assert!((w[1] - 0.024_862_59).abs() < 1e-6, "{}", w[1]);
        assert_eq!(w[0], 0.0);
    }
}
