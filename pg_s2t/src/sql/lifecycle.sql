-- Completing and failing recordings, statistics and plan changes.

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
    -- Searchable by words from this commit on; a worker embeds the chunks.
    PERFORM chunk_recording(in_recording_id);
    RETURN true;
END
$$;
COMMENT ON FUNCTION complete_recording(uuid, int, jsonb, text, text) IS 'Stores the segments, marks the recording done, releases its reservation and charges the seconds (rounded up) and chunks the transcript for search, exactly once: returns true, or false if it was already done. in_notice (e.g. why the audio was cut) is kept in meta.notice. Errors: S2V01 bad duration or segments (end_ms < start_ms, duplicate idx, past the end), S2N01 unknown recording, S2S01 recording already failed.';

CREATE PROCEDURE sp_complete_recording(in_recording_id uuid, in_duration_ms int, in_segments jsonb)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = s2t, pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM complete_recording(in_recording_id, in_duration_ms, in_segments);
END
$$;
COMMENT ON PROCEDURE sp_complete_recording(uuid, int, jsonb) IS 'The specification''s completion procedure, now idempotent. A rejected call changes nothing; to record a failure call s2t.fail_recording in its own transaction.';

CREATE FUNCTION fail_recording(in_recording_id uuid, in_reason text) RETURNS boolean
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = s2t, pg_catalog, pg_temp
AS $$
DECLARE
    v_rec recordings%ROWTYPE;
BEGIN
    IF in_reason IS NULL OR btrim(in_reason) = '' THEN
        RAISE EXCEPTION USING ERRCODE = 'S2V01', MESSAGE = 'a failure needs a reason',
            DETAIL = 'field: reason', HINT = 'Say what went wrong in words the user can act on.';
    END IF;
    SELECT * INTO v_rec FROM recordings WHERE id = in_recording_id FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION USING ERRCODE = 'S2N01', MESSAGE = format('recording %s not found', in_recording_id);
    END IF;
    PERFORM _assert_may_act_for(v_rec.user_id);
    IF v_rec.status = 'failed' THEN
        RETURN false;
    END IF;
    IF v_rec.status = 'done' THEN
        RAISE EXCEPTION USING ERRCODE = 'S2S01',
            MESSAGE = format('recording %s is done and cannot fail', in_recording_id),
            HINT = 'Delete the recording instead.';
    END IF;
    UPDATE recordings SET status = 'failed', failure_reason = left(in_reason, 2000), completed_at = now()
     WHERE id = in_recording_id;
    UPDATE jobs SET state = 'failed', last_error = left(in_reason, 2000), lease_token = NULL, updated_at = now()
     WHERE recording_id = in_recording_id AND state IN ('queued', 'running');
    RETURN true;
END
$$;
COMMENT ON FUNCTION fail_recording(uuid, text) IS 'Marks a processing recording failed with a reason (and ends its job). Returns false if it had already failed. Errors: S2V01 empty reason, S2N01 unknown recording, S2S01 recording already done.';

CREATE FUNCTION sp_get_user_stats(in_user_id uuid)
RETURNS TABLE (
    total_recordings bigint, total_duration_minutes numeric, total_segments bigint,
    current_cycle_usage int, current_cycle_seconds int,
    quota_usage_percent numeric, quota_minutes_percent numeric,
    plan_code text, monthly_usage_limit int, monthly_minutes int,
    cycle_start timestamptz, cycle_end timestamptz
)
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = s2t, pg_catalog, pg_temp
AS $$
DECLARE
    v_sub user_subscriptions%ROWTYPE;
    v_plan plans%ROWTYPE;
    v_cycle record;
BEGIN
    PERFORM _assert_may_act_for(in_user_id);
    SELECT * INTO v_sub FROM user_subscriptions WHERE user_id = in_user_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION USING ERRCODE = 'S2N01', MESSAGE = format('user %s not found', in_user_id);
    END IF;
    -- A finished cycle reads as the new, empty one (this function only reads).
    IF v_sub.cycle_end <= now() THEN
        SELECT * INTO v_cycle FROM _current_cycle();
        v_sub.cycle_start := v_cycle.cycle_start;
        v_sub.cycle_end := v_cycle.cycle_end;
        v_sub.usage_count := 0;
        v_sub.used_seconds := 0;
    END IF;
    SELECT * INTO v_plan FROM plans WHERE id = v_sub.plan_id;
    RETURN QUERY
    SELECT r.n, round(r.ms / 60000.0, 2), (SELECT count(*) FROM segments s JOIN recordings r2 ON r2.id = s.recording_id
                                          WHERE r2.user_id = in_user_id),
           v_sub.usage_count::int, v_sub.used_seconds::int,
           CASE WHEN v_plan.monthly_usage_limit > 0
                THEN round(v_sub.usage_count * 100.0 / v_plan.monthly_usage_limit, 2) ELSE 0 END,
           CASE WHEN v_plan.monthly_minutes > 0
                THEN round(v_sub.used_seconds * 100.0 / (v_plan.monthly_minutes * 60), 2) ELSE 0 END,
           v_plan.code, v_plan.monthly_usage_limit, v_plan.monthly_minutes,
           v_sub.cycle_start, v_sub.cycle_end
    FROM (SELECT count(*) AS n, coalesce(sum(duration_ms), 0) AS ms FROM recordings WHERE user_id = in_user_id) r;
END
$$;
COMMENT ON FUNCTION sp_get_user_stats(uuid) IS 'Dashboard numbers for one user: totals, this cycle''s usage, quota percentages, plan limits and the cycle (cycle_end is when the quota resets). Errors: S2N01 unknown user.';

-- Plan changes. A user acting through the application may move to a plan
-- that costs nothing or costs less than the current one; anything else is
-- a sale, and goes through billing (s2t.apply_billing_event) or an admin
-- (s2t.admin_change_plan). s2t.settings.self_service_plan_changes = true
-- restores the specification's open self-service for deployments without
-- billing. Resetting usage is never the application's to do.
CREATE FUNCTION sp_change_user_plan(in_user_id uuid, in_new_plan_code text, in_prorate boolean DEFAULT false)
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
