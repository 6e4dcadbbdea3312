-- pg_s2t 0.3.0 -> 0.4.0. What changes:
-- - audio is stored in ordered chunks (s2t.audio_chunks), streamed in by
--   COPY and read by range; existing audio is moved into chunks;
-- - the queue claims fairly across users and notifies only when a worker
--   may be idle;
-- - an admission runs fewer statements;
-- - single-column rules on the hot tables become domains.
-- Until 0.4.0 is released this script is edited by hand to match
-- pg_s2t/src/sql/; tests/tests/upgrade.rs compares the result with a fresh
-- install.

-- == queue (fair claims, fewer notifications) ==
-- Jobs carry their user (a copy of the recording's) and a turn in the fair
-- order. Jobs already waiting keep their order within each user and take
-- turns across users from here on.
ALTER TABLE jobs ADD COLUMN user_id uuid;
ALTER TABLE jobs ADD COLUMN turn bigint NOT NULL DEFAULT 0;
UPDATE jobs j SET user_id = r.user_id FROM recordings r WHERE r.id = j.recording_id;
UPDATE jobs j SET turn = w.turn
  FROM (SELECT id, row_number() OVER (PARTITION BY user_id ORDER BY visible_at, id) - 1 AS turn
          FROM jobs WHERE state = 'queued') w
 WHERE j.id = w.id;
ALTER TABLE jobs ALTER COLUMN user_id SET NOT NULL;
COMMENT ON TABLE jobs IS 'Batch transcription queue. A queued or running job is claimable once visible_at has passed: for a running job visible_at is the end of its lease. Waiting jobs are claimed in order of turn, which takes users in rounds.';
COMMENT ON COLUMN jobs.turn IS 'Place in the fair order, set at enqueue: the turn of the job next in line for a user''s first waiting job, one more than the user''s last waiting job after that.';
DROP INDEX jobs_claimable_idx;
CREATE INDEX jobs_queued_turn_idx ON jobs (turn, id) WHERE state = 'queued';
CREATE INDEX jobs_user_queued_idx ON jobs (user_id, turn) WHERE state = 'queued';
CREATE INDEX jobs_running_idx ON jobs (visible_at, id) WHERE state = 'running';

CREATE FUNCTION _wake_key() RETURNS int
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$ SELECT 1932410947 $$;
COMMENT ON FUNCTION _wake_key() IS 'Internal: the first key of the advisory locks on job ids that uploads and claims use to hand the wake-up of an idle worker on (see trg_enqueue_upload).';
REVOKE EXECUTE ON FUNCTION _wake_key() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION _wake_key() TO s2t_definer;

CREATE OR REPLACE FUNCTION trg_enqueue_upload() RETURNS trigger
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

CREATE OR REPLACE FUNCTION claim_job(in_worker text, in_lease interval DEFAULT interval '5 minutes')
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

-- CREATE OR REPLACE keeps owner and grants; stated anyway, as security.sql does.
ALTER FUNCTION trg_enqueue_upload() OWNER TO s2t_definer;
ALTER FUNCTION claim_job(text, interval) OWNER TO s2t_definer;
-- == end queue ==

-- == audio chunks ==
-- 0.3.0 kept each upload as one bytea in recording_audio.data. The table
-- is rebuilt (its columns change) and every upload is cut into 1 MiB
-- chunks; the staging table audio_uploads and attach_upload give way to
-- COPY into the chunks and attach_audio.
DROP FUNCTION attach_upload(uuid, uuid);
DROP TABLE audio_uploads;
DROP FUNCTION trg_stamp_upload_owner();
ALTER TABLE recording_audio RENAME TO recording_audio_v3;
-- Constraint names are unique per schema: free them for the new table.
ALTER INDEX recording_audio_pkey RENAME TO recording_audio_v3_pkey;
ALTER TABLE recording_audio_v3 RENAME CONSTRAINT recording_audio_recording_id_fkey TO recording_audio_v3_recording_id_fkey;
ALTER TABLE recording_audio_v3 RENAME CONSTRAINT recording_audio_recording_id_not_null TO recording_audio_v3_recording_id_not_null;
ALTER TABLE recording_audio_v3 RENAME CONSTRAINT recording_audio_content_type_not_null TO recording_audio_v3_content_type_not_null;
ALTER TABLE recording_audio_v3 RENAME CONSTRAINT recording_audio_created_at_not_null TO recording_audio_v3_created_at_not_null;
-- Audio is stored in ordered chunks rather than one bytea: an upload streams
-- in with COPY and is never rewritten (attaching it only records where it
-- is), a realtime session appends as audio arrives, a worker reads it as a
-- stream, and a range download reads only the chunks it needs.
CREATE TABLE recording_audio (
    recording_id uuid PRIMARY KEY REFERENCES recordings (id) ON DELETE CASCADE,
    audio_id     uuid NOT NULL UNIQUE,
    user_id      uuid NOT NULL,
    content_type text NOT NULL DEFAULT 'application/octet-stream',
    size_bytes   bigint NOT NULL DEFAULT 0 CHECK (size_bytes >= 0),
    chunk_count  int NOT NULL DEFAULT 0 CHECK (chunk_count >= 0),
    sealed       boolean NOT NULL DEFAULT true,
    created_at   timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT recording_audio_owner_key UNIQUE (audio_id, user_id)
);
COMMENT ON TABLE recording_audio IS 'The audio of a recording whose audio_uri is "db:": where its chunks are (audio_id), its type and length. Sealed audio takes no more chunks; a realtime session''s audio is open until the session ends.';

CREATE TABLE recording_audio_chunks (
    audio_id    uuid NOT NULL,
    byte_offset bigint NOT NULL CHECK (byte_offset >= 0),
    user_id     uuid NOT NULL,
    data        bytea NOT NULL CHECK (octet_length(data) BETWEEN 1 AND 8388608),
    PRIMARY KEY (audio_id, byte_offset),
    -- Checked at commit, so an upload's chunks can be copied in before the
    -- recording they belong to is admitted, and none outlives a rollback or
    -- a transaction that never attached them. The user is part of the key:
    -- nobody can add chunks to another user's audio.
    CONSTRAINT chunk_of_own_audio FOREIGN KEY (audio_id, user_id)
        REFERENCES recording_audio (audio_id, user_id) ON DELETE CASCADE
        DEFERRABLE INITIALLY DEFERRED
);
-- Audio is already compressed; skip TOAST's pglz attempt, and let substring
-- fetch only the TOAST pages a range needs.
ALTER TABLE recording_audio_chunks ALTER COLUMN data SET STORAGE EXTERNAL;
COMMENT ON TABLE recording_audio_chunks IS 'The bytes of stored audio in pieces of at most 8 MiB (the gateway writes 1 MiB), keyed by their byte offset. No row-level security, because COPY refuses tables that have it: the application may only insert (its own user is stamped on each chunk), and reads go through read_audio.';

INSERT INTO recording_audio (recording_id, audio_id, user_id, content_type, size_bytes, chunk_count, sealed, created_at)
SELECT o.recording_id, gen_random_uuid(), r.user_id, o.content_type, octet_length(o.data),
       (octet_length(o.data) + 1048575) / 1048576, true, o.created_at
  FROM recording_audio_v3 o JOIN recordings r ON r.id = o.recording_id;
INSERT INTO recording_audio_chunks (audio_id, byte_offset, user_id, data)
SELECT a.audio_id, g.n * 1048576::bigint, a.user_id, substring(o.data FROM (g.n * 1048576 + 1)::int FOR 1048576)
  FROM recording_audio_v3 o
  JOIN recording_audio a ON a.recording_id = o.recording_id
 CROSS JOIN LATERAL generate_series(0, a.chunk_count - 1) AS g(n);
-- Check the moved chunks now: ALTER TABLE below refuses a table with
-- pending (deferred) trigger events.
SET CONSTRAINTS chunk_of_own_audio IMMEDIATE;
DROP TABLE recording_audio_v3;

CREATE FUNCTION trg_stamp_audio_chunk() RETURNS trigger
LANGUAGE plpgsql
AS $$
BEGIN
    -- A session acting for a user stores that user's chunks. The
    -- application may not name user_id at all (its INSERT grant leaves the
    -- column out), so it always acts through s2t.user_id; trusted roles
    -- (an administrator, a migration) name the owner.
    NEW.user_id := coalesce(s2t.current_user_id(), NEW.user_id);
    IF NEW.user_id IS NULL THEN
        RAISE EXCEPTION USING ERRCODE = '42501', MESSAGE = 's2t.user_id is not set',
            HINT = 'Set s2t.user_id in the transaction before storing audio.';
    END IF;
    -- Chunks are copied in before their audio is attached; after that only
    -- append_audio (running as s2t_definer) adds to it, at its end, so the
    -- recorded size always matches the chunks. This runs with the caller's
    -- rights, so another user's audio is invisible here; the foreign key
    -- refuses such a chunk at commit instead.
    IF current_user <> 's2t_definer'
       AND EXISTS (SELECT FROM s2t.recording_audio a WHERE a.audio_id = NEW.audio_id) THEN
        RAISE EXCEPTION USING ERRCODE = 'S2S01', MESSAGE = 'this audio is already attached to its recording',
            DETAIL = format('audio_id: %s', NEW.audio_id),
            HINT = 'Add to open (realtime) audio with s2t.append_audio.';
    END IF;
    RETURN NEW;
END
$$;
COMMENT ON FUNCTION trg_stamp_audio_chunk() IS 'Trigger: a chunk stored by the application belongs to the transaction''s user; attached audio grows only through append_audio.';

-- The owner of a "db:" recording that is still being processed, after
-- checking that this transaction may act for them.
CREATE FUNCTION _audio_owner(in_recording_id uuid, in_for_change boolean) RETURNS uuid
LANGUAGE plpgsql STABLE
AS $$
DECLARE
    v_owner uuid;
    v_status text;
BEGIN
    SELECT r.user_id, r.status INTO v_owner, v_status
      FROM s2t.recordings r WHERE r.id = in_recording_id AND r.audio_uri = 'db:';
    IF v_owner IS NULL THEN
        RAISE EXCEPTION USING ERRCODE = 'S2N01', MESSAGE = format('recording %s not found', in_recording_id);
    END IF;
    PERFORM s2t._assert_may_act_for(v_owner);
    IF in_for_change AND v_status <> 'processing' THEN
        RAISE EXCEPTION USING ERRCODE = 'S2S01',
            MESSAGE = format('recording %s is %s; its audio can no longer change', in_recording_id, v_status);
    END IF;
    RETURN v_owner;
END
$$;
COMMENT ON FUNCTION _audio_owner(uuid, boolean) IS 'The owner of a "db:" recording the transaction may act for (S2N01 otherwise); with in_for_change, S2S01 unless it is still processing.';

CREATE FUNCTION attach_audio(
    in_recording_id uuid, in_audio_id uuid, in_content_type text, in_sealed boolean DEFAULT true
) RETURNS bigint
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = s2t, pg_catalog, pg_temp
AS $$
DECLARE
    v_owner uuid := _audio_owner(in_recording_id, true);
    v_count bigint;
    v_size bigint;
    v_gaps bigint;
BEGIN
    IF in_audio_id IS NULL THEN
        RAISE EXCEPTION USING ERRCODE = 'S2V01', MESSAGE = 'audio_id must not be null', DETAIL = 'field: in_audio_id';
    END IF;
    IF length(in_content_type) > 255 THEN
        RAISE EXCEPTION USING ERRCODE = 'S2V01', MESSAGE = 'content type is longer than 255 characters',
            DETAIL = 'field: in_content_type';
    END IF;
    -- Lengths come from the TOAST pointers: nothing is read or rewritten.
    SELECT count(*), coalesce(sum(len), 0), count(*) FILTER (WHERE byte_offset <> expected)
      INTO v_count, v_size, v_gaps
      FROM (SELECT c.byte_offset, octet_length(c.data)::bigint AS len,
                   coalesce(sum(octet_length(c.data)::bigint) OVER (ORDER BY c.byte_offset
                            ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING), 0) AS expected
              FROM recording_audio_chunks c
             WHERE c.audio_id = in_audio_id AND c.user_id = v_owner) s;
    IF v_gaps > 0 THEN
        RAISE EXCEPTION USING ERRCODE = 'S2V01', MESSAGE = 'the audio''s chunks are not contiguous',
            DETAIL = format('%s of %s chunks do not start where the previous one ends', v_gaps, v_count),
            HINT = 'Number each chunk by the byte offset it starts at, from 0.';
    END IF;
    IF in_sealed AND v_count = 0 THEN
        RAISE EXCEPTION USING ERRCODE = 'S2V01', MESSAGE = 'the upload is empty',
            DETAIL = format('no chunks were stored under audio_id %s', in_audio_id);
    END IF;
    BEGIN
        INSERT INTO recording_audio (recording_id, audio_id, user_id, content_type, size_bytes, chunk_count, sealed)
        VALUES (in_recording_id, in_audio_id, v_owner, coalesce(nullif(btrim(in_content_type), ''), 'application/octet-stream'),
                v_size, v_count, coalesce(in_sealed, true));
    EXCEPTION WHEN unique_violation THEN
        RAISE EXCEPTION USING ERRCODE = 'S2C01', MESSAGE = format('recording %s already has audio, or audio %s is taken', in_recording_id, in_audio_id);
    END;
    RETURN v_size;
END
$$;
COMMENT ON FUNCTION attach_audio(uuid, uuid, text, boolean) IS 'Makes the chunks stored under in_audio_id (by the same user, in this transaction or before) the audio of one''s own "db:" recording; returns its size in bytes. in_sealed = false leaves it open for append_audio. Errors: S2N01, S2S01 recording finished, S2V01 empty or gaps, S2C01 already attached.';

CREATE FUNCTION append_audio(in_recording_id uuid, in_data bytea) RETURNS bigint
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = s2t, pg_catalog, pg_temp
AS $$
DECLARE
    v_owner uuid := _audio_owner(in_recording_id, true);
    v_audio recording_audio%ROWTYPE;
BEGIN
    IF in_data IS NULL OR octet_length(in_data) NOT BETWEEN 1 AND 8388608 THEN
        RAISE EXCEPTION USING ERRCODE = 'S2V01', MESSAGE = 'a piece of audio must be 1 byte to 8 MiB',
            DETAIL = format('field: in_data; got %s bytes', coalesce(octet_length(in_data), 0));
    END IF;
    -- One appender at a time per recording: the row lock orders the pieces.
    SELECT * INTO v_audio FROM recording_audio WHERE recording_id = in_recording_id FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION USING ERRCODE = 'S2N01', MESSAGE = format('recording %s has no audio to append to', in_recording_id),
            HINT = 'Start it with attach_audio(recording, audio_id, content_type, false).';
    END IF;
    IF v_audio.sealed THEN
        RAISE EXCEPTION USING ERRCODE = 'S2S01', MESSAGE = 'this audio is complete and takes no more chunks',
            DETAIL = format('audio_id: %s', v_audio.audio_id);
    END IF;
    INSERT INTO recording_audio_chunks (audio_id, byte_offset, user_id, data)
    VALUES (v_audio.audio_id, v_audio.size_bytes, v_owner, in_data);
    UPDATE recording_audio SET size_bytes = size_bytes + octet_length(in_data), chunk_count = chunk_count + 1
     WHERE recording_id = in_recording_id
    RETURNING size_bytes INTO v_audio.size_bytes;
    RETURN v_audio.size_bytes;
END
$$;
COMMENT ON FUNCTION append_audio(uuid, bytea) IS 'Appends a piece (1 byte to 8 MiB) to the open audio of one''s own recording in progress; returns the new size. Errors: S2N01, S2S01 sealed or finished, S2V01.';

CREATE FUNCTION seal_audio(in_recording_id uuid) RETURNS bigint
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = s2t, pg_catalog, pg_temp
AS $$
DECLARE
    v_size bigint;
BEGIN
    PERFORM _audio_owner(in_recording_id, false);
    UPDATE recording_audio SET sealed = true WHERE recording_id = in_recording_id
    RETURNING size_bytes INTO v_size;
    IF v_size IS NULL THEN
        RAISE EXCEPTION USING ERRCODE = 'S2N01', MESSAGE = format('recording %s has no audio', in_recording_id);
    END IF;
    RETURN v_size;
END
$$;
COMMENT ON FUNCTION seal_audio(uuid) IS 'Closes the audio of one''s own recording to further appends (idempotent); returns its size in bytes. Errors: S2N01.';

CREATE FUNCTION read_audio(in_recording_id uuid, in_offset bigint, in_length int) RETURNS bytea
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = s2t, pg_catalog, pg_temp
AS $$
DECLARE
    v_audio uuid;
    v_end bigint;
BEGIN
    PERFORM _audio_owner(in_recording_id, false);
    IF in_offset IS NULL OR in_offset < 0 OR in_length IS NULL OR in_length NOT BETWEEN 1 AND 8388608 THEN
        RAISE EXCEPTION USING ERRCODE = 'S2V01', MESSAGE = 'read from an offset >= 0 at most 8 MiB at a time',
            DETAIL = format('offset: %s; length: %s', in_offset, in_length);
    END IF;
    SELECT a.audio_id INTO v_audio FROM recording_audio a WHERE a.recording_id = in_recording_id;
    IF v_audio IS NULL THEN
        RAISE EXCEPTION USING ERRCODE = 'S2N01', MESSAGE = format('recording %s has no audio', in_recording_id);
    END IF;
    v_end := in_offset + in_length;
    -- A chunk is at most 8 MiB, which bounds the index range from below.
    RETURN coalesce((
        SELECT string_agg(substring(c.data FROM (greatest(in_offset - c.byte_offset, 0) + 1)::int
                                    FOR (least(v_end, c.byte_offset + octet_length(c.data))
                                         - greatest(in_offset, c.byte_offset))::int),
                          ''::bytea ORDER BY c.byte_offset)
          FROM recording_audio_chunks c
         WHERE c.audio_id = v_audio
           AND c.byte_offset < v_end AND c.byte_offset > in_offset - 8388608
           AND c.byte_offset + octet_length(c.data) > in_offset), ''::bytea);
END
$$;
COMMENT ON FUNCTION read_audio(uuid, bigint, int) IS 'Bytes [in_offset, in_offset + in_length) of one''s own recording''s audio (at most 8 MiB per call; shorter at the end, empty past it), reading only the chunks that overlap. Errors: S2N01, S2V01.';

REVOKE EXECUTE ON FUNCTION trg_stamp_audio_chunk(), _audio_owner(uuid, boolean),
    attach_audio(uuid, uuid, text, boolean), append_audio(uuid, bytea), seal_audio(uuid),
    read_audio(uuid, bigint, int) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION attach_audio(uuid, uuid, text, boolean), append_audio(uuid, bytea),
    seal_audio(uuid), read_audio(uuid, bigint, int) TO s2t_app;
-- Realtime sessions may be written by the worker that serves them.
GRANT EXECUTE ON FUNCTION append_audio(uuid, bytea), seal_audio(uuid), read_audio(uuid, bigint, int) TO s2t_worker;
GRANT INSERT (audio_id, byte_offset, data) ON recording_audio_chunks TO s2t_app;
CREATE TRIGGER stamp_audio_chunk BEFORE INSERT ON recording_audio_chunks
    FOR EACH ROW EXECUTE FUNCTION trg_stamp_audio_chunk();

ALTER TABLE recording_audio ENABLE ROW LEVEL SECURITY;
CREATE POLICY own_audio ON recording_audio TO s2t_app
    USING (user_id = current_user_id());
CREATE POLICY worker_audio ON recording_audio TO s2t_worker USING (true);
GRANT SELECT ON recording_audio TO s2t_app;
GRANT SELECT ON recording_audio, recording_audio_chunks TO s2t_worker;
ALTER TABLE recording_audio OWNER TO s2t_definer;
ALTER TABLE recording_audio_chunks OWNER TO s2t_definer;
GRANT EXECUTE ON FUNCTION trg_stamp_audio_chunk(), _audio_owner(uuid, boolean),
    attach_audio(uuid, uuid, text, boolean), append_audio(uuid, bytea), seal_audio(uuid),
    read_audio(uuid, bigint, int) TO s2t_definer;
ALTER FUNCTION attach_audio(uuid, uuid, text, boolean) OWNER TO s2t_definer;
ALTER FUNCTION append_audio(uuid, bytea) OWNER TO s2t_definer;
ALTER FUNCTION seal_audio(uuid) OWNER TO s2t_definer;
ALTER FUNCTION read_audio(uuid, bigint, int) OWNER TO s2t_definer;
-- == end audio chunks ==

-- == admission (fewer statements per admission) ==
-- The check, the count and the insert become one statement, and the usage
-- trigger's test for a row the admission counted moves into its WHEN.
CREATE OR REPLACE FUNCTION trg_increment_usage_on_recording() RETURNS trigger
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
DROP TRIGGER increment_usage_on_recording ON recordings;
CREATE TRIGGER increment_usage_on_recording
    AFTER INSERT ON recordings FOR EACH ROW
    WHEN (current_setting('s2t.counted_recording', true) IS DISTINCT FROM NEW.id::text)
    EXECUTE FUNCTION trg_increment_usage_on_recording();
CREATE OR REPLACE FUNCTION _admit_recording(
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
-- == end admission ==

-- == column rules as domains ==
-- The single-column CHECKs of user_subscriptions, recordings and jobs become
-- domains, whose rule PostgreSQL parses once per session instead of in every
-- statement that writes a row (see tables.sql). Changing the type rewrites
-- these three tables (metadata only: audio, segments and chunks are
-- untouched) and checks every row against the rule. Triggers whose WHEN
-- reads a changed column are dropped around the change and recreated as
-- they were.
CREATE DOMAIN nonnegative_int AS int CHECK (VALUE >= 0);
COMMENT ON DOMAIN nonnegative_int IS 'An int that is 0 or more (counts, seconds, milliseconds).';
CREATE DOMAIN positive_int AS int CHECK (VALUE >= 1);
COMMENT ON DOMAIN positive_int IS 'An int that is 1 or more.';
CREATE DOMAIN recording_source AS text CHECK (VALUE IN ('realtime', 'upload'));
COMMENT ON DOMAIN recording_source IS 'Where a recording''s audio comes from: realtime (streamed) or upload (a file).';
CREATE DOMAIN recording_status AS text CHECK (VALUE IN ('processing', 'done', 'failed'));
COMMENT ON DOMAIN recording_status IS 'A recording''s state: processing -> done | failed.';
CREATE DOMAIN job_state AS text CHECK (VALUE IN ('queued', 'running', 'done', 'failed'));
COMMENT ON DOMAIN job_state IS 'A job''s state: queued -> running -> done | failed (or back to queued for a retry).';

DROP TRIGGER release_reservation ON recordings;
DROP TRIGGER release_reservation_on_delete ON recordings;
DROP TRIGGER enqueue_upload ON recordings;
DROP TRIGGER notify_recording_event ON recordings;

ALTER TABLE user_subscriptions
    DROP CONSTRAINT user_subscriptions_usage_count_check,
    DROP CONSTRAINT user_subscriptions_used_seconds_check,
    DROP CONSTRAINT user_subscriptions_reserved_seconds_check,
    ALTER COLUMN usage_count TYPE nonnegative_int,
    ALTER COLUMN used_seconds TYPE nonnegative_int,
    ALTER COLUMN reserved_seconds TYPE nonnegative_int;
ALTER TABLE recordings
    DROP CONSTRAINT recordings_source_check,
    DROP CONSTRAINT recordings_status_check,
    DROP CONSTRAINT recordings_duration_ms_check,
    DROP CONSTRAINT recordings_billed_seconds_check,
    DROP CONSTRAINT recordings_reserved_seconds_check,
    DROP CONSTRAINT recordings_expected_ms_check,
    ALTER COLUMN source TYPE recording_source,
    ALTER COLUMN status TYPE recording_status,
    ALTER COLUMN duration_ms TYPE nonnegative_int,
    ALTER COLUMN billed_seconds TYPE nonnegative_int,
    ALTER COLUMN reserved_seconds TYPE nonnegative_int,
    ALTER COLUMN expected_ms TYPE nonnegative_int;
ALTER TABLE jobs
    DROP CONSTRAINT jobs_state_check,
    DROP CONSTRAINT jobs_attempts_check,
    DROP CONSTRAINT jobs_max_attempts_check,
    ALTER COLUMN state TYPE job_state,
    ALTER COLUMN attempts TYPE nonnegative_int,
    ALTER COLUMN max_attempts TYPE positive_int;

CREATE TRIGGER enqueue_upload
    AFTER INSERT ON recordings FOR EACH ROW WHEN (NEW.source = 'upload')
    EXECUTE FUNCTION trg_enqueue_upload();
CREATE TRIGGER notify_recording_event
    AFTER UPDATE ON recordings FOR EACH ROW
    WHEN (OLD.status IS DISTINCT FROM NEW.status OR OLD.meta -> 'progress' IS DISTINCT FROM NEW.meta -> 'progress')
    EXECUTE FUNCTION trg_notify_recording_event();
CREATE TRIGGER release_reservation
    AFTER UPDATE OF status ON recordings FOR EACH ROW
    WHEN (OLD.status = 'processing' AND NEW.status <> 'processing' AND OLD.reserved_seconds > 0)
    EXECUTE FUNCTION trg_release_reservation();
CREATE TRIGGER release_reservation_on_delete
    AFTER DELETE ON recordings FOR EACH ROW
    WHEN (OLD.status = 'processing' AND OLD.reserved_seconds > 0)
    EXECUTE FUNCTION trg_release_reservation();
-- Functions that return these columns through RETURN QUERY, which wants
-- the declared types exactly.
CREATE OR REPLACE FUNCTION admin_list_users(in_search text DEFAULT NULL, in_limit int DEFAULT 50, in_offset int DEFAULT 0)
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
           p.code, s.usage_count::int, s.used_seconds::int, s.reserved_seconds::int, s.cycle_end
      FROM users u
      LEFT JOIN user_subscriptions s ON s.user_id = u.id
      LEFT JOIN plans p ON p.id = s.plan_id
     WHERE in_search IS NULL
        OR strpos(u.email, lower(in_search)) > 0 OR strpos(lower(u.user_name), lower(in_search)) > 0
     ORDER BY u.created_at, u.id
     LIMIT in_limit OFFSET in_offset;
END
$$;
CREATE OR REPLACE FUNCTION sp_get_user_stats(in_user_id uuid)
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
-- == end column rules as domains ==

-- == realtime sessions ==
-- New in 0.4.0: the worker registry and realtime sessions, as in realtime.sql.
CREATE TABLE workers (
    id           uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    name         text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    address      text NOT NULL CHECK (length(address) <= 500 AND address ~ '^wss?://[^[:space:]]+$'),
    capacity     nonnegative_int NOT NULL,
    sessions     nonnegative_int NOT NULL DEFAULT 0,
    started_at   timestamptz NOT NULL DEFAULT now(),
    heartbeat_at timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE workers IS 'Workers that serve realtime sessions: the WebSocket address gateways reach them at, how many sessions each takes, and its last heartbeat (live = within 15 s).';

CREATE TABLE realtime_sessions (
    recording_id  uuid PRIMARY KEY REFERENCES recordings (id) ON DELETE CASCADE,
    user_id       uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    worker_id     uuid REFERENCES workers (id) ON DELETE SET NULL,
    handoff_hash  bytea UNIQUE CHECK (octet_length(handoff_hash) = 32),
    handoff_until timestamptz,
    resume_hash   bytea NOT NULL UNIQUE CHECK (octet_length(resume_hash) = 32),
    sample_rate   int NOT NULL CHECK (sample_rate BETWEEN 8000 AND 48000),
    encoding      text NOT NULL CHECK (encoding IN ('pcm_s16le', 'f32le')),
    ended         boolean NOT NULL DEFAULT false,
    opened_at     timestamptz NOT NULL DEFAULT now(),
    heartbeat_at  timestamptz NOT NULL DEFAULT now(),
    ended_at      timestamptz
);
CREATE INDEX realtime_sessions_open_idx ON realtime_sessions (worker_id) WHERE NOT ended;
COMMENT ON TABLE realtime_sessions IS 'One realtime recording''s session: which worker serves it, the one-time hand-off and the resume token (SHA-256 hashes only), the audio format, and whether it has ended.';
ALTER TABLE workers ENABLE ROW LEVEL SECURITY;
ALTER TABLE realtime_sessions ENABLE ROW LEVEL SECURITY;

-- Live means a heartbeat in the last 15 s (workers beat every 5 s).
CREATE FUNCTION _worker_is_live(in_heartbeat timestamptz) RETURNS boolean
LANGUAGE sql STABLE PARALLEL SAFE
AS $$ SELECT in_heartbeat > now() - interval '15 seconds' $$;
COMMENT ON FUNCTION _worker_is_live(timestamptz) IS 'Internal: a worker is live if it beat in the last 15 seconds.';

-- Little-endian bytes of a non-negative integer (WAV headers).
CREATE FUNCTION _le_bytes(in_value bigint, in_width int) RETURNS bytea
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$
    SELECT string_agg(set_byte('\x00'::bytea, 0, ((in_value >> (8 * i)) & 255)::int), ''::bytea ORDER BY i)
      FROM generate_series(0, in_width - 1) i
$$;
COMMENT ON FUNCTION _le_bytes(bigint, int) IS 'Internal: in_value as in_width little-endian bytes.';

-- The 44-byte header of a mono WAV holding in_data_bytes of samples.
CREATE FUNCTION _wav_header(in_sample_rate int, in_encoding text, in_data_bytes bigint) RETURNS bytea
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$
    SELECT 'RIFF'::bytea || _le_bytes(least(in_data_bytes + 36, 4294967295), 4) || 'WAVEfmt '::bytea
           || _le_bytes(16, 4)
           || _le_bytes(CASE in_encoding WHEN 'f32le' THEN 3 ELSE 1 END, 2)   -- format: PCM or IEEE float
           || _le_bytes(1, 2)                                                   -- channels
           || _le_bytes(in_sample_rate, 4)
           || _le_bytes(in_sample_rate::bigint * w, 4)                          -- bytes per second
           || _le_bytes(w, 2)                                                   -- block align
           || _le_bytes(w * 8, 2)                                               -- bits per sample
           || 'data'::bytea || _le_bytes(least(in_data_bytes, 4294967295 - 36), 4)
      FROM (SELECT CASE in_encoding WHEN 'f32le' THEN 4 ELSE 2 END AS w) b
$$;
COMMENT ON FUNCTION _wav_header(int, text, bigint) IS 'Internal: the 44-byte header of a mono PCM s16le or float32 WAV.';

CREATE FUNCTION _bytes_per_sample(in_encoding text) RETURNS int
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$ SELECT CASE in_encoding WHEN 'f32le' THEN 4 ELSE 2 END $$;
COMMENT ON FUNCTION _bytes_per_sample(text) IS 'Internal: 4 for f32le, 2 for pcm_s16le.';

CREATE FUNCTION register_worker(in_name text, in_address text, in_capacity int) RETURNS uuid
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = s2t, pg_catalog, pg_temp
AS $$
DECLARE
    v_id uuid;
BEGIN
    IF in_name IS NULL OR length(in_name) NOT BETWEEN 1 AND 200 THEN
        RAISE EXCEPTION USING ERRCODE = 'S2V01', MESSAGE = 'a worker name must be 1 to 200 characters', DETAIL = 'field: name';
    END IF;
    IF in_address IS NULL OR length(in_address) > 500 OR in_address !~ '^wss?://[^[:space:]]+$' THEN
        RAISE EXCEPTION USING ERRCODE = 'S2V01', MESSAGE = format('a worker address must be a ws:// or wss:// URL, got %L', in_address),
            DETAIL = 'field: address', HINT = 'Give the address gateways reach the worker at, such as ws://10.0.0.5:7071.';
    END IF;
    IF in_capacity IS NULL OR in_capacity NOT BETWEEN 0 AND 10000 THEN
        RAISE EXCEPTION USING ERRCODE = 'S2V01', MESSAGE = format('capacity must be 0 to 10000 sessions, got %s', in_capacity),
            DETAIL = 'field: capacity';
    END IF;
    INSERT INTO workers (name, address, capacity) VALUES (in_name, in_address, in_capacity) RETURNING id INTO v_id;
    -- Workers that stopped beating long ago are forgotten.
    DELETE FROM workers WHERE heartbeat_at < now() - interval '1 day';
    RETURN v_id;
END
$$;
COMMENT ON FUNCTION register_worker(text, text, int) IS 'A worker that serves realtime sessions announces its WebSocket address and capacity; returns its id for heartbeat_worker. Errors: S2V01.';

CREATE FUNCTION unregister_worker(in_worker_id uuid) RETURNS boolean
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = s2t, pg_catalog, pg_temp
AS $$
BEGIN
    -- Its sessions keep their rows (worker_id becomes NULL) and are ended
    -- by the sweep if the worker did not end them itself.
    DELETE FROM workers WHERE id = in_worker_id;
    RETURN FOUND;
END
$$;
COMMENT ON FUNCTION unregister_worker(uuid) IS 'A worker leaves the registry on shutdown; no new session is sent to it. Returns false if it was not registered.';

-- The duration of a session's stored audio, in ms.
CREATE FUNCTION _session_audio_ms(in_session realtime_sessions) RETURNS bigint
LANGUAGE sql STABLE
AS $$
    SELECT coalesce(greatest(a.size_bytes - 44, 0) / _bytes_per_sample(in_session.encoding) * 1000
                    / in_session.sample_rate, 0)
      FROM recording_audio a WHERE a.recording_id = in_session.recording_id
$$;
COMMENT ON FUNCTION _session_audio_ms(realtime_sessions) IS 'Internal: milliseconds of audio stored for a realtime session.';

-- End one session (locked by the caller): the header gets its sizes, the
-- audio is sealed, the recording is completed (billed for the audio
-- stored, and at least as long as its last final) or failed.
CREATE FUNCTION _end_session(in_session realtime_sessions, in_failure text) RETURNS void
LANGUAGE plpgsql VOLATILE
AS $$
DECLARE
    v_audio recording_audio%ROWTYPE;
    v_ms bigint;
BEGIN
    SELECT * INTO v_audio FROM s2t.recording_audio WHERE recording_id = in_session.recording_id FOR UPDATE;
    IF FOUND THEN
        UPDATE s2t.recording_audio_chunks
           SET data = s2t._wav_header(in_session.sample_rate, in_session.encoding, v_audio.size_bytes - 44)
         WHERE audio_id = v_audio.audio_id AND byte_offset = 0 AND octet_length(data) = 44;
        UPDATE s2t.recording_audio SET sealed = true WHERE recording_id = in_session.recording_id;
    END IF;
    UPDATE s2t.realtime_sessions SET ended = true, ended_at = now(), handoff_hash = NULL
     WHERE recording_id = in_session.recording_id;
    IF in_failure IS NOT NULL THEN
        PERFORM s2t.fail_recording(in_session.recording_id, in_failure);
        RETURN;
    END IF;
    v_ms := greatest(s2t._session_audio_ms(in_session),
                     coalesce((SELECT max(end_ms) FROM s2t.segments WHERE recording_id = in_session.recording_id), 0));
    PERFORM s2t.complete_recording(in_session.recording_id, least(v_ms, 2147483647)::int, '[]'::jsonb);
END
$$;
COMMENT ON FUNCTION _end_session(realtime_sessions, text) IS 'Internal: finishes a locked realtime session''s audio and recording.';

-- Sessions whose worker has not beaten for 60 s are over: end them as done
-- with what was stored. Returns how many.
CREATE FUNCTION _end_orphaned_sessions() RETURNS int
LANGUAGE plpgsql VOLATILE
AS $$
DECLARE
    v_session s2t.realtime_sessions%ROWTYPE;
    v_count int := 0;
BEGIN
    FOR v_session IN
        SELECT * FROM s2t.realtime_sessions
         WHERE NOT ended AND heartbeat_at < now() - interval '60 seconds'
         ORDER BY heartbeat_at LIMIT 100
           FOR UPDATE SKIP LOCKED
    LOOP
        PERFORM s2t._end_session(v_session, NULL);
        v_count := v_count + 1;
    END LOOP;
    RETURN v_count;
END
$$;
COMMENT ON FUNCTION _end_orphaned_sessions() IS 'Internal: ends (as done, billed for the audio stored) up to 100 open sessions whose worker has not beaten for 60 seconds.';

CREATE FUNCTION heartbeat_worker(in_worker_id uuid, in_live uuid[]) RETURNS int
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = s2t, pg_catalog, pg_temp
AS $$
BEGIN
    UPDATE workers SET heartbeat_at = now(), sessions = coalesce(cardinality(in_live), 0)
     WHERE id = in_worker_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION USING ERRCODE = 'S2N01', MESSAGE = format('worker %s is not registered', in_worker_id),
            HINT = 'Register again with s2t.register_worker (a worker that missed heartbeats for a day is forgotten).';
    END IF;
    UPDATE realtime_sessions SET heartbeat_at = now()
     WHERE worker_id = in_worker_id AND NOT ended AND recording_id = ANY (in_live);
    RETURN _end_orphaned_sessions();
END
$$;
COMMENT ON FUNCTION heartbeat_worker(uuid, uuid[]) IS 'A worker''s heartbeat, with the recordings of the sessions it still serves (they stay open); also ends sessions nobody has served for 60 s. Returns how many it ended. Errors: S2N01 unknown worker.';

CREATE FUNCTION _check_session_tokens(in_handoff_hash bytea, in_resume_hash bytea) RETURNS void
LANGUAGE plpgsql IMMUTABLE
AS $$
BEGIN
    IF octet_length(in_handoff_hash) IS DISTINCT FROM 32 OR octet_length(in_resume_hash) IS DISTINCT FROM 32 THEN
        RAISE EXCEPTION USING ERRCODE = 'S2V01', MESSAGE = 'session tokens are passed as 32-byte SHA-256 hashes',
            DETAIL = 'field: in_handoff_hash, in_resume_hash';
    END IF;
END
$$;
COMMENT ON FUNCTION _check_session_tokens(bytea, bytea) IS 'Internal: S2V01 unless both token hashes are 32 bytes.';

-- A live worker with room, locked for this transaction, or NULL; never
-- in_except (a worker the gateway could not reach).
CREATE FUNCTION _pick_worker(in_except uuid DEFAULT NULL) RETURNS workers
LANGUAGE plpgsql VOLATILE
AS $$
DECLARE
    v_worker s2t.workers%ROWTYPE;
    v_open bigint;
BEGIN
    FOR v_worker IN
        SELECT w.* FROM s2t.workers w
         WHERE s2t._worker_is_live(w.heartbeat_at) AND w.capacity > 0 AND w.id IS DISTINCT FROM in_except
         ORDER BY (SELECT count(*) FROM s2t.realtime_sessions s WHERE s.worker_id = w.id AND NOT s.ended)::float8
                  / w.capacity, random()
    LOOP
        -- Opens on one worker queue here; the count after the lock sees
        -- every session committed before it, so capacity is never passed.
        PERFORM FROM s2t.workers WHERE id = v_worker.id FOR UPDATE;
        SELECT count(*) INTO v_open FROM s2t.realtime_sessions s WHERE s.worker_id = v_worker.id AND NOT s.ended;
        IF v_open < v_worker.capacity THEN
            RETURN v_worker;
        END IF;
    END LOOP;
    RETURN NULL;
END
$$;
COMMENT ON FUNCTION _pick_worker(uuid) IS 'Internal: the least loaded live worker with room (row locked) other than in_except, or NULL.';

CREATE FUNCTION _raise_busy() RETURNS void
LANGUAGE plpgsql
AS $$
BEGIN
    RAISE EXCEPTION USING ERRCODE = 'S2B01', MESSAGE = 'no worker has room for a realtime session',
        DETAIL = 'retry_after: 5',
        HINT = 'Every live worker is at capacity (or none is running); retry in a few seconds.';
END
$$;
COMMENT ON FUNCTION _raise_busy() IS 'Internal: raises S2B01 (busy, retry after 5 s).';

CREATE FUNCTION open_realtime_session(
    in_user_id uuid, in_language text, in_sample_rate int, in_encoding text, in_meta jsonb,
    in_handoff_hash bytea, in_resume_hash bytea
) RETURNS TABLE (recording_id uuid, worker_id uuid, worker_address text)
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = s2t, pg_catalog, pg_temp
AS $$
DECLARE
    v_worker workers%ROWTYPE;
    v_admit record;
BEGIN
    PERFORM _check_session_tokens(in_handoff_hash, in_resume_hash);
    IF in_sample_rate IS NULL OR in_sample_rate NOT BETWEEN 8000 AND 48000 THEN
        RAISE EXCEPTION USING ERRCODE = 'S2V01', MESSAGE = format('sample_rate must be 8000 to 48000 Hz, got %s', in_sample_rate),
            DETAIL = 'field: sample_rate';
    END IF;
    IF in_encoding IS NULL OR in_encoding NOT IN ('pcm_s16le', 'f32le') THEN
        RAISE EXCEPTION USING ERRCODE = 'S2V01', MESSAGE = format('encoding must be pcm_s16le or f32le, got %L', in_encoding),
            DETAIL = 'field: encoding';
    END IF;
    -- Capacity before quota: a refusal for lack of room must not count.
    v_worker := _pick_worker();
    IF v_worker.id IS NULL THEN
        PERFORM _raise_busy();
    END IF;
    SELECT * INTO v_admit FROM _admit_recording(in_user_id, 'realtime', in_language, in_meta, 'db:', NULL);
    PERFORM raise_problem(v_admit.refusal);
    PERFORM attach_audio(v_admit.recording_id, gen_random_uuid(), 'audio/wav', false);
    -- The header's sizes are written when the session ends.
    PERFORM append_audio(v_admit.recording_id, _wav_header(in_sample_rate, in_encoding, 0));
    INSERT INTO realtime_sessions (recording_id, user_id, worker_id, handoff_hash, handoff_until, resume_hash,
                                   sample_rate, encoding)
    VALUES (v_admit.recording_id, in_user_id, v_worker.id, in_handoff_hash, now() + interval '30 seconds',
            in_resume_hash, in_sample_rate, in_encoding);
    RETURN QUERY SELECT v_admit.recording_id, v_worker.id, v_worker.address;
END
$$;
COMMENT ON FUNCTION open_realtime_session(uuid, text, int, text, jsonb, bytea, bytea) IS 'The gateway opens a realtime session for a user: admits a realtime recording (quota), opens its WAV audio and assigns a live worker with room; the worker must take the hand-off within 30 s. Errors: S2B01 no capacity (retry), S2Q01/S2Q02 quota, S2S01 disabled user, S2N01, S2V01 bad format or token hashes.';

CREATE FUNCTION resume_realtime_session(in_user_id uuid, in_resume_hash bytea, in_handoff_hash bytea,
                                        in_unreachable_worker uuid DEFAULT NULL)
RETURNS TABLE (recording_id uuid, worker_id uuid, worker_address text, same_worker boolean)
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = s2t, pg_catalog, pg_temp
AS $$
DECLARE
    v_session realtime_sessions%ROWTYPE;
    v_worker workers%ROWTYPE;
BEGIN
    PERFORM _check_session_tokens(in_handoff_hash, in_resume_hash);
    PERFORM _assert_may_act_for(in_user_id);
    SELECT * INTO v_session FROM realtime_sessions s
     WHERE s.resume_hash = in_resume_hash AND s.user_id = in_user_id FOR UPDATE;
    IF NOT FOUND OR v_session.ended THEN
        RAISE EXCEPTION USING ERRCODE = 'S2N01', MESSAGE = 'no open realtime session has this resume token',
            HINT = 'A session can be resumed until it ends (60 s after its connection dropped); start a new one.';
    END IF;
    -- A worker that died looks live until its heartbeat is 15 s old; the
    -- gateway that could not reach it names it, and the session moves at
    -- once. A move only ever concerns the caller's own session, and the
    -- old worker can no longer write to it (_served_session).
    SELECT * INTO v_worker FROM workers w
     WHERE w.id = v_session.worker_id AND _worker_is_live(w.heartbeat_at)
       AND w.id IS DISTINCT FROM in_unreachable_worker;
    IF v_worker.id IS NULL THEN
        -- Its worker is gone: another one continues from the stored audio.
        v_worker := _pick_worker(in_unreachable_worker);
        IF v_worker.id IS NULL THEN
            PERFORM _raise_busy();
        END IF;
    END IF;
    UPDATE realtime_sessions
       SET handoff_hash = in_handoff_hash, handoff_until = now() + interval '30 seconds', worker_id = v_worker.id
     WHERE realtime_sessions.recording_id = v_session.recording_id;
    RETURN QUERY SELECT v_session.recording_id, v_worker.id, v_worker.address,
                        v_worker.id IS NOT DISTINCT FROM v_session.worker_id;
END
$$;
COMMENT ON FUNCTION resume_realtime_session(uuid, bytea, bytea, uuid) IS 'The gateway resumes one''s own open session by its resume token with a new hand-off, on the same worker while it lives or on another with room; in_unreachable_worker (one the gateway could not connect to) is never chosen. Errors: S2N01 unknown or ended, S2B01 no capacity, S2V01.';

CREATE FUNCTION take_realtime_session(in_worker_id uuid, in_handoff_hash bytea)
RETURNS TABLE (recording_id uuid, user_id uuid, language text, sample_rate int, encoding text,
               next_idx int, stored_ms bigint, granted_ms bigint, prompt text)
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = s2t, pg_catalog, pg_temp
AS $$
DECLARE
    v_session realtime_sessions%ROWTYPE;
BEGIN
    UPDATE realtime_sessions s
       SET handoff_hash = NULL, handoff_until = NULL, heartbeat_at = now()
     WHERE s.handoff_hash = in_handoff_hash AND s.handoff_until > now() AND NOT s.ended
       AND s.worker_id = in_worker_id
    RETURNING s.* INTO v_session;
    IF NOT FOUND THEN
        RAISE EXCEPTION USING ERRCODE = 'S2N01', MESSAGE = 'unknown, used or expired session hand-off',
            HINT = 'A hand-off is good once, for 30 s, on the worker it was given to.';
    END IF;
    RETURN QUERY
    SELECT r.id, r.user_id, r.language, v_session.sample_rate, v_session.encoding,
           coalesce((SELECT max(g.idx) + 1 FROM segments g WHERE g.recording_id = r.id), 0),
           _session_audio_ms(v_session), r.reserved_seconds::bigint * 1000,
           -- The last committed words condition what comes next.
           (SELECT right(string_agg(g.text, ' ' ORDER BY g.idx), 200)
              FROM (SELECT g2.idx, g2.text FROM segments g2 WHERE g2.recording_id = r.id ORDER BY g2.idx DESC LIMIT 3) g)
      FROM recordings r WHERE r.id = v_session.recording_id;
END
$$;
COMMENT ON FUNCTION take_realtime_session(uuid, bytea) IS 'A worker takes the session a gateway handed it (once, within 30 s, only the worker it was assigned to): returns the recording, its owner, the audio format, the next final''s idx, the audio already stored and the minutes granted, and the recent text as a prompt. Errors: S2N01.';

-- The open session of a recording served by this worker, locked.
CREATE FUNCTION _served_session(in_recording_id uuid, in_worker_id uuid) RETURNS realtime_sessions
LANGUAGE plpgsql VOLATILE
AS $$
DECLARE
    v_session s2t.realtime_sessions%ROWTYPE;
BEGIN
    SELECT * INTO v_session FROM s2t.realtime_sessions WHERE recording_id = in_recording_id FOR UPDATE;
    IF NOT FOUND OR v_session.worker_id IS DISTINCT FROM in_worker_id THEN
        RAISE EXCEPTION USING ERRCODE = 'S2N01',
            MESSAGE = format('recording %s has no realtime session on worker %s', in_recording_id, in_worker_id);
    END IF;
    IF v_session.ended THEN
        RAISE EXCEPTION USING ERRCODE = 'S2S01', MESSAGE = format('the realtime session of recording %s has ended', in_recording_id);
    END IF;
    RETURN v_session;
END
$$;
COMMENT ON FUNCTION _served_session(uuid, uuid) IS 'Internal: the locked open session of a recording on this worker (S2N01 if not its, S2S01 if ended).';

CREATE FUNCTION add_realtime_final(
    in_recording_id uuid, in_worker_id uuid, in_audio bytea, in_segment jsonb
) RETURNS boolean
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = s2t, pg_catalog, pg_temp
AS $$
DECLARE
    v_session realtime_sessions%ROWTYPE := _served_session(in_recording_id, in_worker_id);
    v_ms bigint;
    v_next int;
    v_idx int;
BEGIN
    IF in_audio IS NOT NULL AND octet_length(in_audio) > 0 THEN
        IF octet_length(in_audio) % _bytes_per_sample(v_session.encoding) <> 0 THEN
            RAISE EXCEPTION USING ERRCODE = 'S2V01',
                MESSAGE = format('%s bytes is not a whole number of %s samples', octet_length(in_audio), v_session.encoding),
                DETAIL = 'field: in_audio';
        END IF;
        PERFORM append_audio(in_recording_id, in_audio);
    END IF;
    UPDATE realtime_sessions SET heartbeat_at = now() WHERE recording_id = in_recording_id;
    IF in_segment IS NULL THEN
        RETURN false;
    END IF;
    v_ms := _session_audio_ms(v_session);
    PERFORM raise_problem(segments_problem(jsonb_build_array(in_segment), least(v_ms, 2147483647)::int));
    v_idx := (in_segment ->> 'idx')::int;
    SELECT coalesce(max(idx) + 1, 0) INTO v_next FROM segments WHERE recording_id = in_recording_id;
    IF v_idx < v_next THEN
        -- A retry of a final already saved.
        RETURN false;
    END IF;
    IF v_idx > v_next THEN
        RAISE EXCEPTION USING ERRCODE = 'S2V01', MESSAGE = format('final %s would leave a gap: the next is %s', v_idx, v_next),
            DETAIL = 'field: idx';
    END IF;
    IF (in_segment ->> 'start_ms')::int < coalesce((SELECT end_ms FROM segments WHERE recording_id = in_recording_id AND idx = v_next - 1), 0) - 1000 THEN
        RAISE EXCEPTION USING ERRCODE = 'S2V01', MESSAGE = 'a final must not start more than 1 s before the previous one ends',
            DETAIL = 'field: start_ms';
    END IF;
    INSERT INTO segments (recording_id, idx, start_ms, end_ms, text, words)
    VALUES (in_recording_id, v_idx, (in_segment ->> 'start_ms')::int, (in_segment ->> 'end_ms')::int,
            in_segment ->> 'text', in_segment -> 'words');
    RETURN true;
END
$$;
COMMENT ON FUNCTION add_realtime_final(uuid, uuid, bytea, jsonb) IS 'The worker stores the audio received since its last call and, when in_segment is given, one final ({idx, start_ms, end_ms, text, words}) in one transaction. idx must be the next one; a final already saved returns false (a retry). The final must end within the audio stored. Errors: S2N01 not this worker''s, S2S01 ended, S2V01.';

CREATE FUNCTION extend_realtime_grant(in_recording_id uuid, in_worker_id uuid, in_through_ms bigint) RETURNS bigint
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = s2t, pg_catalog, pg_temp
AS $$
DECLARE
    v_session realtime_sessions%ROWTYPE := _served_session(in_recording_id, in_worker_id);
    v_reserved int;
    v_want bigint;
    v_room bigint;
    v_grant int;
BEGIN
    IF in_through_ms IS NULL OR in_through_ms < 0 THEN
        RAISE EXCEPTION USING ERRCODE = 'S2V01', MESSAGE = 'in_through_ms must be >= 0', DETAIL = 'field: in_through_ms';
    END IF;
    PERFORM _roll_cycle(v_session.user_id);
    SELECT r.reserved_seconds INTO v_reserved FROM recordings r WHERE r.id = in_recording_id;
    v_want := (in_through_ms + 999) / 1000 - v_reserved;
    IF v_want <= 0 THEN
        RETURN v_reserved::bigint * 1000;
    END IF;
    -- Under the subscription's row lock, like an admission: concurrent
    -- sessions of one user never reserve more than is left between them.
    SELECT greatest(p.monthly_minutes::bigint * 60 - s.used_seconds - s.reserved_seconds, 0) INTO v_room
      FROM user_subscriptions s JOIN plans p ON p.id = s.plan_id
     WHERE s.user_id = v_session.user_id FOR UPDATE OF s;
    v_grant := least(v_want, coalesce(v_room, 0))::int;
    IF v_grant > 0 THEN
        UPDATE user_subscriptions SET reserved_seconds = reserved_seconds + v_grant WHERE user_id = v_session.user_id;
        UPDATE recordings SET reserved_seconds = reserved_seconds + v_grant WHERE id = in_recording_id;
    END IF;
    RETURN (v_reserved + v_grant)::bigint * 1000;
END
$$;
COMMENT ON FUNCTION extend_realtime_grant(uuid, uuid, bigint) IS 'The worker reserves a session''s minutes ahead of its audio: asks for everything up to in_through_ms and returns how far the session may go (ms); less than asked means the monthly minutes run out there. Errors: S2N01, S2S01, S2V01.';

CREATE FUNCTION end_realtime_session(in_recording_id uuid, in_worker_id uuid, in_audio bytea, in_failure text DEFAULT NULL)
RETURNS boolean
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = s2t, pg_catalog, pg_temp
AS $$
DECLARE
    v_session realtime_sessions%ROWTYPE;
BEGIN
    SELECT * INTO v_session FROM realtime_sessions WHERE recording_id = in_recording_id FOR UPDATE;
    IF NOT FOUND OR v_session.worker_id IS DISTINCT FROM in_worker_id THEN
        RAISE EXCEPTION USING ERRCODE = 'S2N01',
            MESSAGE = format('recording %s has no realtime session on worker %s', in_recording_id, in_worker_id);
    END IF;
    IF v_session.ended THEN
        RETURN false;
    END IF;
    IF in_failure IS NOT NULL AND btrim(in_failure) = '' THEN
        RAISE EXCEPTION USING ERRCODE = 'S2V01', MESSAGE = 'a failure needs a reason', DETAIL = 'field: in_failure';
    END IF;
    IF in_audio IS NOT NULL AND octet_length(in_audio) > 0 THEN
        PERFORM add_realtime_final(in_recording_id, in_worker_id, in_audio, NULL);
    END IF;
    PERFORM _end_session(v_session, in_failure);
    RETURN true;
END
$$;
COMMENT ON FUNCTION end_realtime_session(uuid, uuid, bytea, text) IS 'The worker ends a session exactly once, after storing the last audio: done and billed for the audio stored, or failed with in_failure (not billed). Returns false if it had already ended. Errors: S2N01, S2V01.';

REVOKE EXECUTE ON FUNCTION _worker_is_live(timestamptz), _le_bytes(bigint, int), _wav_header(int, text, bigint),
    _bytes_per_sample(text), register_worker(text, text, int), unregister_worker(uuid),
    _session_audio_ms(realtime_sessions), _end_session(realtime_sessions, text), _end_orphaned_sessions(),
    heartbeat_worker(uuid, uuid[]), _check_session_tokens(bytea, bytea), _pick_worker(uuid), _raise_busy(),
    open_realtime_session(uuid, text, int, text, jsonb, bytea, bytea), resume_realtime_session(uuid, bytea, bytea, uuid),
    take_realtime_session(uuid, bytea), _served_session(uuid, uuid), add_realtime_final(uuid, uuid, bytea, jsonb),
    extend_realtime_grant(uuid, uuid, bigint), end_realtime_session(uuid, uuid, bytea, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION open_realtime_session(uuid, text, int, text, jsonb, bytea, bytea),
    resume_realtime_session(uuid, bytea, bytea, uuid) TO s2t_app;
GRANT EXECUTE ON FUNCTION register_worker(text, text, int), unregister_worker(uuid), heartbeat_worker(uuid, uuid[]),
    take_realtime_session(uuid, bytea), add_realtime_final(uuid, uuid, bytea, jsonb),
    extend_realtime_grant(uuid, uuid, bigint), end_realtime_session(uuid, uuid, bytea, text) TO s2t_worker;
ALTER TABLE workers OWNER TO s2t_definer;
ALTER TABLE realtime_sessions OWNER TO s2t_definer;
GRANT EXECUTE ON FUNCTION _worker_is_live(timestamptz), _le_bytes(bigint, int), _wav_header(int, text, bigint),
    _bytes_per_sample(text), register_worker(text, text, int), unregister_worker(uuid),
    _session_audio_ms(realtime_sessions), _end_session(realtime_sessions, text), _end_orphaned_sessions(),
    heartbeat_worker(uuid, uuid[]), _check_session_tokens(bytea, bytea), _pick_worker(uuid), _raise_busy(),
    open_realtime_session(uuid, text, int, text, jsonb, bytea, bytea), resume_realtime_session(uuid, bytea, bytea, uuid),
    take_realtime_session(uuid, bytea), _served_session(uuid, uuid), add_realtime_final(uuid, uuid, bytea, jsonb),
    extend_realtime_grant(uuid, uuid, bigint), end_realtime_session(uuid, uuid, bytea, text) TO s2t_definer;
ALTER FUNCTION register_worker(text, text, int) OWNER TO s2t_definer;
ALTER FUNCTION unregister_worker(uuid) OWNER TO s2t_definer;
ALTER FUNCTION heartbeat_worker(uuid, uuid[]) OWNER TO s2t_definer;
ALTER FUNCTION open_realtime_session(uuid, text, int, text, jsonb, bytea, bytea) OWNER TO s2t_definer;
ALTER FUNCTION resume_realtime_session(uuid, bytea, bytea, uuid) OWNER TO s2t_definer;
ALTER FUNCTION take_realtime_session(uuid, bytea) OWNER TO s2t_definer;
ALTER FUNCTION add_realtime_final(uuid, uuid, bytea, jsonb) OWNER TO s2t_definer;
ALTER FUNCTION extend_realtime_grant(uuid, uuid, bigint) OWNER TO s2t_definer;
ALTER FUNCTION end_realtime_session(uuid, uuid, bytea, text) OWNER TO s2t_definer;
-- == end realtime sessions ==

-- == websocket tickets ==
-- One-time tickets for browser WebSockets: a browser cannot set an
-- Authorization header on a WebSocket, so it trades its token for a ticket
-- (POST /ws/ticket) and puts that in the URL of /ws/s2t. Kept here, not in
-- a gateway's memory, so a ticket one gateway issued is good at any other
-- behind the same proxy. Only SHA-256 hashes are stored; a ticket is spent
-- by its first use, and at most 20 unused ones per user exist at once.
CREATE TABLE ws_tickets (
    ticket_hash bytea PRIMARY KEY CHECK (octet_length(ticket_hash) = 32),
    user_id     uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    expires_at  timestamptz NOT NULL
);
CREATE INDEX ws_tickets_user_idx ON ws_tickets (user_id);
CREATE INDEX ws_tickets_expiry_idx ON ws_tickets (expires_at);
COMMENT ON TABLE ws_tickets IS 'One-time WebSocket tickets (SHA-256 hashes only): who may open /ws/s2t with it, until when. Reached only through issue_ws_ticket and redeem_ws_ticket.';
-- No policy and no grant: only the functions below reach it.
ALTER TABLE ws_tickets ENABLE ROW LEVEL SECURITY;

CREATE FUNCTION issue_ws_ticket(in_user_id uuid, in_ticket_hash bytea, in_ttl interval DEFAULT interval '30 seconds')
RETURNS timestamptz
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = s2t, pg_catalog, pg_temp
AS $$
DECLARE
    v_unused int;
    v_oldest timestamptz;
    v_expires timestamptz;
BEGIN
    PERFORM _assert_may_act_for(in_user_id);
    IF octet_length(in_ticket_hash) IS DISTINCT FROM 32 THEN
        RAISE EXCEPTION USING ERRCODE = 'S2V01', MESSAGE = 'ticket_hash must be 32 bytes (SHA-256)';
    END IF;
    IF in_ttl IS NULL OR in_ttl <= interval '0' OR in_ttl > interval '5 minutes' THEN
        RAISE EXCEPTION USING ERRCODE = 'S2V01',
            MESSAGE = format('a ticket lives more than 0 and at most 5 minutes, got %s', in_ttl);
    END IF;
    -- The user's row lock serialises one user's requests, so the limit
    -- holds however many race (NO KEY UPDATE: inserts that reference the
    -- user are not held up).
    PERFORM FROM users u WHERE u.id = in_user_id AND u.status = 'active' FOR NO KEY UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION USING ERRCODE = 'S2N01', MESSAGE = format('user %s not found', in_user_id),
            HINT = 'A disabled account gets no tickets.';
    END IF;
    DELETE FROM ws_tickets t WHERE t.user_id = in_user_id AND t.expires_at <= now();
    SELECT count(*), min(t.expires_at) INTO v_unused, v_oldest FROM ws_tickets t WHERE t.user_id = in_user_id;
    IF v_unused >= 20 THEN
        RAISE EXCEPTION USING ERRCODE = 'S2L01',
            MESSAGE = 'at most 20 unused WebSocket tickets at once; use one or let them expire',
            DETAIL = format('retry_after: %s', greatest(1, ceil(extract(epoch FROM v_oldest - now()))::int));
    END IF;
    INSERT INTO ws_tickets (ticket_hash, user_id, expires_at)
    VALUES (in_ticket_hash, in_user_id, now() + in_ttl)
    RETURNING expires_at INTO v_expires;
    RETURN v_expires;
END
$$;
COMMENT ON FUNCTION issue_ws_ticket(uuid, bytea, interval) IS 'Stores a one-time WebSocket ticket (its SHA-256) for the user, good for in_ttl (at most 5 minutes); returns when it expires. Errors: S2L01 20 unused tickets already (detail retry_after: seconds), S2N01 unknown or disabled user, S2V01.';

CREATE FUNCTION redeem_ws_ticket(in_ticket_hash bytea) RETURNS uuid
LANGUAGE sql VOLATILE SECURITY DEFINER SET search_path = s2t, pg_catalog, pg_temp
AS $$
    WITH spent AS (
        DELETE FROM s2t.ws_tickets t WHERE t.ticket_hash = in_ticket_hash
        RETURNING t.user_id, t.expires_at
    )
    SELECT s.user_id FROM spent s JOIN s2t.users u ON u.id = s.user_id
     WHERE s.expires_at > now() AND u.status = 'active'
$$;
COMMENT ON FUNCTION redeem_ws_ticket(bytea) IS 'Spends a WebSocket ticket (by SHA-256): the user it was issued to, or NULL when it is unknown, already used, expired or the user is disabled. A ticket is spent even when it is refused.';

CREATE FUNCTION purge_ws_tickets() RETURNS int
LANGUAGE sql VOLATILE SECURITY DEFINER SET search_path = s2t, pg_catalog, pg_temp
AS $$
    WITH gone AS (DELETE FROM s2t.ws_tickets t WHERE t.expires_at <= now() RETURNING 1)
    SELECT count(*)::int FROM gone
$$;
COMMENT ON FUNCTION purge_ws_tickets() IS 'Maintenance: deletes expired WebSocket tickets; returns how many.';

REVOKE EXECUTE ON FUNCTION issue_ws_ticket(uuid, bytea, interval), redeem_ws_ticket(bytea), purge_ws_tickets() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION issue_ws_ticket(uuid, bytea, interval), redeem_ws_ticket(bytea) TO s2t_app;
GRANT EXECUTE ON FUNCTION purge_ws_tickets() TO s2t_worker;
ALTER TABLE ws_tickets OWNER TO s2t_definer;
GRANT EXECUTE ON FUNCTION issue_ws_ticket(uuid, bytea, interval), redeem_ws_ticket(bytea), purge_ws_tickets()
    TO s2t_definer;
ALTER FUNCTION issue_ws_ticket(uuid, bytea, interval) OWNER TO s2t_definer;
ALTER FUNCTION redeem_ws_ticket(bytea) OWNER TO s2t_definer;
ALTER FUNCTION purge_ws_tickets() OWNER TO s2t_definer;
-- == end websocket tickets ==

-- == search (issue 10): chunking, the embedding queue, hybrid search ==
-- The Rust functions (as cargo pgrx generates them).
CREATE  FUNCTION "_chunk_plan"(
	"idx" INT[], /* Vec < i32 > */
	"start_ms" INT[], /* Vec < i32 > */
	"end_ms" INT[], /* Vec < i32 > */
	"texts" TEXT[] /* Vec < String > */
) RETURNS TABLE (
	"chunk_index" INT,  /* i32 */
	"start_ms" INT,  /* i32 */
	"end_ms" INT,  /* i32 */
	"first_segment_idx" INT,  /* i32 */
	"last_segment_idx" INT,  /* i32 */
	"text" TEXT,  /* String */
	"token_count" INT,  /* i32 */
	"content_hash" TEXT  /* String */
)
STRICT STABLE PARALLEL SAFE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', '_chunk_plan_wrapper';

CREATE  FUNCTION "_embed_or_null"(
	"text" TEXT /* & str */
) RETURNS real[] /* :: std :: option :: Option < Vec < f32 > > */
STRICT VOLATILE PARALLEL RESTRICTED
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', '_embed_or_null_wrapper';

CREATE  FUNCTION "_embed_query"(
	"text" TEXT /* & str */
) RETURNS real[] /* Vec < f32 > */
STRICT VOLATILE PARALLEL RESTRICTED
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', '_embed_query_wrapper';

CREATE  FUNCTION "_highlights"(
	"text" TEXT, /* & str */
	"terms" TEXT[] /* Vec < String > */
) RETURNS jsonb /* pgrx :: JsonB */
IMMUTABLE STRICT PARALLEL SAFE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', '_highlights_wrapper';

CREATE  FUNCTION "_query_terms"(
	"query" TEXT /* & str */
) RETURNS TEXT[] /* Vec < String > */
IMMUTABLE STRICT PARALLEL SAFE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', '_query_terms_wrapper';

CREATE  FUNCTION "_rrf"(
	"dense" uuid[], /* :: std :: option :: Option < Vec < pgrx :: Uuid > > */
	"lexical" uuid[], /* :: std :: option :: Option < Vec < pgrx :: Uuid > > */
	"k" INT /* i32 */
) RETURNS TABLE (
	"chunk_id" uuid,  /* pgrx :: Uuid */
	"score" double precision,  /* f64 */
	"dense_rank" INT,  /* Option < i32 > */
	"lexical_rank" INT  /* Option < i32 > */
)
STABLE PARALLEL SAFE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', '_rrf_wrapper';

CREATE  FUNCTION "embedding_available"() RETURNS bool /* bool */
STRICT VOLATILE PARALLEL RESTRICTED
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'embedding_available_wrapper';

CREATE  FUNCTION "embedding_model"() RETURNS TEXT /* String */
STRICT STABLE PARALLEL SAFE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', 'embedding_model_wrapper';

-- Chunks are derived from segments, and no release wrote any: rebuild
-- them with the new columns (re-chunked at the end of this section).
DELETE FROM transcript_chunks;
ALTER TABLE transcript_chunks
    ADD COLUMN first_segment_idx int NOT NULL,
    ADD COLUMN last_segment_idx int NOT NULL,
    ADD COLUMN content_hash text NOT NULL,
    ADD COLUMN embed_lease_until timestamptz,
    ADD COLUMN embed_attempts int NOT NULL DEFAULT 0,
    ADD CONSTRAINT chunk_segments_ordered CHECK (last_segment_idx >= first_segment_idx);
COMMENT ON COLUMN transcript_chunks.first_segment_idx IS 'The idx of the first segment the chunk draws on (with last_segment_idx, the segments to play).';
COMMENT ON COLUMN transcript_chunks.content_hash IS 'Lower-case hex SHA-256 of text: re-chunking keeps the id and vector of a chunk whose hash is unchanged.';
COMMENT ON COLUMN transcript_chunks.embed_lease_until IS 'Until when a worker holds the chunk to embed it (NULL: not claimed).';
REVOKE INSERT, UPDATE, DELETE ON transcript_chunks FROM s2t_worker;

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

CREATE OR REPLACE FUNCTION complete_recording(
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

REVOKE EXECUTE ON FUNCTION _chunk_plan(int[], int[], int[], text[]), _embed_or_null(text), _embed_query(text), _highlights(text, text[]), _query_terms(text), _rrf(uuid[], uuid[], int), embedding_model(), embedding_available(), embed(text), _search(text, @extschema:vector@.vector, int, uuid, timestamptz, timestamptz, text), search(text, @extschema:vector@.vector, int, uuid, timestamptz, timestamptz, text), search(text, int, uuid, timestamptz, timestamptz, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION _chunk_plan(int[], int[], int[], text[]), _embed_or_null(text), _embed_query(text), _highlights(text, text[]), _query_terms(text), _rrf(uuid[], uuid[], int), embedding_model(), embedding_available(), chunk_recording(uuid), claim_chunks_to_embed(text, int, interval), store_chunk_embeddings(text, uuid[], text[], real[]), embedding_backlog(), embed(text), _search(text, @extschema:vector@.vector, int, uuid, timestamptz, timestamptz, text), search(text, @extschema:vector@.vector, int, uuid, timestamptz, timestamptz, text), search(text, int, uuid, timestamptz, timestamptz, text) TO s2t_definer;
ALTER FUNCTION chunk_recording(uuid) OWNER TO s2t_definer;
ALTER FUNCTION claim_chunks_to_embed(text, int, interval) OWNER TO s2t_definer;
ALTER FUNCTION store_chunk_embeddings(text, uuid[], text[], real[]) OWNER TO s2t_definer;
ALTER FUNCTION embedding_backlog() OWNER TO s2t_definer;
SELECT count(s2t.chunk_recording(id)) FROM s2t.recordings WHERE status = 'done';
-- == end search ==

-- == begin ask ==
-- Questions: a monthly limit per plan, the answers kept per user, and the
-- ask functions (the same text as src/sql/ask.sql).
ALTER TABLE plans ADD COLUMN monthly_questions int NOT NULL DEFAULT 100 CHECK (monthly_questions >= 0);
UPDATE plans SET monthly_questions = CASE code WHEN 'BASIC' THEN 1000 WHEN 'PREMIUM' THEN 5000
                                               WHEN 'ENTERPRISE' THEN 50000 ELSE monthly_questions END;
COMMENT ON TABLE plans IS 'Service plans: monthly minutes, monthly number of transcriptions and monthly number of questions (s2t.ask).';

CREATE FUNCTION "_ask_prompt"(
	"question" TEXT, /* & str */
	"passages" jsonb /* pgrx :: JsonB */
) RETURNS jsonb /* pgrx :: JsonB */
IMMUTABLE STRICT PARALLEL SAFE
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', '_ask_prompt_wrapper';
CREATE FUNCTION "_extract_answer"(
	"question" TEXT, /* & str */
	"passages" jsonb, /* pgrx :: JsonB */
	"lang" TEXT DEFAULT 'en', /* & str */
	"max_sentences" INT DEFAULT 3 /* i32 */
) RETURNS jsonb /* pgrx :: JsonB */
STRICT VOLATILE PARALLEL RESTRICTED
LANGUAGE c /* Rust */
AS 'MODULE_PATHNAME', '_extract_answer_wrapper';

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

REVOKE EXECUTE ON FUNCTION admit_question(uuid), ask_context(text, int, uuid, timestamptz, timestamptz),
    ask(text, int, uuid, timestamptz, timestamptz, text, int), _extract_answer(text, jsonb, text, int),
    _ask_prompt(text, jsonb) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION admit_question(uuid), ask_context(text, int, uuid, timestamptz, timestamptz),
    ask(text, int, uuid, timestamptz, timestamptz, text, int), _extract_answer(text, jsonb, text, int),
    _ask_prompt(text, jsonb) TO s2t_definer;
ALTER TABLE question_usage OWNER TO s2t_definer;
ALTER TABLE answers OWNER TO s2t_definer;
ALTER FUNCTION admit_question(uuid) OWNER TO s2t_definer;
-- == end ask ==

-- == plan questions ==
-- admin_upsert_plan takes the plan's monthly_questions.
DROP FUNCTION admin_upsert_plan(text, text, text, text, int, int, int, int);
CREATE FUNCTION admin_upsert_plan(
    in_code text, in_name text, in_description text, in_plan_type text,
    in_plan_cost int, in_plan_discount int, in_monthly_minutes int, in_monthly_usage_limit int,
    in_monthly_questions int DEFAULT NULL
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
    -- No monthly_questions: the column's default for a new plan, the
    -- plan's own for an existing one.
    INSERT INTO plans AS p (code, name, description, plan_type, plan_cost, plan_discount, monthly_minutes,
                            monthly_usage_limit, monthly_questions)
    VALUES (in_code, in_name, in_description, coalesce(in_plan_type, 'paid'), coalesce(in_plan_cost, 0),
            coalesce(in_plan_discount, 0), in_monthly_minutes, in_monthly_usage_limit,
            coalesce(in_monthly_questions, 100))
    ON CONFLICT (code) DO UPDATE
       SET name = EXCLUDED.name, description = EXCLUDED.description, plan_type = EXCLUDED.plan_type,
           plan_cost = EXCLUDED.plan_cost, plan_discount = EXCLUDED.plan_discount,
           monthly_minutes = EXCLUDED.monthly_minutes, monthly_usage_limit = EXCLUDED.monthly_usage_limit,
           monthly_questions = coalesce(in_monthly_questions, p.monthly_questions)
    RETURNING id INTO v_id;
    RETURN v_id;
END
$$;
COMMENT ON FUNCTION admin_upsert_plan(text, text, text, text, int, int, int, int, int) IS 'Admins: creates a plan or updates the one with this code; returns its id. in_monthly_questions NULL keeps an existing plan''s question limit (100 for a new plan). Errors: 42501 not an admin, S2V01 bad code or name, 23514 a limit out of range.';

REVOKE EXECUTE ON FUNCTION admin_upsert_plan(text, text, text, text, int, int, int, int, int) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION admin_upsert_plan(text, text, text, text, int, int, int, int, int) TO s2t_app;
GRANT EXECUTE ON FUNCTION admin_upsert_plan(text, text, text, text, int, int, int, int, int) TO s2t_definer;
ALTER FUNCTION admin_upsert_plan(text, text, text, text, int, int, int, int, int) OWNER TO s2t_definer;
-- == end plan questions ==
