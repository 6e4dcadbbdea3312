//! Text folding, query embedding and the pure parts of hybrid search
//! (query terms, highlights, rank fusion from `s2t_core::search`).
//!
//! The embedding model is loaded lazily, once per backend, on the first
//! query that needs it, with one ONNX Runtime thread; a backend whose load
//! failed remembers why and does not retry (reconnect after fixing it).

use crate::gucs;
use pgrx::prelude::*;
use std::cell::RefCell;
use std::path::PathBuf;

/// Lower-cased text without diacritics ("Xin chào" → "xin chao"). Immutable,
/// so the generated `tsv` column of `transcript_chunks` can use it.
#[pg_extern(immutable, parallel_safe, strict)]
fn fold_text(input: &str) -> String {
    s2t_core::text::fold_for_search(input)
}

thread_local! {
    static MODEL: RefCell<Option<Result<s2t_embed::Embedder, String>>> = const { RefCell::new(None) };
}

fn share_dir() -> PathBuf {
    let mut buf = [0 as std::ffi::c_char; pg_sys::MAXPGPATH as usize];
    // SAFETY: my_exec_path is set at backend start; buf has MAXPGPATH bytes.
    unsafe {
        pg_sys::get_share_path(
            std::ptr::addr_of!(pg_sys::my_exec_path).cast(),
            buf.as_mut_ptr(),
        );
        PathBuf::from(
            std::ffi::CStr::from_ptr(buf.as_ptr())
                .to_string_lossy()
                .into_owned(),
        )
    }
}

/// The configured model's name (`s2t.embedding_model`).
#[pg_extern(stable, parallel_safe)]
fn embedding_model() -> String {
    embedding_model_name()
}

pub(crate) fn embedding_model_name() -> String {
    gucs::string(&gucs::EMBEDDING_MODEL).unwrap_or_else(|| s2t_embed::DEFAULT_MODEL.to_owned())
}

fn config() -> s2t_embed::Config {
    let name = embedding_model();
    let root = share_dir().join("s2t_embed");
    s2t_embed::Config {
        runtime: gucs::string(&gucs::ONNXRUNTIME_PATH)
            .map(PathBuf::from)
            .unwrap_or_else(|| root.join("libonnxruntime.so")),
        model_dir: gucs::string(&gucs::EMBEDDING_MODEL_DIR)
            .map(PathBuf::from)
            .unwrap_or_else(|| root.join(&name)),
        name,
        threads: 1,
    }
}

/// Embed with the backend's model, loading it first if need be.
fn try_embed(text: &str) -> Result<Vec<f32>, String> {
    try_embed_batch(&[text]).and_then(|mut v| v.pop().ok_or_else(|| "no vector".to_owned()))
}

/// Embed several texts in one batch with the backend's model.
pub(crate) fn try_embed_batch<S: AsRef<str> + Send + Sync>(
    texts: &[S],
) -> Result<Vec<Vec<f32>>, String> {
    MODEL.with(|cell| {
        let mut slot = cell.borrow_mut();
        if slot.is_none() {
            let loaded = s2t_embed::Embedder::load(&config()).map_err(|e| e.to_string());
            // The load's allocations are freed but kept by malloc otherwise.
            unsafe { libc_malloc_trim() };
            *slot = Some(loaded);
        }
        match slot.as_mut().expect("set above") {
            Ok(model) => model.embed(texts).map_err(|e| e.to_string()),
            Err(why) => Err(why.clone()),
        }
    })
}

unsafe extern "C" {
    fn malloc_trim(pad: usize) -> i32;
}

unsafe fn libc_malloc_trim() {
    // SAFETY: glibc's malloc_trim only returns free memory to the system.
    unsafe {
        malloc_trim(0);
    }
}

/// Whether this backend can embed: loads the model if no call has tried
/// yet, and answers from that attempt afterwards (so it is free after a
/// search).
#[pg_extern(volatile, parallel_restricted)]
fn embedding_available() -> bool {
    MODEL.with(|cell| {
        if cell.borrow().is_none() {
            let _ = try_embed("");
        }
        matches!(cell.borrow().as_ref(), Some(Ok(_)))
    })
}

/// The query's vector, or an error (SQLSTATE 58P01 when the model or the
/// runtime cannot be loaded). Wrapped by `s2t.embed`.
#[pg_extern(volatile, parallel_restricted, strict)]
fn _embed_query(text: &str) -> Vec<f32> {
    let result = try_embed(text);
    if let Err(why) = &result {
        ereport!(
            ERROR,
            PgSqlErrorCode::ERRCODE_UNDEFINED_FILE,
            format!("the embedding model is not available: {why}"),
            "Run `make models` and reinstall the extension, or set s2t.embedding_model_dir and s2t.onnxruntime_path."
        );
    }
    result.unwrap_or_default()
}

/// The query's vector, or NULL with a NOTICE saying why (search then ranks
/// by words alone).
#[pg_extern(volatile, parallel_restricted, strict)]
fn _embed_or_null(text: &str) -> Option<Vec<f32>> {
    match try_embed(text) {
        Ok(v) => Some(v),
        Err(why) => {
            ereport!(
                NOTICE,
                PgSqlErrorCode::ERRCODE_SUCCESSFUL_COMPLETION,
                format!("the embedding model is not available, so this search ranks by words only: {why}")
            );
            None
        }
    }
}

/// The folded words of a query that the lexical ranking matches.
#[pg_extern(immutable, parallel_safe, strict)]
fn _query_terms(query: &str) -> Vec<String> {
    s2t_core::search::query_terms(query)
}

/// `[[start, end], ...]`: character offsets in `text` of the words in
/// `terms` (folded), for highlighting.
#[pg_extern(immutable, parallel_safe, strict)]
fn _highlights(text: &str, terms: Vec<String>) -> pgrx::JsonB {
    let spans = s2t_core::search::highlight_spans(text, &terms);
    pgrx::JsonB(serde_json::json!(spans
        .into_iter()
        .map(|(s, e)| [s, e])
        .collect::<Vec<_>>()))
}

/// Reciprocal Rank Fusion of two rankings (best first) with the
/// `s2t.rrf_k`, `s2t.dense_weight` and `s2t.lexical_weight` settings.
#[pg_extern(stable, parallel_safe)]
fn _rrf(
    dense: Option<Vec<pgrx::Uuid>>,
    lexical: Option<Vec<pgrx::Uuid>>,
    k: i32,
) -> TableIterator<
    'static,
    (
        name!(chunk_id, pgrx::Uuid),
        name!(score, f64),
        name!(dense_rank, Option<i32>),
        name!(lexical_rank, Option<i32>),
    ),
> {
    let bytes = |v: Option<Vec<pgrx::Uuid>>| -> Vec<[u8; 16]> {
        v.unwrap_or_default()
            .iter()
            .map(|u| *u.as_bytes())
            .collect()
    };
    let fused = s2t_core::search::rrf(
        &bytes(dense),
        &bytes(lexical),
        gucs::RRF_K.get(),
        gucs::DENSE_WEIGHT.get(),
        gucs::LEXICAL_WEIGHT.get(),
        k.max(0) as usize,
    );
    TableIterator::new(fused.into_iter().map(|f| {
        (
            pgrx::Uuid::from_bytes(f.id),
            f.score,
            f.dense_rank.map(|r| r as i32),
            f.lexical_rank.map(|r| r as i32),
        )
    }))
}
