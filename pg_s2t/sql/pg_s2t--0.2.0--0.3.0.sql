-- pg_s2t 0.2.0 -> 0.3.0, frozen as released (never edit; later changes go
-- in later scripts). What changes:
-- - every SECURITY DEFINER function pins search_path with pg_temp last, and
--   the tables and those functions belong to s2t_definer, not the installing
--   superuser;
-- - minutes are reserved for work in flight (admission, claim, settlement);
-- - the application role can no longer complete or fail recordings, start
--   on or move to a paid plan, reset usage, or name audio outside the
--   database; the worker role can no longer register or admit;
-- - admin functions, signed billing events, deployment settings;
-- - API keys with an expiry and a limit that holds under concurrency;
-- - a grace window for refresh-token rotation.
DO $roles$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 's2t_app') THEN
        CREATE ROLE s2t_app NOLOGIN;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 's2t_worker') THEN
        CREATE ROLE s2t_worker NOLOGIN;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 's2t_definer') THEN
        CREATE ROLE s2t_definer NOLOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOINHERIT NOREPLICATION NOBYPASSRLS;
    END IF;
END
$roles$;
COMMENT ON ROLE s2t_definer IS 'pg_s2t: owns the tables and the definer-rights functions, so they run with no more than the data model''s rights; no one logs in as it';

ALTER TABLE user_subscriptions ADD COLUMN reserved_seconds int NOT NULL DEFAULT 0 CHECK (reserved_seconds >= 0);
ALTER TABLE recordings ADD COLUMN reserved_seconds int NOT NULL DEFAULT 0 CHECK (reserved_seconds >= 0);
ALTER TABLE recordings ADD COLUMN expected_ms int CHECK (expected_ms >= 0);
ALTER TABLE api_keys ADD COLUMN expires_at timestamptz;
COMMENT ON COLUMN recordings.expected_ms IS 'Length of the audio as its container header declares it, read at admission; NULL when unknown. The reservation and the cap on what a worker transcribes follow from it.';
COMMENT ON COLUMN recordings.reserved_seconds IS 'Seconds of the monthly minutes this recording holds while it is processing (its expected length, or what claim_job granted); released when it is done, failed or deleted.';
COMMENT ON COLUMN user_subscriptions.reserved_seconds IS 'Sum of reserved_seconds over this user''s recordings in flight: admission counts it as spent, so work in flight cannot exceed the minutes.';

-- Signatures that changed.
DROP FUNCTION _admit_recording(uuid, text, text, jsonb, text);
DROP FUNCTION check_quota_and_create_recording(uuid, text, text, jsonb, text);
DROP FUNCTION complete_recording(uuid, int, jsonb, text);
DROP FUNCTION complete_job(bigint, int, jsonb, text);
DROP FUNCTION claim_job(text, interval);
DROP FUNCTION rotate_refresh_token(bytea, bytea, interval);

CREATE OR REPLACE FUNCTION register_user(
    in_email text, in_user_name text, in_hashed_pass text,
    in_name text DEFAULT NULL, in_default_plan_code text DEFAULT 'FREE'
) RETURNS uuid
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = s2t, pg_catalog, pg_temp
AS $$
DECLARE
    v_plan_id uuid;
    v_user_id uuid;
    v_constraint text;
    v_field text;
BEGIN
    PERFORM raise_problem(registration_problem(in_email, in_user_name, in_hashed_pass, in_name));
    SELECT id INTO v_plan_id FROM plans WHERE code = in_default_plan_code;
    IF v_plan_id IS NULL THEN
        RAISE EXCEPTION USING ERRCODE = 'S2N01', MESSAGE = format('plan %s not found', in_default_plan_code),
            HINT = (SELECT 'Known plans: ' || string_agg(code, ', ' ORDER BY monthly_minutes) FROM plans);
    END IF;
    -- Signing up through the application never starts on a paid plan.
    IF _caller_is_app() AND (SELECT plan_cost FROM plans WHERE id = v_plan_id) > 0
       AND NOT coalesce((SELECT self_service_plan_changes FROM settings), false) THEN
        RAISE EXCEPTION USING ERRCODE = '42501',
            MESSAGE = format('plan %s is a paid plan; new accounts start on a free plan', in_default_plan_code),
            HINT = 'Register on FREE, then buy the plan through billing.';
    END IF;
    BEGIN
        INSERT INTO users (email, user_name, password_hash)
        VALUES (normalize_email(in_email), in_user_name, in_hashed_pass)
        RETURNING id INTO v_user_id;
    EXCEPTION WHEN unique_violation THEN
        GET STACKED DIAGNOSTICS v_constraint = CONSTRAINT_NAME;
        v_field := CASE WHEN v_constraint LIKE '%email%' THEN 'email' ELSE 'user_name' END;
        RAISE EXCEPTION USING ERRCODE = 'S2C01',
            MESSAGE = format('%s is already taken', v_field),
            DETAIL = format('field: %s', v_field),
            HINT = CASE v_field WHEN 'email' THEN 'Log in, or register with another e-mail address.'
                                ELSE 'Choose another user name.' END;
    END;
    INSERT INTO user_profiles (user_id, name) VALUES (v_user_id, in_name);
    INSERT INTO user_subscriptions (user_id, plan_id) VALUES (v_user_id, v_plan_id);
    RETURN v_user_id;
END
$$;
COMMENT ON FUNCTION register_user(text, text, text, text, text) IS 'Creates a user with profile and subscription in one transaction and returns the id. Errors: S2V01 invalid input (detail names the field), S2C01 email or user name taken, S2N01 unknown plan.';
-- The admission decision, shared by the raising and the row-returning front
-- doors so that neither needs a subtransaction.
--
-- Minutes are enforced for work in flight, not only for work done: a
-- recording reserves its expected length (from the container header, when
-- the caller could read it) against the allowance at admission, claim_job
-- caps what a worker may transcribe at what is left, and completion settles
-- the reservation into used_seconds. Without this, a user with 60 minutes
-- left could queue thirty four-hour files at once and have them all done.
CREATE FUNCTION _admit_recording(
    in_user_id uuid, in_source text, in_language text, in_meta jsonb, in_audio_uri text,
    in_expected_ms int,
    OUT recording_id uuid, OUT refusal text[]
)
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = s2t, pg_catalog, pg_temp
AS $$
DECLARE
    v_reserve int;
    v_usage int;
    v_seconds int;
    v_reserved int;
    v_cycle_end timestamptz;
    v_user_status text;
    v_plan_code text;
    v_usage_limit int;
    v_minutes int;
BEGIN
    PERFORM _assert_may_act_for(in_user_id);
    IF in_source IS NULL OR in_source NOT IN ('realtime', 'upload') THEN
        refusal := _problem('S2V01', format('source must be ''realtime'' or ''upload'', got %L', in_source),
                            'field: source', 'Use ''upload'' for files and ''realtime'' for streamed audio.');
        RETURN;
    END IF;
    IF in_language IS NOT NULL AND in_language !~ '^(auto|[a-z]{2,3})$' THEN
        refusal := _problem('S2V01', format('language must be ''auto'' or an ISO 639 code such as ''vi'' or ''en'', got %L', in_language),
                            'field: language', 'Pass ''auto'' to detect the language.');
        RETURN;
    END IF;
    IF in_meta IS NOT NULL AND jsonb_typeof(in_meta) <> 'object' THEN
        refusal := _problem('S2V01', 'meta must be a JSON object', 'field: meta', 'Pass ''{}'' for no metadata.');
        RETURN;
    END IF;
    IF in_expected_ms IS NOT NULL AND in_expected_ms < 0 THEN
        refusal := _problem('S2V01', format('expected duration must not be negative, got %s ms', in_expected_ms),
                            'field: expected_ms', 'Pass NULL when the length of the audio is not known.');
        RETURN;
    END IF;
    -- The application may only point at audio it stored in the database:
    -- a file:// or other URI would make a worker read wherever it says.
    IF in_audio_uri IS NOT NULL AND in_audio_uri <> 'db:' AND _caller_is_app() THEN
        refusal := _problem('42501', 'the application role may only create recordings whose audio is in the database (audio_uri ''db:'')',
                            'field: audio_uri', 'Stage the bytes with COPY into s2t.audio_uploads and attach them with s2t.attach_upload.');
        RETURN;
    END IF;
    -- Whole seconds, rounded up, as billing rounds.
    v_reserve := coalesce((in_expected_ms::bigint + 999) / 1000, 0)::int;

    -- Check and count in one conditional UPDATE: it takes the row lock, so
    -- concurrent admissions of one user queue here and each sees the count
    -- and the reservations the previous one left (the seed read without a
    -- lock and over-admitted). An ended cycle restarts in the same
    -- statement, so the month boundary never locks anyone out; reservations
    -- of recordings still in flight carry over into the new cycle. A
    -- recording of unknown length needs at least one second left; claim_job
    -- then caps it at what is left when it starts.
    recording_id := gen_random_uuid();
    UPDATE user_subscriptions s
       SET usage_count  = CASE WHEN s.cycle_end <= now() THEN 1 ELSE s.usage_count + 1 END,
           used_seconds = CASE WHEN s.cycle_end <= now() THEN 0 ELSE s.used_seconds END,
           reserved_seconds = s.reserved_seconds + v_reserve,
           cycle_start  = CASE WHEN s.cycle_end <= now() THEN date_trunc('month', now(), 'UTC') ELSE s.cycle_start END,
           cycle_end    = CASE WHEN s.cycle_end <= now()
                               THEN date_add(date_trunc('month', now(), 'UTC'), interval '1 month', 'UTC')
                               ELSE s.cycle_end END
      FROM plans p, users u
     WHERE s.user_id = in_user_id AND p.id = s.plan_id AND u.id = s.user_id AND u.status = 'active'
       AND CASE WHEN s.cycle_end <= now() THEN 0 ELSE s.usage_count END < p.monthly_usage_limit
       AND CASE WHEN s.cycle_end <= now() THEN 0 ELSE s.used_seconds END::bigint
           + s.reserved_seconds + greatest(v_reserve, 1) <= p.monthly_minutes::bigint * 60;
    IF FOUND THEN
        -- Tell the usage trigger that this row is already counted.
        PERFORM set_config('s2t.counted_recording', recording_id::text, true);
        INSERT INTO recordings (id, user_id, source, language, meta, audio_uri, reserved_seconds, expected_ms)
        VALUES (recording_id, in_user_id, in_source, coalesce(in_language, 'vi'),
                coalesce(in_meta, '{}'::jsonb), in_audio_uri, v_reserve, in_expected_ms);
        RETURN;
    END IF;
    recording_id := NULL;

    -- Refused: find out why, for the message (no lock needed to explain).
    SELECT CASE WHEN s.cycle_end <= now() THEN 0 ELSE s.usage_count END,
           CASE WHEN s.cycle_end <= now() THEN 0 ELSE s.used_seconds END,
           s.reserved_seconds, s.cycle_end, u.status, p.code, p.monthly_usage_limit, p.monthly_minutes
      INTO v_usage, v_seconds, v_reserved, v_cycle_end, v_user_status, v_plan_code, v_usage_limit, v_minutes
      FROM user_subscriptions s
      JOIN users u ON u.id = s.user_id
      JOIN plans p ON p.id = s.plan_id
     WHERE s.user_id = in_user_id;
    IF NOT FOUND THEN
        refusal := _problem('S2N01', format('user %s not found', in_user_id), 'no subscription for this user',
                            'Register the user with s2t.register_user first.');
        RETURN;
    END IF;
    IF v_cycle_end <= now() THEN
        v_cycle_end := (_current_cycle()).cycle_end;
    END IF;
    IF v_user_status <> 'active' THEN
        refusal := _problem('S2S01', format('user %s is %s', in_user_id, v_user_status), NULL,
                            'A disabled account cannot create recordings.');
    ELSIF v_usage >= v_usage_limit THEN
        refusal := _problem('S2Q01',
            format('monthly transcription limit reached: %s of %s used on plan %s; resets at %s',
                   v_usage, v_usage_limit, v_plan_code, _utc(v_cycle_end)),
            format('limit: monthly_usage_limit; used: %s; limit_value: %s; resets_at: %s',
                   v_usage, v_usage_limit, _utc(v_cycle_end)),
            'Wait for the reset or move to a larger plan.');
    ELSIF v_seconds::bigint + v_reserved >= v_minutes::bigint * 60 THEN
        refusal := _problem('S2Q02',
            format('monthly minutes used up: %s of %s seconds used%s on plan %s; resets at %s',
                   v_seconds, v_minutes * 60,
                   CASE WHEN v_reserved > 0 THEN format(' and %s reserved by recordings in progress', v_reserved) ELSE '' END,
                   v_plan_code, _utc(v_cycle_end)),
            format('limit: monthly_minutes; used: %s; reserved: %s; limit_value: %s; resets_at: %s',
                   v_seconds, v_reserved, v_minutes * 60, _utc(v_cycle_end)),
            'Wait for the reset or move to a larger plan.');
    ELSE
        refusal := _problem('S2Q02',
            format('this recording is %s seconds long, but only %s of the monthly %s seconds are left on plan %s (%s used, %s reserved by recordings in progress); resets at %s',
                   v_reserve, v_minutes::bigint * 60 - v_seconds - v_reserved, v_minutes * 60, v_plan_code,
                   v_seconds, v_reserved, _utc(v_cycle_end)),
            format('limit: monthly_minutes; used: %s; reserved: %s; requested: %s; limit_value: %s; resets_at: %s',
                   v_seconds, v_reserved, v_reserve, v_minutes * 60, _utc(v_cycle_end)),
            'Send a shorter file, wait for the reset or move to a larger plan.');
    END IF;
END
$$;
COMMENT ON FUNCTION _admit_recording(uuid, text, text, jsonb, text, int) IS 'Internal: checks the quota (counting the minutes reserved by recordings in flight) under a row lock, reserves the expected length and creates the recording, or returns why not.';
CREATE FUNCTION check_quota_and_create_recording(
    in_user_id uuid, in_source text, in_language text DEFAULT 'vi',
    in_meta jsonb DEFAULT '{}'::jsonb, in_audio_uri text DEFAULT NULL, in_expected_ms int DEFAULT NULL
) RETURNS uuid
LANGUAGE plpgsql VOLATILE
AS $$
DECLARE
    v_result record;
BEGIN
    SELECT * INTO v_result FROM s2t._admit_recording(in_user_id, in_source, in_language, in_meta, in_audio_uri, in_expected_ms);
    PERFORM s2t.raise_problem(v_result.refusal);
    RETURN v_result.recording_id;
END
$$;
COMMENT ON FUNCTION check_quota_and_create_recording(uuid, text, text, jsonb, text, int) IS 'Atomically checks the quota and creates a recording (an upload also enqueues a transcription job), reserving in_expected_ms (rounded up to seconds) of the monthly minutes until it completes. Errors: S2Q01 usage limit, S2Q02 minutes limit or the recording is longer than what is left (message and detail give usage, reservations, limit and reset time), 42501 an application role naming audio outside the database, S2N01 unknown user, S2S01 disabled user, S2V01 bad input.';
CREATE OR REPLACE FUNCTION sp_check_quota_and_create_recording(
    in_user_id uuid, in_source text, in_language text DEFAULT 'vi', in_meta jsonb DEFAULT '{}'::jsonb
) RETURNS TABLE (recording_id uuid, quota_ok boolean, error_message text)
LANGUAGE sql VOLATILE
AS $$
    SELECT a.recording_id, a.refusal IS NULL, coalesce(a.refusal[2], '')
    FROM s2t._admit_recording(in_user_id, in_source, in_language, in_meta, NULL, NULL) a
$$;
COMMENT ON FUNCTION sp_check_quota_and_create_recording(uuid, text, text, jsonb) IS 'The specification''s admission function: returns (recording_id, true, '''') or (NULL, false, reason) instead of raising.';
-- A reservation ends when its recording stops processing, however it stops:
-- completed, failed (by a worker or after its last attempt) or deleted.
CREATE FUNCTION trg_release_reservation() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = s2t, pg_catalog, pg_temp
AS $$
BEGIN
    UPDATE user_subscriptions
       SET reserved_seconds = greatest(reserved_seconds - OLD.reserved_seconds, 0)
     WHERE user_id = OLD.user_id;
    -- A job waiting for these minutes may start now.
    PERFORM pg_notify('s2t_jobs', OLD.id::text);
    RETURN NULL;
END
$$;
COMMENT ON FUNCTION trg_release_reservation() IS 'Trigger: gives a recording''s reserved seconds back to its subscription when it stops processing or is deleted.';
CREATE TRIGGER release_reservation
    AFTER UPDATE OF status ON recordings FOR EACH ROW
    WHEN (OLD.status = 'processing' AND NEW.status <> 'processing' AND OLD.reserved_seconds > 0)
    EXECUTE FUNCTION trg_release_reservation();
CREATE TRIGGER release_reservation_on_delete
    AFTER DELETE ON recordings FOR EACH ROW
    WHEN (OLD.status = 'processing' AND OLD.reserved_seconds > 0)
    EXECUTE FUNCTION trg_release_reservation();
CREATE FUNCTION complete_recording(
    in_recording_id uuid, in_duration_ms int, in_segments jsonb, in_language text DEFAULT NULL,
    in_notice text DEFAULT NULL
) RETURNS boolean
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = s2t, pg_catalog, pg_temp
AS $$
DECLARE
    v_rec recordings%ROWTYPE;
    v_seconds int;
BEGIN
    IF in_duration_ms IS NULL THEN
        RAISE EXCEPTION USING ERRCODE = 'S2V01', MESSAGE = 'duration_ms must not be NULL',
            DETAIL = 'field: duration_ms', HINT = 'Pass the decoded length of the audio in milliseconds.';
    END IF;
    PERFORM raise_problem(segments_problem(in_segments, in_duration_ms));
    IF in_language IS NOT NULL AND in_language !~ '^[a-z]{2,3}$' THEN
        RAISE EXCEPTION USING ERRCODE = 'S2V01', MESSAGE = format('detected language must be an ISO 639 code, got %L', in_language),
            DETAIL = 'field: language', HINT = 'Pass NULL to keep the recording''s language.';
    END IF;

    -- Lock first: two completions of one recording serialise here, and the
    -- second sees 'done' and changes nothing.
    SELECT * INTO v_rec FROM recordings WHERE id = in_recording_id FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION USING ERRCODE = 'S2N01', MESSAGE = format('recording %s not found', in_recording_id);
    END IF;
    PERFORM _assert_may_act_for(v_rec.user_id);
    IF v_rec.status = 'done' THEN
        RETURN false;
    END IF;
    IF v_rec.status = 'failed' THEN
        RAISE EXCEPTION USING ERRCODE = 'S2S01',
            MESSAGE = format('recording %s has already failed and cannot be completed', in_recording_id),
            DETAIL = format('failure_reason: %s', v_rec.failure_reason),
            HINT = 'Create a new recording to transcribe the audio again.';
    END IF;

    INSERT INTO segments (recording_id, idx, start_ms, end_ms, text, words)
    SELECT in_recording_id, s.idx, s.start_ms, s.end_ms, s.text, s.words
    FROM jsonb_to_recordset(in_segments) AS s(idx int, start_ms int, end_ms int, text text, words jsonb);

    -- Bill whole seconds, rounding up: a 400 ms clip costs one second, not
    -- zero as with the seed's integer division.
    v_seconds := (in_duration_ms::bigint + 999) / 1000;
    UPDATE recordings
       SET status = 'done', duration_ms = in_duration_ms, completed_at = now(),
           billed_seconds = v_seconds, language = coalesce(in_language, language),
           meta = coalesce(meta, '{}'::jsonb) || '{"progress": 1}'::jsonb
                  || CASE WHEN nullif(btrim(in_notice), '') IS NULL THEN '{}'::jsonb
                          ELSE jsonb_build_object('notice', left(in_notice, 2000)) END
     WHERE id = in_recording_id;
    PERFORM _roll_cycle(v_rec.user_id);
    UPDATE user_subscriptions SET used_seconds = used_seconds + v_seconds WHERE user_id = v_rec.user_id;
    UPDATE jobs SET state = 'done', lease_token = NULL, updated_at = now()
     WHERE recording_id = in_recording_id AND state <> 'done';
    RETURN true;
END
$$;
COMMENT ON FUNCTION complete_recording(uuid, int, jsonb, text, text) IS 'Stores the segments, marks the recording done, releases its reservation and charges the seconds (rounded up) exactly once: returns true, or false if it was already done. in_notice (e.g. why the audio was cut) is kept in meta.notice. Errors: S2V01 bad duration or segments (end_ms < start_ms, duplicate idx, past the end), S2N01 unknown recording, S2S01 recording already failed.';
-- Plan changes. A user acting through the application may move to a plan
-- that costs nothing or costs less than the current one; anything else is
-- a sale, and goes through billing (s2t.apply_billing_event) or an admin
-- (s2t.admin_change_plan). s2t.settings.self_service_plan_changes = true
-- restores the specification's open self-service for deployments without
-- billing. Resetting usage is never the application's to do.
CREATE OR REPLACE FUNCTION sp_change_user_plan(in_user_id uuid, in_new_plan_code text, in_prorate boolean DEFAULT false)
RETURNS TABLE (success boolean, message text)
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = s2t, pg_catalog, pg_temp
AS $$
DECLARE
    v_new plans%ROWTYPE;
    v_old plans%ROWTYPE;
BEGIN
    PERFORM _assert_may_act_for(in_user_id);
    SELECT * INTO v_new FROM plans WHERE code = in_new_plan_code;
    IF NOT FOUND THEN
        RETURN QUERY SELECT false, format('Plan %s not found', in_new_plan_code);
        RETURN;
    END IF;
    SELECT p.* INTO v_old FROM user_subscriptions s JOIN plans p ON p.id = s.plan_id
     WHERE s.user_id = in_user_id FOR UPDATE OF s;
    IF NOT FOUND THEN
        RETURN QUERY SELECT false, 'No active subscription found'::text;
        RETURN;
    END IF;
    IF _caller_is_app() THEN
        IF in_prorate THEN
            RAISE EXCEPTION USING ERRCODE = '42501', MESSAGE = 'the application cannot reset a user''s usage',
                HINT = 'Usage restarts at the monthly reset; an admin can reset it with s2t.admin_reset_usage.';
        END IF;
        IF _effective_price(v_new) > 0 AND _effective_price(v_new) >= _effective_price(v_old)
           AND v_new.id <> v_old.id
           AND NOT coalesce((SELECT self_service_plan_changes FROM settings), false) THEN
            RAISE EXCEPTION USING ERRCODE = '42501',
                MESSAGE = format('plan %s is a paid upgrade and cannot be chosen here', v_new.code),
                DETAIL = format('current plan: %s; price: %s; new price: %s', v_old.code,
                                _effective_price(v_old), _effective_price(v_new)),
                HINT = 'Paid plans are bought through billing or set by an admin; free plans and cheaper plans can be chosen directly.';
        END IF;
    END IF;
    RETURN QUERY SELECT * FROM _set_plan(in_user_id, v_new.id, in_prorate);
END
$$;
COMMENT ON FUNCTION sp_change_user_plan(uuid, text, boolean) IS 'Moves the user to another plan; with in_prorate the cycle''s usage restarts at zero. Through the application role: only to a free or cheaper plan (unless s2t.settings allows open self-service) and never with in_prorate (42501). Returns (success, message); refusals (unknown plan, same plan) are rows, not errors.';
CREATE FUNCTION _effective_price(in_plan plans) RETURNS numeric
LANGUAGE sql IMMUTABLE
AS $$ SELECT in_plan.plan_cost * (100 - in_plan.plan_discount) / 100.0 $$;
COMMENT ON FUNCTION _effective_price(plans) IS 'Internal: what a plan costs after its discount.';
-- The change itself, for the user's own request, an admin and billing.
CREATE FUNCTION _set_plan(in_user_id uuid, in_plan_id uuid, in_reset_usage boolean)
RETURNS TABLE (success boolean, message text)
LANGUAGE plpgsql VOLATILE SET search_path = s2t, pg_catalog, pg_temp
AS $$
DECLARE
    v_current uuid;
    v_code text;
BEGIN
    SELECT s.plan_id INTO v_current FROM user_subscriptions s WHERE s.user_id = in_user_id FOR UPDATE;
    IF NOT FOUND THEN
        RETURN QUERY SELECT false, 'No active subscription found'::text;
        RETURN;
    END IF;
    PERFORM _roll_cycle(in_user_id);
    SELECT code INTO v_code FROM plans WHERE id = in_plan_id;
    IF v_current = in_plan_id THEN
        RETURN QUERY SELECT false, 'Already on this plan'::text;
        RETURN;
    END IF;
    UPDATE user_subscriptions s
       SET plan_id = in_plan_id,
           usage_count = CASE WHEN in_reset_usage THEN 0 ELSE s.usage_count END,
           used_seconds = CASE WHEN in_reset_usage THEN 0 ELSE s.used_seconds END
     WHERE s.user_id = in_user_id;
    RETURN QUERY SELECT true, format('Successfully changed plan to %s', v_code);
END
$$;
COMMENT ON FUNCTION _set_plan(uuid, uuid, boolean) IS 'Internal: moves a subscription to a plan (optionally restarting the cycle''s usage); no permission checks.';
CREATE FUNCTION claim_job(in_worker text, in_lease interval DEFAULT interval '5 minutes')
RETURNS TABLE (
    job_id bigint, recording_id uuid, attempt int, lease_token uuid, lease_until timestamptz,
    user_id uuid, language text, audio_uri text, meta jsonb, max_ms int
)
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = s2t, pg_catalog, pg_temp
AS $$
DECLARE
    v_job jobs%ROWTYPE;
    v_rec recordings%ROWTYPE;
    v_left bigint;
    v_cap bigint;
BEGIN
    IF in_worker IS NULL OR btrim(in_worker) = '' THEN
        RAISE EXCEPTION USING ERRCODE = 'S2V01', MESSAGE = 'worker name must not be empty', DETAIL = 'field: in_worker';
    END IF;
    IF in_lease IS NULL OR in_lease < interval '1 second' OR in_lease > interval '1 day' THEN
        RAISE EXCEPTION USING ERRCODE = 'S2V01', MESSAGE = format('lease must be between 1 second and 1 day, got %s', in_lease),
            DETAIL = 'field: in_lease', HINT = 'Use a lease a few times the heartbeat interval.';
    END IF;
    PERFORM _fail_exhausted_jobs();
    -- A job whose user has no minutes left is failed here and the next one
    -- tried, so a worker never starts work it may not do. Bounded, so one
    -- call stays short however many such jobs are queued.
    FOR i IN 1..20 LOOP
        -- The job and its recording are locked together and skipped when
        -- either is busy (a late completion holds the recording), so claims
        -- never wait on, or deadlock with, completions.
        SELECT q.* INTO v_job FROM jobs q JOIN recordings r ON r.id = q.recording_id
         WHERE q.state IN ('queued', 'running') AND q.visible_at <= now()
           AND q.attempts < q.max_attempts
         ORDER BY q.visible_at, q.id
         LIMIT 1
         FOR UPDATE OF q, r SKIP LOCKED;
        IF NOT FOUND THEN
            RETURN;
        END IF;
        SELECT * INTO v_rec FROM recordings r WHERE r.id = v_job.recording_id;

        -- What this job may transcribe: the minutes left, counting what the
        -- user's other recordings in flight hold but not this one's own
        -- reservation. A file of known length gets exactly the whole seconds
        -- it reserved (rounding up covers a decoder's frame of difference),
        -- so a header that lies cannot buy extra minutes, and the claim
        -- takes nothing from the user's other admissions.
        PERFORM _roll_cycle(v_rec.user_id);
        SELECT p.monthly_minutes::bigint * 60 - s.used_seconds - (s.reserved_seconds - v_rec.reserved_seconds)
          INTO v_left
          FROM user_subscriptions s JOIN plans p ON p.id = s.plan_id
         WHERE s.user_id = v_rec.user_id
           FOR UPDATE OF s;
        v_left := coalesce(v_left, 0);
        v_cap := CASE WHEN v_rec.expected_ms IS NULL THEN v_left
                      ELSE least(v_left, (v_rec.expected_ms::bigint + 999) / 1000) END;
        IF v_cap <= 0 THEN
            IF v_left + (SELECT s.reserved_seconds - v_rec.reserved_seconds FROM user_subscriptions s
                          WHERE s.user_id = v_rec.user_id) > 0 THEN
                -- The minutes left are held by the user's other recordings
                -- in flight, which may give some back when they settle:
                -- wait for that (settle_job_length and completions NOTIFY).
                UPDATE jobs j SET visible_at = now() + interval '5 seconds', updated_at = now(),
                       last_error = 'waiting: the minutes left are reserved by this user''s other recordings in progress'
                 WHERE j.id = v_job.id;
            ELSE
                PERFORM fail_recording(v_rec.id, 'the monthly minutes were used up before transcription started; '
                    || 'nothing was transcribed or charged');
            END IF;
            CONTINUE;
        END IF;
        UPDATE user_subscriptions s SET reserved_seconds = s.reserved_seconds - v_rec.reserved_seconds + v_cap
         WHERE s.user_id = v_rec.user_id;
        UPDATE recordings r SET reserved_seconds = v_cap WHERE r.id = v_rec.id;

        UPDATE jobs j
           SET state = 'running', attempts = j.attempts + 1, visible_at = now() + in_lease,
               lease_token = gen_random_uuid(), locked_by = left(in_worker, 200), updated_at = now()
         WHERE j.id = v_job.id
        RETURNING j.* INTO v_job;
        RETURN QUERY
        SELECT v_job.id, v_job.recording_id, v_job.attempts, v_job.lease_token, v_job.visible_at,
               v_rec.user_id, v_rec.language, v_rec.audio_uri, v_rec.meta, least(v_cap * 1000, 2147483647)::int;
        RETURN;
    END LOOP;
END
$$;
COMMENT ON FUNCTION claim_job(text, interval) IS 'Claims the oldest due job (FOR UPDATE SKIP LOCKED) with a lease; returns no row when none is due. max_ms is the most audio the worker may transcribe (the minutes the user has left, reserved for this job); jobs of users with nothing left are failed instead of claimed. A job whose lease expires can be claimed again; after max_attempts it fails.';
-- A file whose header did not tell its length holds all the minutes left
-- from claim until the worker has decoded it; the worker then reports the
-- real length here, which shrinks the reservation so the user's other
-- files can start.
CREATE FUNCTION settle_job_length(in_job_id bigint, in_lease_token uuid, in_audio_ms int) RETURNS int
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = s2t, pg_catalog, pg_temp
AS $$
DECLARE
    v_rec recordings%ROWTYPE;
    v_want bigint;
BEGIN
    IF in_audio_ms IS NULL OR in_audio_ms < 0 THEN
        RAISE EXCEPTION USING ERRCODE = 'S2V01', MESSAGE = format('audio length must be at least 0 ms, got %s', in_audio_ms),
            DETAIL = 'field: in_audio_ms';
    END IF;
    SELECT r.* INTO v_rec FROM jobs j JOIN recordings r ON r.id = j.recording_id
     WHERE j.id = in_job_id AND j.state = 'running' AND j.lease_token = in_lease_token
       FOR UPDATE OF r;
    IF NOT FOUND THEN
        PERFORM _lease_lost(in_job_id);
    END IF;
    v_want := (in_audio_ms::bigint + 999) / 1000;
    IF v_want < v_rec.reserved_seconds THEN
        UPDATE user_subscriptions s SET reserved_seconds = greatest(s.reserved_seconds - (v_rec.reserved_seconds - v_want), 0)
         WHERE s.user_id = v_rec.user_id;
        UPDATE recordings r SET reserved_seconds = v_want, expected_ms = coalesce(r.expected_ms, in_audio_ms)
         WHERE r.id = v_rec.id;
        PERFORM pg_notify('s2t_jobs', v_rec.id::text);
        RETURN least(v_want * 1000, 2147483647)::int;
    END IF;
    UPDATE recordings r SET expected_ms = coalesce(r.expected_ms, in_audio_ms) WHERE r.id = v_rec.id;
    RETURN least(v_rec.reserved_seconds::bigint * 1000, 2147483647)::int;
END
$$;
COMMENT ON FUNCTION settle_job_length(bigint, uuid, int) IS 'For the worker holding the lease: reports the decoded length of the audio, shrinking the job''s reservation to it (never growing it). Returns the new max_ms: transcribe at most that much. Errors: S2S01 lease lost, S2V01 bad length.';
CREATE FUNCTION complete_job(
    in_job_id bigint, in_duration_ms int, in_segments jsonb, in_language text DEFAULT NULL,
    in_notice text DEFAULT NULL
) RETURNS boolean
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = s2t, pg_catalog, pg_temp
AS $$
DECLARE
    v_recording uuid;
BEGIN
    SELECT recording_id INTO v_recording FROM jobs WHERE id = in_job_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION USING ERRCODE = 'S2N01', MESSAGE = format('job %s not found', in_job_id);
    END IF;
    -- Whoever finishes first wins, even a worker whose lease ran out: the
    -- work is the same, and complete_recording makes it count once.
    RETURN complete_recording(v_recording, in_duration_ms, in_segments, in_language, in_notice);
END
$$;
COMMENT ON FUNCTION complete_job(bigint, int, jsonb, text, text) IS 'Completes the job''s recording (see complete_recording): true the first time, false after. Errors as complete_recording, plus S2N01 unknown job.';
-- Rotation with a grace window. Two tabs refreshing at once, or a client
-- retrying after a timeout, present the same token twice within moments; a
-- strict rule would then revoke the whole family and sign the user out.
-- The gateway derives the successor from the spent token (an HMAC under its
-- secret), so an honest second presentation within in_grace arrives with
-- the very successor already stored, and gets it back. A replay after the
-- window, or with any other successor, is treated as theft.
CREATE FUNCTION rotate_refresh_token(
    in_old_hash bytea, in_new_hash bytea, in_ttl interval, in_grace interval DEFAULT interval '0'
)
RETURNS TABLE (user_id uuid, outcome text)
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = s2t, pg_catalog, pg_temp
AS $$
DECLARE
    v_old refresh_tokens%ROWTYPE;
    v_next refresh_tokens%ROWTYPE;
    v_status text;
    v_new uuid;
BEGIN
    IF in_grace IS NULL OR in_grace < interval '0' OR in_grace > interval '5 minutes' THEN
        RAISE EXCEPTION USING ERRCODE = 'S2V01', MESSAGE = format('grace must be between 0 and 5 minutes, got %s', in_grace),
            DETAIL = 'field: in_grace';
    END IF;
    SELECT * INTO v_old FROM refresh_tokens t WHERE t.token_hash = in_old_hash FOR UPDATE;
    IF NOT FOUND THEN
        RETURN QUERY SELECT NULL::uuid, 'unknown';
        RETURN;
    END IF;
    SELECT u.status INTO v_status FROM users u WHERE u.id = v_old.user_id;
    IF v_old.replaced_by IS NOT NULL THEN
        SELECT * INTO v_next FROM refresh_tokens t WHERE t.id = v_old.replaced_by;
        IF v_old.revoked_at > now() - in_grace AND v_next.token_hash = in_new_hash
           AND v_next.revoked_at IS NULL AND v_next.expires_at > now() AND v_status = 'active' THEN
            RETURN QUERY SELECT v_old.user_id, 'rotated';
            RETURN;
        END IF;
        -- A rotated token came back: someone kept a copy. End the session
        -- for everyone holding any token of this family.
        UPDATE refresh_tokens t SET revoked_at = now()
         WHERE t.family_id = v_old.family_id AND t.revoked_at IS NULL;
        RETURN QUERY SELECT v_old.user_id, 'reused';
        RETURN;
    END IF;
    IF v_old.revoked_at IS NOT NULL THEN
        RETURN QUERY SELECT v_old.user_id, 'revoked';
        RETURN;
    END IF;
    IF v_old.expires_at <= now() THEN
        RETURN QUERY SELECT v_old.user_id, 'expired';
        RETURN;
    END IF;
    IF v_status IS DISTINCT FROM 'active' THEN
        RETURN QUERY SELECT v_old.user_id, 'disabled';
        RETURN;
    END IF;
    INSERT INTO refresh_tokens (user_id, family_id, token_hash, expires_at)
    VALUES (v_old.user_id, v_old.family_id, in_new_hash, now() + in_ttl)
    RETURNING id INTO v_new;
    UPDATE refresh_tokens t SET revoked_at = now(), replaced_by = v_new WHERE t.id = v_old.id;
    RETURN QUERY SELECT v_old.user_id, 'rotated';
END
$$;
COMMENT ON FUNCTION rotate_refresh_token(bytea, bytea, interval, interval) IS 'Exchanges a refresh token (by hash) for a new one in the same family. outcome: rotated (also for the same exchange repeated within in_grace, at most 5 minutes), or unknown / expired / revoked / disabled, or reused (a rotated token again after the grace, or with another successor: the whole family is revoked).';
CREATE OR REPLACE FUNCTION api_key_user(in_key_hash bytea) RETURNS uuid
LANGUAGE sql VOLATILE SECURITY DEFINER SET search_path = s2t, pg_catalog, pg_temp
AS $$
    WITH k AS (
        SELECT k.id, k.user_id, k.last_used_at
          FROM api_keys k JOIN users u ON u.id = k.user_id
         WHERE k.key_hash = in_key_hash AND k.revoked_at IS NULL AND u.status = 'active'
           AND (k.expires_at IS NULL OR k.expires_at > now())),
    touched AS (
        -- At most one write a minute per key, not one per request.
        UPDATE api_keys SET last_used_at = now()
         WHERE id IN (SELECT id FROM k WHERE last_used_at IS NULL OR last_used_at < now() - interval '1 minute')
        RETURNING 1)
    SELECT user_id FROM k
$$;
COMMENT ON FUNCTION api_key_user(bytea) IS 'The active user an API key (by SHA-256) belongs to, or NULL when unknown, revoked, expired or the user is disabled; notes when it was last used.';

REVOKE INSERT (user_id, name, prefix, key_hash) ON api_keys FROM s2t_app;
GRANT SELECT (expires_at) ON api_keys TO s2t_app;
GRANT EXECUTE ON FUNCTION rotate_refresh_token(bytea, bytea, interval, interval) TO s2t_app;

CREATE FUNCTION "billing_signature_problem"(
	"secret" TEXT, /* & str */
	"payload" TEXT, /* & str */
	"signature" TEXT, /* Option < & str > */
	"now_unix" bigint, /* i64 */
	"tolerance_secs" INT /* i32 */
) RETURNS TEXT /* Option < String > */
IMMUTABLE PARALLEL SAFE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'billing_signature_problem_wrapper';
COMMENT ON FUNCTION billing_signature_problem(text, text, text, bigint, int) IS 'NULL if the billing signature (t=<unix>,v1=<hex HMAC-SHA256 of t.payload>) is valid and within the tolerance of now, else why not.';

-- Administration and billing, added in 0.3.0.
--
-- Admins are users with role = 'admin'. The application acts for them the
-- way it acts for anyone (s2t.user_id names the admin), and these functions
-- check that role in the database, so a gateway bug cannot turn a user into
-- an admin. Billing changes plans through signed events that the database
-- verifies itself: the application role passes them on, but cannot make
-- one up, because only the database knows the secret.

CREATE TABLE settings (
    id                        boolean PRIMARY KEY DEFAULT true CHECK (id),
    self_service_plan_changes boolean NOT NULL DEFAULT false,
    billing_webhook_secret    text CHECK (billing_webhook_secret IS NULL OR length(billing_webhook_secret) >= 32),
    billing_tolerance_secs    int NOT NULL DEFAULT 300 CHECK (billing_tolerance_secs BETWEEN 1 AND 86400)
);
INSERT INTO settings DEFAULT VALUES;
COMMENT ON TABLE settings IS 'Deployment settings (one row), changed by the database owner with UPDATE. self_service_plan_changes: users may pick any plan themselves (the specification''s behaviour, for deployments without billing). billing_webhook_secret: the shared secret that signs billing events (at least 32 characters; NULL turns billing off).';
-- Kept by pg_dump, though the extension created it.
SELECT pg_catalog.pg_extension_config_dump('settings', '');

CREATE TABLE billing_events (
    event_id    text PRIMARY KEY CHECK (length(event_id) BETWEEN 1 AND 200),
    user_id     uuid NOT NULL,
    plan_code   text NOT NULL,
    received_at timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE billing_events IS 'Billing events already applied, by their id, so a redelivered event changes nothing.';

CREATE FUNCTION _assert_admin() RETURNS void
LANGUAGE plpgsql STABLE SET search_path = s2t, pg_catalog, pg_temp
AS $$
BEGIN
    IF NOT _caller_is_app() AND current_user_id() IS NULL THEN
        RETURN;
    END IF;
    IF NOT EXISTS (SELECT FROM users u WHERE u.id = current_user_id() AND u.role = 'admin' AND u.status = 'active') THEN
        RAISE EXCEPTION USING ERRCODE = '42501', MESSAGE = 'this needs an administrator',
            HINT = 'Sign in as a user whose role is admin.';
    END IF;
END
$$;
COMMENT ON FUNCTION _assert_admin() IS 'Internal: raises 42501 unless the transaction acts for an active admin (or the caller is a trusted role acting for nobody).';

CREATE FUNCTION admin_list_users(in_search text DEFAULT NULL, in_limit int DEFAULT 50, in_offset int DEFAULT 0)
RETURNS TABLE (
    id uuid, email text, user_name text, role text, status text, created_at timestamptz,
    plan_code text, usage_count int, used_seconds int, reserved_seconds int, cycle_end timestamptz
)
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = s2t, pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM _assert_admin();
    IF in_limit IS NULL OR in_limit NOT BETWEEN 1 AND 500 OR in_offset IS NULL OR in_offset < 0 THEN
        RAISE EXCEPTION USING ERRCODE = 'S2V01', MESSAGE = 'limit must be 1 to 500 and offset at least 0', DETAIL = 'field: limit';
    END IF;
    RETURN QUERY
    SELECT u.id, u.email, u.user_name, u.role, u.status, u.created_at,
           p.code, s.usage_count, s.used_seconds, s.reserved_seconds, s.cycle_end
      FROM users u
      LEFT JOIN user_subscriptions s ON s.user_id = u.id
      LEFT JOIN plans p ON p.id = s.plan_id
     WHERE in_search IS NULL
        OR strpos(u.email, lower(in_search)) > 0 OR strpos(lower(u.user_name), lower(in_search)) > 0
     ORDER BY u.created_at, u.id
     LIMIT in_limit OFFSET in_offset;
END
$$;
COMMENT ON FUNCTION admin_list_users(text, int, int) IS 'Admins: users (optionally those whose e-mail or user name contains in_search) with plan and usage, oldest first. Errors: 42501 not an admin.';

CREATE FUNCTION admin_set_user_status(in_user_id uuid, in_status text) RETURNS boolean
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = s2t, pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM _assert_admin();
    IF in_status IS NULL OR in_status NOT IN ('active', 'disabled') THEN
        RAISE EXCEPTION USING ERRCODE = 'S2V01', MESSAGE = format('status must be active or disabled, got %L', in_status),
            DETAIL = 'field: status';
    END IF;
    IF in_user_id = current_user_id() AND in_status = 'disabled' THEN
        RAISE EXCEPTION USING ERRCODE = 'S2S01', MESSAGE = 'an admin cannot disable their own account',
            HINT = 'Ask another admin.';
    END IF;
    UPDATE users SET status = in_status WHERE id = in_user_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION USING ERRCODE = 'S2N01', MESSAGE = format('user %s not found', in_user_id);
    END IF;
    IF in_status = 'disabled' THEN
        -- Sessions end now, not when their refresh tokens expire.
        UPDATE refresh_tokens SET revoked_at = now() WHERE user_id = in_user_id AND revoked_at IS NULL;
    END IF;
    RETURN true;
END
$$;
COMMENT ON FUNCTION admin_set_user_status(uuid, text) IS 'Admins: enables or disables an account; disabling revokes its sessions. Errors: 42501 not an admin, S2N01 unknown user, S2S01 disabling oneself, S2V01 bad status.';

CREATE FUNCTION admin_change_plan(in_user_id uuid, in_plan_code text, in_reset_usage boolean DEFAULT false)
RETURNS TABLE (success boolean, message text)
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = s2t, pg_catalog, pg_temp
AS $$
DECLARE
    v_plan uuid;
BEGIN
    PERFORM _assert_admin();
    SELECT id INTO v_plan FROM plans WHERE code = in_plan_code;
    IF v_plan IS NULL THEN
        RAISE EXCEPTION USING ERRCODE = 'S2N01', MESSAGE = format('plan %s not found', in_plan_code);
    END IF;
    IF NOT EXISTS (SELECT FROM users WHERE id = in_user_id) THEN
        RAISE EXCEPTION USING ERRCODE = 'S2N01', MESSAGE = format('user %s not found', in_user_id);
    END IF;
    RETURN QUERY SELECT * FROM _set_plan(in_user_id, v_plan, coalesce(in_reset_usage, false));
END
$$;
COMMENT ON FUNCTION admin_change_plan(uuid, text, boolean) IS 'Admins: moves any user to any plan, optionally restarting the cycle''s usage. Errors: 42501 not an admin, S2N01 unknown user or plan.';

CREATE FUNCTION admin_reset_usage(in_user_id uuid) RETURNS boolean
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = s2t, pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM _assert_admin();
    -- Reservations of recordings in flight stay: they are settled when
    -- those recordings finish.
    UPDATE user_subscriptions SET usage_count = 0, used_seconds = 0 WHERE user_id = in_user_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION USING ERRCODE = 'S2N01', MESSAGE = format('user %s not found', in_user_id);
    END IF;
    RETURN true;
END
$$;
COMMENT ON FUNCTION admin_reset_usage(uuid) IS 'Admins: restarts a user''s usage for the current cycle at zero. Errors: 42501 not an admin, S2N01 unknown user.';

CREATE FUNCTION admin_upsert_plan(
    in_code text, in_name text, in_description text, in_plan_type text,
    in_plan_cost int, in_plan_discount int, in_monthly_minutes int, in_monthly_usage_limit int
) RETURNS uuid
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = s2t, pg_catalog, pg_temp
AS $$
DECLARE
    v_id uuid;
BEGIN
    PERFORM _assert_admin();
    IF in_code IS NULL OR in_code !~ '^[A-Z][A-Z0-9_]{1,31}$' THEN
        RAISE EXCEPTION USING ERRCODE = 'S2V01', MESSAGE = format('plan code must be 2-32 upper-case letters, digits or _, got %L', in_code),
            DETAIL = 'field: code';
    END IF;
    IF in_name IS NULL OR btrim(in_name) = '' THEN
        RAISE EXCEPTION USING ERRCODE = 'S2V01', MESSAGE = 'plan name must not be empty', DETAIL = 'field: name';
    END IF;
    INSERT INTO plans (code, name, description, plan_type, plan_cost, plan_discount, monthly_minutes, monthly_usage_limit)
    VALUES (in_code, in_name, in_description, coalesce(in_plan_type, 'paid'), coalesce(in_plan_cost, 0),
            coalesce(in_plan_discount, 0), in_monthly_minutes, in_monthly_usage_limit)
    ON CONFLICT (code) DO UPDATE
       SET name = EXCLUDED.name, description = EXCLUDED.description, plan_type = EXCLUDED.plan_type,
           plan_cost = EXCLUDED.plan_cost, plan_discount = EXCLUDED.plan_discount,
           monthly_minutes = EXCLUDED.monthly_minutes, monthly_usage_limit = EXCLUDED.monthly_usage_limit
    RETURNING id INTO v_id;
    RETURN v_id;
END
$$;
COMMENT ON FUNCTION admin_upsert_plan(text, text, text, text, int, int, int, int) IS 'Admins: creates a plan or updates the one with this code; returns its id. Errors: 42501 not an admin, S2V01 bad code or name, 23514 a limit out of range.';

CREATE FUNCTION apply_billing_event(in_payload text, in_signature text) RETURNS text
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = s2t, pg_catalog, pg_temp
AS $$
DECLARE
    v_settings settings%ROWTYPE;
    v_problem text;
    v_event jsonb;
    v_user uuid;
    v_plan uuid;
BEGIN
    SELECT * INTO v_settings FROM settings;
    IF v_settings.billing_webhook_secret IS NULL THEN
        RAISE EXCEPTION USING ERRCODE = 'S2S01', MESSAGE = 'billing is not configured',
            HINT = 'Set s2t.settings.billing_webhook_secret to the secret your billing provider signs with.';
    END IF;
    v_problem := billing_signature_problem(v_settings.billing_webhook_secret, in_payload, in_signature,
                                           extract(epoch FROM now())::bigint, v_settings.billing_tolerance_secs);
    IF v_problem IS NOT NULL THEN
        RAISE EXCEPTION USING ERRCODE = '42501', MESSAGE = 'billing event signature rejected: ' || v_problem;
    END IF;
    BEGIN
        v_event := in_payload::jsonb;
        v_user := (v_event ->> 'user_id')::uuid;
    EXCEPTION WHEN invalid_text_representation THEN
        RAISE EXCEPTION USING ERRCODE = 'S2V01', MESSAGE = 'billing event must be JSON with event_id, user_id and plan_code';
    END;
    IF jsonb_typeof(v_event) <> 'object' OR v_user IS NULL OR v_event ->> 'event_id' IS NULL
       OR v_event ->> 'plan_code' IS NULL THEN
        RAISE EXCEPTION USING ERRCODE = 'S2V01', MESSAGE = 'billing event must be JSON with event_id, user_id and plan_code';
    END IF;
    SELECT id INTO v_plan FROM plans WHERE code = v_event ->> 'plan_code';
    IF v_plan IS NULL THEN
        RAISE EXCEPTION USING ERRCODE = 'S2N01', MESSAGE = format('plan %s not found', v_event ->> 'plan_code');
    END IF;
    IF NOT EXISTS (SELECT FROM users WHERE id = v_user) THEN
        RAISE EXCEPTION USING ERRCODE = 'S2N01', MESSAGE = format('user %s not found', v_user);
    END IF;
    INSERT INTO billing_events (event_id, user_id, plan_code)
    VALUES (v_event ->> 'event_id', v_user, v_event ->> 'plan_code')
    ON CONFLICT (event_id) DO NOTHING;
    IF NOT FOUND THEN
        RETURN 'duplicate';
    END IF;
    PERFORM _set_plan(v_user, v_plan, false);
    RETURN 'applied';
END
$$;
COMMENT ON FUNCTION apply_billing_event(text, text) IS 'Billing: applies a signed event {"event_id", "user_id", "plan_code"} (signature "t=<unix seconds>,v1=<hex HMAC-SHA256 of t.payload>" with s2t.settings.billing_webhook_secret). Returns applied, or duplicate for an event id seen before. Errors: 42501 bad or stale signature, S2S01 billing not configured, S2V01 malformed event, S2N01 unknown user or plan.';

CREATE FUNCTION create_api_key(
    in_user_id uuid, in_name text, in_prefix text, in_key_hash bytea, in_expires_at timestamptz DEFAULT NULL
) RETURNS TABLE (id uuid, created_at timestamptz)
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = s2t, pg_catalog, pg_temp
AS $$
DECLARE
    v_active int;
BEGIN
    PERFORM _assert_may_act_for(in_user_id);
    IF in_expires_at IS NOT NULL AND in_expires_at <= now() THEN
        RAISE EXCEPTION USING ERRCODE = 'S2V01', MESSAGE = 'an API key must expire in the future', DETAIL = 'field: expires_at';
    END IF;
    -- The user's row lock serialises concurrent creations, so the limit
    -- holds however many requests race.
    PERFORM FROM users u WHERE u.id = in_user_id FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION USING ERRCODE = 'S2N01', MESSAGE = format('user %s not found', in_user_id);
    END IF;
    SELECT count(*) INTO v_active FROM api_keys k
     WHERE k.user_id = in_user_id AND k.revoked_at IS NULL AND (k.expires_at IS NULL OR k.expires_at > now());
    IF v_active >= 20 THEN
        RAISE EXCEPTION USING ERRCODE = 'S2S01', MESSAGE = 'at most 20 API keys can be active at once',
            HINT = 'Revoke a key you no longer use.';
    END IF;
    RETURN QUERY
    INSERT INTO api_keys AS k (user_id, name, prefix, key_hash, expires_at)
    VALUES (in_user_id, in_name, in_prefix, in_key_hash, in_expires_at)
    RETURNING k.id, k.created_at;
END
$$;
COMMENT ON FUNCTION create_api_key(uuid, text, text, bytea, timestamptz) IS 'Stores a new API key (its SHA-256) for the user, at most 20 active at once even under concurrent calls; returns its id. Errors: S2S01 limit reached, S2V01 expiry in the past.';

-- The settings hold the billing secret: no grant on them at all. The
-- application may call these; each checks who it acts for.
GRANT EXECUTE ON FUNCTION
    admin_list_users(text, int, int), admin_set_user_status(uuid, text),
    admin_change_plan(uuid, text, boolean), admin_reset_usage(uuid),
    admin_upsert_plan(text, text, text, text, int, int, int, int),
    apply_billing_event(text, text),
    create_api_key(uuid, text, text, bytea, timestamptz)
TO s2t_app;

-- pg_temp last for every function that pins search_path.
DO $path$
DECLARE
    v_routine regprocedure;
BEGIN
    FOR v_routine IN
        SELECT p.oid::regprocedure
          FROM pg_proc p
          JOIN pg_depend d ON d.classid = 'pg_proc'::regclass AND d.objid = p.oid AND d.deptype = 'e'
          JOIN pg_extension e ON e.oid = d.refobjid AND e.extname = 'pg_s2t'
         WHERE EXISTS (SELECT FROM unnest(p.proconfig) c WHERE c LIKE 'search_path=%')
    LOOP
        EXECUTE format('ALTER ROUTINE %s SET search_path = s2t, pg_catalog, pg_temp', v_routine);
    END LOOP;
END
$path$;

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

-- What each role lost in 0.3.0.
REVOKE EXECUTE ON FUNCTION fail_recording(uuid, text) FROM s2t_app;
REVOKE EXECUTE ON PROCEDURE sp_complete_recording(uuid, int, jsonb) FROM s2t_app;
REVOKE EXECUTE ON FUNCTION
    register_user(text, text, text, text, text),
    sp_check_quota_and_create_recording(uuid, text, text, jsonb),
    sp_get_user_stats(uuid),
    sp_change_user_plan(uuid, text, boolean)
FROM s2t_worker;
REVOKE EXECUTE ON PROCEDURE sp_register_user(text, text, text, text, text) FROM s2t_worker;

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
