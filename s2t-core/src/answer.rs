//! Answers built from retrieved passages, and the check of an answer's
//! citations. Pure logic: the extension's `s2t.ask` (extractive answers)
//! and the gateway (generated answers) call it.
//!
//! - [`sentences`] cuts a passage into sentences (character offsets), also
//!   when the transcript has no punctuation.
//! - [`select`] picks the sentences that answer, by maximal marginal
//!   relevance, so the answer does not say the same thing twice.
//! - [`locate`] finds a sentence's time in the passage's segments.
//! - [`extractive`] writes the answer: a lead naming each source (recording
//!   and time), then the sentences with numbered markers.
//! - [`check`] verifies a generated answer: markers that name no passage
//!   are removed, sentences whose words the cited passages do not support
//!   are flagged.

use crate::search::{content_words, folded_words};
use std::collections::HashSet;

/// A sentence of a transcript with no punctuation is cut after this many
/// words, so one "sentence" is never the whole passage.
pub const MAX_SENTENCE_WORDS: usize = 40;

fn ends_sentence(c: char) -> bool {
    matches!(c, '.' | '?' | '!' | '…' | '。' | '？' | '！')
}

/// The sentences of `text` as `[start, end)` character offsets, trimmed of
/// surrounding spaces, in order. A sentence ends at `.`, `?`, `!` or `…`
/// followed by a space or the end (so "3.5" and "e.g." inside a word do
/// not cut), or after [`MAX_SENTENCE_WORDS`] words.
pub fn sentences(text: &str) -> Vec<(usize, usize)> {
    let chars: Vec<char> = text.chars().collect();
    let mut out = Vec::new();
    let mut start: Option<usize> = None;
    let mut words = 0usize;
    let mut in_word = false;
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c.is_whitespace() {
            if in_word {
                words += 1;
                in_word = false;
                if words >= MAX_SENTENCE_WORDS {
                    if let Some(s) = start.take() {
                        out.push((s, i));
                    }
                    words = 0;
                }
            }
            i += 1;
            continue;
        }
        start.get_or_insert(i);
        in_word = true;
        // Closing quotes or brackets after the end belong to the sentence.
        let mut end = i + 1;
        while end < chars.len() && matches!(chars[end], '"' | '\'' | ')' | '”' | '’') {
            end += 1;
        }
        if ends_sentence(c) && chars.get(end).is_none_or(|n| n.is_whitespace()) {
            if let Some(s) = start.take() {
                out.push((s, end));
            }
            words = 0;
            in_word = false;
            i = end;
            continue;
        }
        i += 1;
    }
    if let Some(s) = start {
        let mut end = chars.len();
        while end > s && chars[end - 1].is_whitespace() {
            end -= 1;
        }
        out.push((s, end));
    }
    out
}

/// The characters `[start, end)` of `text`.
pub fn slice(text: &str, (start, end): (usize, usize)) -> String {
    text.chars().skip(start).take(end - start).collect()
}

/// The share (0 to 1) of the question's content words that occur in
/// `text`, folded. A question of function words only scores 0.
pub fn word_support(question_words: &[String], text: &str) -> f32 {
    let want: HashSet<&String> = question_words.iter().collect();
    if want.is_empty() {
        return 0.0;
    }
    let have: HashSet<String> = content_words(text).into_iter().collect();
    want.iter().filter(|w| have.contains(**w)).count() as f32 / want.len() as f32
}

/// How [`select`] chooses.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SelectConfig {
    /// Most sentences in an answer.
    pub max_sentences: usize,
    /// Maximal marginal relevance: weight of relevance against novelty.
    pub lambda: f32,
    /// Below this relevance no sentence answers: the answer is "not found".
    pub min_relevance: f32,
    /// A further sentence is added only when its relevance is within this
    /// much of the best one's.
    pub within: f32,
    /// A further sentence this similar to one already chosen adds nothing.
    pub max_similarity: f32,
}

impl Default for SelectConfig {
    fn default() -> Self {
        SelectConfig {
            max_sentences: 3,
            lambda: 0.7,
            min_relevance: 0.35,
            within: 0.08,
            max_similarity: 0.9,
        }
    }
}

/// The sentences that answer, best first, by maximal marginal relevance:
/// the most relevant sentence, then repeatedly the one that maximises
/// `lambda * relevance - (1 - lambda) * (its greatest similarity to one
/// already chosen)`. `similarity(i, j)` compares two candidates. Empty when
/// no candidate reaches `min_relevance`.
pub fn select(
    relevance: &[f32],
    similarity: impl Fn(usize, usize) -> f32,
    cfg: &SelectConfig,
) -> Vec<usize> {
    // NaN (an empty sentence's vector) never answers.
    let relevance: Vec<f32> = relevance
        .iter()
        .map(|r| if r.is_nan() { f32::NEG_INFINITY } else { *r })
        .collect();
    let mut order: Vec<usize> = (0..relevance.len()).collect();
    order.sort_by(|&a, &b| relevance[b].total_cmp(&relevance[a]).then(a.cmp(&b)));
    let Some(&best) = order.first() else {
        return Vec::new();
    };
    if relevance[best] < cfg.min_relevance {
        return Vec::new();
    }
    let floor = (relevance[best] - cfg.within).max(cfg.min_relevance);
    let mut chosen = vec![best];
    while chosen.len() < cfg.max_sentences {
        let mut pick: Option<(usize, f32)> = None;
        for &i in &order {
            if chosen.contains(&i) || relevance[i] < floor {
                continue;
            }
            let redundancy = chosen
                .iter()
                .map(|&j| similarity(i, j))
                .fold(f32::MIN, f32::max);
            if redundancy >= cfg.max_similarity {
                continue;
            }
            let score = cfg.lambda * relevance[i] - (1.0 - cfg.lambda) * redundancy;
            if pick.is_none_or(|(_, s)| score > s) {
                pick = Some((i, score));
            }
        }
        match pick {
            Some((i, _)) => chosen.push(i),
            None => break,
        }
    }
    chosen
}

/// A segment of the transcript: its time and text.
#[derive(Debug, Clone, PartialEq)]
pub struct TimedText<'a> {
    pub start_ms: i64,
    pub end_ms: i64,
    pub text: &'a str,
}

/// The time `[start_ms, end_ms)` of `sentence` within `segments` (those a
/// passage was cut from, in order): its words are found in the segments'
/// words, and a sentence that starts or ends inside a segment gets a time
/// in proportion to its words' place in that segment. None when the words
/// are not there.
pub fn locate(sentence: &str, segments: &[TimedText]) -> Option<(i64, i64)> {
    let want: Vec<String> = folded_words(sentence)
        .into_iter()
        .map(|(_, _, w)| w)
        .collect();
    if want.is_empty() {
        return None;
    }
    // Every word of the segments, with the time it is spoken at (spread
    // evenly over its segment).
    let mut words: Vec<(String, i64, i64)> = Vec::new();
    for seg in segments {
        let w: Vec<String> = folded_words(seg.text)
            .into_iter()
            .map(|(_, _, w)| w)
            .collect();
        let n = w.len().max(1) as i64;
        let span = (seg.end_ms - seg.start_ms).max(0);
        for (i, word) in w.into_iter().enumerate() {
            let i = i as i64;
            words.push((
                word,
                seg.start_ms + span * i / n,
                seg.start_ms + span * (i + 1) / n,
            ));
        }
    }
    let at = words
        .windows(want.len())
        .position(|win| win.iter().zip(&want).all(|((w, _, _), x)| w == x))?;
    Some((words[at].1, words[at + want.len() - 1].2))
}

/// The language of the answer's own words (the lead).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lang {
    En,
    Vi,
}

impl Lang {
    /// Vietnamese for a tag starting with "vi", else English.
    pub fn from_tag(tag: &str) -> Lang {
        if tag.trim().to_ascii_lowercase().starts_with("vi") {
            Lang::Vi
        } else {
            Lang::En
        }
    }
}

/// `m:ss`, or `h:mm:ss` from an hour on.
pub fn clock(ms: i64) -> String {
    let s = ms.max(0) / 1000;
    if s >= 3600 {
        format!("{}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
    } else {
        format!("{}:{:02}", s / 60, s % 60)
    }
}

/// One chosen sentence, for [`extractive`].
#[derive(Debug, Clone, PartialEq)]
pub struct Quote<'a> {
    /// The recording's title.
    pub title: &'a str,
    /// The recording (sources of the same recording share the lead's name).
    pub recording: &'a str,
    /// When the sentence is spoken.
    pub start_ms: i64,
    /// The sentence.
    pub text: &'a str,
}

/// The extractive answer: a lead naming where each quote comes from, then
/// the quotes in order, each followed by its marker `[n]` (n = its place in
/// `quotes`, from 1).
pub fn extractive(quotes: &[Quote], lang: Lang) -> String {
    if quotes.is_empty() {
        return String::new();
    }
    // Sources in order of first mention: a title with its times.
    let mut sources: Vec<(&str, &str, Vec<String>)> = Vec::new();
    for q in quotes {
        let t = clock(q.start_ms);
        match sources.iter_mut().find(|(rec, _, _)| *rec == q.recording) {
            Some((_, _, times)) => times.push(t),
            None => sources.push((q.recording, q.title, vec![t])),
        }
    }
    let (from, and) = match lang {
        Lang::En => ("From", "and"),
        Lang::Vi => ("Theo", "và"),
    };
    let named: Vec<String> = sources
        .iter()
        .map(|(_, title, times)| format!("“{title}” ({})", times.join(", ")))
        .collect();
    let mut out = format!("{from} {}:", join(&named, and));
    for (i, q) in quotes.iter().enumerate() {
        out.push(' ');
        out.push_str(q.text.trim());
        out.push_str(&format!(" [{}]", i + 1));
    }
    out
}

fn join(items: &[String], and: &str) -> String {
    match items {
        [] => String::new(),
        [one] => one.clone(),
        [init @ .., last] => format!("{} {and} {last}", init.join(", ")),
    }
}

/// A sentence of a checked answer whose words the passages it cites do not
/// support (or that cites nothing).
#[derive(Debug, Clone, PartialEq)]
pub struct Flag {
    pub sentence: String,
    /// The share of its content words found in the cited passages.
    pub support: f32,
}

/// What [`check`] found.
#[derive(Debug, Clone, PartialEq)]
pub struct Checked {
    /// The answer with every invalid marker removed.
    pub answer: String,
    /// The valid passage numbers cited, in order of first use.
    pub cited: Vec<usize>,
    /// Marker numbers that named no passage (removed).
    pub removed: Vec<usize>,
    /// Sentences not supported by what they cite.
    pub flagged: Vec<Flag>,
}

/// A sentence is supported when at least this share of its content words
/// occurs in the passages it cites.
pub const MIN_SUPPORT: f32 = 0.5;

/// Checks a generated `answer` against the numbered `passages` (marker
/// `[n]` names `passages[n - 1]`): markers naming no passage are removed
/// (also inside a list such as `[1, 7]`), and each sentence is compared
/// with the passages it cites.
pub fn check(answer: &str, passages: &[&str]) -> Checked {
    let mut removed = Vec::new();
    let mut cited = Vec::new();
    // Pass 1: rewrite the markers, keeping only valid numbers.
    let chars: Vec<char> = answer.chars().collect();
    let mut text = String::new();
    // For each sentence of the rewritten text: the numbers it cites.
    let mut i = 0;
    while i < chars.len() {
        if chars[i] == '[' {
            if let Some((nums, len)) = marker(&chars[i..]) {
                let valid: Vec<usize> = nums
                    .iter()
                    .copied()
                    .filter(|n| (1..=passages.len()).contains(n))
                    .collect();
                removed.extend(nums.iter().filter(|n| !valid.contains(n)));
                if valid.is_empty() {
                    // Drop the marker and a space before it.
                    if text.ends_with(' ') {
                        text.pop();
                    }
                } else {
                    for n in &valid {
                        if !cited.contains(n) {
                            cited.push(*n);
                        }
                    }
                    let list: Vec<String> = valid.iter().map(|n| n.to_string()).collect();
                    text.push_str(&format!("[{}]", list.join(", ")));
                }
                i += len;
                continue;
            }
        }
        text.push(chars[i]);
        i += 1;
    }
    // Pass 2: support per sentence. A marker right after a sentence's end
    // ("... budget. [1]") belongs to that sentence.
    let mut flagged = Vec::new();
    for (sentence, nums) in cited_sentences(&text) {
        let words = content_words(&sentence);
        if words.is_empty() {
            continue;
        }
        let mut have: HashSet<String> = HashSet::new();
        for n in &nums {
            have.extend(content_words(passages[n - 1]));
        }
        let support =
            words.iter().filter(|w| have.contains(*w)).count() as f32 / words.len() as f32;
        if nums.is_empty() || support < MIN_SUPPORT {
            flagged.push(Flag {
                sentence: sentence.trim().to_string(),
                support,
            });
        }
    }
    Checked {
        answer: text.trim().to_string(),
        cited,
        removed,
        flagged,
    }
}

/// A marker at the start of `chars`: `[n]` or `[n, m, ...]`; its numbers
/// and its length in characters.
fn marker(chars: &[char]) -> Option<(Vec<usize>, usize)> {
    let close = chars.iter().take(32).position(|&c| c == ']')?;
    let inner: String = chars[1..close].iter().collect();
    let nums: Option<Vec<usize>> = inner
        .split(',')
        .map(|p| p.trim().parse::<usize>().ok())
        .collect();
    let nums = nums?;
    (!nums.is_empty()).then_some((nums, close + 1))
}

/// The sentences of a checked answer (markers taken out) with the numbers
/// each cites.
fn cited_sentences(text: &str) -> Vec<(String, Vec<usize>)> {
    let mut out: Vec<(String, Vec<usize>)> = Vec::new();
    let chars: Vec<char> = text.chars().collect();
    let mut plain = String::new();
    let mut nums: Vec<usize> = Vec::new();
    let mut i = 0;
    let flush = |plain: &mut String, nums: &mut Vec<usize>, out: &mut Vec<(String, Vec<usize>)>| {
        if !plain.trim().is_empty() {
            out.push((std::mem::take(plain), std::mem::take(nums)));
        } else if let Some(last) = out.last_mut() {
            // Markers alone after a sentence's end belong to it.
            last.1.append(nums);
        }
        plain.clear();
    };
    while i < chars.len() {
        if chars[i] == '[' {
            if let Some((n, len)) = marker(&chars[i..]) {
                if plain.trim().is_empty() {
                    if let Some(last) = out.last_mut() {
                        last.1.extend(n);
                        i += len;
                        continue;
                    }
                }
                nums.extend(n);
                i += len;
                continue;
            }
        }
        plain.push(chars[i]);
        if ends_sentence(chars[i]) && chars.get(i + 1).is_none_or(|c| c.is_whitespace()) {
            flush(&mut plain, &mut nums, &mut out);
        }
        i += 1;
    }
    flush(&mut plain, &mut nums, &mut out);
    for (_, n) in out.iter_mut() {
        n.sort_unstable();
        n.dedup();
    }
    out
}

/// The sentence of `passage` that shares the most content words with
/// `claim` (for the highlight of a generated answer's citation); the whole
/// passage when it has no sentences.
pub fn best_span(passage: &str, claim: &str) -> (usize, usize) {
    let want: HashSet<String> = content_words(claim).into_iter().collect();
    let spans = sentences(passage);
    spans
        .iter()
        .copied()
        .max_by_key(|&span| {
            let have: HashSet<String> = content_words(&slice(passage, span)).into_iter().collect();
            // Ties to the earlier sentence.
            (want.intersection(&have).count(), std::cmp::Reverse(span.0))
        })
        .unwrap_or((0, passage.chars().count()))
}

/// The citations of a [`check`]ed generated answer: one per passage it
/// cites, numbered as its markers are, each highlighting the passage's
/// sentence closest to the answer's sentences that cite it. `passages` is
/// the list the answer was checked against.
pub fn generated_citations(checked: &Checked, passages: &[Passage]) -> Vec<Citation> {
    let claims = cited_sentences(&checked.answer);
    checked
        .cited
        .iter()
        .filter(|&&n| (1..=passages.len()).contains(&n))
        .map(|&n| {
            let said: Vec<&str> = claims
                .iter()
                .filter(|(_, cites)| cites.contains(&n))
                .map(|(s, _)| s.as_str())
                .collect();
            let span = best_span(&passages[n - 1].text, &said.join(" "));
            cite(n, passages, n - 1, span)
        })
        .collect()
}

/// A retrieved passage, as `s2t.ask_context` lists it (numbered from 1 in
/// that order) and as the answer's citations quote it.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Passage {
    pub chunk_id: String,
    pub recording_id: String,
    pub title: String,
    pub start_ms: i64,
    pub end_ms: i64,
    pub text: String,
    /// The transcript segments the passage was cut from (for the time of
    /// each sentence); may be empty.
    #[serde(default)]
    pub segments: Vec<SegmentRef>,
}

/// A segment of a passage.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct SegmentRef {
    pub start_ms: i64,
    pub end_ms: i64,
    pub text: String,
}

/// One citation of an answer: the passage, the span of it that answers
/// (character offsets in `text`) and when that span is spoken.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Citation {
    /// The marker's number.
    pub n: usize,
    pub chunk_id: String,
    pub recording_id: String,
    pub title: String,
    /// When the highlighted sentence is spoken (the passage's times when
    /// it cannot be placed).
    pub start_ms: i64,
    pub end_ms: i64,
    pub passage_start_ms: i64,
    pub passage_end_ms: i64,
    /// The quoted passage.
    pub text: String,
    /// `[start, end)` character offsets of the highlighted sentence.
    pub highlight: (usize, usize),
}

/// The candidate sentences of the passages, best passage first, each once:
/// a sentence repeated by overlapping passages is kept from the first.
pub fn candidates(passages: &[Passage]) -> Vec<(usize, (usize, usize))> {
    let mut seen: HashSet<Vec<String>> = HashSet::new();
    let mut out = Vec::new();
    for (p, passage) in passages.iter().enumerate() {
        for span in sentences(&passage.text) {
            let key: Vec<String> = folded_words(&slice(&passage.text, span))
                .into_iter()
                .map(|(_, _, w)| w)
                .collect();
            if !key.is_empty() && seen.insert(key) {
                out.push((p, span));
            }
        }
    }
    out
}

/// The citation of sentence `span` of `passages[p]`, numbered `n`.
pub fn cite(n: usize, passages: &[Passage], p: usize, span: (usize, usize)) -> Citation {
    let passage = &passages[p];
    let segs: Vec<TimedText> = passage
        .segments
        .iter()
        .map(|s| TimedText {
            start_ms: s.start_ms,
            end_ms: s.end_ms,
            text: &s.text,
        })
        .collect();
    let (start_ms, end_ms) = locate(&slice(&passage.text, span), &segs)
        .map(|(s, e)| (s.max(passage.start_ms), e.min(passage.end_ms).max(s)))
        .unwrap_or((passage.start_ms, passage.end_ms));
    Citation {
        n,
        chunk_id: passage.chunk_id.clone(),
        recording_id: passage.recording_id.clone(),
        title: passage.title.clone(),
        start_ms,
        end_ms,
        passage_start_ms: passage.start_ms,
        passage_end_ms: passage.end_ms,
        text: passage.text.clone(),
        highlight: span,
    }
}

/// An extractive answer.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Extracted {
    pub found: bool,
    pub answer: String,
    pub citations: Vec<Citation>,
    /// The best candidate's relevance (what `found` was decided on).
    pub best_relevance: f32,
}

/// How relevance is made of the question-sentence similarity of their
/// vectors and the share of the question's words the sentence holds.
pub const DENSE_SHARE: f32 = 0.8;

/// Relevance of a sentence: with vectors, mostly their cosine similarity
/// plus a little for the question's words it holds; without, the words.
pub fn relevance(cosine: Option<f32>, words: f32) -> f32 {
    match cosine {
        Some(c) => DENSE_SHARE * c + (1.0 - DENSE_SHARE) * words,
        None => words,
    }
}

/// The extractive answer to `question` from `passages`: candidates scored
/// by [`relevance`] (`vectors` holds the question's vector first, then one
/// per candidate, in [`candidates`] order, or is None to use words only),
/// chosen by [`select`], written by [`extractive`].
pub fn answer(
    question: &str,
    passages: &[Passage],
    vectors: Option<&[Vec<f32>]>,
    cfg: &SelectConfig,
    lang: Lang,
) -> Extracted {
    let cands = candidates(passages);
    let q_words = content_words(question);
    let texts: Vec<String> = cands
        .iter()
        .map(|&(p, span)| slice(&passages[p].text, span))
        .collect();
    let vectors = vectors.filter(|v| v.len() == cands.len() + 1);
    let rel: Vec<f32> = texts
        .iter()
        .enumerate()
        .map(|(i, t)| {
            relevance(
                vectors.map(|v| dot(&v[0], &v[i + 1])),
                word_support(&q_words, t),
            )
        })
        .collect();
    let words: Vec<HashSet<String>> = texts
        .iter()
        .map(|t| content_words(t).into_iter().collect())
        .collect();
    let similarity = |i: usize, j: usize| match vectors {
        Some(v) => dot(&v[i + 1], &v[j + 1]),
        None => {
            let inter = words[i].intersection(&words[j]).count() as f32;
            let union = words[i].union(&words[j]).count().max(1) as f32;
            inter / union
        }
    };
    let chosen = select(&rel, similarity, cfg);
    let best_relevance = rel
        .iter()
        .copied()
        .filter(|r| !r.is_nan())
        .fold(0.0, f32::max);
    if chosen.is_empty() {
        return Extracted {
            found: false,
            answer: String::new(),
            citations: Vec::new(),
            best_relevance,
        };
    }
    let citations: Vec<Citation> = chosen
        .iter()
        .enumerate()
        .map(|(k, &i)| cite(k + 1, passages, cands[i].0, cands[i].1))
        .collect();
    let quotes: Vec<Quote> = chosen
        .iter()
        .zip(&citations)
        .map(|(&i, c)| Quote {
            title: &c.title,
            recording: &c.recording_id,
            start_ms: c.start_ms,
            text: &texts[i],
        })
        .collect();
    Extracted {
        found: true,
        answer: extractive(&quotes, lang),
        citations,
        best_relevance,
    }
}

/// Dot product (the cosine of unit vectors).
fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// The instructions of a generated answer: only the numbered passages,
/// a marker after every claim, and a fixed reply when they do not answer.
pub const NOT_FOUND_REPLY: &str = "NOT_FOUND";

/// The chat messages (OpenAI chat-completions `messages`) that ask a model
/// to answer `question` from `passages` alone, citing them as `[n]`.
pub fn prompt(question: &str, passages: &[Passage]) -> serde_json::Value {
    let mut context = String::new();
    for (i, p) in passages.iter().enumerate() {
        context.push_str(&format!(
            "[{}] ({}, {}) {}\n",
            i + 1,
            p.title,
            clock(p.start_ms),
            p.text.trim()
        ));
    }
    let system = format!(
        "You answer questions about the user's own recordings using only the numbered passages \
         from their transcripts. Write one to three short sentences. After each sentence put the \
         number of the passage that supports it in square brackets, for example [1]. Never use \
         anything that is not in the passages. If the passages do not answer the question, reply \
         exactly {NOT_FOUND_REPLY}. Answer in the language of the question."
    );
    serde_json::json!([
        {"role": "system", "content": system},
        {"role": "user", "content": format!("Passages:\n{context}\nQuestion: {}", question.trim())},
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn texts(text: &str) -> Vec<String> {
        sentences(text)
            .into_iter()
            .map(|s| slice(text, s))
            .collect()
    }

    #[test]
    fn sentences_are_cut_at_ends_not_inside_numbers_and_long_runs_are_capped() {
        assert_eq!(
            texts("  We cut it by 3.5 percent. Why?  \"Because.\" Done"),
            vec!["We cut it by 3.5 percent.", "Why?", "\"Because.\"", "Done"]
        );
        assert_eq!(
            texts("Hôm nay họp về kế hoạch… Chị Lan gửi báo giá!"),
            vec!["Hôm nay họp về kế hoạch…", "Chị Lan gửi báo giá!"]
        );
        // No punctuation at all: pieces of at most MAX_SENTENCE_WORDS words.
        let long: Vec<String> = (0..100).map(|i| format!("w{i}")).collect();
        let parts = texts(&long.join(" "));
        assert_eq!(parts.len(), 3);
        assert!(parts
            .iter()
            .all(|p| p.split_whitespace().count() <= MAX_SENTENCE_WORDS));
        assert_eq!(parts.concat().split("w").count() - 1, 100);
        assert!(sentences("   ").is_empty());
    }

    #[test]
    fn word_support_counts_folded_content_words() {
        let q = content_words("what did we decide about the travel budget");
        assert_eq!(q, vec!["decide", "travel", "budget"]);
        assert!((word_support(&q, "The TRAVEL budget was cut.") - 2.0 / 3.0).abs() < 1e-6);
        assert_eq!(word_support(&[], "anything"), 0.0);
        let vi = content_words("ngan sach quang cao");
        assert_eq!(word_support(&vi, "Ngân sách quảng cáo sẽ tăng."), 1.0);
    }

    #[test]
    fn selection_takes_the_best_then_adds_only_close_and_new_sentences() {
        let cfg = SelectConfig::default();
        // 0 and 1 are near duplicates; 2 is new and almost as relevant; 3
        // is far below the best.
        let rel = [0.80, 0.79, 0.76, 0.40];
        let sim = |i: usize, j: usize| {
            if (i.min(j), i.max(j)) == (0, 1) {
                0.95
            } else {
                0.2
            }
        };
        assert_eq!(select(&rel, sim, &cfg), vec![0, 2]);
        // Nothing reaches the floor: not found.
        assert!(select(&[0.2, 0.3], sim, &cfg).is_empty());
        assert!(select(&[], sim, &cfg).is_empty());
        // NaN relevance is never chosen.
        assert!(select(&[f32::NAN], sim, &cfg).is_empty());
        assert_eq!(select(&[f32::NAN, 0.5], sim, &cfg), vec![1]);
        let one = SelectConfig {
            max_sentences: 1,
            ..cfg
        };
        assert_eq!(select(&rel, sim, &one), vec![0]);
    }

    #[test]
    fn a_sentence_is_located_in_its_segments_by_its_words() {
        let segs = [
            TimedText {
                start_ms: 0,
                end_ms: 4000,
                text: "Good morning everyone. Revenue was up.",
            },
            TimedText {
                start_ms: 5000,
                end_ms: 9000,
                text: "We agreed to cut travel by 20%.",
            },
        ];
        // The whole second segment.
        assert_eq!(
            locate("We agreed to cut travel by 20%.", &segs),
            Some((5000, 9000))
        );
        // The second half of the first segment (words 3 to 5 of 6).
        assert_eq!(locate("revenue WAS up", &segs), Some((2000, 4000)));
        // Across the boundary.
        let (s, e) = locate("Revenue was up. We agreed", &segs).unwrap();
        assert_eq!((s, e), (2000, 6142));
        assert_eq!(locate("not said at all", &segs), None);
        assert_eq!(locate("...", &segs), None);
    }

    #[test]
    fn the_extractive_answer_names_its_sources_then_quotes_with_markers() {
        let quotes = [
            Quote {
                title: "Budget review",
                recording: "r1",
                start_ms: 42_000,
                text: "We agreed to cut travel spending by twenty percent.",
            },
            Quote {
                title: "Launch",
                recording: "r2",
                start_ms: 3_725_000,
                text: "Travel to the launch is approved. ",
            },
            Quote {
                title: "Budget review",
                recording: "r1",
                start_ms: 70_000,
                text: "Conference trips are still allowed.",
            },
        ];
        assert_eq!(
            extractive(&quotes, Lang::En),
            "From “Budget review” (0:42, 1:10) and “Launch” (1:02:05): \
             We agreed to cut travel spending by twenty percent. [1] \
             Travel to the launch is approved. [2] Conference trips are still allowed. [3]"
        );
        assert!(extractive(&quotes[..1], Lang::Vi).starts_with("Theo “Budget review” (0:42): We"));
        assert_eq!(extractive(&[], Lang::En), "");
        assert_eq!(Lang::from_tag("vi-VN"), Lang::Vi);
        assert_eq!(Lang::from_tag("en-GB,en;q=0.9"), Lang::En);
    }

    #[test]
    fn check_removes_markers_naming_no_passage_and_flags_unsupported_sentences() {
        let passages = [
            "We agreed to cut the travel budget by twenty percent next month.",
            "The new office opens in March on the ninth floor.",
        ];
        let c = check(
            "The travel budget will be cut by twenty percent [1]. \
             The office opens in March [2, 7]. Bananas are yellow fruit [9]. \
             Everyone loves the budget.",
            &passages,
        );
        assert_eq!(
            c.answer,
            "The travel budget will be cut by twenty percent [1]. \
             The office opens in March [2]. Bananas are yellow fruit. \
             Everyone loves the budget."
        );
        assert_eq!(c.cited, vec![1, 2]);
        assert_eq!(c.removed, vec![7, 9]);
        let flagged: Vec<&str> = c.flagged.iter().map(|f| f.sentence.as_str()).collect();
        assert_eq!(
            flagged,
            vec!["Bananas are yellow fruit.", "Everyone loves the budget."]
        );
        // A marker after the full stop belongs to the sentence before it.
        let c = check("The office opens in March. [2]", &passages);
        assert!(c.flagged.is_empty(), "{c:?}");
        assert_eq!(c.cited, vec![2]);
        // A claim its cited passage does not hold is flagged.
        let c = check("The office opens in March [1].", &passages);
        assert_eq!(c.flagged.len(), 1);
        assert!(c.flagged[0].support < MIN_SUPPORT);
        // Brackets that are not markers stay.
        assert_eq!(
            check("See [note] here.", &passages).answer,
            "See [note] here."
        );
    }

    #[test]
    fn best_span_is_the_sentence_sharing_most_words_with_the_claim() {
        let p = "Good morning. The office opens in March. Parking is limited.";
        let span = best_span(p, "When does the office open? In March.");
        assert_eq!(slice(p, span), "The office opens in March.");
        assert_eq!(best_span("", "x"), (0, 0));
    }

    fn passage(id: &str, rec: &str, start: i64, text: &str, segs: &[(i64, i64, &str)]) -> Passage {
        Passage {
            chunk_id: id.into(),
            recording_id: rec.into(),
            title: format!("title {rec}"),
            start_ms: start,
            end_ms: segs.last().map(|s| s.1).unwrap_or(start + 10_000),
            text: text.into(),
            segments: segs
                .iter()
                .map(|&(s, e, t)| SegmentRef {
                    start_ms: s,
                    end_ms: e,
                    text: t.into(),
                })
                .collect(),
        }
    }

    #[test]
    fn overlapping_passages_give_each_sentence_once() {
        let a = passage("a", "r", 0, "One two. Three four.", &[]);
        let b = passage("b", "r", 5000, "Three four! Five six.", &[]);
        let c = candidates(&[a, b]);
        assert_eq!(c, vec![(0, (0, 8)), (0, (9, 20)), (1, (12, 21))]);
    }

    #[test]
    fn a_word_only_answer_quotes_the_sentence_with_its_time() {
        let p = [
            passage(
                "c1",
                "r1",
                0,
                "Good morning. We agreed to cut the travel budget by twenty percent. Lunch is at noon.",
                &[
                    (0, 1000, "Good morning."),
                    (1500, 6000, "We agreed to cut the travel budget by twenty percent."),
                    (6500, 8000, "Lunch is at noon."),
                ],
            ),
            passage("c2", "r2", 0, "The office opens in March.", &[]),
        ];
        let cfg = SelectConfig {
            min_relevance: 0.5,
            ..SelectConfig::default()
        };
        let a = answer("what about the travel budget", &p, None, &cfg, Lang::En);
        assert!(a.found);
        assert_eq!(a.citations.len(), 1);
        let c = &a.citations[0];
        assert_eq!(
            (c.chunk_id.as_str(), c.start_ms, c.end_ms),
            ("c1", 1500, 6000)
        );
        assert_eq!(
            slice(&c.text, c.highlight),
            "We agreed to cut the travel budget by twenty percent."
        );
        assert_eq!(
            a.answer,
            "From “title r1” (0:01): We agreed to cut the travel budget by twenty percent. [1]"
        );
        // Nothing holds the words: not found, and nothing is made up.
        let none = answer("dentist appointment", &p, None, &cfg, Lang::En);
        assert!(!none.found);
        assert!(none.answer.is_empty() && none.citations.is_empty());
        // Vectors of the wrong count are not trusted: words decide.
        let bad = answer("travel budget", &p, Some(&[vec![1.0]]), &cfg, Lang::En);
        assert!(bad.found);
    }

    #[test]
    fn the_prompt_numbers_the_passages_and_asks_for_markers() {
        let p = [passage(
            "c1",
            "r1",
            65_000,
            "The office opens in March.",
            &[],
        )];
        let m = prompt("When does it open?", &p);
        let user = m[1]["content"].as_str().unwrap();
        assert!(
            user.contains("[1] (title r1, 1:05) The office opens in March."),
            "{user}"
        );
        assert!(user.ends_with("Question: When does it open?"));
        assert!(m[0]["content"].as_str().unwrap().contains(NOT_FOUND_REPLY));
    }

    #[test]
    fn generated_citations_follow_the_checked_markers_and_highlight_the_claim() {
        let passage = |id: &str, text: &str, start: i64| Passage {
            chunk_id: id.into(),
            recording_id: format!("rec-{id}"),
            title: format!("Meeting {id}"),
            start_ms: start,
            end_ms: start + 10_000,
            text: text.into(),
            segments: Vec::new(),
        };
        let passages = vec![
            passage("a", "Lunch is at noon. The room is booked.", 0),
            passage(
                "b",
                "We met on Monday. The travel budget was cut by ten percent. Next item.",
                60_000,
            ),
        ];
        let texts: Vec<&str> = passages.iter().map(|p| p.text.as_str()).collect();
        let checked = check(
            "The travel budget was cut by ten percent [2]. Lunch is at noon [1][5].",
            &texts,
        );
        assert_eq!(checked.removed, vec![5]);
        assert_eq!(checked.cited, vec![2, 1]);
        let cites = generated_citations(&checked, &passages);
        assert_eq!(cites.iter().map(|c| c.n).collect::<Vec<_>>(), vec![2, 1]);
        assert_eq!(cites[0].chunk_id, "b");
        assert_eq!(
            slice(&cites[0].text, cites[0].highlight),
            "The travel budget was cut by ten percent."
        );
        assert_eq!(
            slice(&cites[1].text, cites[1].highlight),
            "Lunch is at noon."
        );
        // Nothing valid cited: no citations (the caller falls back).
        let none = check("Something else entirely [9].", &texts);
        assert!(generated_citations(&none, &passages).is_empty());
    }
}
