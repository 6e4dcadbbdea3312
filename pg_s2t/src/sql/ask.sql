-- Asking one's recordings: the passages and prompt for any answering
-- (ask_context), the extractive answer (ask), the monthly question quota
-- (admit_question) and the answers kept for the history (answers).

CREATE TABLE question_usage (
    user_id   uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    cycle_start timestamptz NOT NULL,
    questions nonnegative_int NOT NULL DEFAULT 0,
    PRIMARY KEY (user_id, cycle_start)
);
COMMENT ON TABLE question_usage IS 'Questions asked per user and monthly cycle (calendar months in UTC, as the subscriptions); counted by admit_question against plans.monthly_questions. A new cycle is a new row, so nothing needs resetting.';

CREATE TABLE answers (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id     uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    question    text NOT NULL CHECK (length(question) BETWEEN 1 AND 2000),
    answer      text NOT NULL,
    citations   jsonb NOT NULL DEFAULT '[]'::jsonb CHECK (jsonb_typeof(citations) = 'array'),
    mode        text NOT NULL CHECK (mode IN ('extractive', 'generative')),
    model       text,
    found       boolean NOT NULL,
    -- Why a generated answer was replaced by the extractive one, if it was.
    fallback    text,
    -- The question's filters: recording_id, since, until, k.
    scope       jsonb NOT NULL DEFAULT '{}'::jsonb CHECK (jsonb_typeof(scope) = 'object'),
    created_at  timestamptz NOT NULL DEFAULT now(),
    -- What the citation check found in a generated answer: flagged (its
    -- sentences that the passages they cite do not support) and
    -- removed_markers (markers that named no passage).
    checks      jsonb NOT NULL DEFAULT '{}'::jsonb CHECK (jsonb_typeof(checks) = 'object')
);
CREATE INDEX answers_user_created_idx ON answers (user_id, created_at DESC, id DESC);
COMMENT ON TABLE answers IS 'Every answer given, with its checked citations, per user (row-level security): the history of questions.';

ALTER TABLE question_usage ENABLE ROW LEVEL SECURITY;
ALTER TABLE answers ENABLE ROW LEVEL SECURITY;
CREATE POLICY own_question_usage ON question_usage TO s2t_app
    USING (user_id = current_user_id());
CREATE POLICY own_answers ON answers TO s2t_app
    USING (user_id = current_user_id()) WITH CHECK (user_id = current_user_id());
GRANT SELECT ON question_usage TO s2t_app;
GRANT SELECT, INSERT, DELETE ON answers TO s2t_app;

-- Counts one question against the plan's monthly limit, atomically: the
-- conditional upsert takes the row lock, so concurrent questions of one
-- user queue and each sees the count the previous one left.
CREATE FUNCTION admit_question(in_user_id uuid) RETURNS int
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = s2t, pg_catalog, pg_temp
AS $$
DECLARE
    v_limit int;
    v_plan text;
    v_status text;
    v_cycle record;
    v_used int;
BEGIN
    PERFORM _assert_may_act_for(in_user_id);
    SELECT p.monthly_questions, p.code, u.status INTO v_limit, v_plan, v_status
      FROM user_subscriptions s JOIN plans p ON p.id = s.plan_id JOIN users u ON u.id = s.user_id
     WHERE s.user_id = in_user_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION USING ERRCODE = 'S2N01', MESSAGE = format('user %s not found', in_user_id);
    END IF;
    IF v_status <> 'active' THEN
        RAISE EXCEPTION USING ERRCODE = 'S2S01', MESSAGE = format('user %s is %s', in_user_id, v_status),
            HINT = 'A disabled account cannot ask questions.';
    END IF;
    v_cycle := _current_cycle();
    IF v_limit > 0 THEN
        INSERT INTO question_usage AS q (user_id, cycle_start, questions)
        VALUES (in_user_id, v_cycle.cycle_start, 1)
        ON CONFLICT (user_id, cycle_start) DO UPDATE SET questions = q.questions + 1
         WHERE q.questions < v_limit
        RETURNING q.questions INTO v_used;
    END IF;
    IF v_used IS NULL THEN
        RAISE EXCEPTION USING ERRCODE = 'S2Q03',
            MESSAGE = format('monthly question limit reached: %s of %s used on plan %s; resets at %s',
                             v_limit, v_limit, v_plan, _utc(v_cycle.cycle_end)),
            DETAIL = format('limit: monthly_questions; used: %s; limit_value: %s; resets_at: %s',
                            v_limit, v_limit, _utc(v_cycle.cycle_end)),
            HINT = 'Wait for the reset or move to a larger plan.';
    END IF;
    RETURN v_used;
END
$$;
COMMENT ON FUNCTION admit_question(uuid) IS 'Counts one question of the user against the plan''s monthly_questions in this calendar month (UTC) and returns how many are used, atomically. Errors: S2Q03 the limit is reached (message and detail give the limit and the reset time), S2N01 unknown user, S2S01 disabled user.';

-- The passages for a question, numbered, with the segments each was cut
-- from (for the time of each sentence), and the chat messages that ask a
-- model to answer from them alone. Runs with the caller's rights.
CREATE FUNCTION ask_context(
    question text, k int DEFAULT 6, recording_id uuid DEFAULT NULL,
    since timestamptz DEFAULT NULL, until timestamptz DEFAULT NULL
) RETURNS jsonb
LANGUAGE plpgsql VOLATILE PARALLEL RESTRICTED
SET search_path = s2t, pg_catalog, pg_temp
AS $$
DECLARE
    v_passages jsonb;
BEGIN
    IF k IS NULL OR k NOT BETWEEN 1 AND 20 THEN
        RAISE EXCEPTION USING ERRCODE = 'S2V01', MESSAGE = format('k must be 1 to 20, got %s', k),
            DETAIL = 'field: k';
    END IF;
    SELECT coalesce(jsonb_agg(jsonb_build_object(
               'n', h.ord, 'chunk_id', h.chunk_id, 'recording_id', h.recording_id, 'title', h.title,
               'recording_created_at', h.recording_created_at, 'start_ms', h.start_ms, 'end_ms', h.end_ms,
               'text', h.text, 'score', h.score, 'dense_rank', h.dense_rank, 'lexical_rank', h.lexical_rank,
               'segments', (SELECT coalesce(jsonb_agg(jsonb_build_object(
                                    'start_ms', s.start_ms, 'end_ms', s.end_ms, 'text', s.text) ORDER BY s.idx), '[]'::jsonb)
                              FROM transcript_chunks c
                              JOIN segments s ON s.recording_id = c.recording_id
                                             AND s.idx BETWEEN c.first_segment_idx AND c.last_segment_idx
                             WHERE c.id = h.chunk_id))
             ORDER BY h.ord), '[]'::jsonb)
      INTO v_passages
      FROM s2t.search(question, k, ask_context.recording_id, since, until) WITH ORDINALITY
           AS h(chunk_id, recording_id, title, recording_created_at, start_ms, end_ms, text, score,
                dense_rank, lexical_rank, highlights, ord);
    RETURN jsonb_build_object('question', question, 'passages', v_passages,
                              'messages', _ask_prompt(question, v_passages));
END
$$;
COMMENT ON FUNCTION ask_context(text, int, uuid, timestamptz, timestamptz) IS 'What an answer may be built from: {question, passages, messages}. passages are the caller''s k best passages from s2t.search (row-level security applies), numbered n from 1, each with its recording, times, text and the segments it was cut from; messages are the OpenAI chat-completions messages that ask a model to answer from those passages alone, citing them as [n], or to reply NOT_FOUND. Errors: S2V01 bad k or query, S2N01 unknown recording.';

CREATE FUNCTION ask(
    question text, k int DEFAULT 6, recording_id uuid DEFAULT NULL,
    since timestamptz DEFAULT NULL, until timestamptz DEFAULT NULL,
    lang text DEFAULT 'en', max_sentences int DEFAULT 3
) RETURNS jsonb
LANGUAGE plpgsql VOLATILE PARALLEL RESTRICTED
SET search_path = s2t, pg_catalog, pg_temp
AS $$
DECLARE
    v_context jsonb := ask_context(question, k, ask.recording_id, since, until);
    v_answer jsonb;
BEGIN
    v_answer := _extract_answer(question, v_context->'passages', coalesce(lang, 'en'), max_sentences);
    RETURN v_answer || jsonb_build_object(
        'mode', 'extractive', 'model', v_answer->'scored_by',
        'passages', jsonb_array_length(v_context->'passages'));
END
$$;
COMMENT ON FUNCTION ask(text, int, uuid, timestamptz, timestamptz, text, int) IS 'The extractive answer to a question from the caller''s own transcripts: {found, answer, citations, best_relevance, mode, model, passages}. The sentences of the passages that ask_context finds are scored against the question (the embedding model''s cosine similarity and the question''s words) and up to max_sentences are chosen by maximal marginal relevance; the answer names each source and time, then quotes them with markers [n]. Each citation gives the chunk, recording, title, the sentence''s start_ms/end_ms, the passage and the highlighted sentence''s [start, end) character offsets in it. found is false, with no answer, when no sentence reaches s2t.answer_min_relevance. lang (en or vi) is the language of the lead. Deterministic for the same data and settings. Errors: as ask_context; 22023 max_sentences outside 1 to 10.';

GRANT EXECUTE ON FUNCTION admit_question(uuid), ask_context(text, int, uuid, timestamptz, timestamptz),
    ask(text, int, uuid, timestamptz, timestamptz, text, int), _extract_answer(text, jsonb, text, int),
    _ask_prompt(text, jsonb) TO s2t_app;
COMMENT ON FUNCTION _extract_answer(text, jsonb, text, int) IS 'Internal: the extractive answer from ask_context''s passages, behind s2t.ask.';
COMMENT ON FUNCTION _ask_prompt(text, jsonb) IS 'Internal: the chat messages of ask_context.';
