-- Completing and failing recordings, statistics and plan changes.

CREATE FUNCTION complete_recording(
    in_recording_id uuid, in_duration_ms int, in_segments jsonb, in_language text DEFAULT NULL
) RETURNS boolean
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = s2t, pg_catalog
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
     WHERE id = in_recording_id;
    PERFORM _roll_cycle(v_rec.user_id);
    UPDATE user_subscriptions SET used_seconds = used_seconds + v_seconds WHERE user_id = v_rec.user_id;
    UPDATE jobs SET state = 'done', lease_token = NULL, updated_at = now()
     WHERE recording_id = in_recording_id AND state <> 'done';
    RETURN true;
END
$$;
COMMENT ON FUNCTION complete_recording(uuid, int, jsonb, text) IS 'Stores the segments, marks the recording done and charges the seconds (rounded up) exactly once: returns true, or false if it was already done. Errors: S2V01 bad duration or segments (end_ms < start_ms, duplicate idx, past the end), S2N01 unknown recording, S2S01 recording already failed.';

CREATE PROCEDURE sp_complete_recording(in_recording_id uuid, in_duration_ms int, in_segments jsonb)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = s2t, pg_catalog
AS $$
BEGIN
    PERFORM complete_recording(in_recording_id, in_duration_ms, in_segments);
END
$$;
COMMENT ON PROCEDURE sp_complete_recording(uuid, int, jsonb) IS 'The specification''s completion procedure, now idempotent. A rejected call changes nothing; to record a failure call s2t.fail_recording in its own transaction.';

CREATE FUNCTION fail_recording(in_recording_id uuid, in_reason text) RETURNS boolean
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = s2t, pg_catalog
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
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = s2t, pg_catalog
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
           v_sub.usage_count, v_sub.used_seconds,
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

CREATE FUNCTION sp_change_user_plan(in_user_id uuid, in_new_plan_code text, in_prorate boolean DEFAULT false)
RETURNS TABLE (success boolean, message text)
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = s2t, pg_catalog
AS $$
DECLARE
    v_new_plan_id uuid;
    v_sub user_subscriptions%ROWTYPE;
BEGIN
    PERFORM _assert_may_act_for(in_user_id);
    SELECT id INTO v_new_plan_id FROM plans WHERE code = in_new_plan_code;
    IF v_new_plan_id IS NULL THEN
        RETURN QUERY SELECT false, format('Plan %s not found', in_new_plan_code);
        RETURN;
    END IF;
    SELECT * INTO v_sub FROM user_subscriptions WHERE user_id = in_user_id FOR UPDATE;
    IF NOT FOUND THEN
        RETURN QUERY SELECT false, 'No active subscription found'::text;
        RETURN;
    END IF;
    PERFORM _roll_cycle(in_user_id);
    IF v_sub.plan_id = v_new_plan_id THEN
        RETURN QUERY SELECT false, 'Already on this plan'::text;
        RETURN;
    END IF;
    UPDATE user_subscriptions
       SET plan_id = v_new_plan_id,
           usage_count = CASE WHEN in_prorate THEN 0 ELSE usage_count END,
           used_seconds = CASE WHEN in_prorate THEN 0 ELSE used_seconds END
     WHERE user_id = in_user_id;
    RETURN QUERY SELECT true, format('Successfully changed plan to %s', in_new_plan_code);
END
$$;
COMMENT ON FUNCTION sp_change_user_plan(uuid, text, boolean) IS 'Moves the user to another plan; with in_prorate the cycle''s usage restarts at zero. Returns (success, message); refusals (unknown plan, same plan) are rows, not errors.';
