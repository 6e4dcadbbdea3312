-- Realtime sessions (added in 0.4.0): the worker registry, the session a
-- gateway opens and a worker serves, finals saved as they are committed,
-- minutes reserved as the stream goes, and exactly one ending.
--
-- The flow:
--   1. A worker that serves realtime registers (register_worker) with the
--      WebSocket address the gateways reach it at and its capacity, and
--      beats (heartbeat_worker) every few seconds with the sessions it has.
--   2. The gateway, acting for a user, calls open_realtime_session: one
--      transaction admits a 'realtime' recording (the quota), opens its
--      audio (a WAV header this file writes), picks a live worker with room
--      and records two hashes: a one-time hand-off for the worker and the
--      client's resume token.
--   3. The gateway connects to the worker and hands it the hand-off token;
--      the worker takes the session (take_realtime_session), which only
--      works once, before it expires and on the worker it was given to.
--   4. As it commits text the worker calls add_realtime_final: the audio
--      since the last call and the final, in one transaction. Before the
--      audio passes what is reserved it calls extend_realtime_grant.
--   5. end_realtime_session ends it exactly once: the WAV header gets its
--      sizes, the audio is sealed, and the recording is done and billed
--      for the audio received (or failed, with a reason, and not billed).
--      A session whose worker stopped beating is ended the same way by the
--      next heartbeat of any worker.
--
-- Nothing here is granted to the application but opening and resuming;
-- the worker holds the rest, as it holds completions.

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
