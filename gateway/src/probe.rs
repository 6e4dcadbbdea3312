//! The length of an upload, read from its container header before it is
//! admitted, so the minutes it needs are reserved up front. Only the header
//! is read (a few KiB), never the audio; a file whose header does not say
//! (a streamed webm, a VBR mp3 without a Xing frame) gets `None`, and the
//! extension then makes the worker reserve what is left until it has
//! decoded the file. A header that lies cannot buy minutes: the worker
//! transcribes no more than was reserved.

use std::path::Path;
use symphonia::core::codecs::CODEC_TYPE_NULL;
use symphonia::core::formats::FormatOptions;
use symphonia::core::io::MediaSourceStream;
use symphonia::core::meta::MetadataOptions;
use symphonia::core::probe::Hint;

/// Milliseconds of audio the file's header declares, if it declares any.
pub fn declared_duration_ms(path: &Path, filename: Option<&str>) -> Option<i32> {
    let file = std::fs::File::open(path).ok()?;
    let mss = MediaSourceStream::new(Box::new(file), Default::default());
    let mut hint = Hint::new();
    if let Some(ext) = filename.and_then(|f| f.rsplit_once('.')).map(|(_, e)| e) {
        hint.with_extension(&ext.to_ascii_lowercase());
    }
    let probed = symphonia::default::get_probe()
        .format(
            &hint,
            mss,
            &FormatOptions::default(),
            &MetadataOptions::default(),
        )
        .ok()?;
    let track = probed
        .format
        .tracks()
        .iter()
        .find(|t| t.codec_params.codec != CODEC_TYPE_NULL)?;
    let p = &track.codec_params;
    let frames = p.n_frames?;
    let ms = match (p.time_base, p.sample_rate) {
        (Some(tb), _) => {
            let t = tb.calc_time(frames);
            t.seconds as f64 * 1000.0 + t.frac * 1000.0
        }
        (None, Some(rate)) if rate > 0 => frames as f64 * 1000.0 / f64::from(rate),
        _ => return None,
    };
    (ms.is_finite() && ms >= 0.0 && ms < f64::from(i32::MAX)).then(|| ms.ceil() as i32)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn wav(path: &Path, rate: u32, channels: u16, frames: u32) {
        let data_len = frames * u32::from(channels) * 2;
        let mut b = Vec::new();
        b.extend_from_slice(b"RIFF");
        b.extend_from_slice(&(36 + data_len).to_le_bytes());
        b.extend_from_slice(b"WAVEfmt ");
        b.extend_from_slice(&16u32.to_le_bytes());
        b.extend_from_slice(&1u16.to_le_bytes());
        b.extend_from_slice(&channels.to_le_bytes());
        b.extend_from_slice(&rate.to_le_bytes());
        b.extend_from_slice(&(rate * u32::from(channels) * 2).to_le_bytes());
        b.extend_from_slice(&(channels * 2).to_le_bytes());
        b.extend_from_slice(&16u16.to_le_bytes());
        b.extend_from_slice(b"data");
        b.extend_from_slice(&data_len.to_le_bytes());
        b.resize(b.len() + data_len as usize, 0);
        std::fs::write(path, b).unwrap();
    }

    #[test]
    fn reads_wav_lengths_at_common_rates() {
        let dir = std::env::temp_dir().join(format!("probe-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("a.wav");
        for (rate, ch, frames, want) in [
            (16_000, 1, 16_000 * 3, 3000),
            (44_100, 2, 44_100 * 2 + 441, 2010),
            (48_000, 2, 48_000 * 60, 60_000),
        ] {
            wav(&p, rate, ch, frames);
            assert_eq!(
                declared_duration_ms(&p, Some("a.wav")),
                Some(want),
                "{rate}"
            );
        }
        std::fs::write(&p, b"not audio at all").unwrap();
        assert_eq!(declared_duration_ms(&p, Some("a.wav")), None);
        assert_eq!(declared_duration_ms(&dir.join("missing"), None), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
