//! The worker binary against the real database and real models: queued
//! recordings become segments; bad audio fails at once with a reason; a
//! worker killed mid-job loses nothing; SIGTERM finishes the job.

mod common;

use common::{speech_wav, temp_dir, wer};
use s2t_tests::{register, set_limits, store_audio, used_seconds, TestDb};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use uuid::Uuid;

/// Plain words that tiny.en hears reliably in espeak-ng's voice (names such
/// as "Postgres" come out differently from machine to machine).
const ENGLISH: &str = "Please check the weather report before you drive to the mountains \
     this weekend. The roads may be closed by snow.";

fn worker(db: &TestDb, extra: &[&str]) -> Command {
    let mut cmd = s2t_tests::worker_command(env!("CARGO_BIN_EXE_s2t-worker").as_ref(), db);
    cmd.args(extra).stdout(Stdio::null()).stderr(Stdio::piped());
    cmd
}

fn run_once(db: &TestDb) {
    let out = worker(db, &["--once", "--lease-secs", "30"])
        .output()
        .expect("run worker");
    // Shown when a test fails: the worker's JSON log of each job.
    eprintln!("{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        out.status.success(),
        "worker failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Queue an upload with its audio, as the gateway will.
async fn queue(
    db: &TestDb,
    user: Uuid,
    language: &str,
    content_type: &str,
    bytes: Vec<u8>,
) -> Uuid {
    db.admin.batch_execute("BEGIN").await.unwrap();
    let rec: Uuid = db
        .admin
        .query_one(
            "SELECT s2t.check_quota_and_create_recording($1, 'upload', $2, '{}', 'db:')",
            &[&user, &language],
        )
        .await
        .unwrap()
        .get(0);
    store_audio(&db.admin, rec, user, &bytes, content_type).await;
    db.admin.batch_execute("COMMIT").await.unwrap();
    rec
}

struct Result {
    status: String,
    reason: Option<String>,
    language: Option<String>,
    duration_ms: i32,
    billed: i32,
    attempts: i32,
    progress: Option<String>,
}

async fn result(db: &TestDb, rec: Uuid) -> Result {
    let r = db
        .admin
        .query_one(
            "SELECT r.status, r.failure_reason, r.language, r.duration_ms, r.billed_seconds, j.attempts,
                    r.meta->>'progress'
               FROM s2t.recordings r JOIN s2t.jobs j ON j.recording_id = r.id WHERE r.id = $1",
            &[&rec],
        )
        .await
        .unwrap();
    Result {
        status: r.get(0),
        reason: r.get(1),
        language: r.get(2),
        duration_ms: r.get(3),
        billed: r.get(4),
        attempts: r.get(5),
        progress: r.get(6),
    }
}

async fn segments(db: &TestDb, rec: Uuid) -> Vec<(i32, i32, i32, String)> {
    db.admin
        .query(
            "SELECT idx, start_ms, end_ms, text FROM s2t.segments WHERE recording_id = $1 ORDER BY idx",
            &[&rec],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect()
}

fn wav_duration_ms(path: &std::path::Path) -> i32 {
    let reader = hound::WavReader::open(path).unwrap();
    (reader.duration() as u64 * 1000).div_ceil(u64::from(reader.spec().sample_rate)) as i32
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_recordings_become_segments_and_bad_audio_fails_at_once() {
    let _turn = common::one_decoder_at_a_time_async().await;
    let db = TestDb::new().await;
    let user = register(&db.admin, "wendy").await;
    let dir = temp_dir("worker-e2e");
    let en_wav = speech_wav(ENGLISH, "en-us", 1.0, &dir, "en");
    let vi_text = "Xin chào các bạn. Hôm nay chúng ta sẽ họp về kế hoạch của dự án.";
    let vi_wav = speech_wav(vi_text, "vi", 0.5, &dir, "vi");
    let en = queue(
        &db,
        user,
        "en",
        "audio/wav",
        std::fs::read(&en_wav).unwrap(),
    )
    .await;
    let vi = queue(
        &db,
        user,
        "auto",
        "audio/wav",
        std::fs::read(&vi_wav).unwrap(),
    )
    .await;
    let corrupt = queue(
        &db,
        user,
        "en",
        "audio/wav",
        b"RIFF\x10\x00\x00\x00WAVEnot really".repeat(50),
    )
    .await;
    let started = Instant::now();
    run_once(&db);
    eprintln!(
        "worker --once took {:.1} s",
        started.elapsed().as_secs_f64()
    );

    let r = result(&db, en).await;
    assert_eq!(r.status, "done", "{:?}", r.reason);
    let expected_ms = wav_duration_ms(&en_wav);
    assert!(
        (r.duration_ms - expected_ms).abs() <= 1,
        "{} vs {expected_ms}",
        r.duration_ms
    );
    assert_eq!(r.billed, (r.duration_ms + 999) / 1000, "seconds rounded up");
    assert_eq!(r.progress.as_deref(), Some("1"));
    // Queued without a declared length, the worker reported the decoded one
    // (settle_job_length), which released what the file did not need.
    let settled: Option<i32> = db
        .admin
        .query_one(
            "SELECT expected_ms FROM s2t.recordings WHERE id = $1",
            &[&en],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(settled, Some(r.duration_ms));
    let reserved: i32 = db
        .admin
        .query_one(
            "SELECT s.reserved_seconds FROM s2t.user_subscriptions s JOIN s2t.recordings r ON r.user_id = s.user_id WHERE r.id = $1",
            &[&en],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(reserved, 0, "nothing stays reserved once the queue is done");
    let segs = segments(&db, en).await;
    let text = segs
        .iter()
        .map(|s| s.3.as_str())
        .collect::<Vec<_>>()
        .join(" ");
    assert!(wer(ENGLISH, &text) < 0.25, "{text:?}");
    let mut last_start = 0;
    for (i, (idx, start, end, _)) in segs.iter().enumerate() {
        assert_eq!(*idx, i as i32);
        assert!(*start >= last_start && start <= end && *end <= r.duration_ms);
        last_start = *start;
    }
    assert!(
        segs[0].1 >= 700,
        "speech starts after 1 s of silence, got {} ms",
        segs[0].1
    );

    let r = result(&db, vi).await;
    assert_eq!(r.status, "done", "{:?}", r.reason);
    assert_eq!(
        r.language.as_deref(),
        Some("vi"),
        "detected language stored"
    );
    let text = segments(&db, vi)
        .await
        .iter()
        .map(|s| s.3.clone())
        .collect::<Vec<_>>()
        .join(" ");
    assert!(text.to_lowercase().contains("xin chào"), "{text:?}");

    let r = result(&db, corrupt).await;
    assert_eq!(r.status, "failed");
    assert!(
        r.reason.as_deref().unwrap_or("").contains("not audio"),
        "{:?}",
        r.reason
    );
    assert_eq!(r.attempts, 1, "bad input is not retried");
    assert!(segments(&db, corrupt).await.is_empty());

    let used = used_seconds(&db, user).await;
    let billed: i32 = db
        .admin
        .query_one(
            "SELECT sum(billed_seconds)::int FROM s2t.recordings WHERE user_id = $1",
            &[&user],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(used, billed);
    std::fs::remove_dir_all(&dir).ok();
}

async fn wait_until_running(db: &TestDb, rec: Uuid, child: &mut Child) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let state: String = db
            .admin
            .query_one(
                "SELECT state FROM s2t.jobs WHERE recording_id = $1",
                &[&rec],
            )
            .await
            .unwrap()
            .get(0);
        if state == "running" {
            return;
        }
        assert!(child.try_wait().unwrap().is_none(), "worker exited early");
        assert!(
            Instant::now() < deadline,
            "the worker never claimed the job"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A finished job left its segments once (no duplicate idx) and charged
/// its seconds once.
async fn assert_stored_once(db: &TestDb, user: Uuid, rec: Uuid, billed: i32) {
    let segs = segments(db, rec).await;
    assert!(!segs.is_empty());
    let idx: std::collections::HashSet<i32> = segs.iter().map(|s| s.0).collect();
    assert_eq!(idx.len(), segs.len(), "no duplicate segments");
    let used = used_seconds(db, user).await;
    assert_eq!(used, billed, "charged once");
}

/// About 40 s of speech: long enough that a kill lands mid-transcription.
fn long_speech(dir: &std::path::Path) -> std::path::PathBuf {
    let text = [ENGLISH; 5].join(" ");
    speech_wav(&text, "en-us", 0.5, dir, "long")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_mid_job_loses_nothing_and_duplicates_nothing() {
    let _turn = common::one_decoder_at_a_time_async().await;
    let db = TestDb::new().await;
    let user = register(&db.admin, "kim").await;
    set_limits(&db.admin, user, 10, 600).await;
    let dir = temp_dir("worker-kill");
    let wav = long_speech(&dir);
    let rec = queue(&db, user, "en", "audio/wav", std::fs::read(&wav).unwrap()).await;

    let mut first = worker(&db, &["--lease-secs", "3"]).spawn().unwrap();
    wait_until_running(&db, rec, &mut first).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    first.kill().expect("SIGKILL");
    first.wait().unwrap();
    assert_eq!(
        result(&db, rec).await.status,
        "processing",
        "killed before finishing"
    );
    assert!(segments(&db, rec).await.is_empty());

    // Once the lease runs out, another worker takes the job over.
    tokio::time::sleep(Duration::from_millis(3200)).await;
    run_once(&db);
    let r = result(&db, rec).await;
    assert_eq!(r.status, "done", "{:?}", r.reason);
    assert_eq!(r.attempts, 2);
    assert_stored_once(&db, user, rec, r.billed).await;
    std::fs::remove_dir_all(&dir).ok();
}

/// A user with about 40 s of queued speech, and a worker (with these
/// extra arguments) that has started on it.
struct LongJob {
    db: TestDb,
    user: Uuid,
    rec: Uuid,
    dir: std::path::PathBuf,
    worker: std::process::Child,
}

async fn long_job_running(user_name: &str, tag: &str, extra: &[&str]) -> LongJob {
    let db = TestDb::new().await;
    let user = register(&db.admin, user_name).await;
    let dir = temp_dir(tag);
    let wav = long_speech(&dir);
    let rec = queue(&db, user, "en", "audio/wav", std::fs::read(&wav).unwrap()).await;
    let mut child = worker(&db, extra).spawn().unwrap();
    wait_until_running(&db, rec, &mut child).await;
    LongJob {
        db,
        user,
        rec,
        dir,
        worker: child,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_the_current_job_finish() {
    let _turn = common::one_decoder_at_a_time_async().await;
    let mut job = long_job_running(
        "tom",
        "worker-term",
        // A grace no machine runs out of: this is about finishing.
        &["--lease-secs", "30", "--shutdown-grace-secs", "3600"],
    )
    .await;
    terminate(&mut job.worker);
    let r = result(&job.db, job.rec).await;
    assert_eq!(r.status, "done", "the job finished before exit");
    assert_eq!(r.attempts, 1);
    std::fs::remove_dir_all(&job.dir).ok();
}

/// SIGTERM, then a clean exit.
fn terminate(child: &mut std::process::Child) {
    let ok = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok);
    let status = child.wait().unwrap();
    assert!(status.success(), "clean exit after SIGTERM");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_past_the_grace_releases_the_job_for_the_next_worker() {
    let _turn = common::one_decoder_at_a_time_async().await;
    let mut job = long_job_running(
        "una",
        "worker-release",
        &["--lease-secs", "600", "--shutdown-grace-secs", "0"],
    )
    .await;
    terminate(&mut job.worker);
    let (db, rec, user) = (&job.db, job.rec, job.user);
    // Given back at once, not left to a 10-minute lease, and the attempt
    // does not count against the job.
    let row = db
        .admin
        .query_one(
            "SELECT state, attempts, visible_at <= now() FROM s2t.jobs WHERE recording_id = $1",
            &[&rec],
        )
        .await
        .unwrap();
    let (state, attempts, visible_now): (String, i32, bool) = (row.get(0), row.get(1), row.get(2));
    assert_eq!(state, "queued");
    assert_eq!(attempts, 0);
    assert!(visible_now, "claimable at once");
    assert!(segments(db, rec).await.is_empty(), "nothing half-written");
    assert_eq!(used_seconds(db, user).await, 0, "nothing charged");

    run_once(db);
    let r = result(db, rec).await;
    assert_eq!(r.status, "done", "{:?}", r.reason);
    assert_eq!(r.attempts, 1);
    assert_stored_once(db, user, rec, r.billed).await;
    std::fs::remove_dir_all(&job.dir).ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_read_speech_is_transcribed_within_a_word_error_bound() {
    let _turn = common::one_decoder_at_a_time_async().await;
    let db = TestDb::new().await;
    let user = register(&db.admin, "reader").await;
    let corpus = common::librivox();
    assert_eq!(corpus.len(), 5);
    let mut queued = Vec::new();
    for (wav, reference) in &corpus {
        let rec = queue(&db, user, "en", "audio/wav", std::fs::read(wav).unwrap()).await;
        queued.push((rec, reference.clone(), wav_duration_ms(wav)));
    }
    run_once(&db);
    let (mut errors, mut total) = (0.0, 0usize);
    for (rec, reference, expected_ms) in queued {
        let r = result(&db, rec).await;
        assert_eq!(r.status, "done", "{:?}", r.reason);
        assert!((r.duration_ms - expected_ms).abs() <= 1);
        let text = segments(&db, rec)
            .await
            .iter()
            .map(|s| s.3.clone())
            .collect::<Vec<_>>()
            .join(" ");
        let n = common::words(&reference).len();
        errors += wer(&reference, &text) * n as f64;
        total += n;
        eprintln!("{reference:?}\n  -> {text:?}");
    }
    let corpus_wer = errors / total as f64;
    eprintln!("corpus WER {corpus_wer:.3} over {total} words");
    assert!(corpus_wer < 0.15, "corpus WER {corpus_wer:.3}");
}

/// Restart PostgreSQL (the test cluster) while a job runs.
fn restart_postgres() {
    let bin = std::env::var("PG_BIN").expect("make test exports PG_BIN");
    let data = std::env::var("S2T_TEST_PGDATA").expect("make test exports S2T_TEST_PGDATA");
    let pg_ctl = format!("{bin}/pg_ctl");
    let mut cmd = match std::env::var("S2T_TEST_PG_OS_USER") {
        Ok(user) if !user.is_empty() => {
            let mut c = Command::new("runuser");
            c.args(["-u", &user, "--", &pg_ctl]);
            c
        }
        _ => Command::new(&pg_ctl),
    };
    let out = cmd
        // With -l the new postmaster writes to a file; without it, it would
        // inherit our pipes and output() would wait for it to exit.
        .args(["-D", &data, "-l", &format!("{data}/restart.log")])
        .args(["-m", "fast", "-w", "-t", "60", "restart"])
        .output()
        .expect("pg_ctl");
    assert!(
        out.status.success(),
        "restart: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_restart_during_a_job_loses_nothing() {
    let _turn = common::one_decoder_at_a_time_async().await;
    let LongJob {
        db,
        user,
        rec,
        dir,
        worker: mut child,
    } = long_job_running("rita", "worker-restart", &["--lease-secs", "4"]).await;
    restart_postgres();
    // The old connections are gone; the worker reconnects on its own.
    let db_after = TestDb::reconnect(&db.name).await;
    let deadline = Instant::now() + Duration::from_secs(120);
    let status = loop {
        let status: String = db_after
            .admin
            .query_one("SELECT status FROM s2t.recordings WHERE id = $1", &[&rec])
            .await
            .unwrap()
            .get(0);
        if status != "processing" || Instant::now() > deadline {
            break status;
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "the worker died with the server"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    child.wait().unwrap();
    assert_eq!(status, "done");
    let r = result(&db_after, rec).await;
    assert_stored_once(&db_after, user, rec, r.billed).await;
    std::fs::remove_dir_all(&dir).ok();
}
