-- The specification's original quota path (shared/seed/system-spec.md), as
-- written there, loaded into a scratch schema as the benchmark's baseline.
-- Only the objects that sp_check_quota_and_create_recording touches.
DROP SCHEMA IF EXISTS seed_baseline CASCADE;
CREATE SCHEMA seed_baseline;
SET search_path = seed_baseline, public;

CREATE TABLE users (
  id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
  email TEXT UNIQUE NOT NULL,
  password_hash TEXT NOT NULL,
  user_name TEXT UNIQUE NOT NULL,
  verified BOOLEAN NOT NULL DEFAULT FALSE,
  role TEXT NOT NULL DEFAULT 'user',
  status TEXT NOT NULL DEFAULT 'active',
  created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE plans (
  id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
  code TEXT UNIQUE NOT NULL,
  name TEXT NOT NULL,
  description TEXT,
  plan_type TEXT NOT NULL DEFAULT 'free',
  plan_cost INT NOT NULL DEFAULT 0,
  plan_discount INT NOT NULL DEFAULT 0,
  monthly_minutes INT NOT NULL,
  monthly_usage_limit INT NOT NULL,
  created_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE user_subscriptions (
  id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
  user_id UUID NOT NULL UNIQUE REFERENCES users(id) ON DELETE CASCADE,
  plan_id UUID NOT NULL REFERENCES plans(id),
  cycle_start TIMESTAMPTZ NOT NULL DEFAULT date_trunc('month', now()),
  cycle_end   TIMESTAMPTZ NOT NULL DEFAULT (date_trunc('month', now()) + INTERVAL '1 month'),
  usage_count INT NOT NULL DEFAULT 0,
  used_seconds INT NOT NULL DEFAULT 0,
  CONSTRAINT unique_user_subscription UNIQUE (user_id)
);

CREATE TABLE recordings (
  id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
  user_id UUID NOT NULL REFERENCES users(id) ON DELETE CASCADE,
  source TEXT NOT NULL,
  language TEXT DEFAULT 'vi',
  status TEXT NOT NULL DEFAULT 'processing',
  duration_ms INT DEFAULT 0,
  created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
  completed_at TIMESTAMPTZ,
  meta JSONB DEFAULT '{}'::jsonb
);

CREATE OR REPLACE FUNCTION trg_increment_usage_on_recording()
RETURNS TRIGGER AS $$
BEGIN
  UPDATE user_subscriptions
  SET usage_count = usage_count + 1
  WHERE user_id = NEW.user_id
    AND now() >= cycle_start
    AND now() < cycle_end;
  RETURN NEW;
END;
$$ LANGUAGE plpgsql;

CREATE TRIGGER increment_usage_on_recording
AFTER INSERT ON recordings
FOR EACH ROW
EXECUTE FUNCTION trg_increment_usage_on_recording();

CREATE OR REPLACE FUNCTION sp_check_quota_and_create_recording(
  in_user_id UUID,
  in_source TEXT,
  in_language TEXT DEFAULT 'vi',
  in_meta JSONB DEFAULT '{}'::jsonb
)
RETURNS TABLE(recording_id UUID, quota_ok BOOLEAN, error_message TEXT)
LANGUAGE plpgsql
AS $$
DECLARE
  v_subscription user_subscriptions%ROWTYPE;
  v_plan plans%ROWTYPE;
  v_recording_id UUID;
BEGIN
  SELECT * INTO v_subscription
  FROM user_subscriptions
  WHERE user_id = in_user_id
    AND now() >= cycle_start
    AND now() < cycle_end;

  IF NOT FOUND THEN
    RETURN QUERY SELECT NULL::UUID, FALSE, 'No active subscription found';
    RETURN;
  END IF;

  SELECT * INTO v_plan FROM plans WHERE id = v_subscription.plan_id;

  IF v_subscription.usage_count >= v_plan.monthly_usage_limit THEN
    RETURN QUERY SELECT NULL::UUID, FALSE,
      format('Monthly usage limit reached (%s recordings)', v_plan.monthly_usage_limit);
    RETURN;
  END IF;

  IF v_subscription.used_seconds >= (v_plan.monthly_minutes * 60) THEN
    RETURN QUERY SELECT NULL::UUID, FALSE,
      format('Monthly minutes limit reached (%s minutes)', v_plan.monthly_minutes);
    RETURN;
  END IF;

  INSERT INTO recordings (user_id, source, language, meta)
  VALUES (in_user_id, in_source, in_language, in_meta)
  RETURNING id INTO v_recording_id;

  RETURN QUERY SELECT v_recording_id, TRUE, ''::TEXT;
END;
$$;
