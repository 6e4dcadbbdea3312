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
