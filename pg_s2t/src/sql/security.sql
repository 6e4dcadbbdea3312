-- Row-level security and privileges.
--
-- s2t_app (the gateway) sees only the rows of the user named by the
-- per-transaction setting s2t.user_id, and changes data only through the
-- functions below. s2t_worker reads what it transcribes and drives the queue.
-- s2t_definer owns the tables (so RLS does not apply to it) and the
-- definer-rights functions, which rely on that (see the end of this file).

ALTER TABLE users ENABLE ROW LEVEL SECURITY;
ALTER TABLE user_profiles ENABLE ROW LEVEL SECURITY;
ALTER TABLE user_subscriptions ENABLE ROW LEVEL SECURITY;
ALTER TABLE recordings ENABLE ROW LEVEL SECURITY;
ALTER TABLE recording_audio ENABLE ROW LEVEL SECURITY;
-- recording_audio_chunks has none: COPY refuses such tables (see audio.sql).
ALTER TABLE segments ENABLE ROW LEVEL SECURITY;
ALTER TABLE transcript_chunks ENABLE ROW LEVEL SECURITY;
ALTER TABLE refresh_tokens ENABLE ROW LEVEL SECURITY;
ALTER TABLE jobs ENABLE ROW LEVEL SECURITY;

CREATE POLICY own_user ON users TO s2t_app
    USING (id = current_user_id()) WITH CHECK (id = current_user_id());
CREATE POLICY own_profile ON user_profiles TO s2t_app
    USING (user_id = current_user_id()) WITH CHECK (user_id = current_user_id());
CREATE POLICY own_subscription ON user_subscriptions TO s2t_app
    USING (user_id = current_user_id());
CREATE POLICY own_recordings ON recordings TO s2t_app
    USING (user_id = current_user_id()) WITH CHECK (user_id = current_user_id());
CREATE POLICY own_audio ON recording_audio TO s2t_app
    USING (user_id = current_user_id());
CREATE POLICY own_segments ON segments TO s2t_app
    USING (EXISTS (SELECT FROM recordings r WHERE r.id = recording_id AND r.user_id = current_user_id()));
CREATE POLICY own_chunks ON transcript_chunks TO s2t_app
    USING (user_id = current_user_id());
CREATE POLICY own_refresh_tokens ON refresh_tokens TO s2t_app
    USING (user_id = current_user_id());

-- Workers act for every user, but only on what transcription needs.
CREATE POLICY worker_recordings ON recordings TO s2t_worker USING (true);
CREATE POLICY worker_audio ON recording_audio TO s2t_worker USING (true);
CREATE POLICY worker_segments ON segments TO s2t_worker USING (true);
CREATE POLICY worker_chunks ON transcript_chunks TO s2t_worker USING (true) WITH CHECK (true);
CREATE POLICY worker_jobs ON jobs TO s2t_worker USING (true);

GRANT USAGE ON SCHEMA s2t TO s2t_app, s2t_worker;

-- Never the password hash: login goes through the gateway's own checks.
GRANT SELECT (id, email, user_name, verified, role, status, created_at) ON users TO s2t_app;
GRANT SELECT ON plans TO s2t_app, s2t_worker;
GRANT SELECT, UPDATE (name, avatar_url) ON user_profiles TO s2t_app;
GRANT SELECT ON user_subscriptions, segments, transcript_chunks, recording_audio TO s2t_app;
GRANT SELECT, DELETE ON recordings TO s2t_app;
GRANT SELECT (id, user_id, family_id, created_at, expires_at, revoked_at, replaced_by) ON refresh_tokens TO s2t_app;

GRANT SELECT ON recordings, recording_audio, recording_audio_chunks, segments, jobs TO s2t_worker;
-- Chunks are written only by chunk_recording and store_chunk_embeddings.
GRANT SELECT ON transcript_chunks TO s2t_worker;

-- Functions: nothing by default, then what each role needs. Only our own:
-- CASCADE may have put pgvector into this schema too, and its functions must
-- stay callable.
DO $revoke$
DECLARE
    v_routine regprocedure;
BEGIN
    FOR v_routine IN
        SELECT p.oid::regprocedure
          FROM pg_proc p
          JOIN pg_depend d ON d.classid = 'pg_proc'::regclass AND d.objid = p.oid AND d.deptype = 'e'
          JOIN pg_extension e ON e.oid = d.refobjid AND e.extname = 'pg_s2t'
    LOOP
        EXECUTE format('REVOKE EXECUTE ON ROUTINE %s FROM PUBLIC', v_routine);
    END LOOP;
END
$revoke$;

-- Harmless helpers anyone may call (fold_text also backs the tsv column).
GRANT EXECUTE ON FUNCTION fold_text(text), extension_version(), current_user_id(),
    normalize_email(text), raise_problem(text[]) TO PUBLIC;

-- The application (gateway) registers users, admits recordings, reads
-- statistics and moves a user between plans within the self-service rules.
-- It cannot complete or fail recordings: that is the worker's word, and a
-- completion is where seconds are billed.
GRANT EXECUTE ON FUNCTION
    register_user(text, text, text, text, text),
    _admit_recording(uuid, text, text, jsonb, text, int),
    check_quota_and_create_recording(uuid, text, text, jsonb, text, int),
    sp_check_quota_and_create_recording(uuid, text, text, jsonb),
    sp_get_user_stats(uuid),
    sp_change_user_plan(uuid, text, boolean)
TO s2t_app;
GRANT EXECUTE ON PROCEDURE sp_register_user(text, text, text, text, text) TO s2t_app;

GRANT EXECUTE ON FUNCTION
    claim_job(text, interval),
    heartbeat_job(bigint, uuid, interval, real),
    settle_job_length(bigint, uuid, int),
    complete_job(bigint, int, jsonb, text, text),
    fail_job(bigint, uuid, text, boolean),
    release_job(bigint, uuid),
    complete_recording(uuid, int, jsonb, text, text),
    fail_recording(uuid, text),
    queue_stats(),
    reset_monthly_cycles(),
    sp_cleanup_old_recordings(int, int)
TO s2t_worker;
GRANT EXECUTE ON PROCEDURE sp_reset_monthly_cycles(), sp_complete_recording(uuid, int, jsonb) TO s2t_worker;

COMMENT ON SCHEMA s2t IS 'pg_s2t: speech-to-text data model, quotas, job queue and search';
COMMENT ON FUNCTION extension_version() IS 'Version of the loaded pg_s2t library; compare with pg_extension.extversion.';
COMMENT ON FUNCTION fold_text(text) IS 'Lower-cases and strips diacritics (Vietnamese included) for accent-insensitive search.';
COMMENT ON FUNCTION normalize_email(text) IS 'Trimmed, lower-case e-mail address, or NULL if the input is not one.';
COMMENT ON FUNCTION registration_problem(text, text, text, text) IS 'NULL if registration input is valid, else [sqlstate, message, detail, hint].';
COMMENT ON FUNCTION segments_problem(jsonb, int) IS 'NULL if the segments are valid for the duration, else [sqlstate, message, detail, hint].';
COMMENT ON FUNCTION billing_signature_problem(text, text, text, bigint, int) IS 'NULL if the billing signature (t=<unix>,v1=<hex HMAC-SHA256 of t.payload>) is valid and within the tolerance of now, else why not.';
COMMENT ON FUNCTION retry_backoff_seconds(int) IS 'Seconds before retrying after the given failed attempt: 10, 20, 40, ... at most 900.';

-- Who owns what runs with privileges. A SECURITY DEFINER function runs as
-- its owner, and CREATE EXTENSION makes the installing superuser the owner
-- of everything: one hole in one function would then be a superuser's. So
-- the tables and every SECURITY DEFINER function belong to s2t_definer, a
-- role that cannot log in, is no superuser and owns nothing outside this
-- schema. Owning the tables is what lets those functions see past
-- row-level security (an owner is not subject to its own table's policies).
DO $owner$
DECLARE
    v_obj record;
BEGIN
    EXECUTE 'GRANT USAGE ON SCHEMA s2t TO s2t_definer';
    FOR v_obj IN
        SELECT c.oid::regclass AS rel
          FROM pg_class c
          JOIN pg_depend d ON d.classid = 'pg_class'::regclass AND d.objid = c.oid AND d.deptype = 'e'
          JOIN pg_extension e ON e.oid = d.refobjid AND e.extname = 'pg_s2t'
         WHERE c.relkind IN ('r', 'p')
    LOOP
        EXECUTE format('ALTER TABLE %s OWNER TO s2t_definer', v_obj.rel);
    END LOOP;
    FOR v_obj IN
        SELECT p.oid::regprocedure AS routine, p.prosecdef
          FROM pg_proc p
          JOIN pg_depend d ON d.classid = 'pg_proc'::regclass AND d.objid = p.oid AND d.deptype = 'e'
          JOIN pg_extension e ON e.oid = d.refobjid AND e.extname = 'pg_s2t'
    LOOP
        -- The definer's functions call the extension's helpers, which are
        -- closed to PUBLIC.
        EXECUTE format('GRANT EXECUTE ON ROUTINE %s TO s2t_definer', v_obj.routine);
        IF v_obj.prosecdef THEN
            EXECUTE format('ALTER ROUTINE %s OWNER TO s2t_definer', v_obj.routine);
        END IF;
    END LOOP;
END
$owner$;
