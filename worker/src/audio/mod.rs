//! Audio in: any common container and codec → 16 kHz mono f32.
//!
//! wav (PCM 16/24/32-bit and float), mp3, flac, ogg/vorbis and m4a/aac are
//! decoded by symphonia; Opus (in ogg or webm, as browsers record) is
//! demuxed by symphonia and decoded by libopus. Channels are averaged, then
//! [`resample`] brings the rate to 16 kHz, packet by packet ([`stream`]), so
//! a long file is never whole in memory. The decoded length is what a
//! recording is billed for.
//!
//! Every failure is an [`AudioError`] with a message meant for the user; the
//! decoders run under `catch_unwind`, so a malformed file cannot take the
//! worker down.

pub mod resample;
pub mod stream;

mod opus_track;

use std::io::Cursor;

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
    /// The file could not be opened or read (not a fault of its content).
    #[error("the audio file cannot be read: {0}")]
    Unreadable(String),
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

/// Decode `bytes` (any supported format; `extension` is only a hint) to
/// 16 kHz mono, refusing audio longer than `max_seconds`: the whole-buffer
/// form of [`stream::Stream16k`], for short clips and tests.
pub fn decode(
    bytes: Vec<u8>,
    extension: Option<&str>,
    max_seconds: u64,
) -> Result<Decoded, AudioError> {
    if bytes.is_empty() {
        return Err(AudioError::Empty);
    }
    let source = stream::Source::open(Box::new(Cursor::new(bytes)), extension)?;
    let mut stream = stream::Stream16k::new(source, max_seconds);
    let mut samples = Vec::new();
    while stream.pull(&mut samples)? {}
    let lengths = stream.lengths();
    if lengths.frames() == 0 || lengths.last_rate() == 0 {
        return Err(AudioError::NoSamples);
    }
    Ok(Decoded {
        duration_ms: lengths.duration_ms(),
        samples,
        source_rate: stream.source().rate(),
        source_channels: stream.source().channels(),
        codec: stream.source().codec().to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

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
}
