-- Search: chunking transcripts, the embedding queue, and hybrid search.
--
-- complete_recording chunks a transcript in its own transaction, so every
-- done recording is searchable by words at once and by meaning as soon as a
-- worker has embedded its chunks (claim_chunks_to_embed and
-- store_chunk_embeddings, with a lease like the job queue's).

-- The embedding queue: a chunk needs a vector while embedding is NULL (or
-- is of another model). A claim leases it for a while; a worker that dies
-- loses the lease and the chunk is claimed again.
CREATE INDEX transcript_chunks_unembedded_idx ON transcript_chunks (embed_lease_until NULLS FIRST, id)
    WHERE embedding IS NULL;
CREATE INDEX transcript_chunks_model_idx ON transcript_chunks (embedding_model);

-- The plan of one chunking, held in a variable (not a temporary table,
-- which the caller could have created first with a trigger of its own).
CREATE TYPE chunk_plan AS (
    chunk_index int, start_ms int, end_ms int, first_segment_idx int, last_segment_idx int,
    text text, token_count int, content_hash text
);
COMMENT ON TYPE chunk_plan IS 'Internal: one chunk as s2t._chunk_plan cuts it.';

CREATE FUNCTION chunk_recording(in_recording_id uuid) RETURNS int
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = s2t, pg_catalog, pg_temp
AS $$
DECLARE
    v_user uuid;
    v_plan chunk_plan[];
    v_old transcript_chunks[];
    v_same boolean;
BEGIN
    -- Chunkings of one recording serialise on its row.
    SELECT user_id INTO v_user FROM recordings WHERE id = in_recording_id FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION USING ERRCODE = 'S2N01', MESSAGE = format('recording %s not found', in_recording_id);
    END IF;
    PERFORM _assert_may_act_for(v_user);

    SELECT coalesce(array_agg(ROW(p.*)::chunk_plan ORDER BY p.chunk_index), '{}') INTO v_plan
      FROM _chunk_plan(
        ARRAY(SELECT s.idx FROM segments s WHERE s.recording_id = in_recording_id ORDER BY s.idx),
        ARRAY(SELECT s.start_ms FROM segments s WHERE s.recording_id = in_recording_id ORDER BY s.idx),
        ARRAY(SELECT s.end_ms FROM segments s WHERE s.recording_id = in_recording_id ORDER BY s.idx),
        ARRAY(SELECT s.text FROM segments s WHERE s.recording_id = in_recording_id ORDER BY s.idx)
      ) p;

    -- Unchanged: write nothing (ids, vectors and leases stay as they are).
    SELECT NOT EXISTS (
        (SELECT p.chunk_index, p.start_ms, p.end_ms, p.first_segment_idx, p.last_segment_idx, p.content_hash
           FROM unnest(v_plan) p
         EXCEPT ALL
         SELECT c.chunk_index, c.start_ms, c.end_ms, c.first_segment_idx, c.last_segment_idx, c.content_hash
           FROM transcript_chunks c WHERE c.recording_id = in_recording_id)
        UNION ALL
        (SELECT c.chunk_index, c.start_ms, c.end_ms, c.first_segment_idx, c.last_segment_idx, c.content_hash
           FROM transcript_chunks c WHERE c.recording_id = in_recording_id
         EXCEPT ALL
         SELECT p.chunk_index, p.start_ms, p.end_ms, p.first_segment_idx, p.last_segment_idx, p.content_hash
           FROM unnest(v_plan) p)
    ) INTO v_same;
    IF v_same THEN
        RETURN cardinality(v_plan);
    END IF;

    -- Changed: replace the chunks, but a chunk whose text is unchanged keeps
    -- its id and its vector (matched by content hash; repeated texts pair
    -- up in order).
    SELECT coalesce(array_agg(c ORDER BY c.chunk_index), '{}') INTO v_old
      FROM transcript_chunks c WHERE c.recording_id = in_recording_id;
    DELETE FROM transcript_chunks WHERE recording_id = in_recording_id;
    INSERT INTO transcript_chunks (id, recording_id, user_id, chunk_index, start_ms, end_ms,
                                   first_segment_idx, last_segment_idx, text, token_count, content_hash,
                                   embedding, embedding_model)
    SELECT coalesce(o.id, gen_random_uuid()), in_recording_id, v_user, p.chunk_index, p.start_ms, p.end_ms,
           p.first_segment_idx, p.last_segment_idx, p.text, p.token_count, p.content_hash,
           o.embedding, o.embedding_model
      FROM (SELECT u.*, row_number() OVER (PARTITION BY u.content_hash ORDER BY u.chunk_index) AS nth
              FROM unnest(v_plan) u) p
      LEFT JOIN (SELECT u.id, u.content_hash, u.embedding, u.embedding_model,
                        row_number() OVER (PARTITION BY u.content_hash ORDER BY u.chunk_index) AS nth
                   FROM unnest(v_old) u) o
        ON o.content_hash = p.content_hash AND o.nth = p.nth;
    IF EXISTS (SELECT FROM transcript_chunks c WHERE c.recording_id = in_recording_id AND c.embedding IS NULL) THEN
        PERFORM pg_notify('s2t_embed', in_recording_id::text);
    END IF;
    RETURN cardinality(v_plan);
END
$$;
COMMENT ON FUNCTION chunk_recording(uuid) IS 'Cuts the recording''s segments into search chunks (s2t.chunk_max_tokens words, s2t.chunk_overlap_sentences of overlap, a cut at pauses of s2t.chunk_pause_ms, never mid-word) and stores them with their times, segment idx range and content hash. Idempotent: an unchanged transcript writes nothing, and a chunk whose text is unchanged keeps its id and vector. Returns the number of chunks. complete_recording calls it. Errors: S2N01 unknown recording.';

CREATE FUNCTION claim_chunks_to_embed(in_model text, in_limit int DEFAULT 32, in_lease interval DEFAULT interval '5 minutes')
RETURNS TABLE (chunk_id uuid, content_hash text, text text)
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = s2t, pg_catalog, pg_temp
AS $$
BEGIN
    IF in_model IS NULL OR btrim(in_model) = '' THEN
        RAISE EXCEPTION USING ERRCODE = 'S2V01', MESSAGE = 'the model name must not be empty', DETAIL = 'field: in_model';
    END IF;
    IF in_limit IS NULL OR in_limit NOT BETWEEN 1 AND 1000 THEN
        RAISE EXCEPTION USING ERRCODE = 'S2V01', MESSAGE = format('limit must be 1 to 1000, got %s', in_limit),
            DETAIL = 'field: in_limit';
    END IF;
    IF in_lease IS NULL OR in_lease < interval '1 second' OR in_lease > interval '1 day' THEN
        RAISE EXCEPTION USING ERRCODE = 'S2V01', MESSAGE = format('lease must be between 1 second and 1 day, got %s', in_lease),
            DETAIL = 'field: in_lease';
    END IF;
    RETURN QUERY
    WITH unembedded AS (
        SELECT c.id FROM transcript_chunks c
         WHERE c.embedding IS NULL AND (c.embed_lease_until IS NULL OR c.embed_lease_until <= now())
         ORDER BY c.embed_lease_until NULLS FIRST, c.id
         LIMIT in_limit FOR UPDATE SKIP LOCKED
    ), other_model AS (
        -- Vectors of another model are re-embedded after the missing ones.
        SELECT c.id FROM transcript_chunks c
         WHERE (c.embedding_model < in_model OR c.embedding_model > in_model)
           AND (c.embed_lease_until IS NULL OR c.embed_lease_until <= now())
           AND NOT EXISTS (SELECT FROM unembedded)
         LIMIT in_limit FOR UPDATE SKIP LOCKED
    ), chosen AS (
        SELECT id FROM unembedded UNION ALL SELECT id FROM other_model
    )
    UPDATE transcript_chunks c
       SET embed_lease_until = now() + in_lease, embed_attempts = c.embed_attempts + 1
      FROM chosen WHERE c.id = chosen.id
    RETURNING c.id, c.content_hash, c.text;
END
$$;
COMMENT ON FUNCTION claim_chunks_to_embed(text, int, interval) IS 'The worker''s claim of up to in_limit chunks that have no vector of model in_model, leased for in_lease: a worker that dies loses the lease and the chunks are claimed again. Chunks without a vector come first. Errors: S2V01 bad arguments.';

CREATE FUNCTION store_chunk_embeddings(in_model text, in_ids uuid[], in_hashes text[], in_vectors real[])
RETURNS int
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = s2t, pg_catalog, pg_temp
AS $$
DECLARE
    v_n int := coalesce(cardinality(in_ids), 0);
    v_dim constant int := 384;
    v_stored int;
BEGIN
    IF in_model IS NULL OR btrim(in_model) = '' THEN
        RAISE EXCEPTION USING ERRCODE = 'S2V01', MESSAGE = 'the model name must not be empty', DETAIL = 'field: in_model';
    END IF;
    IF coalesce(cardinality(in_hashes), 0) <> v_n OR coalesce(cardinality(in_vectors), 0) <> v_n * v_dim THEN
        RAISE EXCEPTION USING ERRCODE = 'S2V01',
            MESSAGE = format('expected %s hashes and %s floats for %s chunks, got %s and %s',
                             v_n, v_n * v_dim, v_n, coalesce(cardinality(in_hashes), 0), coalesce(cardinality(in_vectors), 0)),
            HINT = 'Pass the vectors flattened, 384 floats per chunk, in the order of in_ids.';
    END IF;
    -- Only a chunk still without a vector of this model and with the text
    -- that was embedded takes it: a repeat or a late worker changes nothing,
    -- and a chunk re-cut meanwhile waits for a new claim.
    UPDATE transcript_chunks c
       SET embedding = (in_vectors[(v.ord - 1) * v_dim + 1 : v.ord * v_dim])::@extschema:vector@.vector,
           embedding_model = in_model, embed_lease_until = NULL
      FROM unnest(in_ids, in_hashes) WITH ORDINALITY AS v(id, content_hash, ord)
     WHERE c.id = v.id AND c.content_hash = v.content_hash
       AND (c.embedding IS NULL OR c.embedding_model IS DISTINCT FROM in_model);
    GET DIAGNOSTICS v_stored = ROW_COUNT;
    RETURN v_stored;
END
$$;
COMMENT ON FUNCTION store_chunk_embeddings(text, uuid[], text[], real[]) IS 'The worker stores the vectors of claimed chunks (384 floats each, flattened in the order of in_ids). A chunk takes its vector once: only while it has none of model in_model and its content hash still matches. Returns how many were stored. Errors: S2V01 mismatched arrays.';

CREATE FUNCTION embedding_backlog() RETURNS TABLE (unembedded bigint, other_model bigint, leased bigint)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = s2t, pg_catalog, pg_temp
AS $$
    SELECT count(*) FILTER (WHERE embedding IS NULL),
           count(*) FILTER (WHERE embedding IS NOT NULL AND embedding_model IS DISTINCT FROM s2t.embedding_model()),
           count(*) FILTER (WHERE embed_lease_until > now())
      FROM transcript_chunks
$$;
COMMENT ON FUNCTION embedding_backlog() IS 'Chunks waiting for a vector: without one, with one of another model than s2t.embedding_model, and leased to a worker now.';

-- The query's vector. IMMUTABLE so that ORDER BY embedding <=> s2t.embed('q')
-- computes it once and can use the HNSW index; PARALLEL RESTRICTED so that
-- parallel workers do not each load the model.
CREATE FUNCTION embed(query text) RETURNS @extschema:vector@.vector
LANGUAGE sql IMMUTABLE STRICT PARALLEL RESTRICTED
AS $$ SELECT s2t._embed_query(query)::@extschema:vector@.vector $$;
COMMENT ON FUNCTION embed(text) IS 'The embedding of a text with the model s2t.embedding_model (384 dimensions, unit length), loaded once per backend on first use. Errors: 58P01 when the model or ONNX Runtime cannot be loaded.';

CREATE FUNCTION _search(
    in_query text, in_query_embedding @extschema:vector@.vector, in_k int, in_recording_id uuid,
    in_since timestamptz, in_until timestamptz, in_language text
) RETURNS TABLE (
    chunk_id uuid, recording_id uuid, title text, recording_created_at timestamptz,
    start_ms int, end_ms int, text text, score double precision, dense_rank int, lexical_rank int,
    highlights jsonb
)
LANGUAGE plpgsql STABLE PARALLEL RESTRICTED
SET search_path = s2t, pg_catalog, pg_temp
SET hnsw.iterative_scan = 'relaxed_order'
-- A value the body replaces from s2t.hnsw_ef_search; the clause makes
-- PostgreSQL restore the caller's own setting when the function returns.
SET hnsw.ef_search = 40
AS $$
#variable_conflict use_column
DECLARE
    v_terms text[];
    v_tsq tsquery;
    -- A call into the library first: it defines the s2t.* settings read next.
    v_model text := s2t.embedding_model();
    v_n int;
    v_exact boolean := false;
    v_threshold int := current_setting('s2t.exact_search_below', true)::int;
    v_dense uuid[];
    v_lexical uuid[];
BEGIN
    IF in_k IS NULL OR in_k NOT BETWEEN 1 AND 100 THEN
        RAISE EXCEPTION USING ERRCODE = 'S2V01', MESSAGE = format('k must be 1 to 100, got %s', in_k),
            DETAIL = 'field: k';
    END IF;
    IF in_query IS NULL OR btrim(in_query) = '' OR length(in_query) > 2000 THEN
        RAISE EXCEPTION USING ERRCODE = 'S2V01', MESSAGE = 'the query must be 1 to 2000 characters',
            DETAIL = 'field: query';
    END IF;
    IF in_since IS NOT NULL AND in_until IS NOT NULL AND in_since > in_until THEN
        RAISE EXCEPTION USING ERRCODE = 'S2V01', MESSAGE = 'since must not be after until', DETAIL = 'field: since';
    END IF;
    IF in_query_embedding IS NOT NULL AND @extschema:vector@.vector_dims(in_query_embedding) <> 384 THEN
        RAISE EXCEPTION USING ERRCODE = 'S2V01',
            MESSAGE = format('query_embedding must have 384 dimensions, got %s', @extschema:vector@.vector_dims(in_query_embedding)),
            DETAIL = 'field: query_embedding', HINT = format('Embed with s2t.embed or the model %s.', v_model);
    END IF;
    -- A recording the caller cannot see is as unknown as one that does not exist.
    IF in_recording_id IS NOT NULL
       AND NOT EXISTS (SELECT FROM recordings r WHERE r.id = in_recording_id) THEN
        RAISE EXCEPTION USING ERRCODE = 'S2N01', MESSAGE = format('recording %s not found', in_recording_id),
            DETAIL = 'field: recording_id';
    END IF;
    v_n := greatest(in_k, coalesce(current_setting('s2t.search_candidates', true)::int, 40));
    v_terms := _query_terms(in_query);
    IF cardinality(v_terms) > 0 THEN
        v_tsq := to_tsquery('simple', array_to_string(v_terms, ' | '));
    END IF;

    IF in_query_embedding IS NOT NULL THEN
        -- Small scopes (a user's own chunks, one recording) are ranked
        -- exactly: cheaper than walking the index past other users' rows,
        -- and with perfect recall.
        IF coalesce(v_threshold, 0) > 0 THEN
            SELECT count(*) < v_threshold INTO v_exact FROM (
                SELECT FROM transcript_chunks c
                 WHERE c.embedding_model = v_model
                   AND (in_recording_id IS NULL OR c.recording_id = in_recording_id)
                 LIMIT v_threshold) s;
        END IF;
        IF v_exact THEN
            SELECT array_agg(id ORDER BY d) INTO v_dense FROM (
                SELECT c.id, (c.embedding <=> in_query_embedding) + 0 AS d
                  FROM transcript_chunks c JOIN recordings r ON r.id = c.recording_id
                 WHERE c.embedding_model = v_model
                   AND (in_recording_id IS NULL OR c.recording_id = in_recording_id)
                   AND (in_since IS NULL OR r.created_at >= in_since)
                   AND (in_until IS NULL OR r.created_at < in_until)
                   AND (in_language IS NULL OR r.language = in_language)
                 ORDER BY d LIMIT v_n) s;
        ELSE
            PERFORM set_config('hnsw.ef_search', coalesce(current_setting('s2t.hnsw_ef_search', true), '100'), true);
            -- relaxed_order: the index may return near-ties out of order;
            -- the outer sort puts them right.
            SELECT array_agg(id ORDER BY d) INTO v_dense FROM (
                SELECT c.id, c.embedding <=> in_query_embedding AS d
                  FROM transcript_chunks c JOIN recordings r ON r.id = c.recording_id
                 WHERE c.embedding_model = v_model
                   AND (in_recording_id IS NULL OR c.recording_id = in_recording_id)
                   AND (in_since IS NULL OR r.created_at >= in_since)
                   AND (in_until IS NULL OR r.created_at < in_until)
                   AND (in_language IS NULL OR r.language = in_language)
                 ORDER BY c.embedding <=> in_query_embedding LIMIT v_n) s;
        END IF;
    END IF;

    IF v_tsq IS NOT NULL THEN
        SELECT array_agg(id ORDER BY rank DESC, id) INTO v_lexical FROM (
            SELECT c.id, ts_rank_cd(c.tsv, v_tsq) AS rank
              FROM transcript_chunks c JOIN recordings r ON r.id = c.recording_id
             WHERE c.tsv @@ v_tsq
               AND (in_recording_id IS NULL OR c.recording_id = in_recording_id)
               AND (in_since IS NULL OR r.created_at >= in_since)
               AND (in_until IS NULL OR r.created_at < in_until)
               AND (in_language IS NULL OR r.language = in_language)
             ORDER BY rank DESC, c.id LIMIT v_n) s;
    END IF;

    RETURN QUERY
    SELECT c.id, c.recording_id,
           coalesce(nullif(r.meta->>'title', ''), nullif(r.meta->>'filename', ''), r.source || ' recording'),
           r.created_at, c.start_ms, c.end_ms, c.text,
           f.score, f.dense_rank, f.lexical_rank, _highlights(c.text, v_terms)
      FROM _rrf(v_dense, v_lexical, in_k) WITH ORDINALITY AS f(chunk_id, score, dense_rank, lexical_rank, ord)
      JOIN transcript_chunks c ON c.id = f.chunk_id
      JOIN recordings r ON r.id = c.recording_id
     ORDER BY f.ord;
END
$$;
COMMENT ON FUNCTION _search(text, @extschema:vector@.vector, int, uuid, timestamptz, timestamptz, text) IS 'Internal: the body of s2t.search.';

-- The public forms are SQL wrappers: PL/pgSQL cannot name an argument
-- like a result column (recording_id is both).
CREATE FUNCTION search(
    query text, query_embedding @extschema:vector@.vector, k int DEFAULT 10, recording_id uuid DEFAULT NULL,
    since timestamptz DEFAULT NULL, until timestamptz DEFAULT NULL, language text DEFAULT NULL
) RETURNS TABLE (
    chunk_id uuid, recording_id uuid, title text, recording_created_at timestamptz,
    start_ms int, end_ms int, text text, score double precision, dense_rank int, lexical_rank int,
    highlights jsonb
)
LANGUAGE sql STABLE PARALLEL RESTRICTED
AS $$ SELECT * FROM s2t._search(query, query_embedding, k, recording_id, since, until, language) $$;
COMMENT ON FUNCTION search(text, @extschema:vector@.vector, int, uuid, timestamptz, timestamptz, text) IS 'Hybrid search with a ready query vector (of the model s2t.embedding_model, or NULL for words only): the dense ranking (exact for scopes under s2t.exact_search_below chunks, else HNSW with iterative scan and s2t.hnsw_ef_search) and the full-text ranking on accent-folded words, fused by Reciprocal Rank Fusion (s2t.rrf_k, s2t.dense_weight, s2t.lexical_weight). Runs with the caller''s rights, so row-level security limits it to the caller''s chunks. Filters: one recording, recordings created in [since, until), a language. Per hit: the chunk, its recording (title: meta.title, else the uploaded file''s name), its times, the fused score, each ranking''s 1-based rank (NULL if it did not rank it) and the [start, end) character offsets of the matched words. Errors: S2V01 bad k, query, time range or vector; S2N01 unknown recording.';


CREATE FUNCTION search(
    query text, k int DEFAULT 10, recording_id uuid DEFAULT NULL,
    since timestamptz DEFAULT NULL, until timestamptz DEFAULT NULL, language text DEFAULT NULL
) RETURNS TABLE (
    chunk_id uuid, recording_id uuid, title text, recording_created_at timestamptz,
    start_ms int, end_ms int, text text, score double precision, dense_rank int, lexical_rank int,
    highlights jsonb
)
LANGUAGE sql STABLE PARALLEL RESTRICTED
AS $$
    -- The vector is NULL (with a NOTICE) when the model cannot be loaded
    -- here; a query _search refuses is not embedded at all.
    SELECT * FROM s2t._search(
        query,
        CASE WHEN btrim(query) <> '' AND length(query) <= 2000
             THEN s2t._embed_or_null(query)::@extschema:vector@.vector END,
        k, recording_id, since, until, language)
$$;
COMMENT ON FUNCTION search(text, int, uuid, timestamptz, timestamptz, text) IS 'Hybrid search that embeds the query itself (s2t.embed''s model, loaded once per backend). When the model is not available it ranks by words only and says so in a NOTICE. See the form with query_embedding for the rest.';

REVOKE EXECUTE ON FUNCTION chunk_recording(uuid), claim_chunks_to_embed(text, int, interval),
    store_chunk_embeddings(text, uuid[], text[], real[]), embedding_backlog() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION chunk_recording(uuid) TO s2t_worker;
-- search runs with the caller's rights (and row-level security): the
-- application needs its helpers too.
GRANT EXECUTE ON FUNCTION search(text, @extschema:vector@.vector, int, uuid, timestamptz, timestamptz, text),
    search(text, int, uuid, timestamptz, timestamptz, text),
    _search(text, @extschema:vector@.vector, int, uuid, timestamptz, timestamptz, text), embed(text), _embed_query(text), _embed_or_null(text),
    embedding_model(), embedding_available(), _query_terms(text), _highlights(text, text[]), _rrf(uuid[], uuid[], int) TO s2t_app;
GRANT EXECUTE ON FUNCTION claim_chunks_to_embed(text, int, interval), store_chunk_embeddings(text, uuid[], text[], real[]),
    embedding_backlog() TO s2t_worker;

COMMENT ON FUNCTION _chunk_plan(int[], int[], int[], text[]) IS 'Internal: the chunks of a transcript given as parallel arrays (idx, start_ms, end_ms, text in idx order), cut with the s2t.chunk_* settings.';
COMMENT ON FUNCTION _embed_query(text) IS 'Internal: the query vector as real[], behind s2t.embed. Errors: 58P01 when the model or ONNX Runtime cannot be loaded.';
COMMENT ON FUNCTION _embed_or_null(text) IS 'Internal: the query vector, or NULL with a NOTICE when the model cannot be loaded (search then ranks by words only).';
COMMENT ON FUNCTION embedding_available() IS 'Whether this backend can embed queries: loads the model if nothing has tried yet, and after that answers from the first attempt (reconnect after fixing the model).';
COMMENT ON FUNCTION embedding_model() IS 'The name of the configured embedding model (s2t.embedding_model), stored with every vector it makes.';
COMMENT ON FUNCTION _query_terms(text) IS 'Internal: the folded words of a query that the lexical ranking matches (function words dropped unless nothing else is left).';
COMMENT ON FUNCTION _highlights(text, text[]) IS 'Internal: [[start, end], ...] character offsets in the text of the given folded words.';
COMMENT ON FUNCTION _rrf(uuid[], uuid[], int) IS 'Internal: Reciprocal Rank Fusion of two rankings (best first) with s2t.rrf_k, s2t.dense_weight and s2t.lexical_weight; the best k with each 1-based rank.';
