-- Gateway support, added in 0.2.0: login lookup, refresh-token rotation with
-- reuse detection, API keys, audio uploads by the application role, and
-- avatars.
--
-- This file is part of the install script and is also the upgrade script
-- pg_s2t--0.1.0--0.2.0.sql (pg_s2t/sql/ links to it), so it must run both on
-- a fresh schema and on a 0.1.0 one. search_path is s2t in both cases.

CREATE TABLE avatars (
    user_id      uuid PRIMARY KEY REFERENCES users (id) ON DELETE CASCADE,
    content_type text NOT NULL CHECK (content_type IN ('image/png', 'image/jpeg', 'image/webp', 'image/gif')),
    data         bytea NOT NULL CHECK (octet_length(data) BETWEEN 1 AND 2097152),
    updated_at   timestamptz NOT NULL DEFAULT now()
);
-- Images are already compressed.
ALTER TABLE avatars ALTER COLUMN data SET STORAGE EXTERNAL;
COMMENT ON TABLE avatars IS 'Profile pictures (at most 2 MiB); user_profiles.avatar_url points at the gateway URL that serves them.';
ALTER TABLE avatars ENABLE ROW LEVEL SECURITY;
CREATE POLICY own_avatar ON avatars TO s2t_app
    USING (user_id = current_user_id()) WITH CHECK (user_id = current_user_id());
GRANT SELECT, INSERT, UPDATE, DELETE ON avatars TO s2t_app;

-- Uploads. PostgreSQL refuses COPY FROM into a table with row-level
-- security, so the gateway streams the bytes with COPY into this staging
-- table (insert-only for the application: it cannot read anyone's staged
-- bytes), then attach_upload moves them to recording_audio, in the same
-- transaction that admitted the recording. Unlogged: a staged row never
-- outlives its transaction.
CREATE UNLOGGED TABLE audio_uploads (
    id           uuid PRIMARY KEY,
    user_id      uuid NOT NULL,
    content_type text NOT NULL DEFAULT 'application/octet-stream',
    data         bytea NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now()
);
ALTER TABLE audio_uploads ALTER COLUMN data SET STORAGE EXTERNAL;
COMMENT ON TABLE audio_uploads IS 'Staging for streamed uploads (COPY cannot write into a table with row-level security); emptied by attach_upload in the same transaction.';

CREATE FUNCTION trg_stamp_upload_owner() RETURNS trigger
LANGUAGE plpgsql
AS $$
BEGIN
    NEW.user_id := s2t.current_user_id();
    IF NEW.user_id IS NULL THEN
        RAISE EXCEPTION USING ERRCODE = '42501', MESSAGE = 's2t.user_id is not set',
            HINT = 'Set s2t.user_id in the transaction before staging an upload.';
    END IF;
    RETURN NEW;
END
$$;
COMMENT ON FUNCTION trg_stamp_upload_owner() IS 'Trigger: a staged upload belongs to the transaction''s user, whatever the client sent.';
CREATE TRIGGER stamp_upload_owner BEFORE INSERT ON audio_uploads
    FOR EACH ROW EXECUTE FUNCTION trg_stamp_upload_owner();
GRANT INSERT ON audio_uploads TO s2t_app;

CREATE FUNCTION attach_upload(in_recording_id uuid, in_upload_id uuid) RETURNS bigint
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = s2t, pg_catalog
AS $$
DECLARE
    v_owner uuid;
    v_size bigint;
BEGIN
    SELECT user_id INTO v_owner FROM recordings WHERE id = in_recording_id AND audio_uri = 'db:';
    IF v_owner IS NULL THEN
        RAISE EXCEPTION USING ERRCODE = 'S2N01', MESSAGE = format('recording %s not found', in_recording_id);
    END IF;
    PERFORM _assert_may_act_for(v_owner);
    WITH staged AS (
        DELETE FROM audio_uploads WHERE id = in_upload_id AND user_id = v_owner
        RETURNING content_type, data)
    INSERT INTO recording_audio (recording_id, content_type, data)
    SELECT in_recording_id, content_type, data FROM staged
    RETURNING size_bytes INTO v_size;
    IF v_size IS NULL THEN
        RAISE EXCEPTION USING ERRCODE = 'S2N01', MESSAGE = format('staged upload %s not found', in_upload_id);
    END IF;
    RETURN v_size;
END
$$;
COMMENT ON FUNCTION attach_upload(uuid, uuid) IS 'Moves a staged upload (audio_uploads) into recording_audio for one''s own "db:" recording; returns its size in bytes. Errors: S2N01.';

CREATE FUNCTION auth_lookup(in_login text)
RETURNS TABLE (user_id uuid, password_hash text, status text)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = s2t, pg_catalog
AS $$
    SELECT u.id, u.password_hash, u.status
      FROM users u
     WHERE u.email = normalize_email(in_login) OR lower(u.user_name) = lower(btrim(in_login))
     LIMIT 1
$$;
COMMENT ON FUNCTION auth_lookup(text) IS 'Login: the user with this e-mail address or user name (any case), with the password hash to verify. No row when unknown.';

CREATE FUNCTION issue_refresh_token(
    in_user_id uuid, in_token_hash bytea, in_ttl interval, in_family_id uuid DEFAULT NULL
) RETURNS uuid
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = s2t, pg_catalog
AS $$
DECLARE
    v_id uuid;
BEGIN
    PERFORM _assert_may_act_for(in_user_id);
    IF in_ttl IS NULL OR in_ttl <= interval '0' THEN
        RAISE EXCEPTION USING ERRCODE = 'S2V01', MESSAGE = 'refresh token lifetime must be positive';
    END IF;
    IF octet_length(in_token_hash) IS DISTINCT FROM 32 THEN
        RAISE EXCEPTION USING ERRCODE = 'S2V01', MESSAGE = 'token_hash must be 32 bytes (SHA-256)';
    END IF;
    INSERT INTO refresh_tokens (user_id, family_id, token_hash, expires_at)
    VALUES (in_user_id, coalesce(in_family_id, gen_random_uuid()), in_token_hash, now() + in_ttl)
    RETURNING id INTO v_id;
    RETURN v_id;
END
$$;
COMMENT ON FUNCTION issue_refresh_token(uuid, bytea, interval, uuid) IS 'Stores the SHA-256 of a new refresh token for a login (a new family) and returns its id.';

CREATE FUNCTION rotate_refresh_token(in_old_hash bytea, in_new_hash bytea, in_ttl interval)
RETURNS TABLE (user_id uuid, outcome text)
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = s2t, pg_catalog
AS $$
DECLARE
    v_old refresh_tokens%ROWTYPE;
    v_status text;
    v_new uuid;
BEGIN
    SELECT * INTO v_old FROM refresh_tokens t WHERE t.token_hash = in_old_hash FOR UPDATE;
    IF NOT FOUND THEN
        RETURN QUERY SELECT NULL::uuid, 'unknown';
        RETURN;
    END IF;
    IF v_old.replaced_by IS NOT NULL THEN
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
    SELECT u.status INTO v_status FROM users u WHERE u.id = v_old.user_id;
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
COMMENT ON FUNCTION rotate_refresh_token(bytea, bytea, interval) IS 'Exchanges a refresh token (by hash) for a new one in the same family. outcome: rotated, or unknown / expired / revoked / disabled, or reused (a rotated token again: the whole family is revoked).';

CREATE FUNCTION revoke_refresh_token(in_token_hash bytea) RETURNS boolean
LANGUAGE sql VOLATILE SECURITY DEFINER SET search_path = s2t, pg_catalog
AS $$
    WITH family AS (SELECT family_id FROM refresh_tokens WHERE token_hash = in_token_hash),
         revoked AS (
            UPDATE refresh_tokens t SET revoked_at = now()
              FROM family f WHERE t.family_id = f.family_id AND t.revoked_at IS NULL
            RETURNING 1)
    SELECT EXISTS (SELECT FROM family)
$$;
COMMENT ON FUNCTION revoke_refresh_token(bytea) IS 'Logout: revokes the session (the token''s family). False when the token is unknown.';

CREATE FUNCTION purge_refresh_tokens(in_grace interval DEFAULT interval '7 days') RETURNS int
LANGUAGE sql VOLATILE SECURITY DEFINER SET search_path = s2t, pg_catalog
AS $$
    WITH gone AS (
        DELETE FROM refresh_tokens
         WHERE expires_at < now() - in_grace
            OR revoked_at < now() - in_grace
        RETURNING 1)
    SELECT count(*)::int FROM gone
$$;
COMMENT ON FUNCTION purge_refresh_tokens(interval) IS 'Maintenance: deletes refresh tokens that expired or were revoked longer ago than the grace period (kept that long so a late reuse is still recognised). Returns how many.';

CREATE TABLE api_keys (
    id           uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id      uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    name         text NOT NULL CHECK (length(name) BETWEEN 1 AND 100),
    prefix       text NOT NULL,
    key_hash     bytea NOT NULL UNIQUE CHECK (octet_length(key_hash) = 32),
    created_at   timestamptz NOT NULL DEFAULT now(),
    last_used_at timestamptz,
    revoked_at   timestamptz
);
CREATE INDEX api_keys_user_idx ON api_keys (user_id);
COMMENT ON TABLE api_keys IS 'Per-user API keys for tools, sent as bearer tokens; only their SHA-256 is kept (the key is shown once) with a short prefix to recognise it.';
ALTER TABLE api_keys ENABLE ROW LEVEL SECURITY;
CREATE POLICY own_api_keys ON api_keys TO s2t_app
    USING (user_id = current_user_id()) WITH CHECK (user_id = current_user_id());
GRANT SELECT (id, user_id, name, prefix, created_at, last_used_at, revoked_at),
      INSERT (user_id, name, prefix, key_hash), UPDATE (revoked_at) ON api_keys TO s2t_app;

CREATE FUNCTION api_key_user(in_key_hash bytea) RETURNS uuid
LANGUAGE sql VOLATILE SECURITY DEFINER SET search_path = s2t, pg_catalog
AS $$
    WITH k AS (
        SELECT k.id, k.user_id, k.last_used_at
          FROM api_keys k JOIN users u ON u.id = k.user_id
         WHERE k.key_hash = in_key_hash AND k.revoked_at IS NULL AND u.status = 'active'),
    touched AS (
        -- At most one write a minute per key, not one per request.
        UPDATE api_keys SET last_used_at = now()
         WHERE id IN (SELECT id FROM k WHERE last_used_at IS NULL OR last_used_at < now() - interval '1 minute')
        RETURNING 1)
    SELECT user_id FROM k
$$;
COMMENT ON FUNCTION api_key_user(bytea) IS 'The active user an API key (by SHA-256) belongs to, or NULL when unknown, revoked or the user is disabled; notes when it was last used.';

REVOKE EXECUTE ON FUNCTION auth_lookup(text), issue_refresh_token(uuid, bytea, interval, uuid),
    rotate_refresh_token(bytea, bytea, interval), revoke_refresh_token(bytea),
    attach_upload(uuid, uuid), trg_stamp_upload_owner(), purge_refresh_tokens(interval),
    api_key_user(bytea) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION auth_lookup(text), issue_refresh_token(uuid, bytea, interval, uuid),
    rotate_refresh_token(bytea, bytea, interval), revoke_refresh_token(bytea),
    attach_upload(uuid, uuid), api_key_user(bytea) TO s2t_app;

GRANT EXECUTE ON FUNCTION purge_refresh_tokens(interval) TO s2t_worker;

-- The gateway's /metrics reports queue depth (counts only, no user data).
GRANT EXECUTE ON FUNCTION queue_stats() TO s2t_app;
