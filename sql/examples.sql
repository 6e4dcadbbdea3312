-- pg_s2t by example. Run as the owner: psql "$DATABASE_URL" -f sql/examples.sql
-- Everything happens in one transaction that is rolled back at the end.
\set ON_ERROR_STOP on
BEGIN;

-- A user on the free plan.
SELECT s2t.register_user('demo@example.com', 'demo_user', '$argon2id$demo', 'Demo') AS user_id \gset

-- An upload: the quota is checked and a transcription job is queued.
SELECT s2t.check_quota_and_create_recording(:'user_id', 'upload', 'en') AS recording_id \gset
SELECT state, attempts FROM s2t.jobs WHERE recording_id = :'recording_id';

-- A worker's side of the queue.
SELECT job_id, lease_token FROM s2t.claim_job('example-worker', interval '2 minutes') \gset
SELECT s2t.heartbeat_job(:job_id, :'lease_token', interval '2 minutes', 0.5);
SELECT s2t.complete_job(:job_id, 3200,
  '[{"idx": 0, "start_ms": 0, "end_ms": 1500, "text": "Hello"},
    {"idx": 1, "start_ms": 1500, "end_ms": 3200, "text": "world"}]');

-- What the user sees.
SELECT idx, start_ms, end_ms, text FROM s2t.segments WHERE recording_id = :'recording_id' ORDER BY idx;
SELECT total_recordings, current_cycle_usage, current_cycle_seconds, quota_usage_percent, cycle_end
  FROM s2t.sp_get_user_stats(:'user_id');

-- The same, as the application role under row-level security.
SET LOCAL ROLE s2t_app;
SELECT set_config('s2t.user_id', :'user_id', true);
SELECT id, status, billed_seconds FROM s2t.recordings;
RESET ROLE;

-- Accent-insensitive text, as the search column stores it.
SELECT s2t.fold_text('Xin chào các bạn, hôm nay chúng ta họp về kế hoạch');

ROLLBACK;
