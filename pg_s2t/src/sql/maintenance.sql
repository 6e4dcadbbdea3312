-- Scheduled maintenance. The worker runs these periodically; with pg_cron:
--   SELECT cron.schedule('s2t-reset', '5 0 1 * *', 'CALL s2t.sp_reset_monthly_cycles()');
--   SELECT cron.schedule('s2t-cleanup', '17 3 * * *', 'SELECT * FROM s2t.sp_cleanup_old_recordings(90, 1000)');

CREATE FUNCTION reset_monthly_cycles() RETURNS int
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = s2t, pg_catalog, pg_temp
AS $$
DECLARE
    v_count int;
BEGIN
    UPDATE user_subscriptions s
       SET cycle_start = c.cycle_start, cycle_end = c.cycle_end, usage_count = 0, used_seconds = 0
      FROM _current_cycle() c
     WHERE s.cycle_end <= now();
    GET DIAGNOSTICS v_count = ROW_COUNT;
    RETURN v_count;
END
$$;
COMMENT ON FUNCTION reset_monthly_cycles() IS 'Starts the current UTC month''s cycle for every subscription whose cycle has ended; returns how many. Safe to run at any time and any number of times.';

CREATE PROCEDURE sp_reset_monthly_cycles()
LANGUAGE plpgsql SECURITY DEFINER SET search_path = s2t, pg_catalog, pg_temp
AS $$
DECLARE
    v_count int := reset_monthly_cycles();
    v_cycle record;
BEGIN
    SELECT * INTO v_cycle FROM _current_cycle();
    RAISE NOTICE 'Reset % subscriptions for new cycle % to %', v_count, _utc(v_cycle.cycle_start), _utc(v_cycle.cycle_end);
END
$$;
COMMENT ON PROCEDURE sp_reset_monthly_cycles() IS 'The specification''s monthly reset; see reset_monthly_cycles.';

CREATE FUNCTION sp_cleanup_old_recordings(in_retention_days int DEFAULT 90, in_batch_size int DEFAULT 1000)
RETURNS TABLE (deleted_recordings int, deleted_segments int)
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = s2t, pg_catalog, pg_temp
AS $$
BEGIN
    IF in_retention_days IS NULL OR in_retention_days < 1 THEN
        RAISE EXCEPTION USING ERRCODE = 'S2V01', MESSAGE = format('retention must be at least 1 day, got %s', in_retention_days),
            DETAIL = 'field: in_retention_days';
    END IF;
    IF in_batch_size IS NULL OR in_batch_size NOT BETWEEN 1 AND 100000 THEN
        RAISE EXCEPTION USING ERRCODE = 'S2V01', MESSAGE = format('batch size must be 1 to 100000, got %s', in_batch_size),
            DETAIL = 'field: in_batch_size', HINT = 'Call repeatedly until it deletes nothing.';
    END IF;
    -- One set of victims, locked once, so the segment count describes exactly
    -- the recordings deleted (PostgreSQL has no DELETE ... LIMIT).
    RETURN QUERY
    WITH victims AS (
        SELECT id FROM recordings
         WHERE created_at < now() - make_interval(days => in_retention_days)
           AND status IN ('done', 'failed')
         ORDER BY created_at
         LIMIT in_batch_size
         FOR UPDATE SKIP LOCKED
    ), seg AS (
        SELECT count(*)::int AS n FROM segments WHERE recording_id IN (SELECT id FROM victims)
    ), del AS (
        DELETE FROM recordings WHERE id IN (SELECT id FROM victims) RETURNING 1
    )
    SELECT (SELECT count(*)::int FROM del), (SELECT n FROM seg);
END
$$;
COMMENT ON FUNCTION sp_cleanup_old_recordings(int, int) IS 'Deletes up to in_batch_size finished (done or failed) recordings older than in_retention_days, with their segments, chunks and audio; returns the counts. Errors: S2V01 bad arguments.';
