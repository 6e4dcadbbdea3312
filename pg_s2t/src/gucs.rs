//! Every setting of the extension, in one place. They are defined when the
//! library loads (`_PG_init`); until then a `SET` makes a placeholder that
//! the load adopts.
//!
//! The model's files are superuser-only settings: a path a user could set
//! would let them make the server read any file it can.

use pgrx::guc::{GucContext, GucFlags, GucRegistry, GucSetting};
use std::ffi::CString;

/// Most words in a transcript chunk. About 150 words is about 200 tokens
/// of the embedding model, which reads at most 256.
pub static CHUNK_MAX_TOKENS: GucSetting<i32> = GucSetting::<i32>::new(150);
/// Sentences repeated at the start of the next chunk.
pub static CHUNK_OVERLAP_SENTENCES: GucSetting<i32> = GucSetting::<i32>::new(1);
/// A pause between segments at least this long (ms) ends a chunk.
pub static CHUNK_PAUSE_MS: GucSetting<i32> = GucSetting::<i32>::new(3000);

/// The name stored with the vectors of the configured model.
pub static EMBEDDING_MODEL: GucSetting<Option<CString>> =
    GucSetting::<Option<CString>>::new(Some(c"all-MiniLM-L6-v2-int8"));
/// The model's directory; empty means `<sharedir>/s2t_embed/<model>`.
pub static EMBEDDING_MODEL_DIR: GucSetting<Option<CString>> =
    GucSetting::<Option<CString>>::new(None);
/// The ONNX Runtime library; empty means `<sharedir>/s2t_embed/libonnxruntime.so`.
pub static ONNXRUNTIME_PATH: GucSetting<Option<CString>> = GucSetting::<Option<CString>>::new(None);

/// Reciprocal Rank Fusion's constant k.
pub static RRF_K: GucSetting<f64> = GucSetting::<f64>::new(60.0);
pub static DENSE_WEIGHT: GucSetting<f64> = GucSetting::<f64>::new(1.0);
/// Half the dense ranking's weight: bench/results/search_quality.json
/// (MRR@10 0.948 against 0.937 at 1.0, 0.941 dense only).
pub static LEXICAL_WEIGHT: GucSetting<f64> = GucSetting::<f64>::new(0.5);
/// Candidates each ranking contributes to the fusion (at least k).
pub static SEARCH_CANDIDATES: GucSetting<i32> = GucSetting::<i32>::new(40);
/// A search whose scope (the caller's visible chunks, narrowed by the
/// filters) holds fewer chunks than this ranks them exactly instead of
/// through the HNSW index.
pub static EXACT_SEARCH_BELOW: GucSetting<i32> = GucSetting::<i32>::new(20000);
/// hnsw.ef_search inside s2t.search (bench/results/search.json: recall@10
/// against exact search by ef_search).
pub static HNSW_EF_SEARCH: GucSetting<i32> = GucSetting::<i32>::new(100);
/// The relevance an answering sentence must reach, else "not found"
/// (calibrated on bench/results/ask.json's question set).
pub static ANSWER_MIN_RELEVANCE: GucSetting<f64> = GucSetting::<f64>::new(0.4);

pub fn string(setting: &GucSetting<Option<CString>>) -> Option<String> {
    setting
        .get()
        .and_then(|c| c.to_str().ok().map(str::to_owned))
        .filter(|s| !s.trim().is_empty())
}

pub fn define() {
    GucRegistry::define_int_guc(
        c"s2t.chunk_max_tokens",
        c"Most words in a transcript chunk.",
        c"About 150 words is about 200 tokens of the default embedding model.",
        &CHUNK_MAX_TOKENS,
        10,
        2000,
        GucContext::Userset,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"s2t.chunk_overlap_sentences",
        c"Sentences a chunk repeats from the end of the one before.",
        c"",
        &CHUNK_OVERLAP_SENTENCES,
        0,
        10,
        GucContext::Userset,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"s2t.chunk_pause_ms",
        c"A pause between segments at least this long ends a chunk.",
        c"",
        &CHUNK_PAUSE_MS,
        0,
        3_600_000,
        GucContext::Userset,
        GucFlags::UNIT_MS,
    );
    GucRegistry::define_string_guc(
        c"s2t.embedding_model",
        c"Name of the embedding model, stored with every vector.",
        c"Queries compare only with vectors of this model; workers re-embed chunks of other models.",
        &EMBEDDING_MODEL,
        GucContext::Suset,
        GucFlags::default(),
    );
    GucRegistry::define_string_guc(
        c"s2t.embedding_model_dir",
        c"Directory of the embedding model (model.onnx and tokenizer files).",
        c"Empty: <sharedir>/s2t_embed/<s2t.embedding_model>.",
        &EMBEDDING_MODEL_DIR,
        GucContext::Suset,
        GucFlags::default(),
    );
    GucRegistry::define_string_guc(
        c"s2t.onnxruntime_path",
        c"The ONNX Runtime shared library the embedding model runs on.",
        c"Empty: <sharedir>/s2t_embed/libonnxruntime.so. Loaded once per backend.",
        &ONNXRUNTIME_PATH,
        GucContext::Suset,
        GucFlags::default(),
    );
    GucRegistry::define_float_guc(
        c"s2t.rrf_k",
        c"The constant k of Reciprocal Rank Fusion.",
        c"",
        &RRF_K,
        1.0,
        10000.0,
        GucContext::Userset,
        GucFlags::default(),
    );
    GucRegistry::define_float_guc(
        c"s2t.dense_weight",
        c"Weight of the dense (embedding) ranking in the fusion.",
        c"",
        &DENSE_WEIGHT,
        0.0,
        100.0,
        GucContext::Userset,
        GucFlags::default(),
    );
    GucRegistry::define_float_guc(
        c"s2t.lexical_weight",
        c"Weight of the lexical (full-text) ranking in the fusion.",
        c"",
        &LEXICAL_WEIGHT,
        0.0,
        100.0,
        GucContext::Userset,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"s2t.search_candidates",
        c"Candidates each ranking contributes to the fusion (at least k).",
        c"",
        &SEARCH_CANDIDATES,
        1,
        1000,
        GucContext::Userset,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"s2t.exact_search_below",
        c"Rank a scope of fewer chunks than this exactly instead of through HNSW.",
        c"0 always uses the index.",
        &EXACT_SEARCH_BELOW,
        0,
        10_000_000,
        GucContext::Userset,
        GucFlags::default(),
    );
    GucRegistry::define_int_guc(
        c"s2t.hnsw_ef_search",
        c"hnsw.ef_search for the dense ranking of s2t.search when it uses the index.",
        c"Higher finds more of the exact nearest chunks, at more cost per search.",
        &HNSW_EF_SEARCH,
        1,
        1000,
        GucContext::Userset,
        GucFlags::default(),
    );
    GucRegistry::define_float_guc(
        c"s2t.answer_min_relevance",
        c"Relevance (0 to 1) a sentence needs to answer a question in s2t.ask.",
        c"0.8 of the cosine similarity of question and sentence plus 0.2 of the share of the question's words it holds; without the embedding model, the share of words alone, against the larger of this and 0.5.",
        &ANSWER_MIN_RELEVANCE,
        0.0,
        1.0,
        GucContext::Userset,
        GucFlags::default(),
    );
}
