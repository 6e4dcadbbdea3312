-- The batch transcription queue.
--
-- Channels:
--   s2t_jobs              payload: recording id. Sent when a worker may be
--                         idle and a job is claimable now: an upload that
--                         found no other due job waiting, a claim that left
--                         due jobs behind, a released job, minutes given
--                         back. Retries with a delay send nothing: workers
--                         also poll.
--   s2t_recording_events  payload: JSON {recording_id, user_id, status,
--                         progress, failure_reason}. Sent when a recording's
--                         status or progress changes.

CREATE FUNCTION _wake_key() RETURNS int
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$ SELECT 1932410947 $$;
COMMENT ON FUNCTION _wake_key() IS 'Internal: the first key of the advisory locks on job ids that uploads and claims use to hand the wake-up of an idle worker on (see trg_enqueue_upload).';

-- Fair order: claims take the waiting job with the lowest turn. A user's
-- first waiting job gets the turn of the job next in line, and each further
-- one the turn after that user's last waiting job, so claims go round the
-- users who have jobs waiting instead of draining whoever queued most first
-- (start-time fair queueing, the head of the queue as virtual time).
-- Admissions of one user are serialised by their subscription row lock, so
-- each sees the job the previous one queued.
--
-- NOTIFY only when a worker may be idle: a committing transaction that has
-- notified holds a database-wide lock through its commit, so notifying on
-- every upload serialised concurrent admissions (make bench samples them
-- waiting on Lock:object; bench/results/quota.json).
-- A job due and waiting (the head of the line) means no worker is idle,
-- unless a claim is taking that job right now. So the upload takes a shared
-- lock on the head job's wake-up key until it commits, and whoever claims
-- or defers that job takes the key exclusively first (claim_job): the claim
-- then waits for this upload to commit and sees it when it looks for more
-- work, and hands the wake-up on. If the key is taken already, or the head
-- was claimed since we looked, notify. READ COMMITTED only: a transaction
-- with one snapshot cannot see the head being claimed.
--
-- enable_seqscan is off because a session plans these statements once: if
-- the queue was empty then, the cached plan scans the whole table on every
-- later upload (measured from an empty queue: 1,130 uploads/s against
-- 3,090 with it off, 2 clients, synchronous_commit off).
CREATE FUNCTION trg_enqueue_upload() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = s2t, pg_catalog, pg_temp SET enable_seqscan = off
AS $$
DECLARE
    v_head_id bigint;
    v_head bigint;
    v_last bigint;
    v_quiet boolean := false;
BEGIN
    SELECT j.id, j.turn INTO v_head_id, v_head FROM jobs j
     WHERE j.state = 'queued' AND j.visible_at <= now()
     ORDER BY j.turn, j.id
     LIMIT 1;
    SELECT j.turn INTO v_last FROM jobs j
     WHERE j.user_id = NEW.user_id AND j.state = 'queued'
     ORDER BY j.turn DESC
     LIMIT 1;
    -- With nothing due, start after the jobs waiting for a retry, so they
    -- keep their place when they come due.
    INSERT INTO jobs (recording_id, user_id, turn)
    VALUES (NEW.id, NEW.user_id,
            greatest(coalesce(v_head, (SELECT max(j.turn) FROM jobs j WHERE j.state = 'queued'), 0), v_last + 1));
    IF v_head_id IS NOT NULL AND current_setting('transaction_isolation') = 'read committed'
       AND pg_try_advisory_xact_lock_shared(_wake_key(), (v_head_id % 2147483648)::int) THEN
        v_quiet := EXISTS (SELECT FROM jobs j WHERE j.id = v_head_id AND j.state = 'queued' AND j.visible_at <= now());
    END IF;
    IF NOT v_quiet THEN
        PERFORM pg_notify('s2t_jobs', NEW.id::text);
    END IF;
    RETURN NULL;
END
$$;
COMMENT ON FUNCTION trg_enqueue_upload() IS 'Trigger: queues a transcription job for each new upload recording in its user''s fair turn, and NOTIFYs s2t_jobs unless a job is due that no claim has started on.';
CREATE TRIGGER enqueue_upload
    AFTER INSERT ON recordings FOR EACH ROW WHEN (NEW.source = 'upload')
    EXECUTE FUNCTION trg_enqueue_upload();

CREATE FUNCTION trg_notify_recording_event() RETURNS trigger
LANGUAGE plpgsql
AS $$
BEGIN
    PERFORM pg_notify('s2t_recording_events', json_build_object(
        'recording_id', NEW.id, 'user_id', NEW.user_id, 'status', NEW.status,
        'progress', NEW.meta -> 'progress', 'failure_reason', left(NEW.failure_reason, 500))::text);
    RETURN NULL;
END
$$;
COMMENT ON FUNCTION trg_notify_recording_event() IS 'Trigger: NOTIFYs s2t_recording_events when a recording''s status or progress changes.';
CREATE TRIGGER notify_recording_event
    AFTER UPDATE ON recordings FOR EACH ROW
    WHEN (OLD.status IS DISTINCT FROM NEW.status OR OLD.meta -> 'progress' IS DISTINCT FROM NEW.meta -> 'progress')
    EXECUTE FUNCTION trg_notify_recording_event();

CREATE FUNCTION _lease_lost(in_job_id bigint) RETURNS void
LANGUAGE plpgsql
AS $$
BEGIN
    RAISE EXCEPTION USING ERRCODE = 'S2S01', MESSAGE = format('job %s is not leased to you', in_job_id),
        DETAIL = 'the lease expired and another worker claimed the job, or the job has finished',
        HINT = 'Stop working on this job; whoever holds the lease will finish it.';
END
$$;
COMMENT ON FUNCTION _lease_lost(bigint) IS 'Internal: raises S2S01 for a worker that no longer holds a job''s lease.';

-- Jobs whose worker died during their last allowed attempt would otherwise
-- stay 'running' forever: fail them with a reason.
CREATE FUNCTION _fail_exhausted_jobs() RETURNS int
LANGUAGE sql VOLATILE SET search_path = s2t, pg_catalog, pg_temp
AS $$
    WITH dead AS (
        UPDATE jobs j
           SET state = 'failed', lease_token = NULL, updated_at = now(),
               last_error = format('the worker stopped responding on attempt %s of %s', j.attempts, j.max_attempts)
         WHERE j.id IN (SELECT id FROM jobs
                         WHERE state = 'running' AND visible_at <= now() AND attempts >= max_attempts
                         FOR UPDATE SKIP LOCKED)
        RETURNING j.recording_id, j.last_error
    ), failed AS (
        UPDATE recordings r
           SET status = 'failed', completed_at = now(),
               failure_reason = 'transcription did not finish: ' || dead.last_error
          FROM dead
         WHERE r.id = dead.recording_id AND r.status = 'processing'
        RETURNING 1
    )
    SELECT count(*)::int FROM dead
$$;
COMMENT ON FUNCTION _fail_exhausted_jobs() IS 'Internal: fails running jobs whose lease expired on their last attempt.';

-- enable_seqscan is off for the reason given at trg_enqueue_upload: a
-- worker that connected to an empty queue would otherwise keep scanning the
-- whole queue for each claim once it fills.
CREATE FUNCTION claim_job(in_worker text, in_lease interval DEFAULT interval '5 minutes')
RETURNS TABLE (
    job_id bigint, recording_id uuid, attempt int, lease_token uuid, lease_until timestamptz,
    user_id uuid, language text, audio_uri text, meta jsonb, max_ms int
)
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = s2t, pg_catalog, pg_temp SET enable_seqscan = off
AS $$
DECLARE
    v_job jobs%ROWTYPE;
    v_rec recordings%ROWTYPE;
    v_left bigint;
    v_cap bigint;
    v_next uuid;
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
        -- never wait on, or deadlock with, completions. A job whose worker
        -- stopped (its lease ran out) goes first: it already had its turn.
        -- Then the waiting job with the lowest turn (see trg_enqueue_upload),
        -- which takes the users with jobs waiting in rounds.
        SELECT q.* INTO v_job FROM jobs q JOIN recordings r ON r.id = q.recording_id
         WHERE q.state = 'running' AND q.visible_at <= now()
           AND q.attempts < q.max_attempts
         ORDER BY q.visible_at, q.id
         LIMIT 1
         FOR UPDATE OF q, r SKIP LOCKED;
        IF NOT FOUND THEN
            SELECT q.* INTO v_job FROM jobs q JOIN recordings r ON r.id = q.recording_id
             WHERE q.state = 'queued' AND q.visible_at <= now()
               AND q.attempts < q.max_attempts
             ORDER BY q.turn, q.id
             LIMIT 1
             FOR UPDATE OF q, r SKIP LOCKED;
            IF NOT FOUND THEN
                RETURN;
            END IF;
        END IF;
        -- Uploads that saw this job at the head of the line and so did not
        -- notify hold this key until they commit: wait for them, so the
        -- look for more work below (or the next round) sees their jobs.
        PERFORM pg_advisory_xact_lock(_wake_key(), (v_job.id % 2147483648)::int);
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
        -- Uploads do not notify while a job is due (trg_enqueue_upload), so
        -- pass the wake-up on: a worker that found nothing while this claim
        -- held the last due job may be idle now.
        SELECT j.recording_id INTO v_next FROM jobs j
         WHERE j.state = 'queued' AND j.visible_at <= now()
         ORDER BY j.turn, j.id
         LIMIT 1;
        IF FOUND THEN
            PERFORM pg_notify('s2t_jobs', v_next::text);
        END IF;
        RETURN QUERY
        SELECT v_job.id, v_job.recording_id, v_job.attempts::int, v_job.lease_token, v_job.visible_at,
               v_rec.user_id, v_rec.language, v_rec.audio_uri, v_rec.meta, least(v_cap * 1000, 2147483647)::int;
        RETURN;
    END LOOP;
    -- Twenty jobs deferred or failed and none claimed: if more are due, say
    -- so, or idle workers (this one too) would wait for their next poll.
    SELECT j.recording_id INTO v_next FROM jobs j
     WHERE j.state = 'queued' AND j.visible_at <= now()
     ORDER BY j.turn, j.id
     LIMIT 1;
    IF FOUND THEN
        PERFORM pg_notify('s2t_jobs', v_next::text);
    END IF;
END
$$;
COMMENT ON FUNCTION claim_job(text, interval) IS 'Claims a due job (FOR UPDATE SKIP LOCKED) with a lease, fairly across users: a job whose lease expired first, then the waiting job with the lowest turn, so users with jobs waiting take turns; returns no row when none is due. max_ms is the most audio the worker may transcribe (the minutes the user has left, reserved for this job); jobs of users with nothing left are failed instead of claimed. A job whose lease expires can be claimed again; after max_attempts it fails.';

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

CREATE FUNCTION heartbeat_job(
    in_job_id bigint, in_lease_token uuid, in_extend interval DEFAULT interval '5 minutes', in_progress real DEFAULT NULL
) RETURNS timestamptz
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = s2t, pg_catalog, pg_temp
AS $$
DECLARE
    v_until timestamptz;
    v_recording uuid;
BEGIN
    IF in_extend IS NULL OR in_extend < interval '1 second' OR in_extend > interval '1 day' THEN
        RAISE EXCEPTION USING ERRCODE = 'S2V01', MESSAGE = format('lease extension must be between 1 second and 1 day, got %s', in_extend),
            DETAIL = 'field: in_extend';
    END IF;
    IF in_progress IS NOT NULL AND NOT (in_progress BETWEEN 0 AND 1) THEN
        RAISE EXCEPTION USING ERRCODE = 'S2V01', MESSAGE = format('progress must be between 0 and 1, got %s', in_progress),
            DETAIL = 'field: in_progress';
    END IF;
    UPDATE jobs SET visible_at = now() + in_extend, updated_at = now()
     WHERE id = in_job_id AND state = 'running' AND lease_token = in_lease_token
    RETURNING visible_at, recording_id INTO v_until, v_recording;
    IF NOT FOUND THEN
        PERFORM _lease_lost(in_job_id);
    END IF;
    IF in_progress IS NOT NULL THEN
        UPDATE recordings
           SET meta = coalesce(meta, '{}'::jsonb) || jsonb_build_object('progress', trim_scale(round(in_progress::numeric, 3)))
         WHERE id = v_recording AND status = 'processing';
    END IF;
    RETURN v_until;
END
$$;
COMMENT ON FUNCTION heartbeat_job(bigint, uuid, interval, real) IS 'Extends the lease of a job you hold and optionally records progress (0..1) in the recording''s meta.progress; returns the new lease end. Errors: S2S01 lease lost, S2V01 bad arguments.';

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

CREATE FUNCTION fail_job(in_job_id bigint, in_lease_token uuid, in_reason text, in_retryable boolean DEFAULT true)
RETURNS text
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = s2t, pg_catalog, pg_temp
AS $$
DECLARE
    v_job jobs%ROWTYPE;
BEGIN
    IF in_reason IS NULL OR btrim(in_reason) = '' THEN
        RAISE EXCEPTION USING ERRCODE = 'S2V01', MESSAGE = 'a failure needs a reason', DETAIL = 'field: in_reason';
    END IF;
    SELECT * INTO v_job FROM jobs WHERE id = in_job_id FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION USING ERRCODE = 'S2N01', MESSAGE = format('job %s not found', in_job_id);
    END IF;
    IF v_job.state <> 'running' OR v_job.lease_token IS DISTINCT FROM in_lease_token THEN
        PERFORM _lease_lost(in_job_id);
    END IF;
    IF in_retryable AND v_job.attempts < v_job.max_attempts THEN
        UPDATE jobs
           SET state = 'queued', lease_token = NULL, locked_by = NULL, last_error = left(in_reason, 2000),
               visible_at = now() + make_interval(secs => retry_backoff_seconds(v_job.attempts)), updated_at = now()
         WHERE id = in_job_id;
        RETURN 'queued';
    END IF;
    PERFORM fail_recording(v_job.recording_id, in_reason);
    RETURN 'failed';
END
$$;
COMMENT ON FUNCTION fail_job(bigint, uuid, text, boolean) IS 'Reports a failed attempt. Retryable failures go back to the queue with exponential backoff (10 s doubling, at most 15 min) until max_attempts; the rest fail the recording with the reason. Returns the new state. Errors: S2S01 lease lost, S2N01 unknown job, S2V01 empty reason.';

CREATE FUNCTION release_job(in_job_id bigint, in_lease_token uuid) RETURNS boolean
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = s2t, pg_catalog, pg_temp
AS $$
DECLARE
    v_recording uuid;
BEGIN
    UPDATE jobs
       SET state = 'queued', attempts = greatest(attempts - 1, 0), lease_token = NULL, locked_by = NULL,
           visible_at = now(), updated_at = now()
     WHERE id = in_job_id AND state = 'running' AND lease_token = in_lease_token
    RETURNING recording_id INTO v_recording;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    PERFORM pg_notify('s2t_jobs', v_recording::text);
    RETURN true;
END
$$;
COMMENT ON FUNCTION release_job(bigint, uuid) IS 'Gives a job back untouched (for a worker shutting down): it is claimable at once and the attempt does not count. Returns false if the lease was already lost.';

CREATE FUNCTION queue_stats()
RETURNS TABLE (state text, jobs bigint, due bigint, oldest_created_at timestamptz)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = s2t, pg_catalog, pg_temp
AS $$
    SELECT s.state, count(j.id), count(j.id) FILTER (WHERE j.visible_at <= now()), min(j.created_at)
      FROM unnest(ARRAY['queued', 'running', 'done', 'failed']) AS s(state)
      LEFT JOIN jobs j ON j.state = s.state
     GROUP BY s.state
     ORDER BY array_position(ARRAY['queued', 'running', 'done', 'failed'], s.state)
$$;
COMMENT ON FUNCTION queue_stats() IS 'Jobs per state, how many are due now, and the oldest: for metrics and dashboards.';
