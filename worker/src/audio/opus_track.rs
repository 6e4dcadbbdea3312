//! Opus tracks (ogg or webm), decoded with libopus: symphonia demuxes them
//! but has no Opus decoder.

use super::{check_length, next_packet, push_downmixed, AudioError, Raw, Tally};
use symphonia::core::codecs::CodecParameters;
use symphonia::core::formats::FormatReader;

/// Opus always decodes at 48 kHz.
const OPUS_RATE: u32 = 48_000;
/// The longest Opus frame: 120 ms at 48 kHz.
const MAX_FRAME: usize = 5_760;

/// Channel count and pre-skip from the OpusHead identification header.
fn opus_head(extra: Option<&[u8]>) -> (usize, usize) {
    match extra {
        Some(h) if h.len() >= 12 && &h[..8] == b"OpusHead" => (
            usize::from(h[9]).max(1),
            usize::from(u16::from_le_bytes([h[10], h[11]])),
        ),
        _ => (0, 0),
    }
}

pub(super) fn decode(
    format: &mut dyn FormatReader,
    track_id: u32,
    params: &CodecParameters,
    max_seconds: u64,
) -> Result<Raw, AudioError> {
    let (head_channels, pre_skip) = opus_head(params.extra_data.as_deref());
    let channels = params
        .channels
        .map(|c| c.count())
        .filter(|c| *c > 0)
        .unwrap_or(head_channels.max(1));
    let layout = match channels {
        1 => opus::Channels::Mono,
        2 => opus::Channels::Stereo,
        n => {
            return Err(AudioError::UnsupportedCodec(format!(
                "opus with {n} channels"
            )))
        }
    };
    let mut decoder = opus::Decoder::new(OPUS_RATE, layout)
        .map_err(|e| AudioError::Corrupt(format!("opus decoder: {e}")))?;
    let mut frame = vec![0f32; MAX_FRAME * channels];
    let mut mono = Vec::new();
    let mut tally = Tally::default();
    while let Some(packet) = next_packet(format, track_id, &mut tally) {
        match decoder.decode_float(&packet.data, &mut frame, false) {
            Ok(n) => {
                push_downmixed(&mut mono, &frame[..n * channels], channels);
                tally.good += 1;
                check_length(mono.len(), OPUS_RATE, max_seconds)?;
            }
            Err(e) => tally.damaged(e),
        }
    }
    tally.verdict()?;
    if tally.good == 0 {
        return Err(AudioError::NoSamples);
    }
    // The encoder's look-ahead: not part of the recording.
    mono.drain(..pre_skip.min(mono.len()));
    Ok(Raw {
        mono,
        rate: OPUS_RATE,
        channels,
        codec: "opus".into(),
    })
}
