-- Gateway support, added in 0.2.0: login lookup, refresh-token rotation with
-- reuse detection, API keys and avatars. (0.2.0's staged uploads gave way
-- to chunked audio in 0.4.0: see audio.sql.)
--
-- The upgrade script pg_s2t--0.1.0--0.2.0.sql is a frozen copy of this
-- file as 0.2.0 shipped it; later changes go in later upgrade scripts.

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

CREATE FUNCTION auth_lookup(in_login text)
RETURNS TABLE (user_id uuid, password_hash text, status text)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = s2t, pg_catalog, pg_temp
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
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = s2t, pg_catalog, pg_temp
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

-- Rotation with a grace window. Two tabs refreshing at once, or a client
-- retrying after a timeout, present the same token twice within moments; a
-- strict rule would then revoke the whole family and sign the user out.
-- The gateway derives the successor from the spent token (an HMAC under its
-- secret), so an honest second presentation within in_grace arrives with
-- the very successor already stored, and gets it back. A replay after the
-- window, or with any other successor, is treated as theft.
CREATE FUNCTION rotate_refresh_token(
    in_old_hash bytea, in_new_hash bytea, in_ttl interval, in_grace interval DEFAULT interval '0'
)
RETURNS TABLE (user_id uuid, outcome text)
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = s2t, pg_catalog, pg_temp
AS $$
DECLARE
    v_old refresh_tokens%ROWTYPE;
    v_next refresh_tokens%ROWTYPE;
    v_status text;
    v_new uuid;
BEGIN
    IF in_grace IS NULL OR in_grace < interval '0' OR in_grace > interval '5 minutes' THEN
        RAISE EXCEPTION USING ERRCODE = 'S2V01', MESSAGE = format('grace must be between 0 and 5 minutes, got %s', in_grace),
            DETAIL = 'field: in_grace';
    END IF;
    SELECT * INTO v_old FROM refresh_tokens t WHERE t.token_hash = in_old_hash FOR UPDATE;
    IF NOT FOUND THEN
        RETURN QUERY SELECT NULL::uuid, 'unknown';
        RETURN;
    END IF;
    SELECT u.status INTO v_status FROM users u WHERE u.id = v_old.user_id;
    IF v_old.replaced_by IS NOT NULL THEN
        SELECT * INTO v_next FROM refresh_tokens t WHERE t.id = v_old.replaced_by;
        IF v_old.revoked_at > now() - in_grace AND v_next.token_hash = in_new_hash
           AND v_next.revoked_at IS NULL AND v_next.expires_at > now() AND v_status = 'active' THEN
            RETURN QUERY SELECT v_old.user_id, 'rotated';
            RETURN;
        END IF;
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
COMMENT ON FUNCTION rotate_refresh_token(bytea, bytea, interval, interval) IS 'Exchanges a refresh token (by hash) for a new one in the same family. outcome: rotated (also for the same exchange repeated within in_grace, at most 5 minutes), or unknown / expired / revoked / disabled, or reused (a rotated token again after the grace, or with another successor: the whole family is revoked).';

CREATE FUNCTION revoke_refresh_token(in_token_hash bytea) RETURNS boolean
LANGUAGE sql VOLATILE SECURITY DEFINER SET search_path = s2t, pg_catalog, pg_temp
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
LANGUAGE sql VOLATILE SECURITY DEFINER SET search_path = s2t, pg_catalog, pg_temp
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
    revoked_at   timestamptz,
    expires_at   timestamptz
);
CREATE INDEX api_keys_user_idx ON api_keys (user_id);
COMMENT ON TABLE api_keys IS 'Per-user API keys for tools, sent as bearer tokens; only their SHA-256 is kept (the key is shown once) with a short prefix to recognise it.';
ALTER TABLE api_keys ENABLE ROW LEVEL SECURITY;
CREATE POLICY own_api_keys ON api_keys TO s2t_app
    USING (user_id = current_user_id()) WITH CHECK (user_id = current_user_id());
-- Keys are created only through s2t.create_api_key, which holds the limit.
GRANT SELECT (id, user_id, name, prefix, created_at, last_used_at, revoked_at, expires_at),
      UPDATE (revoked_at) ON api_keys TO s2t_app;

CREATE FUNCTION api_key_user(in_key_hash bytea) RETURNS uuid
LANGUAGE sql VOLATILE SECURITY DEFINER SET search_path = s2t, pg_catalog, pg_temp
AS $$
    WITH k AS (
        SELECT k.id, k.user_id, k.last_used_at
          FROM api_keys k JOIN users u ON u.id = k.user_id
         WHERE k.key_hash = in_key_hash AND k.revoked_at IS NULL AND u.status = 'active'
           AND (k.expires_at IS NULL OR k.expires_at > now())),
    touched AS (
        -- At most one write a minute per key, not one per request.
        UPDATE api_keys SET last_used_at = now()
         WHERE id IN (SELECT id FROM k WHERE last_used_at IS NULL OR last_used_at < now() - interval '1 minute')
        RETURNING 1)
    SELECT user_id FROM k
$$;
COMMENT ON FUNCTION api_key_user(bytea) IS 'The active user an API key (by SHA-256) belongs to, or NULL when unknown, revoked, expired or the user is disabled; notes when it was last used.';

REVOKE EXECUTE ON FUNCTION auth_lookup(text), issue_refresh_token(uuid, bytea, interval, uuid),
    rotate_refresh_token(bytea, bytea, interval, interval), revoke_refresh_token(bytea),
    purge_refresh_tokens(interval), api_key_user(bytea) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION auth_lookup(text), issue_refresh_token(uuid, bytea, interval, uuid),
    rotate_refresh_token(bytea, bytea, interval, interval), revoke_refresh_token(bytea),
    api_key_user(bytea) TO s2t_app;

GRANT EXECUTE ON FUNCTION purge_refresh_tokens(interval) TO s2t_worker;

-- The gateway's /metrics reports queue depth (counts only, no user data).
GRANT EXECUTE ON FUNCTION queue_stats() TO s2t_app;
