-- Users, quotas and recordings: the specification's procedures under their
-- original names, with its defects fixed (see the README's "Fixed defects").
-- Every SECURITY DEFINER function pins search_path.

CREATE FUNCTION current_user_id() RETURNS uuid
LANGUAGE sql STABLE PARALLEL SAFE
AS $$ SELECT nullif(current_setting('s2t.user_id', true), '')::uuid $$;
COMMENT ON FUNCTION current_user_id() IS 'The user this transaction acts for: the setting s2t.user_id (set it with set_config(''s2t.user_id'', id, true)), or NULL.';

CREATE FUNCTION raise_problem(parts text[]) RETURNS void
LANGUAGE plpgsql IMMUTABLE
AS $$
BEGIN
    IF parts IS NULL THEN
        RETURN;
    END IF;
    RAISE EXCEPTION USING ERRCODE = parts[1], MESSAGE = parts[2],
        DETAIL = coalesce(parts[3], ''), HINT = coalesce(parts[4], '');
END
$$;
COMMENT ON FUNCTION raise_problem(text[]) IS 'Raises [sqlstate, message, detail, hint] as an error; does nothing for NULL. Lets Rust validators report pg_s2t''s own SQLSTATEs.';

-- Is the role that called us (through SET ROLE or by logging in) a
-- restricted application role? Inside SECURITY DEFINER, current_user is the
-- owner, so look at the session's role setting instead. A superuser is a
-- member of every role, so "member of s2t_app but not of s2t_worker" leaves
-- superusers (and roles deliberately given both) trusted, with no catalog
-- query: this runs on every admission.
CREATE FUNCTION _caller_is_app() RETURNS boolean
LANGUAGE sql STABLE
AS $$
    SELECT pg_has_role(CASE WHEN current_setting('role') = 'none' THEN session_user
                            ELSE current_setting('role')::name END, 's2t_app', 'MEMBER')
           AND NOT pg_has_role(CASE WHEN current_setting('role') = 'none' THEN session_user
                                    ELSE current_setting('role')::name END, 's2t_worker', 'MEMBER')
$$;
COMMENT ON FUNCTION _caller_is_app() IS 'True when the calling session acts as a member of s2t_app that is neither a superuser nor a member of s2t_worker.';

CREATE FUNCTION _assert_may_act_for(in_user_id uuid) RETURNS void
LANGUAGE plpgsql STABLE
AS $$
DECLARE
    v_acting uuid := s2t.current_user_id();
BEGIN
    IF v_acting IS NOT NULL THEN
        IF v_acting IS DISTINCT FROM in_user_id THEN
            -- Same answer as for a user that does not exist: no probing.
            RAISE EXCEPTION USING ERRCODE = 'S2N01', MESSAGE = format('user %s not found', in_user_id),
                HINT = 'A session acting for one user (s2t.user_id) cannot read or change another user''s data.';
        END IF;
    ELSIF s2t._caller_is_app() THEN
        RAISE EXCEPTION USING ERRCODE = '42501', MESSAGE = 's2t.user_id is not set',
            HINT = 'The application role must run set_config(''s2t.user_id'', <user id>, true) in each transaction.';
    END IF;
END
$$;
COMMENT ON FUNCTION _assert_may_act_for(uuid) IS 'Raises unless this transaction may act for the user: s2t.user_id matches, or the caller is a trusted (non-application) role.';

CREATE FUNCTION _problem(code text, message text, detail text, hint text) RETURNS text[]
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$ SELECT ARRAY[code, message, detail, hint] $$;
COMMENT ON FUNCTION _problem(text, text, text, text) IS 'Builds the [sqlstate, message, detail, hint] array that raise_problem raises.';

CREATE FUNCTION _utc(ts timestamptz) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$ SELECT to_char(ts AT TIME ZONE 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"') $$;
COMMENT ON FUNCTION _utc(timestamptz) IS 'ISO 8601 UTC text for a timestamp, independent of the session time zone.';

CREATE FUNCTION _current_cycle(OUT cycle_start timestamptz, OUT cycle_end timestamptz)
LANGUAGE sql STABLE PARALLEL SAFE
AS $$
    SELECT date_trunc('month', now(), 'UTC'),
           date_add(date_trunc('month', now(), 'UTC'), interval '1 month', 'UTC')
$$;
COMMENT ON FUNCTION _current_cycle() IS 'The calendar month (UTC) that contains now(): the billing cycle.';

-- Roll an expired cycle forward. The month boundary must never lock a user
-- out until a batch job runs, so every path that needs the cycle calls this.
CREATE FUNCTION _roll_cycle(in_user_id uuid) RETURNS void
LANGUAGE sql VOLATILE
AS $$
    UPDATE s2t.user_subscriptions s
       SET cycle_start = c.cycle_start, cycle_end = c.cycle_end, usage_count = 0, used_seconds = 0
      FROM s2t._current_cycle() c
     WHERE s.user_id = in_user_id AND s.cycle_end <= now()
$$;
COMMENT ON FUNCTION _roll_cycle(uuid) IS 'Starts a new cycle (and zeroes the counters) for the user if the current one has ended.';

-- The specification's trigger, kept: every new recording counts once. The
-- admission function counts its own row in the UPDATE that checks the limit
-- (one row lock instead of two writes) and names it in s2t.counted_recording,
-- so the trigger counts every other insert. The test is the trigger's WHEN
-- rather than its body: an admission then runs no trigger function at all.
-- The marker names one new row's id, so leaving it set is harmless. An ended
-- cycle restarts here too, so a recording inserted after the month turned
-- counts in the new month.
CREATE FUNCTION trg_increment_usage_on_recording() RETURNS trigger
LANGUAGE plpgsql
AS $$
BEGIN
    UPDATE s2t.user_subscriptions s
       SET usage_count  = CASE WHEN s.cycle_end <= now() THEN 1 ELSE s.usage_count + 1 END,
           used_seconds = CASE WHEN s.cycle_end <= now() THEN 0 ELSE s.used_seconds END,
           cycle_start  = CASE WHEN s.cycle_end <= now() THEN date_trunc('month', now(), 'UTC') ELSE s.cycle_start END,
           cycle_end    = CASE WHEN s.cycle_end <= now()
                               THEN date_add(date_trunc('month', now(), 'UTC'), interval '1 month', 'UTC')
                               ELSE s.cycle_end END
     WHERE s.user_id = NEW.user_id;
    RETURN NEW;
END
$$;
COMMENT ON FUNCTION trg_increment_usage_on_recording() IS 'Trigger: counts each new recording against the user''s monthly usage (starting a new cycle if the old one ended).';
CREATE TRIGGER increment_usage_on_recording
    AFTER INSERT ON recordings FOR EACH ROW
    WHEN (current_setting('s2t.counted_recording', true) IS DISTINCT FROM NEW.id::text)
    EXECUTE FUNCTION trg_increment_usage_on_recording();

CREATE FUNCTION register_user(
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

CREATE PROCEDURE sp_register_user(
    in_email text, in_user_name text, in_hashed_pass text, in_name text, in_default_plan_code text
)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = s2t, pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM register_user(in_email, in_user_name, in_hashed_pass, in_name, coalesce(in_default_plan_code, 'FREE'));
END
$$;
COMMENT ON PROCEDURE sp_register_user(text, text, text, text, text) IS 'The specification''s registration procedure; see register_user, which also returns the new id.';

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
    v_acting uuid;
    v_marked text;
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
    -- _assert_may_act_for, inline: this runs on every admission.
    v_acting := current_user_id();
    IF v_acting IS NOT NULL THEN
        IF v_acting IS DISTINCT FROM in_user_id THEN
            RAISE EXCEPTION USING ERRCODE = 'S2N01', MESSAGE = format('user %s not found', in_user_id),
                HINT = 'A session acting for one user (s2t.user_id) cannot read or change another user''s data.';
        END IF;
    ELSIF _caller_is_app() THEN
        RAISE EXCEPTION USING ERRCODE = '42501', MESSAGE = 's2t.user_id is not set',
            HINT = 'The application role must run set_config(''s2t.user_id'', <user id>, true) in each transaction.';
    END IF;
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
                            'field: audio_uri', 'Store the bytes with COPY into s2t.recording_audio_chunks and attach them with s2t.attach_audio.');
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
    -- The check, the count and the insert are one statement (one executor
    -- start instead of three), and the usage trigger is told that the row
    -- is counted before it exists.
    recording_id := gen_random_uuid();
    v_marked := set_config('s2t.counted_recording', recording_id::text, true);
    WITH admitted AS (
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
               + s.reserved_seconds + greatest(v_reserve, 1) <= p.monthly_minutes::bigint * 60
         RETURNING s.user_id
    )
    INSERT INTO recordings (id, user_id, source, language, meta, audio_uri, reserved_seconds, expected_ms)
    SELECT recording_id, a.user_id, in_source, coalesce(in_language, 'vi'),
           coalesce(in_meta, '{}'::jsonb), in_audio_uri, v_reserve, in_expected_ms
      FROM admitted a;
    IF FOUND THEN
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

CREATE FUNCTION sp_check_quota_and_create_recording(
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
