//! The audio side of one realtime session, without I/O and without the
//! model: binary frames in (checked and paced), the raw bytes kept for
//! storage, 16 kHz audio for Whisper, one VAD decision per 30 ms, and the
//! streaming policy's decisions out. The server decodes
//! [`SessionAudio::window`] when asked and hands the words back to
//! [`SessionAudio::apply`].

use super::policy::{Action, Outcome, PolicySettings, StreamPolicy, Word};
use crate::asr::vad::{FRAME, RATE};
use crate::audio::resample::StreamResampler;
use s2t_core::realtime::{decode_frame, ErrorCode, Pacing, ProtocolError, Start};
use webrtc_vad::{SampleRate, Vad, VadMode};

/// webrtc-vad's state, owned by one session.
struct OwnedVad(Vad);

// SAFETY: a `Vad` is a heap-allocated C struct that only its owner's
// `&mut self` calls touch; it has no thread affinity, so moving the owner
// to another thread is sound. It is never shared (not Sync).
unsafe impl Send for OwnedVad {}

pub struct SessionAudio {
    start: Start,
    pacing: Pacing,
    resampler: Option<StreamResampler>,
    vad: OwnedVad,
    /// 16 kHz samples not yet a whole VAD frame.
    pending: Vec<f32>,
    /// The 16 kHz audio from the policy's buffer start on.
    buffer: Vec<f32>,
    /// Client bytes not yet stored.
    unsaved: Vec<u8>,
    policy: StreamPolicy,
    scratch: Vec<f32>,
    /// The strongest decode asked for and not yet run.
    due: Action,
    /// A speculative final's words (window-relative), the buffer start and
    /// the samples it decoded.
    speculation: Option<(Vec<Word>, i64, usize)>,
}

fn ms_to_samples(ms: i64) -> usize {
    (ms.max(0) as usize) * RATE / 1000
}

impl SessionAudio {
    /// A session in `start`'s format; `offset_ms` is where its timeline
    /// begins (the audio already stored, on resume).
    pub fn new(
        start: Start,
        settings: PolicySettings,
        offset_ms: i64,
    ) -> Result<SessionAudio, ProtocolError> {
        let resampler = StreamResampler::new(start.sample_rate, RATE as u32)
            .map_err(|e| ProtocolError::new(ErrorCode::UnsupportedFormat, e.to_string()))?;
        Ok(SessionAudio {
            pacing: Pacing::new(start.sample_rate),
            resampler: Some(resampler),
            vad: OwnedVad(Vad::new_with_rate_and_mode(
                SampleRate::Rate16kHz,
                VadMode::Aggressive,
            )),
            pending: Vec::new(),
            buffer: Vec::new(),
            unsaved: Vec::new(),
            policy: StreamPolicy::new(settings, (FRAME * 1000 / RATE) as i64)
                .starting_at(offset_ms),
            scratch: Vec::new(),
            due: Action::Nothing,
            speculation: None,
            start,
        })
    }

    pub fn start(&self) -> &Start {
        &self.start
    }

    /// Ms of audio received in this connection.
    pub fn received_ms(&self) -> u64 {
        self.pacing.audio_ms()
    }

    /// One binary frame, `now_ms` after the session began.
    pub fn on_frame(&mut self, bytes: &[u8], now_ms: u64) -> Result<(), ProtocolError> {
        self.scratch.clear();
        decode_frame(self.start.encoding, bytes, &mut self.scratch)?;
        self.pacing.on_audio(self.scratch.len(), now_ms)?;
        self.unsaved.extend_from_slice(bytes);
        let mut out = Vec::with_capacity(self.scratch.len());
        if let Some(r) = self.resampler.as_mut() {
            r.push(&self.scratch, &mut out);
        }
        self.feed16(&out);
        Ok(())
    }

    /// A text message arrived (it keeps the session from going idle).
    pub fn on_message(&mut self, now_ms: u64) {
        self.pacing.on_message(now_ms);
    }

    /// The error to close with if the client went silent.
    pub fn idle(&self, now_ms: u64) -> Option<ProtocolError> {
        self.pacing.idle(now_ms)
    }

    fn feed16(&mut self, samples: &[f32]) {
        self.pending.extend_from_slice(samples);
        let whole = self.pending.len() / FRAME * FRAME;
        let mut pcm = [0i16; FRAME];
        for f in 0..whole / FRAME {
            let frame = &self.pending[f * FRAME..(f + 1) * FRAME];
            for (dst, src) in pcm.iter_mut().zip(frame) {
                *dst = (src.clamp(-1.0, 1.0) * 32767.0) as i16;
            }
            let voiced = self.vad.0.is_voice_segment(&pcm).unwrap_or(false);
            self.buffer.extend_from_slice(frame);
            match self.policy.on_frame(voiced) {
                Action::DropSilence(ms) => self.drop_front(ms),
                Action::Nothing => {}
                a => self.due = strongest(self.due, a),
            }
        }
        self.pending.drain(..whole);
    }

    fn drop_front(&mut self, ms: i64) {
        let n = ms_to_samples(ms).min(self.buffer.len());
        self.buffer.drain(..n);
        self.policy.dropped(n as i64 * 1000 / RATE as i64);
    }

    /// The decode due now, if any (taking it clears it).
    pub fn take_due(&mut self) -> Option<Action> {
        let due = std::mem::replace(&mut self.due, Action::Nothing);
        match due {
            Action::Partial if !self.start.interim => None,
            Action::Nothing | Action::DropSilence(_) => None,
            a => Some(a),
        }
    }

    /// The audio a decode for `action` covers: the buffer (16 kHz, from
    /// [`Self::window_start_ms`]), for a final at the end of speech only up
    /// to where its utterance ended.
    pub fn window(&self, action: Action) -> &[f32] {
        let n = ms_to_samples(self.policy.window_ms(action)).min(self.buffer.len());
        &self.buffer[..n]
    }

    pub fn window_start_ms(&self) -> i64 {
        self.policy.buffer_start_ms()
    }

    /// The words a decode of the first `decoded` samples of
    /// [`Self::window`] for `action` gave, with times relative to the
    /// window (audio may have arrived since it was taken); returns what to
    /// send and commit (times on the session's timeline) and trims the
    /// buffer. A final asked for meanwhile stays due if it still is (the
    /// client may have sent its last frame); a partial is asked again by
    /// the next frames.
    pub fn apply(&mut self, action: Action, mut words: Vec<Word>, decoded: usize) -> Outcome {
        let base = self.policy.buffer_start_ms();
        for w in &mut words {
            w.start_ms += base;
            w.end_ms += base;
        }
        self.due = Action::Nothing;
        if action == Action::Speculate {
            // Kept for the final; shown meanwhile as the partial.
            let relative: Vec<Word> = words
                .iter()
                .map(|w| Word {
                    start_ms: w.start_ms - base,
                    end_ms: w.end_ms - base,
                    ..w.clone()
                })
                .collect();
            self.speculation = Some((relative, base, decoded));
            self.due = self.policy.pending();
            return Outcome {
                partial: if self.start.interim {
                    words
                } else {
                    Vec::new()
                },
                ..Outcome::default()
            };
        }
        self.speculation = None;
        let before = self.policy.buffer_start_ms();
        let decoded_ms = (decoded * 1000 / RATE) as i64;
        let outcome = self.policy.on_hypothesis(action, words, decoded_ms);
        let moved = self.policy.buffer_start_ms() - before;
        let n = ms_to_samples(moved).min(self.buffer.len());
        self.buffer.drain(..n);
        self.due = self.policy.pending();
        outcome
    }

    /// For a final at the end of speech: the words of the speculative
    /// decode (window-relative) and the samples the final covers, if the
    /// speculation heard all the speech of the final's window, so no decode
    /// is needed.
    pub fn take_speculation(&mut self, action: Action) -> Option<(Vec<Word>, usize)> {
        let (words, start, decoded) = self.speculation.take()?;
        if action
            != (Action::Final {
                end_of_speech: true,
            })
            || start != self.policy.buffer_start_ms()
        {
            return None;
        }
        let final_ms = self.policy.window_ms(action);
        let speculated_ms = (decoded * 1000 / RATE) as i64;
        self.policy
            .quiet_between(speculated_ms, final_ms)
            .then(|| (words, decoded.max(ms_to_samples(final_ms))))
    }

    /// The client's bytes not stored yet (whole samples), to store with the
    /// next final.
    pub fn take_unsaved(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.unsaved)
    }

    /// `stop`: the resampler's tail goes in, and a final of whatever speech
    /// is left is due.
    pub fn finish(&mut self) -> Option<Action> {
        if let Some(r) = self.resampler.take() {
            let mut out = Vec::new();
            r.finish(&mut out);
            self.feed16(&out);
        }
        self.commit()
    }

    /// `commit`: a final of whatever speech is buffered is due now (the
    /// stream goes on).
    pub fn commit(&mut self) -> Option<Action> {
        let _ = self.take_due();
        if !self.policy.has_speech() || self.buffer.is_empty() {
            return None;
        }
        self.policy.mark_end();
        Some(Action::Final {
            end_of_speech: true,
        })
    }
}

/// Of two decodes asked for, the one that must run: a final over a partial.
fn strongest(a: Action, b: Action) -> Action {
    match (a, b) {
        (Action::Final { end_of_speech: x }, Action::Final { end_of_speech: y }) => Action::Final {
            end_of_speech: x || y,
        },
        (f @ Action::Final { .. }, _) | (_, f @ Action::Final { .. }) => f,
        (Action::Speculate, _) | (_, Action::Speculate) => Action::Speculate,
        (Action::Partial, _) | (_, Action::Partial) => Action::Partial,
        _ => Action::Nothing,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use s2t_core::realtime::{Encoding, StartRequest};

    fn start(rate: u32, encoding: &str, interim: bool) -> Start {
        StartRequest {
            language: Some("en".into()),
            sample_rate: rate,
            encoding: encoding.into(),
            prompt: None,
            interim: Some(interim),
            resume_token: None,
            last_idx: None,
        }
        .check()
        .unwrap()
    }

    /// A 220 Hz tone with a speech-like envelope: webrtc-vad calls it voiced.
    fn tone(rate: u32, ms: u32) -> Vec<f32> {
        let n = (rate * ms / 1000) as usize;
        (0..n)
            .map(|i| {
                let t = i as f32 / rate as f32;
                0.5 * (2.0 * std::f32::consts::PI * 220.0 * t).sin()
                    * (0.6 + 0.4 * (2.0 * std::f32::consts::PI * 4.0 * t).sin())
            })
            .collect()
    }

    fn s16(samples: &[f32]) -> Vec<u8> {
        samples
            .iter()
            .flat_map(|s| ((s * 32767.0) as i16).to_le_bytes())
            .collect()
    }

    /// Stream `samples` in 100 ms frames at real-time pace; the decodes
    /// asked for, answered with no words.
    fn stream(s: &mut SessionAudio, samples: &[f32], rate: u32, t0: u64) -> Vec<Action> {
        let mut asked = Vec::new();
        for (i, chunk) in samples.chunks(rate as usize / 10).enumerate() {
            s.on_frame(&s16(chunk), t0 + i as u64 * 100).unwrap();
            if let Some(a) = s.take_due() {
                asked.push(a);
                let n = s.window(a).len();
                s.apply(a, Vec::new(), n);
            }
        }
        asked
    }

    #[test]
    fn speech_then_a_pause_asks_for_partials_then_a_final_at_48_khz() {
        let rate = 48_000;
        let mut s = SessionAudio::new(start(rate, "pcm_s16le", true), PolicySettings::default(), 0)
            .unwrap();
        // Silence is dropped as it comes.
        let asked = stream(&mut s, &vec![0.0; rate as usize * 5], rate, 0);
        assert!(asked.is_empty());
        assert!(
            s.window(Action::Partial).len() < RATE,
            "{} samples kept of 5 s of silence",
            s.window(Action::Partial).len()
        );
        let mut audio = tone(rate, 2000);
        audio.extend(vec![0.0; rate as usize]);
        let asked = stream(&mut s, &audio, rate, 5000);
        assert!(asked.contains(&Action::Partial), "{asked:?}");
        assert_eq!(
            asked.last(),
            Some(&Action::Final {
                end_of_speech: true
            }),
            "{asked:?}"
        );
        // The raw bytes are kept for storage, whole samples.
        let raw = s.take_unsaved();
        assert_eq!(raw.len(), 8 * rate as usize * 2);
        assert!(s.take_unsaved().is_empty());
        assert_eq!(s.received_ms(), 8000);
    }

    #[test]
    fn without_interim_only_finals_are_asked_and_stop_flushes_the_last_words() {
        let rate = 16_000;
        let mut s = SessionAudio::new(
            start(rate, "pcm_s16le", false),
            PolicySettings::default(),
            0,
        )
        .unwrap();
        let asked = stream(&mut s, &tone(rate, 1500), rate, 0);
        assert!(
            asked.is_empty(),
            "no partials, no final before the pause: {asked:?}"
        );
        assert!(!s.window(Action::Partial).is_empty());
        assert_eq!(
            s.finish(),
            Some(Action::Final {
                end_of_speech: true
            })
        );
        // The window is on the session timeline: words come back shifted.
        let start_ms = s.window_start_ms();
        let eos = Action::Final {
            end_of_speech: true,
        };
        assert_eq!(s.window(eos), s.window(Action::Partial), "all of it");
        let n = s.window(eos).len();
        let o = s.apply(
            Action::Final {
                end_of_speech: true,
            },
            vec![Word {
                text: "hum".into(),
                start_ms: 10,
                end_ms: 900,
                probability: 0.8,
            }],
            n,
        );
        assert_eq!(o.commit[0].start_ms, start_ms + 10);
        assert!(
            s.window(Action::Partial).is_empty(),
            "a final at the end of speech empties the buffer"
        );
    }

    #[test]
    fn a_speculative_decode_that_heard_all_the_speech_is_the_final_and_new_speech_voids_it() {
        let rate = 16_000;
        let word = |t: &str| Word {
            text: t.into(),
            start_ms: 100,
            end_ms: 800,
            probability: 0.9,
        };
        for speech_resumes in [false, true] {
            let mut s =
                SessionAudio::new(start(rate, "pcm_s16le", true), PolicySettings::default(), 0)
                    .unwrap();
            let mut audio = tone(rate, 1500);
            audio.extend(vec![0.0; rate as usize * 2 / 5]);
            let mut speculated = false;
            for (i, chunk) in audio.chunks(rate as usize / 100).enumerate() {
                s.on_frame(&s16(chunk), i as u64 * 10).unwrap();
                match s.take_due() {
                    Some(Action::Speculate) => {
                        let n = s.window(Action::Speculate).len();
                        let o = s.apply(Action::Speculate, vec![word("hum")], n);
                        assert_eq!(o.partial.len(), 1, "shown as the partial");
                        assert!(o.commit.is_empty(), "not committed yet");
                        speculated = true;
                    }
                    Some(a @ Action::Partial) => {
                        let n = s.window(a).len();
                        s.apply(a, Vec::new(), n);
                    }
                    other => assert!(other.is_none(), "{other:?}"),
                }
            }
            assert!(speculated, "a pause of 400 ms asks for the speculation");
            if speech_resumes {
                let t = s.received_ms();
                for (i, chunk) in tone(rate, 300).chunks(160).enumerate() {
                    s.on_frame(&s16(chunk), t + i as u64 * 10).unwrap();
                }
            }
            let eos = Action::Final {
                end_of_speech: true,
            };
            match (speech_resumes, s.take_speculation(eos)) {
                (false, Some((words, decoded))) => {
                    assert_eq!(words[0].start_ms, 100, "window-relative");
                    let o = s.apply(eos, words, decoded);
                    assert_eq!(o.commit.len(), 1);
                }
                (true, None) => {}
                (resumed, got) => panic!("speech resumed: {resumed}, speculation {got:?}"),
            }
            assert!(s.take_speculation(eos).is_none(), "used once");
        }
    }

    #[test]
    fn a_final_asked_for_while_a_decode_ran_stays_due_after_the_last_frame() {
        let rate = 16_000;
        let mut s = SessionAudio::new(start(rate, "pcm_s16le", true), PolicySettings::default(), 0)
            .unwrap();
        let mut audio = tone(rate, 1500);
        audio.extend(vec![0.0; rate as usize]);
        let mut in_flight = None;
        for (i, chunk) in audio.chunks(rate as usize / 10).enumerate() {
            s.on_frame(&s16(chunk), i as u64 * 100).unwrap();
            // The first decode asked for runs until the audio has ended.
            if in_flight.is_none() {
                in_flight = s.take_due().map(|a| (a, s.window(a).len()));
            }
        }
        let (action, n) = in_flight.expect("a decode was asked for");
        assert_ne!(
            action,
            Action::Final {
                end_of_speech: true
            }
        );
        // The client has sent everything; the decode comes back.
        s.apply(action, Vec::new(), n);
        assert_eq!(
            s.take_due(),
            Some(Action::Final {
                end_of_speech: true
            }),
            "the pause's final is still due"
        );
    }

    #[test]
    fn a_final_waiting_for_the_pool_while_the_next_sentence_starts_keeps_to_its_own_utterance() {
        // Under load a decode comes back late: the pause has ended the
        // utterance and the next sentence has begun. The final is still due
        // and covers only its utterance; the new speech waits for its own.
        let rate = 16_000;
        let eos = Action::Final {
            end_of_speech: true,
        };
        for in_flight_kind in [Action::Speculate, Action::Partial] {
            let mut s =
                SessionAudio::new(start(rate, "pcm_s16le", true), PolicySettings::default(), 0)
                    .unwrap();
            let mut audio = tone(rate, 1500);
            audio.extend(vec![0.0; rate as usize * 6 / 10]);
            audio.extend(tone(rate, 400));
            let mut in_flight = None;
            let mut t = 0;
            for chunk in audio.chunks(rate as usize / 100) {
                s.on_frame(&s16(chunk), t).unwrap();
                t += 10;
                // One decode at a time: none is taken while one runs.
                if in_flight.is_some() {
                    continue;
                }
                match s.take_due() {
                    Some(a) if a == in_flight_kind => in_flight = Some(s.window(a).len()),
                    Some(a) => {
                        let n = s.window(a).len();
                        s.apply(a, Vec::new(), n);
                    }
                    None => {}
                }
            }
            let n = in_flight.unwrap_or_else(|| panic!("no {in_flight_kind:?} was asked for"));
            let word = Word {
                text: "hum".into(),
                start_ms: 100,
                end_ms: 1400,
                probability: 0.9,
            };
            s.apply(in_flight_kind, vec![word.clone()], n);
            assert_eq!(
                s.take_due(),
                Some(eos),
                "{in_flight_kind:?}: the final survives the new speech"
            );
            let start_ms = s.window_start_ms();
            let window = s.window(eos).len();
            let whole = s.window(Action::Partial).len();
            let utterance_ms = (window * 1000 / RATE) as i64;
            assert!(
                (1500 + 480..=1500 + 600).contains(&(start_ms + utterance_ms)),
                "{in_flight_kind:?}: the final's window ends in the pause, at {} ms",
                start_ms + utterance_ms
            );
            assert!(
                whole >= window + RATE * 3 / 10,
                "the new speech is after it"
            );
            let (words, decoded) = match s.take_speculation(eos) {
                Some(adopted) => {
                    assert_eq!(in_flight_kind, Action::Speculate);
                    adopted
                }
                None => {
                    assert_eq!(
                        in_flight_kind,
                        Action::Partial,
                        "the speculation heard it all"
                    );
                    (vec![word], window)
                }
            };
            assert_eq!(decoded, window, "the final ends where its utterance ended");
            let o = s.apply(eos, words, decoded);
            assert_eq!(o.commit.len(), 1);
            assert_eq!(
                s.window(Action::Partial).len(),
                whole - window,
                "the next sentence stays in the buffer"
            );
            assert_eq!(s.take_due(), None, "and is not final yet");
        }
    }

    #[test]
    fn bad_frames_and_floods_are_refused_with_their_codes() {
        let mut s =
            SessionAudio::new(start(16_000, "f32le", true), PolicySettings::default(), 0).unwrap();
        assert_eq!(s.start().encoding, Encoding::F32le);
        assert_eq!(
            s.on_frame(&[0u8; 6], 0).unwrap_err().code,
            ErrorCode::BadFrame
        );
        assert!(s.take_unsaved().is_empty(), "a refused frame is not kept");
        // 8 s of audio at once is more than the 5 s burst.
        let eight = vec![0u8; 16_000 * 4 * 8];
        let mut err = None;
        for piece in eight.chunks(200_000) {
            if let Err(e) = s.on_frame(piece, 10) {
                err = Some(e.code);
                break;
            }
        }
        assert_eq!(err, Some(ErrorCode::TooFast));
        assert_eq!(s.idle(40_000).map(|e| e.code), Some(ErrorCode::IdleTimeout));
    }
}
