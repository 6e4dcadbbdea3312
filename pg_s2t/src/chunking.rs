//! The shell of `s2t.chunk_recording`: the cutting itself is
//! `s2t_core::chunk`; the SQL side (`sql/search.sql`) reads the segments
//! and stores the plan.

use crate::gucs;
use pgrx::prelude::*;

/// The chunks of a transcript given as parallel arrays (in `idx` order),
/// cut with the `s2t.chunk_*` settings.
// pgrx reads the result columns from the literal tuple, so no type alias.
#[allow(clippy::type_complexity)]
#[pg_extern(stable, parallel_safe)]
fn _chunk_plan(
    idx: Vec<i32>,
    start_ms: Vec<i32>,
    end_ms: Vec<i32>,
    texts: Vec<String>,
) -> TableIterator<
    'static,
    (
        name!(chunk_index, i32),
        name!(start_ms, i32),
        name!(end_ms, i32),
        name!(first_segment_idx, i32),
        name!(last_segment_idx, i32),
        name!(text, String),
        name!(token_count, i32),
        name!(content_hash, String),
    ),
> {
    let n = idx.len();
    if start_ms.len() != n || end_ms.len() != n || texts.len() != n {
        ereport!(
            ERROR,
            PgSqlErrorCode::ERRCODE_INVALID_PARAMETER_VALUE,
            "the segment arrays differ in length"
        );
    }
    let segments: Vec<s2t_core::chunk::Segment> = (0..n)
        .map(|i| s2t_core::chunk::Segment {
            idx: idx[i],
            start_ms: start_ms[i],
            end_ms: end_ms[i],
            text: &texts[i],
        })
        .collect();
    let cfg = s2t_core::chunk::ChunkConfig {
        max_tokens: gucs::CHUNK_MAX_TOKENS.get().max(1) as usize,
        overlap_sentences: gucs::CHUNK_OVERLAP_SENTENCES.get().max(0) as usize,
        pause_ms: gucs::CHUNK_PAUSE_MS.get(),
    };
    let rows: Vec<_> = s2t_core::chunk::chunk_transcript(&segments, &cfg)
        .into_iter()
        .map(|c| {
            (
                c.index as i32,
                c.start_ms,
                c.end_ms,
                c.first_idx,
                c.last_idx,
                c.text,
                c.tokens.min(i32::MAX as usize) as i32,
                c.hash,
            )
        })
        .collect();
    TableIterator::new(rows)
}
