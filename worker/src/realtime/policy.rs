//! The streaming policy of a realtime session, free of I/O and of the
//! model: when to decode, what of a hypothesis is final, what is partial,
//! and how much audio can be dropped from the buffer.
//!
//! The session feeds it one VAD decision per 30 ms frame of 16 kHz audio.
//! While speech goes on it asks for a partial decode about every
//! [`PolicySettings::partial_every_ms`] of speech; at the end of speech
//! (a pause of [`PolicySettings::end_of_speech_ms`]) it asks for a final
//! decode of the whole utterance. An utterance that reaches
//! [`PolicySettings::max_utterance_ms`] without a pause is committed up to
//! what two consecutive hypotheses agree on (LocalAgreement-2), so the
//! buffer, and with it the cost of each decode, stays bounded however long
//! someone speaks. Committed audio is trimmed from the buffer; leading
//! silence is never kept.

/// A word on the session's timeline (ms since the session's first sample).
#[derive(Debug, Clone, PartialEq)]
pub struct Word {
    pub text: String,
    pub start_ms: i64,
    pub end_ms: i64,
    pub probability: f32,
}

impl From<crate::asr::Word> for Word {
    fn from(w: crate::asr::Word) -> Word {
        Word {
            text: w.word,
            start_ms: w.start_ms,
            end_ms: w.end_ms,
            probability: w.probability,
        }
    }
}

#[derive(Debug, Clone, Copy)]
pub struct PolicySettings {
    /// Speech between partial decodes.
    pub partial_every_ms: i64,
    /// A pause this long ends the utterance.
    pub end_of_speech_ms: i64,
    /// The longest utterance decoded as one.
    pub max_utterance_ms: i64,
    /// Silence kept before speech (so the first word is not clipped).
    pub lead_in_ms: i64,
    /// A pause this long starts the final's decode early (speculatively):
    /// if the pause lasts until the end of speech and no speech came after
    /// the decoded audio, its words are the final, without waiting for
    /// another decode.
    pub speculate_after_ms: i64,
}

impl Default for PolicySettings {
    fn default() -> Self {
        PolicySettings {
            partial_every_ms: 700,
            end_of_speech_ms: 480,
            max_utterance_ms: 12_000,
            lead_in_ms: 240,
            speculate_after_ms: 240,
        }
    }
}

/// What the session should do after a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Nothing,
    /// Decode the buffer for a partial.
    Partial,
    /// Decode the buffer and commit: at the end of speech (`end_of_speech`)
    /// all of it, at the length limit what is stable.
    Final {
        end_of_speech: bool,
    },
    /// A pause began: decode the buffer as a final would be, to be used
    /// as the final if the pause lasts (see [`StreamPolicy::quiet_between`]).
    Speculate,
    /// Drop this many ms of silence from the front of the buffer.
    DropSilence(i64),
}

/// What to do with one hypothesis.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Outcome {
    /// Words to commit as a final (empty: nothing to commit).
    pub commit: Vec<Word>,
    /// Words to show as the partial (the stable prefix first).
    pub partial: Vec<Word>,
    /// How many of `partial`'s words two hypotheses agreed on.
    pub stable: usize,
    /// Ms to drop from the front of the buffer.
    pub trim_ms: i64,
}

#[derive(Debug)]
pub struct StreamPolicy {
    settings: PolicySettings,
    frame_ms: i64,
    /// Session time at which the buffer starts.
    buffer_start_ms: i64,
    /// Ms of audio in the buffer.
    buffered_ms: i64,
    speech_seen: bool,
    silence_run_ms: i64,
    speech_since_decode_ms: i64,
    /// The previous hypothesis' words not yet committed.
    previous: Vec<Word>,
    /// The VAD decision of each frame in the buffer, oldest first: a decode
    /// runs while audio keeps coming, so what is left after a commit is
    /// judged again from these.
    voiced: std::collections::VecDeque<bool>,
    /// Where the utterance awaiting its final ends (session timeline): the
    /// buffer's end when the pause reached the end of speech, or when the
    /// client asked for a commit. Speech that comes after it, while the
    /// final waits for the decode pool, belongs to the next utterance.
    utterance_end_ms: Option<i64>,
}

/// Words compared for agreement: case and punctuation do not matter.
fn key(word: &str) -> String {
    word.chars()
        .filter(|c| c.is_alphanumeric())
        .flat_map(char::to_lowercase)
        .collect()
}

/// How many leading words two hypotheses share.
pub fn agreed_prefix(a: &[Word], b: &[Word]) -> usize {
    a.iter()
        .zip(b)
        .take_while(|(x, y)| key(&x.text) == key(&y.text))
        .count()
}

/// Cut a tail that repeats one phrase (1 to 4 words) three or more times,
/// keeping its first occurrence: the decoder looping on an utterance.
pub fn cut_repetition(words: &mut Vec<Word>) {
    let keys: Vec<String> = words.iter().map(|w| key(&w.text)).collect();
    for n in 1..=4usize {
        for start in 0..keys.len() {
            let mut reps = 1;
            while start + (reps + 1) * n <= keys.len()
                && keys[start + reps * n..start + (reps + 1) * n] == keys[start..start + n]
            {
                reps += 1;
            }
            if reps >= 3 && keys[start..start + n].iter().any(|k| !k.is_empty()) {
                words.truncate(start + n);
                return;
            }
        }
    }
}

impl StreamPolicy {
    pub fn new(settings: PolicySettings, frame_ms: i64) -> StreamPolicy {
        StreamPolicy {
            settings,
            frame_ms,
            buffer_start_ms: 0,
            buffered_ms: 0,
            speech_seen: false,
            silence_run_ms: 0,
            speech_since_decode_ms: 0,
            previous: Vec::new(),
            voiced: std::collections::VecDeque::new(),
            utterance_end_ms: None,
        }
    }

    /// Start the timeline at `ms` (a resumed session continues there).
    pub fn starting_at(mut self, ms: i64) -> StreamPolicy {
        self.buffer_start_ms = ms;
        self
    }

    pub fn buffer_start_ms(&self) -> i64 {
        self.buffer_start_ms
    }

    pub fn buffered_ms(&self) -> i64 {
        self.buffered_ms
    }

    /// Whether the buffer holds speech not yet committed.
    pub fn has_speech(&self) -> bool {
        self.speech_seen
    }

    /// One more frame, voiced or not.
    pub fn on_frame(&mut self, voiced: bool) -> Action {
        let s = self.settings;
        self.buffered_ms += self.frame_ms;
        self.voiced.push_back(voiced);
        if voiced {
            self.speech_seen = true;
            self.silence_run_ms = 0;
            self.speech_since_decode_ms += self.frame_ms;
        } else {
            self.silence_run_ms += self.frame_ms;
        }
        if !self.speech_seen {
            // Only silence so far: keep a lead-in, drop the rest.
            let extra = self.buffered_ms - s.lead_in_ms;
            return if extra >= s.lead_in_ms {
                Action::DropSilence(extra)
            } else {
                Action::Nothing
            };
        }
        if self.silence_run_ms >= s.end_of_speech_ms && self.utterance_end_ms.is_none() {
            self.utterance_end_ms = Some(self.end_ms());
        }
        if self.utterance_end_ms.is_some() {
            return Action::Final {
                end_of_speech: true,
            };
        }
        if self.buffered_ms >= s.max_utterance_ms {
            return Action::Final {
                end_of_speech: false,
            };
        }
        if !voiced
            && self.silence_run_ms >= s.speculate_after_ms
            && self.silence_run_ms - self.frame_ms < s.speculate_after_ms
        {
            return Action::Speculate;
        }
        if voiced && self.speech_since_decode_ms >= s.partial_every_ms {
            return Action::Partial;
        }
        Action::Nothing
    }

    /// The final the buffer calls for now (end of speech or full), without
    /// a new frame: a decode that ran while the last frames came must not
    /// lose the final they asked for.
    pub fn pending(&self) -> Action {
        if self.utterance_end_ms.is_some() {
            Action::Final {
                end_of_speech: true,
            }
        } else if self.speech_seen && self.buffered_ms >= self.settings.max_utterance_ms {
            Action::Final {
                end_of_speech: false,
            }
        } else {
            Action::Nothing
        }
    }

    /// The session timeline's ms at the buffer's end.
    fn end_ms(&self) -> i64 {
        self.buffer_start_ms + self.buffered_ms
    }

    /// The client asked for a commit: the utterance awaiting its final ends
    /// here (a no-op without speech).
    pub fn mark_end(&mut self) {
        if self.speech_seen {
            self.utterance_end_ms = Some(self.end_ms());
        }
    }

    /// The ms of the buffer a decode for `action` covers: a final at the end
    /// of speech stops where its utterance ended, so speech that came after
    /// (the next sentence, while the final waited) is not cut into it.
    pub fn window_ms(&self, action: Action) -> i64 {
        match (action, self.utterance_end_ms) {
            (
                Action::Final {
                    end_of_speech: true,
                },
                Some(end),
            ) => (end - self.buffer_start_ms).clamp(0, self.buffered_ms),
            _ => self.buffered_ms,
        }
    }

    /// Whether no frame between `a` and `b` ms into the buffer (either
    /// order) was voiced: a decode of the first `a` ms heard all the speech
    /// of the first `b`.
    pub fn quiet_between(&self, a: i64, b: i64) -> bool {
        let frame = self.frame_ms.max(1);
        let (from, to) = (a.min(b) / frame, a.max(b) / frame);
        self.voiced
            .iter()
            .skip(from as usize)
            .take((to - from) as usize)
            .all(|v| !*v)
    }

    /// The session dropped `ms` from the front of the buffer.
    pub fn dropped(&mut self, ms: i64) {
        let ms = ms.clamp(0, self.buffered_ms);
        self.buffer_start_ms += ms;
        self.buffered_ms -= ms;
        let keep = (self.buffered_ms / self.frame_ms.max(1)) as usize;
        while self.voiced.len() > keep {
            self.voiced.pop_front();
        }
        if self
            .utterance_end_ms
            .is_some_and(|end| end <= self.buffer_start_ms)
        {
            self.utterance_end_ms = None;
        }
    }

    /// A decode of the first `decoded_ms` of the buffer was asked for with
    /// `action` and came back with `words` (session timeline); frames that
    /// arrived while it ran are still in the buffer. Returns what to send
    /// and commit; the caller then drops `trim_ms` (already accounted here).
    pub fn on_hypothesis(
        &mut self,
        action: Action,
        mut words: Vec<Word>,
        decoded_ms: i64,
    ) -> Outcome {
        cut_repetition(&mut words);
        self.speech_since_decode_ms = 0;
        let decoded_ms = decoded_ms.clamp(0, self.buffered_ms);
        let outcome = match action {
            Action::Final {
                end_of_speech: true,
            } => Outcome {
                commit: words,
                trim_ms: decoded_ms,
                ..Outcome::default()
            },
            Action::Final {
                end_of_speech: false,
            } => {
                let mut agreed = agreed_prefix(&self.previous, &words);
                if agreed == 0 && words.len() > 1 {
                    // Nothing stable after a whole utterance: commit all
                    // but the last word, which may still be growing.
                    agreed = words.len() - 1;
                }
                let rest = words.split_off(agreed.min(words.len()));
                let trim_ms = match words.last() {
                    Some(last) => (last.end_ms - self.buffer_start_ms).clamp(0, decoded_ms),
                    // No words at all in a full buffer: it was not speech.
                    None => decoded_ms,
                };
                Outcome {
                    commit: words,
                    stable: 0,
                    partial: rest,
                    trim_ms,
                }
            }
            _ => {
                let stable = agreed_prefix(&self.previous, &words);
                Outcome {
                    commit: Vec::new(),
                    stable,
                    partial: words,
                    trim_ms: 0,
                }
            }
        };
        self.previous = outcome.partial.clone();
        if outcome.trim_ms > 0 {
            self.dropped(outcome.trim_ms);
        }
        if matches!(
            action,
            Action::Final {
                end_of_speech: true
            }
        ) {
            self.previous.clear();
            // What came in during the decode decides what the buffer is now.
            self.speech_seen = self.voiced.iter().any(|v| *v);
            let trailing = self.voiced.iter().rev().take_while(|v| !**v).count();
            self.silence_run_ms = if self.speech_seen {
                trailing as i64 * self.frame_ms
            } else {
                0
            };
            self.utterance_end_ms = (self.speech_seen
                && self.silence_run_ms >= self.settings.end_of_speech_ms)
                .then(|| self.end_ms());
        }
        outcome
    }
}

/// A decode waiting for the pool.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Pending {
    pub session: u64,
    pub is_final: bool,
    /// How far behind real time the session is, in ms.
    pub lag_ms: i64,
    /// When it was queued (any monotonic ms).
    pub queued_ms: i64,
}

/// The next decode to run: finals first, oldest first (they are never
/// dropped); then the partial of the session furthest behind. Partials of
/// sessions more than `shed_ms` behind are shed: returned in the second
/// value so the caller can drop them (their next final carries the text).
pub fn pick_next(queue: &[Pending], shed_ms: i64) -> (Option<usize>, Vec<usize>) {
    let shed: Vec<usize> = queue
        .iter()
        .enumerate()
        .filter(|(_, p)| !p.is_final && p.lag_ms > shed_ms)
        .map(|(i, _)| i)
        .collect();
    let final_first = queue
        .iter()
        .enumerate()
        .filter(|(_, p)| p.is_final)
        .min_by_key(|(_, p)| p.queued_ms)
        .map(|(i, _)| i);
    let next = final_first.or_else(|| {
        queue
            .iter()
            .enumerate()
            .filter(|(i, p)| !p.is_final && !shed.contains(i))
            .max_by_key(|(_, p)| (p.lag_ms, -p.queued_ms))
            .map(|(i, _)| i)
    });
    (next, shed)
}

/// A decode that is running, as [`preempt`] sees it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Running {
    /// A partial: the only kind that may be cancelled.
    pub partial: bool,
    /// When it started, in ms on any clock shared by the pool.
    pub started_ms: i64,
    /// Already asked to stop (it frees its decoder soon).
    pub cancelled: bool,
}

/// Which running decodes to cancel so that waiting finals start now
/// instead of behind partials: while more finals wait than decoders are
/// free (or about to be, having been cancelled already), cancel the partial
/// that started last, which loses the least work. Finals and speculations
/// are never cancelled; a cancelled partial is answered as shed.
pub fn preempt(waiting_finals: usize, idle: usize, running: &[Running]) -> Vec<usize> {
    let freeing = running.iter().filter(|r| r.cancelled).count();
    let need = waiting_finals.saturating_sub(idle + freeing);
    let mut partials: Vec<usize> = (0..running.len())
        .filter(|&i| running[i].partial && !running[i].cancelled)
        .collect();
    partials.sort_by_key(|&i| std::cmp::Reverse(running[i].started_ms));
    partials.truncate(need);
    partials
}

/// A final or speculation that waited this long for a decoder finds the
/// pool behind.
pub const BEHIND_WAIT_MS: i64 = 500;

/// Whether a final-quality decode (a final or a speculation) that is about
/// to start should be greedy instead of using the configured beam: when the
/// pool is behind, that is when other finals or speculations are still
/// waiting, or this one waited [`BEHIND_WAIT_MS`] or more. A beam of 5
/// decodes about 20 % slower than greedy on tiny.en (README, *Realtime*),
/// and behind a busy decoder every waiting final pays that again; with
/// room, finals keep the beam.
pub fn greedy_when_behind(others_waiting: usize, waited_ms: i64) -> bool {
    others_waiting > 0 || waited_ms >= BEHIND_WAIT_MS
}

#[cfg(test)]
mod tests {
    use super::*;

    const FRAME: i64 = 30;

    fn words(text: &str, start_ms: i64) -> Vec<Word> {
        text.split_whitespace()
            .enumerate()
            .map(|(i, w)| Word {
                text: w.to_string(),
                start_ms: start_ms + i as i64 * 300,
                end_ms: start_ms + i as i64 * 300 + 250,
                probability: 0.9,
            })
            .collect()
    }

    /// A hypothesis of the whole buffer (nothing arrived during the decode).
    fn whole(p: &mut StreamPolicy, action: Action, words: Vec<Word>) -> Outcome {
        let decoded = p.buffered_ms();
        p.on_hypothesis(action, words, decoded)
    }

    fn texts(w: &[Word]) -> Vec<&str> {
        w.iter().map(|w| w.text.as_str()).collect()
    }

    /// Feed a pattern of frames ('#' voiced, '.' silent); the actions in order.
    fn feed(p: &mut StreamPolicy, pattern: &str) -> Vec<(usize, Action)> {
        pattern
            .chars()
            .enumerate()
            .filter_map(|(i, c)| match p.on_frame(c == '#') {
                Action::Nothing => None,
                Action::DropSilence(ms) => {
                    p.dropped(ms);
                    Some((i, Action::DropSilence(ms)))
                }
                a => Some((i, a)),
            })
            .collect()
    }

    #[test]
    fn silence_is_dropped_but_a_lead_in_is_kept() {
        let mut p = StreamPolicy::new(PolicySettings::default(), FRAME);
        let actions = feed(&mut p, &".".repeat(1000));
        assert!(actions
            .iter()
            .all(|(_, a)| matches!(a, Action::DropSilence(_))));
        assert!(p.buffered_ms() < 2 * 240, "{}", p.buffered_ms());
        assert_eq!(p.buffer_start_ms() + p.buffered_ms(), 30_000);
        assert!(!p.has_speech());
    }

    #[test]
    fn partials_come_every_700_ms_of_speech_and_a_pause_ends_the_utterance() {
        let mut p = StreamPolicy::new(PolicySettings::default(), FRAME);
        // 3 s of speech, then 0.6 s of silence.
        let actions = feed(&mut p, &format!("{}{}", "#".repeat(100), ".".repeat(20)));
        let partials = actions
            .iter()
            .filter(|(_, a)| *a == Action::Partial)
            .count();
        // Each partial is answered below, so speech_since_decode resets;
        // without answers one partial is asked per frame after 700 ms.
        assert!(partials >= 1);
        let first_final = actions
            .iter()
            .find(|(_, a)| {
                matches!(
                    a,
                    Action::Final {
                        end_of_speech: true
                    }
                )
            })
            .expect("a final at the pause");
        assert_eq!(
            first_final.0,
            100 + 480 / 30 - 1,
            "480 ms after the last voiced frame"
        );
    }

    #[test]
    fn a_pause_asks_once_for_a_speculative_final_before_the_end_of_speech() {
        let mut p = StreamPolicy::new(PolicySettings::default(), FRAME);
        let actions = feed(&mut p, &format!("{}{}", "#".repeat(40), ".".repeat(20)));
        let speculative: Vec<usize> = actions
            .iter()
            .filter(|(_, a)| *a == Action::Speculate)
            .map(|(i, _)| *i)
            .collect();
        assert_eq!(
            speculative,
            [40 + 240 / 30 - 1],
            "once, 240 ms into the pause"
        );
        let decoded = (40 + 8) * FRAME;
        assert!(
            p.quiet_between(decoded, p.buffered_ms()),
            "only silence after the speculated audio"
        );
        // Speech again: the speculation no longer covers all of it.
        feed(&mut p, "##");
        assert!(!p.quiet_between(decoded, p.buffered_ms()));
        assert!(p.quiet_between(decoded, (40 + 20) * FRAME), "the pause was");
        assert!(p.quiet_between(p.buffered_ms(), p.buffered_ms()));
    }

    #[test]
    fn the_end_of_an_utterance_is_kept_until_its_final_commits() {
        let mut p = StreamPolicy::new(PolicySettings::default(), FRAME);
        feed(&mut p, &"#".repeat(40));
        let eos = Action::Final {
            end_of_speech: true,
        };
        assert_eq!(p.window_ms(eos), p.buffered_ms(), "no end yet: all of it");
        // The pause ends the utterance; the final waits while the next
        // sentence begins.
        feed(&mut p, &".".repeat(20));
        let end = (40 + 480 / FRAME) * FRAME;
        let actions = feed(&mut p, &"#".repeat(10));
        assert!(actions.iter().all(|(_, a)| *a == eos), "{actions:?}");
        assert_eq!(p.pending(), eos);
        assert_eq!(p.window_ms(eos), end, "the final stops in the pause");
        assert_eq!(p.window_ms(Action::Partial), p.buffered_ms());
        let o = p.on_hypothesis(eos, words("one two", 0), end);
        assert_eq!(o.commit.len(), 2);
        assert_eq!(p.buffer_start_ms(), end);
        assert_eq!(p.pending(), Action::Nothing, "the new speech is not final");
        assert!(p.has_speech());
        // A commit ends the utterance where the buffer ends.
        p.mark_end();
        assert_eq!(p.window_ms(eos), p.buffered_ms());
        assert_eq!(p.pending(), eos);
    }

    #[test]
    fn local_agreement_keeps_the_stable_prefix_and_a_pause_commits_everything() {
        let mut p = StreamPolicy::new(PolicySettings::default(), FRAME);
        feed(&mut p, &"#".repeat(30));
        let o = whole(&mut p, Action::Partial, words("the quick brow", 0));
        assert_eq!((o.stable, o.commit.len()), (0, 0));
        assert_eq!(texts(&o.partial), ["the", "quick", "brow"]);
        let o = whole(&mut p, Action::Partial, words("The quick brown fox", 0));
        assert_eq!(o.stable, 2, "case does not matter, 'brow' became 'brown'");
        let o = whole(
            &mut p,
            Action::Final {
                end_of_speech: true,
            },
            words("The quick brown fox jumps.", 0),
        );
        assert_eq!(texts(&o.commit), ["The", "quick", "brown", "fox", "jumps."]);
        assert_eq!(o.trim_ms, 900, "the whole buffer goes");
        assert_eq!(p.buffered_ms(), 0);
        assert!(!p.has_speech());
        // The next utterance starts fresh: nothing agrees with the last one.
        feed(&mut p, "####");
        let o = whole(&mut p, Action::Partial, words("The quick", 900));
        assert_eq!(o.stable, 0);
    }

    #[test]
    fn a_long_utterance_commits_what_agreed_and_keeps_the_buffer_bounded() {
        let settings = PolicySettings::default();
        let mut p = StreamPolicy::new(settings, FRAME);
        let mut committed = Vec::new();
        let mut longest = 0;
        let script = "one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen seventeen eighteen nineteen twenty twentyone twentytwo twentythree twentyfour twentyfive twentysix twentyseven twentyeight twentynine thirty thirtyone thirtytwo thirtythree thirtyfour thirtyfive thirtysix thirtyseven thirtyeight thirtynine forty";
        let all: Vec<&str> = script.split(' ').collect();
        // Five words per 1.5 s of speech; 40 words take 12 s; speak 60 s.
        for frame in 0..2000 {
            let action = p.on_frame(true);
            longest = longest.max(p.buffered_ms());
            if action == Action::Nothing {
                continue;
            }
            // The hypothesis: the words spoken within the buffer so far,
            // each word 300 ms long on the session timeline.
            let now = (frame + 1) * FRAME;
            let hyp: Vec<Word> = (0..)
                .map(|i: i64| (i, i * 300))
                .take_while(|(_, t)| t + 250 <= now)
                .filter(|(_, t)| *t >= p.buffer_start_ms())
                .map(|(i, t)| Word {
                    text: all[i as usize % all.len()].to_string(),
                    start_ms: t,
                    end_ms: t + 250,
                    probability: 0.9,
                })
                .collect();
            let o = whole(&mut p, action, hyp);
            committed.extend(o.commit);
        }
        // At most one frame over the limit: the frame that reached it.
        assert!(longest < settings.max_utterance_ms + FRAME, "{longest}");
        assert!(committed.len() > 150, "{}", committed.len());
        // Committed words follow each other with no gap and no repeat.
        for pair in committed.windows(2) {
            assert_eq!(pair[1].start_ms, pair[0].start_ms + 300, "{pair:?}");
        }
    }

    #[test]
    fn speech_that_arrives_during_a_final_decode_stays_for_the_next_utterance() {
        let mut p = StreamPolicy::new(PolicySettings::default(), FRAME);
        // Speech, then the pause that asks for the final.
        let asked = feed(&mut p, &format!("{}{}", "#".repeat(40), "_".repeat(16)));
        assert!(asked.iter().any(|(_, a)| matches!(
            a,
            Action::Final {
                end_of_speech: true
            }
        )));
        let decoded = p.buffered_ms();
        let start = p.buffer_start_ms();
        // While the final decodes, the speaker starts again.
        feed(&mut p, &"#".repeat(10));
        let o = p.on_hypothesis(
            Action::Final {
                end_of_speech: true,
            },
            words("one sentence", 0),
            decoded,
        );
        assert_eq!(o.trim_ms, decoded, "only the decoded audio is committed");
        assert_eq!(p.buffer_start_ms(), start + decoded);
        assert_eq!(p.buffered_ms(), 10 * FRAME);
        assert!(p.has_speech(), "the new speech is still pending");
        assert_eq!(p.pending(), Action::Nothing, "it has not paused yet");
        // Its pause finalises it in turn.
        let asked = feed(&mut p, &"_".repeat(16));
        assert!(
            asked.iter().any(|(_, a)| matches!(
                a,
                Action::Final {
                    end_of_speech: true
                }
            )),
            "{asked:?}"
        );
        // And a decode that found only silence leaves nothing pending.
        let decoded = p.buffered_ms();
        whole(
            &mut p,
            Action::Final {
                end_of_speech: true,
            },
            Vec::new(),
        );
        assert!(!p.has_speech());
        assert_eq!(p.buffered_ms(), 0, "{decoded} ms decoded and dropped");
    }

    #[test]
    fn a_looping_hypothesis_is_cut_to_its_first_phrase() {
        let mut w = words("so the budget budget budget budget is", 0);
        cut_repetition(&mut w);
        assert_eq!(texts(&w), ["so", "the", "budget"]);
        let mut w = words("thank you thank you thank you thank you", 0);
        cut_repetition(&mut w);
        assert_eq!(texts(&w), ["thank", "you"]);
        let mut w = words("a b a b c", 0);
        cut_repetition(&mut w);
        assert_eq!(w.len(), 5, "two repeats are speech");
    }

    #[test]
    fn finals_go_first_and_partials_far_behind_are_shed() {
        let q = [
            Pending {
                session: 1,
                is_final: false,
                lag_ms: 200,
                queued_ms: 1,
            },
            Pending {
                session: 2,
                is_final: false,
                lag_ms: 900,
                queued_ms: 2,
            },
            Pending {
                session: 3,
                is_final: true,
                lag_ms: 0,
                queued_ms: 5,
            },
            Pending {
                session: 4,
                is_final: true,
                lag_ms: 5000,
                queued_ms: 3,
            },
            Pending {
                session: 5,
                is_final: false,
                lag_ms: 4000,
                queued_ms: 0,
            },
        ];
        let (next, shed) = pick_next(&q, 3000);
        assert_eq!(next, Some(3), "the oldest final");
        assert_eq!(shed, [4], "a partial 4 s behind is shed, finals never");
        let (next, _) = pick_next(&q[..2], 3000);
        assert_eq!(next, Some(1), "the partial furthest behind");
        assert_eq!(pick_next(&[], 3000), (None, vec![]));
    }

    fn running(partial: bool, started_ms: i64, cancelled: bool) -> Running {
        Running {
            partial,
            started_ms,
            cancelled,
        }
    }

    #[test]
    fn a_waiting_final_cancels_the_newest_partial_and_never_a_final_or_speculation() {
        let busy = [
            running(true, 100, false),
            running(false, 200, false),
            running(true, 300, false),
        ];
        // A decoder is free: nothing to cancel.
        assert!(preempt(1, 1, &busy).is_empty());
        // None free: the partial that started last goes.
        assert_eq!(preempt(1, 0, &busy), vec![2]);
        // Two finals waiting: both partials, never the final (index 1).
        assert_eq!(preempt(2, 0, &busy), vec![2, 0]);
        assert_eq!(preempt(5, 0, &busy), vec![2, 0]);
        // One already cancelled frees a decoder for the first final.
        let one_going = [running(true, 100, false), running(true, 300, true)];
        assert!(preempt(1, 0, &one_going).is_empty());
        assert_eq!(preempt(2, 0, &one_going), vec![0]);
        // No final waiting: partials run on.
        assert!(preempt(0, 0, &busy).is_empty());
        // Only finals and speculations (partial = false) running: wait.
        assert!(preempt(3, 0, &[running(false, 1, false), running(false, 2, false)]).is_empty());
    }

    #[test]
    fn finals_keep_the_beam_while_the_pool_keeps_up_and_go_greedy_when_it_is_behind() {
        assert!(!greedy_when_behind(0, 0));
        assert!(!greedy_when_behind(0, BEHIND_WAIT_MS - 1));
        assert!(greedy_when_behind(0, BEHIND_WAIT_MS));
        assert!(greedy_when_behind(1, 0));
        assert!(greedy_when_behind(3, 2_000));
    }
}
