//! Audio in: any common container and codec → 16 kHz mono f32.
//!
//! wav (PCM 16/24/32-bit and float), mp3, flac, ogg/vorbis and m4a/aac are
//! decoded by symphonia; Opus (in ogg or webm, as browsers record) is
//! demuxed by symphonia and decoded by libopus. Channels are averaged, then
//! [`resample`] brings the rate to 16 kHz. The decoded length is what a
//! recording is billed for.
//!
//! Every failure is an [`AudioError`] with a message meant for the user; the
//! decoders run under `catch_unwind`, so a malformed file cannot take the
//! worker down.

pub mod resample;

mod opus_track;

use std::io::Cursor;
use symphonia::core::audio::SampleBuffer;
use symphonia::core::codecs::{DecoderOptions, CODEC_TYPE_NULL, CODEC_TYPE_OPUS};
use symphonia::core::errors::Error as SymphoniaError;
use symphonia::core::formats::{FormatOptions, FormatReader};
use symphonia::core::io::MediaSourceStream;
use symphonia::core::meta::MetadataOptions;
use symphonia::core::probe::Hint;

/// Whisper's sample rate.
pub const TARGET_RATE: u32 = 16_000;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum AudioError {
    #[error("the file is empty")]
    Empty,
    #[error("the file is not audio in a supported format ({0})")]
    NotAudio(String),
    #[error("the audio is corrupt: {0}")]
    Corrupt(String),
    #[error("the audio contains no samples")]
    NoSamples,
    #[error("the audio is longer than the limit of {max_seconds} s")]
    TooLong { max_seconds: u64 },
    #[error("unsupported audio codec: {0}")]
    UnsupportedCodec(String),
}

/// Decoded audio, ready for Whisper.
#[derive(Debug, Clone)]
pub struct Decoded {
    /// 16 kHz mono samples in [-1, 1].
    pub samples: Vec<f32>,
    /// The decoded length before resampling, in milliseconds.
    pub duration_ms: u64,
    pub source_rate: u32,
    pub source_channels: usize,
    pub codec: String,
}

/// Mono samples at their own rate, before resampling.
struct Raw {
    mono: Vec<f32>,
    rate: u32,
    channels: usize,
    codec: String,
}

/// Averages interleaved frames into `out`.
fn push_downmixed(out: &mut Vec<f32>, interleaved: &[f32], channels: usize) {
    if channels <= 1 {
        out.extend_from_slice(interleaved);
        return;
    }
    let scale = 1.0 / channels as f32;
    out.extend(
        interleaved
            .chunks_exact(channels)
            .map(|frame| frame.iter().sum::<f32>() * scale),
    );
}

/// Stops decoding as soon as the audio passes the limit, so a 10-hour file
/// costs no more than the limit to refuse.
fn check_length(samples: usize, rate: u32, max_seconds: u64) -> Result<(), AudioError> {
    if rate > 0 && samples as u64 > max_seconds * u64::from(rate) {
        return Err(AudioError::TooLong { max_seconds });
    }
    Ok(())
}

/// Decoded and damaged packets of one stream, and whether what decoded is
/// worth transcribing.
#[derive(Default)]
struct Tally {
    good: usize,
    bad: usize,
    last_error: String,
}

impl Tally {
    fn damaged(&mut self, error: impl ToString) {
        self.bad += 1;
        self.last_error = error.to_string();
    }

    fn verdict(&self) -> Result<(), AudioError> {
        if self.good == 0 && self.bad > 0 {
            return Err(AudioError::Corrupt(self.last_error.clone()));
        }
        // A stream that is mostly damage is not worth transcribing.
        if self.bad * 2 > self.good + self.bad {
            return Err(AudioError::Corrupt(format!(
                "{} of {} packets could not be decoded ({})",
                self.bad,
                self.good + self.bad,
                self.last_error
            )));
        }
        Ok(())
    }
}

/// The next packet of `track_id`, or None at the end. A damaged container
/// ends the stream there (counted as damage): what decoded so far is kept.
fn next_packet(
    format: &mut dyn FormatReader,
    track_id: u32,
    tally: &mut Tally,
) -> Option<symphonia::core::formats::Packet> {
    loop {
        match format.next_packet() {
            Ok(p) if p.track_id() == track_id => return Some(p),
            Ok(_) => continue,
            Err(SymphoniaError::IoError(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                return None
            }
            Err(SymphoniaError::ResetRequired) => return None,
            Err(e) => {
                tally.damaged(e);
                return None;
            }
        }
    }
}

fn open(bytes: Vec<u8>, extension: Option<&str>) -> Result<Box<dyn FormatReader>, AudioError> {
    let mss = MediaSourceStream::new(Box::new(Cursor::new(bytes)), Default::default());
    let mut hint = Hint::new();
    if let Some(ext) = extension {
        hint.with_extension(ext);
    }
    symphonia::default::get_probe()
        .format(
            &hint,
            mss,
            &FormatOptions::default(),
            &MetadataOptions::default(),
        )
        .map(|probed| probed.format)
        .map_err(|e| AudioError::NotAudio(e.to_string()))
}

fn decode_raw(
    bytes: Vec<u8>,
    extension: Option<&str>,
    max_seconds: u64,
) -> Result<Raw, AudioError> {
    let mut format = open(bytes, extension)?;
    let track = format
        .tracks()
        .iter()
        .find(|t| t.codec_params.codec != CODEC_TYPE_NULL)
        .ok_or_else(|| AudioError::NotAudio("no audio track".into()))?;
    let track_id = track.id;
    let params = track.codec_params.clone();
    if params.codec == CODEC_TYPE_OPUS {
        return opus_track::decode(format.as_mut(), track_id, &params, max_seconds);
    }
    let codec_name = symphonia::default::get_codecs()
        .get_codec(params.codec)
        .map(|d| d.short_name.to_string())
        .unwrap_or_else(|| format!("{:?}", params.codec));
    let mut decoder = symphonia::default::get_codecs()
        .make(&params, &DecoderOptions::default())
        .map_err(|_| AudioError::UnsupportedCodec(codec_name.clone()))?;
    let mut mono = Vec::new();
    let mut rate = params.sample_rate.unwrap_or(0);
    let mut channels = params.channels.map(|c| c.count()).unwrap_or(0);
    let mut tally = Tally::default();
    let mut buffer: Option<SampleBuffer<f32>> = None;
    while let Some(packet) = next_packet(format.as_mut(), track_id, &mut tally) {
        match decoder.decode(&packet) {
            Ok(decoded) => {
                let spec = *decoded.spec();
                rate = spec.rate;
                channels = spec.channels.count();
                let needed = decoded.capacity() as u64;
                let buf = match &mut buffer {
                    Some(b) if b.capacity() as u64 >= needed * channels as u64 => b,
                    _ => buffer.insert(SampleBuffer::<f32>::new(needed, spec)),
                };
                buf.copy_interleaved_ref(decoded);
                push_downmixed(&mut mono, buf.samples(), channels);
                tally.good += 1;
                check_length(mono.len(), rate, max_seconds)?;
            }
            Err(SymphoniaError::DecodeError(e)) => tally.damaged(e),
            Err(e) => return Err(AudioError::Corrupt(e.to_string())),
        }
    }
    tally.verdict()?;
    Ok(Raw {
        mono,
        rate,
        channels,
        codec: codec_name,
    })
}

/// Decode `bytes` (any supported format; `extension` is only a hint) to
/// 16 kHz mono, refusing audio longer than `max_seconds`.
pub fn decode(
    bytes: Vec<u8>,
    extension: Option<&str>,
    max_seconds: u64,
) -> Result<Decoded, AudioError> {
    if bytes.is_empty() {
        return Err(AudioError::Empty);
    }
    let extension = extension.map(str::to_owned);
    let raw =
        std::panic::catch_unwind(move || decode_raw(bytes, extension.as_deref(), max_seconds))
            .map_err(|panic| {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "decoder panic".into());
            AudioError::Corrupt(what)
        })??;
    if raw.mono.is_empty() || raw.rate == 0 {
        return Err(AudioError::NoSamples);
    }
    let duration_ms = (raw.mono.len() as u64 * 1000).div_ceil(u64::from(raw.rate));
    let mut samples = resample::resample(&raw.mono, raw.rate, TARGET_RATE);
    for s in &mut samples {
        *s = s.clamp(-1.0, 1.0);
    }
    Ok(Decoded {
        samples,
        duration_ms,
        source_rate: raw.rate,
        source_channels: raw.channels,
        codec: raw.codec,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn downmix_averages_frames() {
        let mut out = Vec::new();
        push_downmixed(&mut out, &[1.0, 0.0, 0.5, 0.5, -1.0, 1.0], 2);
        assert_eq!(out, vec![0.5, 0.5, 0.0]);
        push_downmixed(&mut out, &[0.25], 1);
        assert_eq!(out.len(), 4);
    }

    #[test]
    fn refuses_empty_and_non_audio() {
        assert_eq!(decode(Vec::new(), None, 60).unwrap_err(), AudioError::Empty);
        let text = b"this is a text file, not audio at all".repeat(100);
        assert!(matches!(
            decode(text, Some("wav"), 60),
            Err(AudioError::NotAudio(_))
        ));
        let random: Vec<u8> = (0..50_000u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
            .collect();
        assert!(decode(random, None, 60).is_err());
    }

    #[test]
    fn length_limit() {
        assert!(check_length(16_000 * 60, 16_000, 60).is_ok());
        assert_eq!(
            check_length(16_000 * 60 + 1, 16_000, 60),
            Err(AudioError::TooLong { max_seconds: 60 })
        );
    }
}
