//! Opus tracks (ogg or webm), decoded with libopus: symphonia demuxes them
//! but has no Opus decoder.

use super::stream::push_downmixed;
use super::AudioError;
use symphonia::core::codecs::CodecParameters;

/// Opus always decodes at 48 kHz.
pub(super) const OPUS_RATE: u32 = 48_000;
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

/// One Opus track's decoder, fed packet by packet.
pub(super) struct OpusTrack {
    decoder: opus::Decoder,
    channels: usize,
    frame: Vec<f32>,
    /// Frames of the encoder's look-ahead still to drop: they are not part
    /// of the recording.
    skip: usize,
}

impl OpusTrack {
    pub(super) fn new(params: &CodecParameters) -> Result<OpusTrack, AudioError> {
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
        let decoder = opus::Decoder::new(OPUS_RATE, layout)
            .map_err(|e| AudioError::Corrupt(format!("opus decoder: {e}")))?;
        Ok(OpusTrack {
            decoder,
            channels,
            frame: vec![0f32; MAX_FRAME * channels],
            skip: pre_skip,
        })
    }

    pub(super) fn channels(&self) -> usize {
        self.channels
    }

    /// Decodes one packet, appending its mono frames to `out`; an error is
    /// a damaged packet.
    pub(super) fn decode(&mut self, packet: &[u8], out: &mut Vec<f32>) -> Result<(), String> {
        let n = self
            .decoder
            .decode_float(packet, &mut self.frame, false)
            .map_err(|e| e.to_string())?;
        let skip = self.skip.min(n);
        self.skip -= skip;
        push_downmixed(
            out,
            &self.frame[skip * self.channels..n * self.channels],
            self.channels,
        );
        Ok(())
    }
}
