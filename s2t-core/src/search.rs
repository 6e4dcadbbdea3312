//! The pure parts of hybrid search: which words of a query count, where
//! they occur in a passage (for highlighting), and Reciprocal Rank Fusion
//! of the dense and the lexical ranking. The extension's `s2t.search` calls
//! these through thin `#[pg_extern]` shells.
//!
//! Words are compared folded (lower-case, no diacritics, see
//! [`crate::text`]), so "hop ke hoach" matches "họp kế hoạch".

use crate::text::fold_for_search;
use std::collections::HashMap;

/// Function words of English and Vietnamese that carry no topic. They are
/// dropped from the lexical query (a question's "what did we ..." would
/// otherwise match every passage), but kept when nothing else is left.
/// Folded forms, so the Vietnamese ones are written without diacritics.
const STOPWORDS: &[&str] = &[
    // English
    "a", "about", "an", "and", "are", "as", "at", "be", "been", "but", "by", "can", "did", "do",
    "does", "for", "from", "had", "has", "have", "how", "i", "in", "is", "it", "its", "me", "my",
    "of", "on", "or", "our", "so", "that", "the", "their", "them", "there", "they", "this", "to",
    "us", "was", "we", "were", "what", "when", "where", "which", "who", "why", "will", "with",
    "would", "you", "your", // Vietnamese (folded)
    "ai", "cac", "chung", "co", "cua", "da", "den", "di", "duoc", "gi", "khi", "khong", "la",
    "lam", "mot", "nao", "nay", "nhu", "nhung", "o", "ra", "rang", "roi", "se", "ta", "thi", "toi",
    "trong", "va", "ve", "voi",
];

/// The distinct folded words of `query` worth matching: letters and digits
/// only, stopwords dropped unless the query has nothing else, at most 32.
pub fn query_terms(query: &str) -> Vec<String> {
    let words = folded_words(query);
    let mut all: Vec<String> = Vec::new();
    for (_, _, w) in &words {
        if !all.contains(w) {
            all.push(w.clone());
        }
    }
    let content: Vec<String> = all
        .iter()
        .filter(|w| !STOPWORDS.contains(&w.as_str()))
        .cloned()
        .collect();
    let mut out = if content.is_empty() { all } else { content };
    out.truncate(32);
    out
}

/// The folded words of `text` that carry meaning (stopwords dropped), in
/// order, repeats kept: what answer selection and citation checks compare.
pub fn content_words(text: &str) -> Vec<String> {
    folded_words(text)
        .into_iter()
        .map(|(_, _, w)| w)
        .filter(|w| !STOPWORDS.contains(&w.as_str()))
        .collect()
}

/// `text` split into words (runs of letters or digits), each with its start
/// and end offset in characters and its folded form.
pub(crate) fn folded_words(text: &str) -> Vec<(usize, usize, String)> {
    let mut out = Vec::new();
    let mut start: Option<usize> = None;
    let mut word = String::new();
    let mut n = 0usize;
    for (i, c) in text.chars().enumerate() {
        n = i + 1;
        if c.is_alphanumeric() {
            start.get_or_insert(i);
            word.push(c);
        } else if let Some(s) = start.take() {
            out.push((s, i, fold_for_search(&word)));
            word.clear();
        }
    }
    if let Some(s) = start {
        out.push((s, n, fold_for_search(&word)));
    }
    out
}

/// Where the `terms` (folded words, as from [`query_terms`]) occur in
/// `text`: `[start, end)` offsets in characters, in order, for the
/// highlighting of a hit.
pub fn highlight_spans(text: &str, terms: &[String]) -> Vec<(usize, usize)> {
    if terms.is_empty() {
        return Vec::new();
    }
    folded_words(text)
        .into_iter()
        .filter(|(_, _, w)| terms.iter().any(|t| t == w))
        .map(|(s, e, _)| (s, e))
        .collect()
}

/// One fused hit: the fused score and the 1-based rank in each list that
/// had it.
#[derive(Debug, Clone, PartialEq)]
pub struct Fused<T> {
    pub id: T,
    pub score: f64,
    pub dense_rank: Option<usize>,
    pub lexical_rank: Option<usize>,
}

/// Reciprocal Rank Fusion: each list, best first, adds `weight / (k + rank)`
/// for every item it ranks. Returns the best `limit`, highest score first;
/// ties go to the better dense rank, then the better lexical rank, so the
/// order is deterministic.
pub fn rrf<T: Clone + Eq + std::hash::Hash>(
    dense: &[T],
    lexical: &[T],
    k: f64,
    dense_weight: f64,
    lexical_weight: f64,
    limit: usize,
) -> Vec<Fused<T>> {
    let mut by_id: HashMap<T, Fused<T>> = HashMap::new();
    for (list, weight, is_dense) in [
        (dense, dense_weight, true),
        (lexical, lexical_weight, false),
    ] {
        for (i, id) in list.iter().enumerate() {
            let rank = i + 1;
            let entry = by_id.entry(id.clone()).or_insert_with(|| Fused {
                id: id.clone(),
                score: 0.0,
                dense_rank: None,
                lexical_rank: None,
            });
            let slot = if is_dense {
                &mut entry.dense_rank
            } else {
                &mut entry.lexical_rank
            };
            // A list that names an item twice counts it once, at its best.
            if slot.is_none() {
                *slot = Some(rank);
                entry.score += weight / (k + rank as f64);
            }
        }
    }
    let mut out: Vec<Fused<T>> = by_id.into_values().collect();
    out.sort_by(|a, b| {
        b.score
            .total_cmp(&a.score)
            .then(rank_key(a.dense_rank).cmp(&rank_key(b.dense_rank)))
            .then(rank_key(a.lexical_rank).cmp(&rank_key(b.lexical_rank)))
    });
    out.truncate(limit);
    out
}

fn rank_key(rank: Option<usize>) -> usize {
    rank.unwrap_or(usize::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_terms_are_folded_deduplicated_and_without_function_words() {
        assert_eq!(
            query_terms("What did we decide about the Budget? budget!"),
            vec!["decide", "budget"]
        );
        assert_eq!(
            query_terms("Chúng ta đã họp về kế hoạch gì?"),
            vec!["hop", "ke", "hoach"]
        );
        // Only function words: keep them rather than search for nothing.
        assert_eq!(query_terms("what is it"), vec!["what", "is", "it"]);
        assert!(query_terms("  ?! ").is_empty());
    }

    #[test]
    fn highlight_spans_are_character_offsets_of_folded_matches() {
        let text = "Hôm nay chúng ta họp kế hoạch. Kế hoạch mới!";
        let spans = highlight_spans(text, &query_terms("hop ke hoach"));
        let chars: Vec<char> = text.chars().collect();
        let words: Vec<String> = spans
            .iter()
            .map(|&(s, e)| chars[s..e].iter().collect())
            .collect();
        assert_eq!(words, vec!["họp", "kế", "hoạch", "Kế", "hoạch"]);
        // A word inside another word is not a match.
        assert!(highlight_spans("budgetary", &["budget".into()]).is_empty());
        // At the very end of the text.
        assert_eq!(
            highlight_spans("the budget", &["budget".into()]),
            vec![(4, 10)]
        );
    }

    #[test]
    fn rrf_rewards_items_both_lists_rank() {
        let dense = ["a", "b", "c"];
        let lexical = ["c", "d"];
        let fused = rrf(&dense, &lexical, 60.0, 1.0, 1.0, 10);
        assert_eq!(fused[0].id, "c");
        assert_eq!(fused[0].dense_rank, Some(3));
        assert_eq!(fused[0].lexical_rank, Some(1));
        assert!((fused[0].score - (1.0 / 63.0 + 1.0 / 61.0)).abs() < 1e-12);
        let ids: Vec<&str> = fused.iter().map(|f| f.id).collect();
        // a has 1/61; b (dense 2) and d (lexical 2) tie at 1/62, and the
        // dense rank breaks the tie.
        assert_eq!(ids, vec!["c", "a", "b", "d"]);
    }

    #[test]
    fn rrf_weights_ties_limit_and_duplicates() {
        // Equal scores: the dense rank breaks the tie.
        let fused = rrf(&["x"], &["y"], 60.0, 1.0, 1.0, 10);
        assert_eq!(fused[0].id, "x");
        // A zero weight keeps the list's ranks but not its score.
        let fused = rrf(&["x"], &["y"], 60.0, 0.0, 1.0, 10);
        assert_eq!(fused[0].id, "y");
        assert_eq!(fused[1].dense_rank, Some(1));
        assert_eq!(fused[1].score, 0.0);
        // The limit, and an item listed twice counts once.
        let fused = rrf(&["x", "x", "z"], &[], 60.0, 1.0, 1.0, 1);
        assert_eq!(fused.len(), 1);
        assert!((fused[0].score - 1.0 / 61.0).abs() < 1e-12);
        assert!(rrf::<u32>(&[], &[], 60.0, 1.0, 1.0, 5).is_empty());
    }
}
