//! Text folding for the full-text column.

use pgrx::prelude::*;

/// Lower-cased text without diacritics ("Xin chào" → "xin chao"). Immutable,
/// so the generated `tsv` column of `transcript_chunks` can use it.
#[pg_extern(immutable, parallel_safe, strict)]
fn fold_text(input: &str) -> String {
    s2t_core::text::fold_for_search(input)
}
