//! Decoding as a stream: packets are read from the file as they are needed,
//! averaged to mono and resampled to 16 kHz a packet at a time, so the
//! memory a file needs does not grow with its length.
//!
//! - [`Source`]: the container and the track's decoder, one packet of mono
//!   samples at the source rate per call.
//! - [`measure`]: a whole pass that decodes and counts without keeping
//!   anything, for the length (and the damage verdict) before transcribing.
//! - [`Stream16k`]: the source, downmixed and resampled, pulled in pieces.

use super::opus_track::{OpusTrack, OPUS_RATE};
use super::resample::StreamResampler;
use super::{AudioError, TARGET_RATE};
use std::panic::AssertUnwindSafe;
use std::path::Path;
use symphonia::core::audio::SampleBuffer;
use symphonia::core::codecs::{Decoder, DecoderOptions, CODEC_TYPE_NULL, CODEC_TYPE_OPUS};
use symphonia::core::errors::Error as SymphoniaError;
use symphonia::core::formats::{FormatOptions, FormatReader, Packet};
use symphonia::core::io::{MediaSource, MediaSourceStream};
use symphonia::core::meta::MetadataOptions;
use symphonia::core::probe::Hint;

/// Averages interleaved frames into `out`.
pub(super) fn push_downmixed(out: &mut Vec<f32>, interleaved: &[f32], channels: usize) {
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

/// Refuses audio past the limit (`samples` at `rate`); checked after every
/// packet, so a 10-hour file costs no more than the limit to refuse.
pub(super) fn check_length(samples: u64, rate: u32, max_seconds: u64) -> Result<(), AudioError> {
    if rate > 0 && samples > max_seconds * u64::from(rate) {
        return Err(AudioError::TooLong { max_seconds });
    }
    Ok(())
}

/// Decoded and damaged packets of one stream, and whether what decoded is
/// worth transcribing.
#[derive(Default, Clone)]
pub(super) struct Tally {
    pub good: usize,
    pub bad: usize,
    pub last_error: String,
}

impl Tally {
    fn damaged(&mut self, error: impl ToString) {
        self.bad += 1;
        self.last_error = error.to_string();
    }

    pub fn verdict(&self) -> Result<(), AudioError> {
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

/// The decoded length of a stream: frames per run of one sample rate (a
/// rate change mid-file starts a new run).
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Lengths {
    runs: Vec<(u32, u64)>,
}

impl Lengths {
    pub fn add(&mut self, rate: u32, frames: u64) {
        if frames == 0 {
            // A damaged packet (or one before the rate is known) adds no run.
            return;
        }
        match self.runs.last_mut() {
            Some((r, n)) if *r == rate => *n += frames,
            _ => self.runs.push((rate, frames)),
        }
    }

    pub fn frames(&self) -> u64 {
        self.runs.iter().map(|(_, n)| n).sum()
    }

    /// Milliseconds, each run rounded up (for one rate: the length rounded
    /// up to the millisecond, as billed).
    pub fn duration_ms(&self) -> u64 {
        self.runs
            .iter()
            .filter(|(r, _)| *r > 0)
            .map(|(r, n)| (n * 1000).div_ceil(u64::from(*r)))
            .sum()
    }

    /// The 16 kHz samples the stream resamples to.
    pub fn target_samples(&self) -> u64 {
        self.runs
            .iter()
            .filter(|(r, _)| *r > 0)
            .map(|(r, n)| (n * u64::from(TARGET_RATE) * 2 + u64::from(*r)) / (2 * u64::from(*r)))
            .sum()
    }

    pub fn check(&self, max_seconds: u64) -> Result<(), AudioError> {
        match self.runs.as_slice() {
            [(rate, n)] => check_length(*n, *rate, max_seconds),
            _ if self.duration_ms() > max_seconds * 1000 => {
                Err(AudioError::TooLong { max_seconds })
            }
            _ => Ok(()),
        }
    }

    pub fn last_rate(&self) -> u32 {
        self.runs.last().map(|(r, _)| *r).unwrap_or(0)
    }
}

enum TrackDecoder {
    Symphonia {
        decoder: Box<dyn Decoder>,
        buffer: Option<SampleBuffer<f32>>,
    },
    Opus(OpusTrack),
}

/// An open file: its container, the first audio track and its decoder.
pub struct Source {
    format: Box<dyn FormatReader>,
    track_id: u32,
    decoder: TrackDecoder,
    tally: Tally,
    codec: String,
    channels: usize,
    rate: u32,
    ended: bool,
}

fn panic_message(panic: Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "decoder panic".into())
}

/// Runs a decoder step so that a panic on malformed input is an error, not
/// the end of the process.
fn guarded<T>(f: impl FnOnce() -> Result<T, AudioError>) -> Result<T, AudioError> {
    std::panic::catch_unwind(AssertUnwindSafe(f))
        .map_err(|panic| AudioError::Corrupt(panic_message(panic)))?
}

impl Source {
    /// Opens an audio file, reading it as the decoder goes.
    pub fn open_path(path: &Path, extension: Option<&str>) -> Result<Source, AudioError> {
        let file = std::fs::File::open(path)
            .map_err(|e| AudioError::Unreadable(format!("{}: {e}", path.display())))?;
        let len = file
            .metadata()
            .map_err(|e| AudioError::Unreadable(format!("{}: {e}", path.display())))?
            .len();
        if len == 0 {
            return Err(AudioError::Empty);
        }
        Source::open(Box::new(file), extension)
    }

    /// Opens any seekable source (`extension` is only a hint).
    pub fn open(
        media: Box<dyn MediaSource>,
        extension: Option<&str>,
    ) -> Result<Source, AudioError> {
        guarded(|| Source::open_unguarded(media, extension))
    }

    fn open_unguarded(
        media: Box<dyn MediaSource>,
        extension: Option<&str>,
    ) -> Result<Source, AudioError> {
        let mss = MediaSourceStream::new(media, Default::default());
        let mut hint = Hint::new();
        if let Some(ext) = extension {
            hint.with_extension(ext);
        }
        let format = symphonia::default::get_probe()
            .format(
                &hint,
                mss,
                &FormatOptions::default(),
                &MetadataOptions::default(),
            )
            .map(|probed| probed.format)
            .map_err(|e| AudioError::NotAudio(e.to_string()))?;
        let track = format
            .tracks()
            .iter()
            .find(|t| t.codec_params.codec != CODEC_TYPE_NULL)
            .ok_or_else(|| AudioError::NotAudio("no audio track".into()))?;
        let track_id = track.id;
        let params = track.codec_params.clone();
        let (decoder, codec, rate, channels) = if params.codec == CODEC_TYPE_OPUS {
            let opus = OpusTrack::new(&params)?;
            let channels = opus.channels();
            (
                TrackDecoder::Opus(opus),
                "opus".to_string(),
                OPUS_RATE,
                channels,
            )
        } else {
            let codec = symphonia::default::get_codecs()
                .get_codec(params.codec)
                .map(|d| d.short_name.to_string())
                .unwrap_or_else(|| format!("{:?}", params.codec));
            let decoder = symphonia::default::get_codecs()
                .make(&params, &DecoderOptions::default())
                .map_err(|_| AudioError::UnsupportedCodec(codec.clone()))?;
            (
                TrackDecoder::Symphonia {
                    decoder,
                    buffer: None,
                },
                codec,
                params.sample_rate.unwrap_or(0),
                params.channels.map(|c| c.count()).unwrap_or(0),
            )
        };
        Ok(Source {
            format,
            track_id,
            decoder,
            tally: Tally::default(),
            codec,
            channels,
            rate,
            ended: false,
        })
    }

    pub fn codec(&self) -> &str {
        &self.codec
    }

    /// The channel count and rate of the last decoded packet (the
    /// container's until one has decoded).
    pub fn channels(&self) -> usize {
        self.channels
    }

    pub fn rate(&self) -> u32 {
        self.rate
    }

    /// Whether what decoded is worth transcribing; final once
    /// [`Source::next_mono`] has returned None.
    pub fn verdict(&self) -> Result<(), AudioError> {
        self.tally.verdict()
    }

    /// Appends the next packet's mono samples to `out` and returns their
    /// rate, or None at the end of the stream. A damaged packet is counted
    /// and appends nothing.
    pub fn next_mono(&mut self, out: &mut Vec<f32>) -> Result<Option<u32>, AudioError> {
        if self.ended {
            return Ok(None);
        }
        let result = guarded(|| self.next_mono_unguarded(out));
        if !matches!(result, Ok(Some(_))) {
            // After a panic the decoder's state is unknown: read no further.
            self.ended = true;
        }
        result
    }

    fn next_mono_unguarded(&mut self, out: &mut Vec<f32>) -> Result<Option<u32>, AudioError> {
        let Some(packet) = self.next_packet() else {
            return Ok(None);
        };
        match &mut self.decoder {
            TrackDecoder::Opus(opus) => match opus.decode(&packet.data, out) {
                Ok(()) => self.tally.good += 1,
                Err(e) => self.tally.damaged(e),
            },
            TrackDecoder::Symphonia { decoder, buffer } => match decoder.decode(&packet) {
                Ok(decoded) => {
                    let spec = *decoded.spec();
                    self.rate = spec.rate;
                    self.channels = spec.channels.count();
                    let needed = decoded.capacity() as u64;
                    let buf = match buffer {
                        Some(b) if b.capacity() as u64 >= needed * self.channels as u64 => b,
                        _ => buffer.insert(SampleBuffer::<f32>::new(needed, spec)),
                    };
                    buf.copy_interleaved_ref(decoded);
                    push_downmixed(out, buf.samples(), self.channels);
                    self.tally.good += 1;
                }
                Err(SymphoniaError::DecodeError(e)) => self.tally.damaged(e),
                Err(e) => return Err(AudioError::Corrupt(e.to_string())),
            },
        }
        Ok(Some(self.rate))
    }

    /// The next packet of the track, or None at the end. A damaged
    /// container ends the stream there (counted as damage): what decoded so
    /// far is kept.
    fn next_packet(&mut self) -> Option<Packet> {
        loop {
            match self.format.next_packet() {
                Ok(p) if p.track_id() == self.track_id => return Some(p),
                Ok(_) => continue,
                Err(SymphoniaError::IoError(e))
                    if e.kind() == std::io::ErrorKind::UnexpectedEof =>
                {
                    return None
                }
                Err(SymphoniaError::ResetRequired) => return None,
                Err(e) => {
                    self.tally.damaged(e);
                    return None;
                }
            }
        }
    }
}

/// What a counting pass over a file found.
#[derive(Debug, Clone, PartialEq)]
pub struct Measured {
    pub lengths: Lengths,
    pub source_rate: u32,
    pub source_channels: usize,
    pub codec: String,
}

impl Measured {
    pub fn duration_ms(&self) -> u64 {
        self.lengths.duration_ms()
    }
}

/// Decodes `source` to the end without keeping the samples: the exact
/// length (what the resampling pass will produce), the limit and the
/// damage verdict, before any transcription is spent on the file.
pub fn measure(mut source: Source, max_seconds: u64) -> Result<Measured, AudioError> {
    let mut lengths = Lengths::default();
    let mut scratch = Vec::new();
    while let Some(rate) = source.next_mono(&mut scratch)? {
        lengths.add(rate, scratch.len() as u64);
        scratch.clear();
        lengths.check(max_seconds)?;
    }
    source.verdict()?;
    if lengths.frames() == 0 || lengths.last_rate() == 0 {
        return Err(AudioError::NoSamples);
    }
    Ok(Measured {
        lengths,
        source_rate: source.rate(),
        source_channels: source.channels(),
        codec: source.codec().to_string(),
    })
}

/// A source as 16 kHz mono in [-1, 1], pulled a packet at a time.
pub struct Stream16k {
    source: Source,
    resampler: Option<StreamResampler>,
    lengths: Lengths,
    max_seconds: u64,
    mono: Vec<f32>,
    done: bool,
}

impl Stream16k {
    pub fn new(source: Source, max_seconds: u64) -> Stream16k {
        Stream16k {
            source,
            resampler: None,
            lengths: Lengths::default(),
            max_seconds,
            mono: Vec::new(),
            done: false,
        }
    }

    pub fn source(&self) -> &Source {
        &self.source
    }

    /// What has been decoded so far (all of it once [`Stream16k::pull`]
    /// has returned false).
    pub fn lengths(&self) -> &Lengths {
        &self.lengths
    }

    /// Appends the next piece of 16 kHz audio to `out` (possibly nothing);
    /// false once the stream has ended and everything is out.
    pub fn pull(&mut self, out: &mut Vec<f32>) -> Result<bool, AudioError> {
        if self.done {
            return Ok(false);
        }
        let start = out.len();
        self.mono.clear();
        match self.source.next_mono(&mut self.mono)? {
            Some(rate) => {
                self.lengths.add(rate, self.mono.len() as u64);
                self.lengths.check(self.max_seconds)?;
                if !self.mono.is_empty() {
                    if self.resampler.as_ref().map(|r| r.from_rate()) != Some(rate) {
                        if let Some(previous) = self.resampler.take() {
                            previous.finish(out);
                        }
                        self.resampler = Some(
                            StreamResampler::new(rate, TARGET_RATE)
                                .map_err(|e| AudioError::UnsupportedCodec(e.to_string()))?,
                        );
                    }
                    if let Some(r) = self.resampler.as_mut() {
                        r.push(&self.mono, out);
                    }
                }
            }
            None => {
                self.done = true;
                if let Some(r) = self.resampler.take() {
                    r.finish(out);
                }
                self.source.verdict()?;
            }
        }
        for s in &mut out[start..] {
            *s = s.clamp(-1.0, 1.0);
        }
        Ok(!self.done || out.len() > start)
    }
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
    fn length_limit() {
        assert!(check_length(16_000 * 60, 16_000, 60).is_ok());
        assert_eq!(
            check_length(16_000 * 60 + 1, 16_000, 60),
            Err(AudioError::TooLong { max_seconds: 60 })
        );
        let mut l = Lengths::default();
        l.add(44_100, 44_100 * 60);
        assert!(l.check(60).is_ok());
        l.add(44_100, 1);
        assert_eq!(l.check(60), Err(AudioError::TooLong { max_seconds: 60 }));
    }

    #[test]
    fn lengths_round_up_per_rate_run() {
        let mut l = Lengths::default();
        l.add(44_100, 44_100);
        l.add(44_100, 1);
        // One run: 1 s and a fraction of a millisecond, rounded up.
        assert_eq!(l.duration_ms(), 1001);
        assert_eq!(l.target_samples(), 16_000);
        // A rate change mid-file is a second run, resampled on its own.
        l.add(8_000, 8_000);
        assert_eq!(l.duration_ms(), 2001);
        assert_eq!(l.target_samples(), 32_000);
        assert_eq!(l.frames(), 44_101 + 8_000);
        assert_eq!(l.last_rate(), 8_000);
        assert!(l.check(2).is_err() && l.check(3).is_ok());
    }

    #[test]
    fn tally_verdicts() {
        let mut t = Tally::default();
        assert!(
            t.verdict().is_ok(),
            "nothing decoded is no samples, not damage"
        );
        t.damaged("bad frame");
        assert_eq!(t.verdict(), Err(AudioError::Corrupt("bad frame".into())));
        t.good = 1;
        assert!(t.verdict().is_ok(), "half damaged is still worth it");
        t.damaged("bad frame");
        assert!(matches!(t.verdict(), Err(AudioError::Corrupt(m)) if m.starts_with("2 of 3")));
    }
}
