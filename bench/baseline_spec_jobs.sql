-- The specification's quota path (baseline_spec.sql, loaded first) with a
-- job queue added, so that an upload does what ours does: the admission also
-- inserts a job. The specification itself has no queue; this is the
-- smallest one that could serve a worker (one table, one index, an insert
-- trigger). Setting bench.notify = on makes the trigger NOTIFY on every
-- insert as pg_s2t 0.3.0 did, to measure what that costs on its own.
SET search_path = seed_baseline, public;

CREATE TABLE jobs (
  id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
  recording_id uuid NOT NULL UNIQUE REFERENCES recordings (id) ON DELETE CASCADE,
  state text NOT NULL DEFAULT 'queued',
  visible_at timestamptz NOT NULL DEFAULT now(),
  created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX jobs_claimable_idx ON jobs (visible_at, id) WHERE state IN ('queued', 'running');

CREATE FUNCTION trg_enqueue_upload() RETURNS trigger
LANGUAGE plpgsql
AS $$
BEGIN
  INSERT INTO jobs (recording_id) VALUES (NEW.id);
  IF current_setting('bench.notify', true) = 'on' THEN
    PERFORM pg_notify('s2t_jobs', NEW.id::text);
  END IF;
  RETURN NULL;
END;
$$;

CREATE TRIGGER enqueue_upload
AFTER INSERT ON recordings
FOR EACH ROW WHEN (NEW.source = 'upload')
EXECUTE FUNCTION trg_enqueue_upload();
