//! Answers from the caller's own transcripts: the pgrx shells over
//! `s2t_core::answer` behind `s2t.ask` (extractive answers, the sentences
//! embedded with the backend's model) and `s2t.ask_context` (the prompt).

use crate::{gucs, search};
use pgrx::prelude::*;
use s2t_core::answer::{self, Lang, Passage, SelectConfig};

/// Without vectors a sentence must hold at least this share of the
/// question's words.
const MIN_WORD_SHARE: f32 = 0.5;

fn passages(json: pgrx::JsonB) -> Vec<Passage> {
    serde_json::from_value(json.0).unwrap_or_else(|e| {
        ereport!(
            ERROR,
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            format!("passages must be the array s2t.ask_context returns: {e}")
        );
    })
}

/// The extractive answer to `question` from `passages` (as
/// `s2t.ask_context` lists them): `{found, answer, citations,
/// best_relevance, scored_by}`, where `scored_by` is the embedding model,
/// `"words"` when the model is not available, or null when there was
/// nothing to score.
#[pg_extern(volatile, parallel_restricted)]
fn _extract_answer(
    question: &str,
    passages: pgrx::JsonB,
    lang: default!(&str, "'en'"),
    max_sentences: default!(i32, 3),
) -> pgrx::JsonB {
    let passages = self::passages(passages);
    if !(1..=10).contains(&max_sentences) {
        ereport!(
            ERROR,
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            format!("max_sentences must be 1 to 10, got {max_sentences}")
        );
    }
    let mut texts = vec![question.to_owned()];
    texts.extend(
        answer::candidates(&passages)
            .into_iter()
            .map(|(p, span)| answer::slice(&passages[p].text, span)),
    );
    // Nothing to embed when nothing was retrieved.
    let vectors = if texts.len() > 1 {
        search::try_embed_batch(&texts).ok()
    } else {
        None
    };
    let min = gucs::ANSWER_MIN_RELEVANCE.get() as f32;
    let cfg = SelectConfig {
        max_sentences: max_sentences as usize,
        min_relevance: if vectors.is_some() {
            min
        } else {
            min.max(MIN_WORD_SHARE)
        },
        ..SelectConfig::default()
    };
    let out = answer::answer(
        question,
        &passages,
        vectors.as_deref(),
        &cfg,
        Lang::from_tag(lang),
    );
    let mut json = serde_json::to_value(&out).unwrap_or_default();
    json["scored_by"] = if vectors.is_some() {
        search::embedding_model_name().into()
    } else if texts.len() > 1 {
        "words".into()
    } else {
        serde_json::Value::Null
    };
    pgrx::JsonB(json)
}

/// The chat messages that ask a model to answer from the passages.
#[pg_extern(immutable, parallel_safe, strict)]
fn _ask_prompt(question: &str, passages: pgrx::JsonB) -> pgrx::JsonB {
    pgrx::JsonB(answer::prompt(question, &self::passages(passages)))
}
