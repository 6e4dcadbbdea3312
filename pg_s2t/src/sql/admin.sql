-- Administration and billing, added in 0.3.0.
--
-- Admins are users with role = 'admin'. The application acts for them the
-- way it acts for anyone (s2t.user_id names the admin), and these functions
-- check that role in the database, so a gateway bug cannot turn a user into
-- an admin. Billing changes plans through signed events that the database
-- verifies itself: the application role passes them on, but cannot make
-- one up, because only the database knows the secret.

CREATE TABLE settings (
    id                        boolean PRIMARY KEY DEFAULT true CHECK (id),
    self_service_plan_changes boolean NOT NULL DEFAULT false,
    billing_webhook_secret    text CHECK (billing_webhook_secret IS NULL OR length(billing_webhook_secret) >= 32),
    billing_tolerance_secs    int NOT NULL DEFAULT 300 CHECK (billing_tolerance_secs BETWEEN 1 AND 86400)
);
INSERT INTO settings DEFAULT VALUES;
COMMENT ON TABLE settings IS 'Deployment settings (one row), changed by the database owner with UPDATE. self_service_plan_changes: users may pick any plan themselves (the specification''s behaviour, for deployments without billing). billing_webhook_secret: the shared secret that signs billing events (at least 32 characters; NULL turns billing off).';
-- Kept by pg_dump, though the extension created it.
SELECT pg_catalog.pg_extension_config_dump('settings', '');

CREATE TABLE billing_events (
    event_id    text PRIMARY KEY CHECK (length(event_id) BETWEEN 1 AND 200),
    user_id     uuid NOT NULL,
    plan_code   text NOT NULL,
    received_at timestamptz NOT NULL DEFAULT now()
);
COMMENT ON TABLE billing_events IS 'Billing events already applied, by their id, so a redelivered event changes nothing.';

CREATE FUNCTION _assert_admin() RETURNS void
LANGUAGE plpgsql STABLE SET search_path = s2t, pg_catalog, pg_temp
AS $$
BEGIN
    IF NOT _caller_is_app() AND current_user_id() IS NULL THEN
        RETURN;
    END IF;
    IF NOT EXISTS (SELECT FROM users u WHERE u.id = current_user_id() AND u.role = 'admin' AND u.status = 'active') THEN
        RAISE EXCEPTION USING ERRCODE = '42501', MESSAGE = 'this needs an administrator',
            HINT = 'Sign in as a user whose role is admin.';
    END IF;
END
$$;
COMMENT ON FUNCTION _assert_admin() IS 'Internal: raises 42501 unless the transaction acts for an active admin (or the caller is a trusted role acting for nobody).';

CREATE FUNCTION admin_list_users(in_search text DEFAULT NULL, in_limit int DEFAULT 50, in_offset int DEFAULT 0)
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
COMMENT ON FUNCTION admin_list_users(text, int, int) IS 'Admins: users (optionally those whose e-mail or user name contains in_search) with plan and usage, oldest first. Errors: 42501 not an admin.';

CREATE FUNCTION admin_set_user_status(in_user_id uuid, in_status text) RETURNS boolean
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = s2t, pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM _assert_admin();
    IF in_status IS NULL OR in_status NOT IN ('active', 'disabled') THEN
        RAISE EXCEPTION USING ERRCODE = 'S2V01', MESSAGE = format('status must be active or disabled, got %L', in_status),
            DETAIL = 'field: status';
    END IF;
    IF in_user_id = current_user_id() AND in_status = 'disabled' THEN
        RAISE EXCEPTION USING ERRCODE = 'S2S01', MESSAGE = 'an admin cannot disable their own account',
            HINT = 'Ask another admin.';
    END IF;
    UPDATE users SET status = in_status WHERE id = in_user_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION USING ERRCODE = 'S2N01', MESSAGE = format('user %s not found', in_user_id);
    END IF;
    IF in_status = 'disabled' THEN
        -- Sessions end now, not when their refresh tokens expire.
        UPDATE refresh_tokens SET revoked_at = now() WHERE user_id = in_user_id AND revoked_at IS NULL;
    END IF;
    RETURN true;
END
$$;
COMMENT ON FUNCTION admin_set_user_status(uuid, text) IS 'Admins: enables or disables an account; disabling revokes its sessions. Errors: 42501 not an admin, S2N01 unknown user, S2S01 disabling oneself, S2V01 bad status.';

CREATE FUNCTION admin_change_plan(in_user_id uuid, in_plan_code text, in_reset_usage boolean DEFAULT false)
RETURNS TABLE (success boolean, message text)
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = s2t, pg_catalog, pg_temp
AS $$
DECLARE
    v_plan uuid;
BEGIN
    PERFORM _assert_admin();
    SELECT id INTO v_plan FROM plans WHERE code = in_plan_code;
    IF v_plan IS NULL THEN
        RAISE EXCEPTION USING ERRCODE = 'S2N01', MESSAGE = format('plan %s not found', in_plan_code);
    END IF;
    IF NOT EXISTS (SELECT FROM users WHERE id = in_user_id) THEN
        RAISE EXCEPTION USING ERRCODE = 'S2N01', MESSAGE = format('user %s not found', in_user_id);
    END IF;
    RETURN QUERY SELECT * FROM _set_plan(in_user_id, v_plan, coalesce(in_reset_usage, false));
END
$$;
COMMENT ON FUNCTION admin_change_plan(uuid, text, boolean) IS 'Admins: moves any user to any plan, optionally restarting the cycle''s usage. Errors: 42501 not an admin, S2N01 unknown user or plan.';

CREATE FUNCTION admin_reset_usage(in_user_id uuid) RETURNS boolean
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = s2t, pg_catalog, pg_temp
AS $$
BEGIN
    PERFORM _assert_admin();
    -- Reservations of recordings in flight stay: they are settled when
    -- those recordings finish.
    UPDATE user_subscriptions SET usage_count = 0, used_seconds = 0 WHERE user_id = in_user_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION USING ERRCODE = 'S2N01', MESSAGE = format('user %s not found', in_user_id);
    END IF;
    RETURN true;
END
$$;
COMMENT ON FUNCTION admin_reset_usage(uuid) IS 'Admins: restarts a user''s usage for the current cycle at zero. Errors: 42501 not an admin, S2N01 unknown user.';

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

CREATE FUNCTION apply_billing_event(in_payload text, in_signature text) RETURNS text
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = s2t, pg_catalog, pg_temp
AS $$
DECLARE
    v_settings settings%ROWTYPE;
    v_problem text;
    v_event jsonb;
    v_user uuid;
    v_plan uuid;
BEGIN
    SELECT * INTO v_settings FROM settings;
    IF v_settings.billing_webhook_secret IS NULL THEN
        RAISE EXCEPTION USING ERRCODE = 'S2S01', MESSAGE = 'billing is not configured',
            HINT = 'Set s2t.settings.billing_webhook_secret to the secret your billing provider signs with.';
    END IF;
    v_problem := billing_signature_problem(v_settings.billing_webhook_secret, in_payload, in_signature,
                                           extract(epoch FROM now())::bigint, v_settings.billing_tolerance_secs);
    IF v_problem IS NOT NULL THEN
        RAISE EXCEPTION USING ERRCODE = '42501', MESSAGE = 'billing event signature rejected: ' || v_problem;
    END IF;
    BEGIN
        v_event := in_payload::jsonb;
        v_user := (v_event ->> 'user_id')::uuid;
    EXCEPTION WHEN invalid_text_representation THEN
        RAISE EXCEPTION USING ERRCODE = 'S2V01', MESSAGE = 'billing event must be JSON with event_id, user_id and plan_code';
    END;
    IF jsonb_typeof(v_event) <> 'object' OR v_user IS NULL OR v_event ->> 'event_id' IS NULL
       OR v_event ->> 'plan_code' IS NULL THEN
        RAISE EXCEPTION USING ERRCODE = 'S2V01', MESSAGE = 'billing event must be JSON with event_id, user_id and plan_code';
    END IF;
    SELECT id INTO v_plan FROM plans WHERE code = v_event ->> 'plan_code';
    IF v_plan IS NULL THEN
        RAISE EXCEPTION USING ERRCODE = 'S2N01', MESSAGE = format('plan %s not found', v_event ->> 'plan_code');
    END IF;
    IF NOT EXISTS (SELECT FROM users WHERE id = v_user) THEN
        RAISE EXCEPTION USING ERRCODE = 'S2N01', MESSAGE = format('user %s not found', v_user);
    END IF;
    INSERT INTO billing_events (event_id, user_id, plan_code)
    VALUES (v_event ->> 'event_id', v_user, v_event ->> 'plan_code')
    ON CONFLICT (event_id) DO NOTHING;
    IF NOT FOUND THEN
        RETURN 'duplicate';
    END IF;
    PERFORM _set_plan(v_user, v_plan, false);
    RETURN 'applied';
END
$$;
COMMENT ON FUNCTION apply_billing_event(text, text) IS 'Billing: applies a signed event {"event_id", "user_id", "plan_code"} (signature "t=<unix seconds>,v1=<hex HMAC-SHA256 of t.payload>" with s2t.settings.billing_webhook_secret). Returns applied, or duplicate for an event id seen before. Errors: 42501 bad or stale signature, S2S01 billing not configured, S2V01 malformed event, S2N01 unknown user or plan.';

CREATE FUNCTION create_api_key(
    in_user_id uuid, in_name text, in_prefix text, in_key_hash bytea, in_expires_at timestamptz DEFAULT NULL
) RETURNS TABLE (id uuid, created_at timestamptz)
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = s2t, pg_catalog, pg_temp
AS $$
DECLARE
    v_active int;
BEGIN
    PERFORM _assert_may_act_for(in_user_id);
    IF in_expires_at IS NOT NULL AND in_expires_at <= now() THEN
        RAISE EXCEPTION USING ERRCODE = 'S2V01', MESSAGE = 'an API key must expire in the future', DETAIL = 'field: expires_at';
    END IF;
    -- The user's row lock serialises concurrent creations, so the limit
    -- holds however many requests race.
    PERFORM FROM users u WHERE u.id = in_user_id FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION USING ERRCODE = 'S2N01', MESSAGE = format('user %s not found', in_user_id);
    END IF;
    SELECT count(*) INTO v_active FROM api_keys k
     WHERE k.user_id = in_user_id AND k.revoked_at IS NULL AND (k.expires_at IS NULL OR k.expires_at > now());
    IF v_active >= 20 THEN
        RAISE EXCEPTION USING ERRCODE = 'S2S01', MESSAGE = 'at most 20 API keys can be active at once',
            HINT = 'Revoke a key you no longer use.';
    END IF;
    RETURN QUERY
    INSERT INTO api_keys AS k (user_id, name, prefix, key_hash, expires_at)
    VALUES (in_user_id, in_name, in_prefix, in_key_hash, in_expires_at)
    RETURNING k.id, k.created_at;
END
$$;
COMMENT ON FUNCTION create_api_key(uuid, text, text, bytea, timestamptz) IS 'Stores a new API key (its SHA-256) for the user, at most 20 active at once even under concurrent calls; returns its id. Errors: S2S01 limit reached, S2V01 expiry in the past.';

-- The settings hold the billing secret: no grant on them at all. The
-- application may call these; each checks who it acts for.
GRANT EXECUTE ON FUNCTION
    admin_list_users(text, int, int), admin_set_user_status(uuid, text),
    admin_change_plan(uuid, text, boolean), admin_reset_usage(uuid),
    admin_upsert_plan(text, text, text, text, int, int, int, int, int),
    apply_billing_event(text, text),
    create_api_key(uuid, text, text, bytea, timestamptz)
TO s2t_app;
