-- Stored audio, in chunks (added in 0.4.0).
--
-- An upload: the gateway COPYs the file into recording_audio_chunks under a
-- fresh audio_id, 1 MiB per row, then admits the recording and calls
-- attach_audio, all in one transaction. The bytes are written once (about
-- 1x their size in WAL) and never rewritten. A realtime session attaches
-- open audio (in_sealed = false), appends with append_audio as audio
-- arrives and seals it at the end. Reads: read_audio for any byte range
-- (the application's only way in), or the worker's plain SELECT in
-- byte_offset order.
--
-- The chunk table has no row-level security (COPY refuses tables that do),
-- so its integrity rests on three things: the application may only INSERT,
-- trg_stamp_audio_chunk stamps the acting user on every chunk, and the
-- deferred foreign key on (audio_id, user_id) lets a chunk commit only as
-- part of that same user's attached audio.

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
CREATE TRIGGER stamp_audio_chunk BEFORE INSERT ON recording_audio_chunks
    FOR EACH ROW EXECUTE FUNCTION trg_stamp_audio_chunk();

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
