-- pg_s2t data model: the seven tables of the specification, plus the job
-- queue, stored audio and refresh tokens. Runs inside CREATE EXTENSION with
-- search_path = s2t.

-- Group roles. Roles are cluster-wide and outlive the extension, so create
-- them only when missing.
DO $roles$
BEGIN
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 's2t_app') THEN
        CREATE ROLE s2t_app NOLOGIN;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 's2t_worker') THEN
        CREATE ROLE s2t_worker NOLOGIN;
    END IF;
    IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 's2t_definer') THEN
        CREATE ROLE s2t_definer NOLOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOINHERIT NOREPLICATION NOBYPASSRLS;
    END IF;
END
$roles$;
COMMENT ON ROLE s2t_app IS 'pg_s2t: the application (gateway) role; sees only the rows of the user named by s2t.user_id';
COMMENT ON ROLE s2t_definer IS 'pg_s2t: owns the tables and the definer-rights functions, so they run with no more than the data model''s rights; no one logs in as it';
COMMENT ON ROLE s2t_worker IS 'pg_s2t: transcription workers; may claim and complete jobs and run maintenance';

-- Column rules on the hot tables are domains, not table CHECKs. PostgreSQL
-- reparses and plans a table's CHECK expressions in every statement that
-- writes a row, while a domain's rule is parsed once per session (type
-- cache). Admission writes user_subscriptions and recordings, and an upload
-- also jobs. With these rules as domains, CPU-bound realtime admissions ran
-- 10 % faster than with the same rules as CHECKs (README, make bench). Rules
-- over two columns stay CHECKs.
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

CREATE TABLE users (
    id            uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    email         text UNIQUE NOT NULL,
    password_hash text NOT NULL,
    user_name     text UNIQUE NOT NULL,
    verified      boolean NOT NULL DEFAULT false,
    role          text NOT NULL DEFAULT 'user' CHECK (role IN ('user', 'admin')),
    status        text NOT NULL DEFAULT 'active' CHECK (status IN ('active', 'disabled')),
    created_at    timestamptz NOT NULL DEFAULT now()
);
-- User names are unique regardless of case, so "Alice" cannot impersonate "alice".
CREATE UNIQUE INDEX users_user_name_lower_key ON users (lower(user_name));
COMMENT ON TABLE users IS 'Accounts. email is stored lower-case; password_hash is produced by the client (argon2id).';

CREATE TABLE user_profiles (
    user_id    uuid PRIMARY KEY REFERENCES users (id) ON DELETE CASCADE,
    name       text,
    avatar_url text
);
COMMENT ON TABLE user_profiles IS 'One profile per user (display name, avatar); deleted with the user.';

CREATE TABLE plans (
    id                  uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    code                text UNIQUE NOT NULL,
    name                text NOT NULL,
    description         text,
    plan_type           text NOT NULL DEFAULT 'free',
    plan_cost           int NOT NULL DEFAULT 0 CHECK (plan_cost >= 0),
    plan_discount       int NOT NULL DEFAULT 0 CHECK (plan_discount BETWEEN 0 AND 100),
    monthly_minutes     int NOT NULL CHECK (monthly_minutes >= 0),
    monthly_usage_limit int NOT NULL CHECK (monthly_usage_limit >= 0),
    created_at          timestamptz NOT NULL DEFAULT now(),
    monthly_questions   int NOT NULL DEFAULT 100 CHECK (monthly_questions >= 0)
);
COMMENT ON TABLE plans IS 'Service plans: monthly minutes, monthly number of transcriptions and monthly number of questions (s2t.ask).';

INSERT INTO plans (code, name, description, plan_type, plan_cost, monthly_minutes, monthly_usage_limit, monthly_questions) VALUES
    ('FREE',       'Free',       '60 minutes and 30 transcriptions a month',        'free',       0,    60,    30,   100),
    ('BASIC',      'Basic',      '600 minutes and 300 transcriptions a month',      'paid',       5,   600,   300,  1000),
    ('PREMIUM',    'Premium',    '3000 minutes and 1500 transcriptions a month',    'paid',      20,  3000,  1500, 5000),
    ('ENTERPRISE', 'Enterprise', '30000 minutes and 20000 transcriptions a month',  'enterprise', 200, 30000, 20000, 50000);

CREATE TABLE user_subscriptions (
    id           uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id      uuid NOT NULL UNIQUE REFERENCES users (id) ON DELETE CASCADE,
    plan_id      uuid NOT NULL REFERENCES plans (id),
    cycle_start  timestamptz NOT NULL DEFAULT date_trunc('month', now(), 'UTC'),
    cycle_end    timestamptz NOT NULL DEFAULT date_add(date_trunc('month', now(), 'UTC'), interval '1 month', 'UTC'),
    usage_count  nonnegative_int NOT NULL DEFAULT 0,
    used_seconds nonnegative_int NOT NULL DEFAULT 0,
    reserved_seconds nonnegative_int NOT NULL DEFAULT 0,
    CONSTRAINT unique_user_subscription UNIQUE (user_id),
    CONSTRAINT cycle_is_forward CHECK (cycle_end > cycle_start)
) WITH (fillfactor = 20);
-- Every admission locks and updates one of these rows. Packed 80 to a page,
-- concurrent admissions of different users queue on the same page's lock;
-- a low fillfactor spreads them out and leaves room for HOT updates
-- (measured with make bench: about 1.6x at 32 clients).
COMMENT ON COLUMN user_subscriptions.reserved_seconds IS 'Sum of reserved_seconds over this user''s recordings in flight: admission counts it as spent, so work in flight cannot exceed the minutes.';
COMMENT ON TABLE user_subscriptions IS 'One subscription per user. Cycles are calendar months in UTC, rolled forward lazily by the quota check and in bulk by reset_monthly_cycles().';

CREATE TABLE recordings (
    id             uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id        uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    source         recording_source NOT NULL,
    language       text DEFAULT 'vi',
    status         recording_status NOT NULL DEFAULT 'processing',
    duration_ms    nonnegative_int DEFAULT 0,
    created_at     timestamptz NOT NULL DEFAULT now(),
    completed_at   timestamptz,
    meta           jsonb DEFAULT '{}'::jsonb,
    failure_reason text,
    audio_uri      text,
    billed_seconds nonnegative_int NOT NULL DEFAULT 0,
    reserved_seconds nonnegative_int NOT NULL DEFAULT 0,
    expected_ms    nonnegative_int,
    CONSTRAINT failure_has_reason CHECK (status <> 'failed' OR failure_reason IS NOT NULL)
);
COMMENT ON TABLE recordings IS 'A transcription of one upload or one realtime session. status: processing -> done | failed.';
COMMENT ON COLUMN recordings.failure_reason IS 'Why the recording failed, in words a user can read; set when status = failed.';
COMMENT ON COLUMN recordings.audio_uri IS 'Where the audio lives: "db:" means the bytes are in s2t.recording_audio_chunks (so a worker needs only a database connection); file:// and other schemes name external storage.';
COMMENT ON COLUMN recordings.expected_ms IS 'Length of the audio as its container header declares it, read at admission; NULL when unknown. The reservation and the cap on what a worker transcribes follow from it.';
COMMENT ON COLUMN recordings.reserved_seconds IS 'Seconds of the monthly minutes this recording holds while it is processing (its expected length, or what claim_job granted); released when it is done, failed or deleted.';
COMMENT ON COLUMN recordings.billed_seconds IS 'Seconds charged to the subscription by complete_recording (duration rounded up); 0 until done.';
COMMENT ON COLUMN recordings.meta IS 'Free-form client metadata; the worker keeps progress (0..1) in meta.progress.';
-- Listing is per user, newest first, with a cursor on (created_at, id); a
-- status filter reads the same index. Every index here is paid for on the
-- admission path, so there are few.
CREATE INDEX recordings_user_created_idx ON recordings (user_id, created_at DESC, id DESC);
CREATE INDEX recordings_created_idx ON recordings (created_at) WHERE status IN ('done', 'failed');

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

CREATE TABLE segments (
    id           uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    recording_id uuid NOT NULL REFERENCES recordings (id) ON DELETE CASCADE,
    idx          int NOT NULL CHECK (idx >= 0),
    start_ms     int NOT NULL CHECK (start_ms >= 0),
    end_ms       int NOT NULL,
    text         text NOT NULL,
    words        jsonb,
    CONSTRAINT segment_times_ordered CHECK (end_ms >= start_ms),
    CONSTRAINT unique_recording_segment UNIQUE (recording_id, idx)
);
COMMENT ON TABLE segments IS 'Timed transcript segments of a recording; words holds word timestamps when the engine gives them.';

CREATE TABLE transcript_chunks (
    id              uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    recording_id    uuid NOT NULL REFERENCES recordings (id) ON DELETE CASCADE,
    user_id         uuid NOT NULL,
    chunk_index     int NOT NULL CHECK (chunk_index >= 0),
    start_ms        int NOT NULL CHECK (start_ms >= 0),
    end_ms          int NOT NULL,
    text            text NOT NULL,
    token_count     int NOT NULL DEFAULT 0,
    embedding       @extschema:vector@.vector(384),
    embedding_model text,
    tsv             tsvector GENERATED ALWAYS AS (to_tsvector('simple'::regconfig, s2t.fold_text(text))) STORED,
    first_segment_idx int NOT NULL,
    last_segment_idx  int NOT NULL,
    content_hash    text NOT NULL,
    embed_lease_until timestamptz,
    embed_attempts  int NOT NULL DEFAULT 0,
    CONSTRAINT unique_recording_chunk UNIQUE (recording_id, chunk_index),
    CONSTRAINT chunk_times_ordered CHECK (end_ms >= start_ms),
    CONSTRAINT embedding_has_model CHECK (embedding IS NULL OR embedding_model IS NOT NULL),
    CONSTRAINT chunk_segments_ordered CHECK (last_segment_idx >= first_segment_idx)
);
COMMENT ON TABLE transcript_chunks IS 'Search units cut from a transcript, with a dense embedding and an accent-folded full-text vector.';
COMMENT ON COLUMN transcript_chunks.user_id IS 'Owner, copied from the recording by a trigger (never trusted from the writer), so search and row-level security need no join.';
COMMENT ON COLUMN transcript_chunks.first_segment_idx IS 'The idx of the first segment the chunk draws on (with last_segment_idx, the segments to play).';
COMMENT ON COLUMN transcript_chunks.content_hash IS 'Lower-case hex SHA-256 of text: re-chunking keeps the id and vector of a chunk whose hash is unchanged.';
COMMENT ON COLUMN transcript_chunks.embed_lease_until IS 'Until when a worker holds the chunk to embed it (NULL: not claimed).';
COMMENT ON COLUMN transcript_chunks.embedding_model IS 'Which model produced embedding, so vectors of different models are never compared.';
CREATE INDEX transcript_chunks_embedding_idx ON transcript_chunks
    USING hnsw (embedding @extschema:vector@.vector_cosine_ops);
CREATE INDEX transcript_chunks_tsv_idx ON transcript_chunks USING gin (tsv);
CREATE INDEX transcript_chunks_user_idx ON transcript_chunks (user_id);

CREATE FUNCTION trg_chunk_owner() RETURNS trigger
LANGUAGE plpgsql
AS $$
BEGIN
    SELECT r.user_id INTO NEW.user_id FROM s2t.recordings r WHERE r.id = NEW.recording_id;
    RETURN NEW;
END
$$;
COMMENT ON FUNCTION trg_chunk_owner() IS 'Trigger: sets transcript_chunks.user_id to the owner of the recording.';
CREATE TRIGGER chunk_owner
    BEFORE INSERT OR UPDATE OF recording_id, user_id ON transcript_chunks
    FOR EACH ROW EXECUTE FUNCTION trg_chunk_owner();

CREATE TABLE jobs (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    recording_id uuid NOT NULL UNIQUE REFERENCES recordings (id) ON DELETE CASCADE,
    state        job_state NOT NULL DEFAULT 'queued',
    attempts     nonnegative_int NOT NULL DEFAULT 0,
    max_attempts positive_int NOT NULL DEFAULT 5,
    visible_at   timestamptz NOT NULL DEFAULT now(),
    lease_token  uuid,
    locked_by    text,
    last_error   text,
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    -- A copy of the recording's user (which never changes), so the fair
    -- order needs no join; no foreign key, which would cost every upload a
    -- lookup and a row lock on users (the recording already cascades).
    user_id      uuid NOT NULL,
    turn         bigint NOT NULL DEFAULT 0
);
COMMENT ON TABLE jobs IS 'Batch transcription queue. A queued or running job is claimable once visible_at has passed: for a running job visible_at is the end of its lease. Waiting jobs are claimed in order of turn, which takes users in rounds.';
COMMENT ON COLUMN jobs.turn IS 'Place in the fair order, set at enqueue: the turn of the job next in line for a user''s first waiting job, one more than the user''s last waiting job after that.';
-- The claim order, and the head of the line that uploads read.
CREATE INDEX jobs_queued_turn_idx ON jobs (turn, id) WHERE state = 'queued';
-- A user's last waiting job, read by every upload.
CREATE INDEX jobs_user_queued_idx ON jobs (user_id, turn) WHERE state = 'queued';
-- Expired leases. Uploads never write to it: a new job is queued.
CREATE INDEX jobs_running_idx ON jobs (visible_at, id) WHERE state = 'running';

CREATE TABLE refresh_tokens (
    id          uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id     uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    family_id   uuid NOT NULL,
    token_hash  bytea NOT NULL UNIQUE,
    created_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz NOT NULL,
    revoked_at  timestamptz,
    replaced_by uuid REFERENCES refresh_tokens (id) ON DELETE SET NULL,
    CONSTRAINT token_expires_after_creation CHECK (expires_at > created_at)
);
COMMENT ON TABLE refresh_tokens IS 'Opaque refresh tokens, stored as hashes. Tokens of one login share family_id; re-using a rotated token revokes the family.';
CREATE INDEX refresh_tokens_user_idx ON refresh_tokens (user_id);
CREATE INDEX refresh_tokens_family_idx ON refresh_tokens (family_id);
