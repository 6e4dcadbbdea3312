//! Guards against Whisper's best-known failure: inventing text on silence
//! and noise, and looping one phrase over and over.
//!
//! VAD removes most silence before decoding; these checks catch what gets
//! through: segments the model itself thinks are not speech, and segments
//! that are one phrase repeated.

/// Above this no-speech probability, with a low average token probability,
/// a segment is dropped.
pub const NO_SPEECH_MAX: f32 = 0.6;
pub const LOW_CONFIDENCE: f32 = 0.45;

/// True when the text is mostly one short phrase repeated: the same n-gram
/// of 1–6 words covering at least 4 consecutive repetitions and more than
/// half of the words.
pub fn is_repetition_loop(text: &str) -> bool {
    let words: Vec<String> = text
        .split_whitespace()
        .map(|w| {
            w.trim_matches(|c: char| !c.is_alphanumeric())
                .to_lowercase()
        })
        .filter(|w| !w.is_empty())
        .collect();
    if words.len() < 8 {
        return false;
    }
    for n in 1..=6 {
        let mut start = 0;
        while start + n <= words.len() {
            let mut reps = 1;
            while start + (reps + 1) * n <= words.len()
                && words[start..start + n] == words[start + reps * n..start + (reps + 1) * n]
            {
                reps += 1;
            }
            if reps >= 4 && reps * n * 2 > words.len() {
                return true;
            }
            start += 1;
        }
    }
    false
}

/// Whether to keep a decoded segment.
pub fn keep_segment(text: &str, no_speech_prob: f32, mean_token_prob: f32) -> bool {
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return false;
    }
    if no_speech_prob > NO_SPEECH_MAX && mean_token_prob < LOW_CONFIDENCE {
        return false;
    }
    !is_repetition_loop(trimmed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loops_are_detected() {
        assert!(is_repetition_loop(
            "Thank you. Thank you. Thank you. Thank you. Thank you."
        ));
        assert!(is_repetition_loop("la la la la la la la la la"));
        assert!(is_repetition_loop(
            "and then we go and then we go and then we go and then we go"
        ));
    }

    #[test]
    fn ordinary_speech_is_kept() {
        assert!(!is_repetition_loop(
            "The quick brown fox jumps over the lazy dog, and the dog sleeps on."
        ));
        assert!(!is_repetition_loop(
            "no no no, I said the other one, please"
        ));
        assert!(!is_repetition_loop("short"));
        assert!(!is_repetition_loop(
            "Xin chào các bạn, hôm nay chúng ta sẽ họp về kế hoạch của dự án."
        ));
    }

    #[test]
    fn segment_filter() {
        assert!(keep_segment(" Hello there.", 0.1, 0.9));
        assert!(!keep_segment("   ", 0.0, 1.0));
        assert!(
            !keep_segment(" Thank you.", 0.9, 0.2),
            "likely invented on silence"
        );
        assert!(
            keep_segment(" Thank you.", 0.9, 0.8),
            "confident speech stays"
        );
        assert!(!keep_segment(
            "you you you you you you you you you",
            0.0,
            0.9
        ));
    }
}
