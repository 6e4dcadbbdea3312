//! Cutting a transcript into search chunks (issue 10's chunking, the pure
//! part; the extension's `s2t.chunk_recording` is to be a thin shell).
//!
//! A transcript is a list of timed segments. The cutter splits them into
//! sentence units (at `.`, `!`, `?`, `…` followed by a space or the end; a
//! segment without such punctuation is one unit; a unit longer than the
//! budget is split between words), then packs units into chunks of at most
//! `max_tokens` tokens. A chunk also ends where the pause between two units
//! is at least `pause_ms`. Each new chunk begins with the last
//! `overlap_sentences` units of the one before (not across a long pause),
//! so a passage cut at a boundary is still found whole in one chunk.
//!
//! Tokens are counted as whitespace-separated words: an estimate that the
//! embedding tokenizer exceeds (it splits rarer words into pieces), which
//! the budget's default leaves room for.
//!
//! A unit's times are its segment's, shared out by character position when
//! a segment holds several units. Every chunk keeps its time span and the
//! `idx` range of the segments it came from, and a SHA-256 of its text, so
//! re-chunking an unchanged transcript changes nothing and only chunks
//! whose text changed lose their embedding.

use sha2::{Digest, Sha256};

/// One transcript segment, as stored.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Segment<'a> {
    pub idx: i32,
    pub start_ms: i32,
    pub end_ms: i32,
    pub text: &'a str,
}

/// How to cut.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ChunkConfig {
    /// Most tokens (words) in a chunk; a single word longer than that is
    /// still a chunk of its own.
    pub max_tokens: usize,
    /// Units carried over from the end of one chunk into the next.
    pub overlap_sentences: usize,
    /// A pause between units at least this long ends a chunk.
    pub pause_ms: i32,
}

impl Default for ChunkConfig {
    fn default() -> Self {
        ChunkConfig {
            max_tokens: 200,
            overlap_sentences: 1,
            pause_ms: 3_000,
        }
    }
}

/// One chunk, ready to store.
#[derive(Debug, Clone, PartialEq)]
pub struct Chunk {
    /// 0, 1, ... in transcript order.
    pub index: usize,
    pub start_ms: i32,
    pub end_ms: i32,
    /// The first and last segment `idx` it draws on.
    pub first_idx: i32,
    pub last_idx: i32,
    pub text: String,
    pub tokens: usize,
    /// Lower-case hex SHA-256 of `text`.
    pub hash: String,
}

/// A sentence (or a piece of a long one) with its times.
#[derive(Debug, Clone, PartialEq)]
struct Unit {
    idx: i32,
    start_ms: i32,
    end_ms: i32,
    words: Vec<String>,
}

fn ends_sentence(word: &str) -> bool {
    let w = word.trim_end_matches(['"', '\'', ')', ']', '»', '”', '’']);
    w.ends_with(['.', '!', '?', '…'])
}

/// The segment's sentences as word lists, each at most `max_words` long.
fn sentences(text: &str, max_words: usize) -> Vec<Vec<String>> {
    let mut out = Vec::new();
    let mut current: Vec<String> = Vec::new();
    for word in text.split_whitespace() {
        current.push(word.to_string());
        if ends_sentence(word) || current.len() >= max_words {
            out.push(std::mem::take(&mut current));
        }
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
}

fn units(segments: &[Segment], max_words: usize) -> Vec<Unit> {
    let mut out = Vec::new();
    for s in segments {
        let parts = sentences(s.text, max_words.max(1));
        let chars: usize = parts.iter().map(|p| words_chars(p)).sum();
        let span = (s.end_ms - s.start_ms).max(0) as i64;
        let mut before = 0usize;
        for words in parts {
            let n = words_chars(&words);
            let at = |c: usize| {
                if chars == 0 {
                    s.start_ms
                } else {
                    s.start_ms + (span * c as i64 / chars as i64) as i32
                }
            };
            out.push(Unit {
                idx: s.idx,
                start_ms: at(before),
                end_ms: at(before + n),
                words,
            });
            before += n;
        }
    }
    out
}

fn words_chars(words: &[String]) -> usize {
    words.iter().map(|w| w.chars().count() + 1).sum()
}

fn make_chunk(index: usize, units: &[Unit]) -> Chunk {
    let text = units
        .iter()
        .flat_map(|u| u.words.iter().map(String::as_str))
        .collect::<Vec<_>>()
        .join(" ");
    let hash = Sha256::digest(text.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    Chunk {
        index,
        start_ms: units.first().map_or(0, |u| u.start_ms),
        end_ms: units.iter().map(|u| u.end_ms).max().unwrap_or(0),
        first_idx: units.first().map_or(0, |u| u.idx),
        last_idx: units.last().map_or(0, |u| u.idx),
        tokens: units.iter().map(|u| u.words.len()).sum(),
        text,
        hash,
    }
}

/// Cut `segments` (in `idx` order) into chunks. Empty text gives no chunks.
pub fn chunk_transcript(segments: &[Segment], cfg: &ChunkConfig) -> Vec<Chunk> {
    let max = cfg.max_tokens.max(1);
    let units = units(segments, max);
    let mut chunks = Vec::new();
    // The units of the chunk being built, as a range into `units`.
    let mut start = 0usize;
    let mut tokens = 0usize;
    let mut i = 0usize;
    while i < units.len() {
        let u = &units[i];
        let paused = i > start && u.start_ms - units[i - 1].end_ms >= cfg.pause_ms;
        let full = i > start && tokens + u.words.len() > max;
        if paused || full {
            chunks.push(make_chunk(chunks.len(), &units[start..i]));
            // Carry the last units over, unless the cut is at a pause, and
            // never all of the chunk (the next one must move on).
            let carry = if paused {
                0
            } else {
                let mut carry = 0;
                let mut carried = 0;
                while carry < cfg.overlap_sentences && carry + 1 < i - start {
                    let n = units[i - 1 - carry].words.len();
                    if carried + n + u.words.len() > max {
                        break;
                    }
                    carried += n;
                    carry += 1;
                }
                carry
            };
            start = i - carry;
            tokens = units[start..i].iter().map(|u| u.words.len()).sum();
        }
        tokens += u.words.len();
        i += 1;
    }
    if start < units.len() {
        chunks.push(make_chunk(chunks.len(), &units[start..]));
    }
    chunks
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seg(idx: i32, start_ms: i32, end_ms: i32, text: &str) -> Segment<'_> {
        Segment {
            idx,
            start_ms,
            end_ms,
            text,
        }
    }

    fn cfg(max_tokens: usize, overlap_sentences: usize) -> ChunkConfig {
        ChunkConfig {
            max_tokens,
            overlap_sentences,
            ..ChunkConfig::default()
        }
    }

    /// Every word of the transcript, in order, appears in the chunks
    /// (overlaps removed), and no chunk is over budget or cuts a word.
    fn assert_covers(segments: &[Segment], chunks: &[Chunk], max: usize) {
        let all: Vec<&str> = segments
            .iter()
            .flat_map(|s| s.text.split_whitespace())
            .collect();
        for c in chunks {
            assert!(c.tokens <= max.max(1), "{c:?}");
            assert_eq!(c.tokens, c.text.split_whitespace().count());
            for w in c.text.split_whitespace() {
                assert!(all.contains(&w), "{w} is not a word of the transcript");
            }
            assert!(c.start_ms <= c.end_ms, "{c:?}");
            assert!(c.first_idx <= c.last_idx, "{c:?}");
        }
        let last = chunks.last().expect("chunks");
        let tail: Vec<&str> = last.text.split_whitespace().collect();
        assert_eq!(
            &all[all.len() - tail.len()..],
            &tail[..],
            "ends with the transcript"
        );
        let head: Vec<&str> = chunks[0].text.split_whitespace().collect();
        assert_eq!(&all[..head.len()], &head[..], "starts with the transcript");
    }

    #[test]
    fn an_empty_transcript_gives_no_chunks() {
        assert!(chunk_transcript(&[], &ChunkConfig::default()).is_empty());
        let blank = [seg(0, 0, 1000, "   "), seg(1, 1000, 2000, "")];
        assert!(chunk_transcript(&blank, &ChunkConfig::default()).is_empty());
    }

    #[test]
    fn a_short_transcript_is_one_chunk_with_its_times_and_segments() {
        let s = [
            seg(0, 0, 2_000, "Xin chào các bạn."),
            seg(
                1,
                2_100,
                5_000,
                "Hôm nay chúng ta họp về kế hoạch ngân sách.",
            ),
        ];
        let c = chunk_transcript(&s, &ChunkConfig::default());
        assert_eq!(c.len(), 1);
        assert_eq!(
            c[0].text,
            "Xin chào các bạn. Hôm nay chúng ta họp về kế hoạch ngân sách."
        );
        assert_eq!((c[0].start_ms, c[0].end_ms), (0, 5_000));
        assert_eq!((c[0].first_idx, c[0].last_idx), (0, 1));
        assert_eq!(c[0].tokens, 14);
        assert_eq!(c[0].hash.len(), 64);
    }

    #[test]
    fn vietnamese_sentences_pack_to_the_budget_and_overlap_by_one_sentence() {
        let text = [
            "Chúng tôi đã thống nhất ngân sách quý một.",
            "Phòng kỹ thuật sẽ tuyển thêm hai người.",
            "Dự án mới bắt đầu vào tháng sau.",
            "Mọi người gửi báo cáo trước thứ sáu.",
            "Cuộc họp tiếp theo vào sáng thứ hai.",
        ];
        let s: Vec<Segment> = text
            .iter()
            .enumerate()
            .map(|(i, t)| seg(i as i32, i as i32 * 3_000, i as i32 * 3_000 + 2_800, t))
            .collect();
        let c = chunk_transcript(&s, &cfg(20, 1));
        assert_covers(&s, &c, 20);
        assert!(c.len() >= 3, "{c:#?}");
        for pair in c.windows(2) {
            // The next chunk starts with the last sentence of this one.
            let last_sentence = text
                .iter()
                .find(|t| pair[0].text.ends_with(*t))
                .expect("a chunk ends at a sentence end");
            assert!(pair[1].text.starts_with(last_sentence), "{pair:#?}");
            assert!(pair[1].start_ms < pair[0].end_ms, "overlapping times");
        }
        // Never mid-word, and diacritics kept as written.
        assert!(c.iter().any(|c| c.text.contains("thống nhất ngân sách")));
    }

    #[test]
    fn text_without_punctuation_is_cut_between_segments_or_words() {
        let s = [
            seg(
                0,
                0,
                4_000,
                "so the plan is we ship the first version in march",
            ),
            seg(
                1,
                4_200,
                8_000,
                "then we measure and decide about the second one",
            ),
            seg(2, 8_100, 9_000, "okay"),
        ];
        let c = chunk_transcript(&s, &cfg(12, 1));
        assert_covers(&s, &c, 12);
        assert!(c.len() >= 2, "{c:#?}");
        assert_eq!(c.last().unwrap().last_idx, 2);
    }

    #[test]
    fn one_very_long_segment_is_split_between_words_with_times_inside_it() {
        let words: Vec<String> = (0..1_000).map(|i| format!("w{i}")).collect();
        let text = words.join(" ");
        let s = [seg(7, 10_000, 410_000, &text)];
        let c = chunk_transcript(&s, &ChunkConfig::default());
        assert_covers(&s, &c, 200);
        assert!(c.len() >= 5, "{}", c.len());
        for x in &c {
            assert_eq!((x.first_idx, x.last_idx), (7, 7));
            assert!(x.start_ms >= 10_000 && x.end_ms <= 410_000, "{x:?}");
        }
        for pair in c.windows(2) {
            assert!(pair[0].start_ms < pair[1].start_ms, "times move on");
        }
    }

    #[test]
    fn a_long_pause_ends_a_chunk_and_nothing_is_carried_across_it() {
        let s = [
            seg(0, 0, 2_000, "First topic, the budget."),
            seg(1, 60_000, 62_000, "Second topic, hiring."),
        ];
        let c = chunk_transcript(&s, &ChunkConfig::default());
        assert_eq!(c.len(), 2, "{c:#?}");
        assert_eq!(c[0].text, "First topic, the budget.");
        assert_eq!(c[1].text, "Second topic, hiring.");
        assert_eq!((c[1].start_ms, c[1].first_idx), (60_000, 1));
    }

    #[test]
    fn chunking_twice_gives_the_same_chunks_and_a_changed_sentence_changes_only_its_chunks() {
        let base: Vec<String> = (0..30)
            .map(|i| format!("Sentence number {i} says something."))
            .collect();
        let segs = |texts: &[String]| -> Vec<(i32, String)> {
            texts
                .iter()
                .enumerate()
                .map(|(i, t)| (i as i32, t.clone()))
                .collect()
        };
        let run = |texts: &[(i32, String)]| {
            let s: Vec<Segment> = texts
                .iter()
                .map(|(i, t)| seg(*i, i * 2_000, i * 2_000 + 1_900, t))
                .collect();
            chunk_transcript(&s, &cfg(25, 1))
        };
        let a = run(&segs(&base));
        assert_eq!(a, run(&segs(&base)));
        let mut edited = base.clone();
        edited[29] = "Sentence number 29 was corrected.".into();
        let b = run(&segs(&edited));
        assert_eq!(a.len(), b.len());
        let changed: Vec<usize> = a
            .iter()
            .zip(&b)
            .filter(|(x, y)| x.hash != y.hash)
            .map(|(x, _)| x.index)
            .collect();
        assert_eq!(changed, vec![a.len() - 1], "only the last chunk changed");
    }
}
