//! The job queue: enqueue + NOTIFY, claim with SKIP LOCKED and leases,
//! heartbeat, retries with backoff, release and completion.

use s2t_tests::*;
use serde_json::json;
use std::collections::HashSet;
use std::time::Duration;
use tokio_postgres::Client;
use uuid::Uuid;

struct Claim {
    job_id: i64,
    recording_id: Uuid,
    attempt: i32,
    token: Uuid,
}

async fn claim(client: &Client, worker: &str, lease: &str) -> Option<Claim> {
    client
        .query_opt(
            "SELECT job_id, recording_id, attempt, lease_token FROM s2t.claim_job($1, $2::text::interval)",
            &[&worker, &lease],
        )
        .await
        .expect("claim_job")
        .map(|r| Claim {
            job_id: r.get(0),
            recording_id: r.get(1),
            attempt: r.get(2),
            token: r.get(3),
        })
}

async fn job_state(db: &TestDb, job: i64) -> (String, i32, bool) {
    let row = db
        .admin
        .query_one(
            "SELECT state, attempts, visible_at > now() FROM s2t.jobs WHERE id = $1",
            &[&job],
        )
        .await
        .unwrap();
    (row.get(0), row.get(1), row.get(2))
}

#[tokio::test]
async fn an_upload_enqueues_a_job_and_notifies() {
    let db = TestDb::new().await;
    let user = register(&db.admin, "ann").await;
    let (_listener, mut rx) = listen(&db, "s2t_jobs").await;

    let realtime = new_recording(&db.admin, user, "realtime").await;
    let upload = new_recording(&db.admin, user, "upload").await;
    let (channel, payload) = tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("a notification within 10 s")
        .unwrap();
    assert_eq!(channel, "s2t_jobs");
    assert_eq!(payload, upload.to_string());
    let jobs: Vec<Uuid> = db
        .admin
        .query(
            "SELECT recording_id FROM s2t.jobs WHERE state = 'queued'",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(
        jobs,
        vec![upload],
        "realtime recordings are not queued ({realtime})"
    );
}

#[tokio::test]
async fn claim_takes_the_oldest_due_job_then_nothing() {
    let db = TestDb::new().await;
    let user = register(&db.admin, "bob").await;
    let first = new_recording(&db.admin, user, "upload").await;
    let second = new_recording(&db.admin, user, "upload").await;
    let worker = db.connect_as(WORKER_LOGIN).await;
    let a = claim(&worker, "w1", "5 minutes").await.unwrap();
    let b = claim(&worker, "w1", "5 minutes").await.unwrap();
    assert_eq!((a.recording_id, b.recording_id), (first, second));
    assert_eq!(a.attempt, 1);
    assert!(claim(&worker, "w1", "5 minutes").await.is_none());
    let (state, attempts, leased) = job_state(&db, a.job_id).await;
    assert_eq!((state.as_str(), attempts, leased), ("running", 1, true));
    for (name, lease) in [("", "1 minute"), ("w", "0 seconds"), ("w", "2 days")] {
        expect_code(
            worker
                .query_opt(
                    "SELECT * FROM s2t.claim_job($1, $2::text::interval)",
                    &[&name, &lease],
                )
                .await,
            "S2V01",
        );
    }
}

/// 8 claimers race over 100 jobs: every job is claimed exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn eight_concurrent_claimers_claim_each_job_once() {
    let db = TestDb::new().await;
    let user = register(&db.admin, "cyd").await;
    set_limits(&db.admin, user, 1000, 6000).await;
    let mut expected = HashSet::new();
    for _ in 0..100 {
        expected.insert(new_recording(&db.admin, user, "upload").await);
    }
    let mut tasks = Vec::new();
    for w in 0..8 {
        let client = db.connect_as(WORKER_LOGIN).await;
        tasks.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            while let Some(c) = claim(&client, &format!("worker-{w}"), "10 minutes").await {
                mine.push(c.recording_id);
            }
            mine
        }));
    }
    let mut all = Vec::new();
    let mut busy_workers = 0;
    for task in tasks {
        let mine = task.await.unwrap();
        if !mine.is_empty() {
            busy_workers += 1;
        }
        all.extend(mine);
    }
    assert_eq!(all.len(), 100, "no job claimed twice, none missed");
    let unique: HashSet<Uuid> = all.into_iter().collect();
    assert_eq!(unique, expected);
    assert!(busy_workers >= 2, "the claimers really ran concurrently");
}

#[tokio::test]
async fn an_expired_lease_is_claimed_again_and_the_old_holder_is_refused() {
    let db = TestDb::new().await;
    let user = register(&db.admin, "dee").await;
    let rec = new_recording(&db.admin, user, "upload").await;
    let worker = db.connect_as(WORKER_LOGIN).await;
    let first = claim(&worker, "dies", "1 second").await.unwrap();
    assert!(
        claim(&worker, "other", "1 minute").await.is_none(),
        "leased jobs are invisible"
    );
    tokio::time::sleep(Duration::from_millis(1300)).await;
    let second = claim(&worker, "other", "1 minute")
        .await
        .expect("reclaimed");
    assert_eq!(second.recording_id, rec);
    assert_eq!(second.attempt, 2);
    assert_ne!(second.token, first.token);
    // The first worker comes back: its lease is gone.
    expect_code(
        worker
            .query_one(
                "SELECT s2t.heartbeat_job($1, $2)",
                &[&first.job_id, &first.token],
            )
            .await,
        "S2S01",
    );
    expect_code(
        worker
            .query_one(
                "SELECT s2t.fail_job($1, $2, 'boom')",
                &[&first.job_id, &first.token],
            )
            .await,
        "S2S01",
    );
    let released: bool = worker
        .query_one(
            "SELECT s2t.release_job($1, $2)",
            &[&first.job_id, &first.token],
        )
        .await
        .unwrap()
        .get(0);
    assert!(!released);
    // Both finish: the work counts once.
    let segments = json!([seg(0, 0, 500, "hello")]);
    let results: Vec<bool> = vec![
        worker
            .query_one(
                "SELECT s2t.complete_job($1, 1000, $2)",
                &[&second.job_id, &segments],
            )
            .await
            .unwrap()
            .get(0),
        worker
            .query_one(
                "SELECT s2t.complete_job($1, 1000, $2)",
                &[&first.job_id, &segments],
            )
            .await
            .unwrap()
            .get(0),
    ];
    assert_eq!(results, vec![true, false]);
    let (segments, seconds): (i64, i32) = {
        let row = db
            .admin
            .query_one(
                "SELECT (SELECT count(*) FROM s2t.segments WHERE recording_id = $1),
                        (SELECT used_seconds FROM s2t.user_subscriptions WHERE user_id = $2)",
                &[&rec, &user],
            )
            .await
            .unwrap();
        (row.get(0), row.get(1))
    };
    assert_eq!((segments, seconds), (1, 1));
    assert_eq!(job_state(&db, first.job_id).await.0, "done");
    expect_code(
        worker
            .query_one("SELECT s2t.complete_job(-1, 1000, '[]')", &[])
            .await,
        "S2N01",
    );
}

#[tokio::test]
async fn heartbeat_extends_the_lease_and_records_progress() {
    let db = TestDb::new().await;
    let user = register(&db.admin, "eve").await;
    let rec = new_recording(&db.admin, user, "upload").await;
    let worker = db.connect_as(WORKER_LOGIN).await;
    let c = claim(&worker, "w", "2 seconds").await.unwrap();
    let row = worker
        .query_one(
            "SELECT s2t.heartbeat_job($1, $2, interval '10 minutes', 0.25) > now() + interval '9 minutes'",
            &[&c.job_id, &c.token],
        )
        .await
        .unwrap();
    assert!(row.get::<_, bool>(0));
    tokio::time::sleep(Duration::from_millis(2200)).await;
    assert!(
        claim(&worker, "thief", "1 minute").await.is_none(),
        "the extended lease holds"
    );
    let progress: String = db
        .admin
        .query_one(
            "SELECT meta->>'progress' FROM s2t.recordings WHERE id = $1",
            &[&rec],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(progress, "0.25");
    for (extend, progress) in [("0 seconds", 0.5f32), ("1 minute", 1.5f32)] {
        expect_code(
            worker
                .query_one(
                    "SELECT s2t.heartbeat_job($1, $2, $3::text::interval, $4)",
                    &[&c.job_id, &c.token, &extend, &progress],
                )
                .await,
            "S2V01",
        );
    }
}

#[tokio::test]
async fn retryable_failures_back_off_then_fail_the_recording() {
    let db = TestDb::new().await;
    let user = register(&db.admin, "fay").await;
    let rec = new_recording(&db.admin, user, "upload").await;
    db.admin
        .execute(
            "UPDATE s2t.jobs SET max_attempts = 2 WHERE recording_id = $1",
            &[&rec],
        )
        .await
        .unwrap();
    let worker = db.connect_as(WORKER_LOGIN).await;
    let c = claim(&worker, "w", "1 minute").await.unwrap();
    let state: String = worker
        .query_one(
            "SELECT s2t.fail_job($1, $2, 'database hiccup')",
            &[&c.job_id, &c.token],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(state, "queued");
    let row = db
        .admin
        .query_one(
            "SELECT visible_at - now() BETWEEN interval '8 seconds' AND interval '11 seconds', last_error
               FROM s2t.jobs WHERE id = $1",
            &[&c.job_id],
        )
        .await
        .unwrap();
    assert!(row.get::<_, bool>(0), "first retry waits about 10 s");
    assert_eq!(row.get::<_, String>(1), "database hiccup");
    assert!(
        claim(&worker, "w", "1 minute").await.is_none(),
        "not due yet"
    );
    db.admin
        .execute(
            "UPDATE s2t.jobs SET visible_at = now() WHERE id = $1",
            &[&c.job_id],
        )
        .await
        .unwrap();
    let c2 = claim(&worker, "w", "1 minute").await.unwrap();
    assert_eq!(c2.attempt, 2);
    let state: String = worker
        .query_one(
            "SELECT s2t.fail_job($1, $2, 'database hiccup again')",
            &[&c2.job_id, &c2.token],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(state, "failed", "out of attempts");
    let row = db
        .admin
        .query_one(
            "SELECT status, failure_reason FROM s2t.recordings WHERE id = $1",
            &[&rec],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "failed");
    assert_eq!(row.get::<_, String>(1), "database hiccup again");
    expect_code(
        worker
            .query_one("SELECT s2t.fail_job(-5, $1, 'x')", &[&Uuid::new_v4()])
            .await,
        "S2N01",
    );
}

#[tokio::test]
async fn permanent_failures_fail_at_once_and_release_gives_the_job_back() {
    let db = TestDb::new().await;
    let user = register(&db.admin, "gus").await;
    let corrupt = new_recording(&db.admin, user, "upload").await;
    let other = new_recording(&db.admin, user, "upload").await;
    let worker = db.connect_as(WORKER_LOGIN).await;
    let c = claim(&worker, "w", "1 minute").await.unwrap();
    assert_eq!(c.recording_id, corrupt);
    expect_code(
        worker
            .query_one("SELECT s2t.fail_job($1, $2, '')", &[&c.job_id, &c.token])
            .await,
        "S2V01",
    );
    let state: String = worker
        .query_one(
            "SELECT s2t.fail_job($1, $2, 'the file is not audio', false)",
            &[&c.job_id, &c.token],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(state, "failed");
    let c = claim(&worker, "w", "1 minute").await.unwrap();
    assert_eq!(c.recording_id, other);
    let released: bool = worker
        .query_one("SELECT s2t.release_job($1, $2)", &[&c.job_id, &c.token])
        .await
        .unwrap()
        .get(0);
    assert!(released);
    let (state, attempts, _) = job_state(&db, c.job_id).await;
    assert_eq!(
        (state.as_str(), attempts),
        ("queued", 0),
        "a release does not use an attempt"
    );
    let again = claim(&worker, "w2", "1 minute").await.unwrap();
    assert_eq!((again.recording_id, again.attempt), (other, 1));

    let stats: Vec<(String, i64)> = worker
        .query("SELECT state, jobs FROM s2t.queue_stats()", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(
        stats,
        vec![
            ("queued".to_string(), 0),
            ("running".to_string(), 1),
            ("done".to_string(), 0),
            ("failed".to_string(), 1)
        ]
    );
}

#[tokio::test]
async fn a_job_whose_worker_dies_on_the_last_attempt_fails_with_a_reason() {
    let db = TestDb::new().await;
    let user = register(&db.admin, "hal").await;
    let rec = new_recording(&db.admin, user, "upload").await;
    db.admin
        .execute(
            "UPDATE s2t.jobs SET max_attempts = 1 WHERE recording_id = $1",
            &[&rec],
        )
        .await
        .unwrap();
    let worker = db.connect_as(WORKER_LOGIN).await;
    claim(&worker, "dies", "1 second").await.unwrap();
    tokio::time::sleep(Duration::from_millis(1300)).await;
    assert!(claim(&worker, "next", "1 minute").await.is_none());
    let row = db
        .admin
        .query_one(
            "SELECT r.status, r.failure_reason, j.state FROM s2t.recordings r
               JOIN s2t.jobs j ON j.recording_id = r.id WHERE r.id = $1",
            &[&rec],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "failed");
    assert!(row
        .get::<_, String>(1)
        .contains("stopped responding on attempt 1 of 1"));
    assert_eq!(row.get::<_, String>(2), "failed");
}

#[tokio::test]
async fn status_and_progress_changes_are_notified() {
    let db = TestDb::new().await;
    let user = register(&db.admin, "ivy").await;
    let rec = new_recording(&db.admin, user, "upload").await;
    let (_listener, mut rx) = listen(&db, "s2t_recording_events").await;
    let worker = db.connect_as(WORKER_LOGIN).await;
    let c = claim(&worker, "w", "1 minute").await.unwrap();
    worker
        .query_one(
            "SELECT s2t.heartbeat_job($1, $2, interval '1 minute', 0.5)",
            &[&c.job_id, &c.token],
        )
        .await
        .unwrap();
    worker
        .query_one("SELECT s2t.complete_job($1, 10, '[]')", &[&c.job_id])
        .await
        .unwrap();
    let mut events = Vec::new();
    for _ in 0..2 {
        let (_, payload) = tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .expect("an event")
            .unwrap();
        events.push(serde_json::from_str::<serde_json::Value>(&payload).unwrap());
    }
    assert_eq!(events[0]["recording_id"], rec.to_string());
    assert_eq!(events[0]["status"], "processing");
    assert_eq!(events[0]["progress"], 0.5);
    assert_eq!(events[1]["status"], "done");
    assert_eq!(events[1]["progress"], 1);
    assert_eq!(events[1]["user_id"], user.to_string());
}

/// Whose recordings these claims took, in order.
async fn claimed_users(db: &TestDb, claims: &[Uuid]) -> Vec<Uuid> {
    let mut users = Vec::new();
    for rec in claims {
        users.push(
            db.admin
                .query_one("SELECT user_id FROM s2t.recordings WHERE id = $1", &[rec])
                .await
                .unwrap()
                .get(0),
        );
    }
    users
}

/// One account queues 50 files, then another queues one: the second
/// account's file is among the next two claims, not the 51st; each
/// account's own files still go in the order they came.
#[tokio::test]
async fn one_users_backlog_does_not_hold_up_another_user() {
    let db = TestDb::new().await;
    let heavy = register(&db.admin, "heavy").await;
    let light = register(&db.admin, "light").await;
    set_limits(&db.admin, heavy, 1000, 6000).await;
    let mut backlog = Vec::new();
    for _ in 0..50 {
        backlog.push(new_recording(&db.admin, heavy, "upload").await);
    }
    let single = new_recording(&db.admin, light, "upload").await;
    let worker = db.connect_as(WORKER_LOGIN).await;
    let first_two = [
        claim(&worker, "w", "5 minutes").await.unwrap().recording_id,
        claim(&worker, "w", "5 minutes").await.unwrap().recording_id,
    ];
    assert!(
        first_two.contains(&single),
        "the single upload waits behind the backlog: {first_two:?}"
    );
    let mut heavy_order: Vec<Uuid> = first_two.into_iter().filter(|r| *r != single).collect();
    while let Some(c) = claim(&worker, "w", "5 minutes").await {
        heavy_order.push(c.recording_id);
    }
    assert_eq!(heavy_order, backlog);
}

/// Three accounts that queued ten files each, one after the other, are
/// served in rounds.
#[tokio::test]
async fn users_with_waiting_jobs_take_turns() {
    let db = TestDb::new().await;
    let mut users = Vec::new();
    for name in ["ada", "ben", "cal"] {
        let user = register(&db.admin, name).await;
        for _ in 0..10 {
            new_recording(&db.admin, user, "upload").await;
        }
        users.push(user);
    }
    let worker = db.connect_as(WORKER_LOGIN).await;
    let mut claims = Vec::new();
    for _ in 0..9 {
        claims.push(claim(&worker, "w", "5 minutes").await.unwrap().recording_id);
    }
    let served = claimed_users(&db, &claims).await;
    let rounds: Vec<Uuid> = (0..9).map(|i| users[i % 3]).collect();
    assert_eq!(served, rounds);
}

/// 8 claimers race over 10 users' 10 jobs each (the fair order reads other
/// indexes than the single-user case): every job is claimed exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_claimers_over_many_users_claim_each_job_once() {
    let db = TestDb::new().await;
    let mut expected = HashSet::new();
    for u in 0..10 {
        let user = register(&db.admin, &format!("many{u}")).await;
        for _ in 0..10 {
            expected.insert(new_recording(&db.admin, user, "upload").await);
        }
    }
    let mut tasks = Vec::new();
    for w in 0..8 {
        let client = db.connect_as(WORKER_LOGIN).await;
        tasks.push(tokio::spawn(async move {
            let mut mine = Vec::new();
            while let Some(c) = claim(&client, &format!("worker-{w}"), "10 minutes").await {
                mine.push(c.recording_id);
            }
            mine
        }));
    }
    let mut all = Vec::new();
    let mut busy_workers = 0;
    for task in tasks {
        let mine = task.await.unwrap();
        busy_workers += usize::from(!mine.is_empty());
        all.extend(mine);
    }
    assert_eq!(all.len(), 100, "no job claimed twice, none missed");
    assert_eq!(all.into_iter().collect::<HashSet<Uuid>>(), expected);
    assert!(busy_workers >= 2, "the claimers really ran concurrently");
}

/// The next notification within `wait`, if any.
async fn next_notice(
    rx: &mut tokio::sync::mpsc::UnboundedReceiver<(String, String)>,
    wait: Duration,
) -> Option<String> {
    tokio::time::timeout(wait, rx.recv())
        .await
        .ok()
        .flatten()
        .map(|(_, payload)| payload)
}

/// Uploads notify only when a worker may be idle; a claim that leaves due
/// jobs behind passes the wake-up on, so an idle worker still hears of them.
#[tokio::test]
async fn uploads_notify_only_when_a_worker_may_be_idle() {
    let db = TestDb::new().await;
    let user = register(&db.admin, "nia").await;
    let (_listener, mut rx) = listen(&db, "s2t_jobs").await;
    let worker = db.connect_as(WORKER_LOGIN).await;
    let quiet = Duration::from_millis(400);
    let soon = Duration::from_secs(5);

    let first = new_recording(&db.admin, user, "upload").await;
    assert_eq!(next_notice(&mut rx, soon).await, Some(first.to_string()));
    // The first is due and unclaimed, so no worker is idle.
    let second = new_recording(&db.admin, user, "upload").await;
    assert_eq!(next_notice(&mut rx, quiet).await, None);
    // Claiming the first leaves the second due: another worker may be idle.
    assert_eq!(
        claim(&worker, "w1", "1 minute").await.unwrap().recording_id,
        first
    );
    assert_eq!(next_notice(&mut rx, soon).await, Some(second.to_string()));
    assert_eq!(
        claim(&worker, "w2", "1 minute").await.unwrap().recording_id,
        second
    );
    assert_eq!(
        next_notice(&mut rx, quiet).await,
        None,
        "nothing left to say"
    );
    // Nothing due again: the next upload notifies.
    let third = new_recording(&db.admin, user, "upload").await;
    assert_eq!(next_notice(&mut rx, soon).await, Some(third.to_string()));
}

/// The race that quiet uploads invite, made to happen: a worker finds
/// nothing because another claim holds the only due job, and an upload
/// arrives then. The upload sees the claim in progress and notifies.
#[tokio::test]
async fn an_upload_while_the_head_job_is_being_claimed_notifies() {
    let db = TestDb::new().await;
    let user = register(&db.admin, "ola").await;
    // Another account: the claim locks the first one's subscription.
    let other = register(&db.admin, "oli").await;
    let head = new_recording(&db.admin, user, "upload").await;
    let (_listener, mut rx) = listen(&db, "s2t_jobs").await;
    let slow = db.connect_as(WORKER_LOGIN).await;
    slow.batch_execute("BEGIN").await.unwrap();
    assert_eq!(
        claim(&slow, "slow", "1 minute").await.unwrap().recording_id,
        head
    );
    let idle = db.connect_as(WORKER_LOGIN).await;
    assert!(
        claim(&idle, "idle", "1 minute").await.is_none(),
        "the head is locked"
    );
    let upload = new_recording(&db.admin, other, "upload").await;
    slow.batch_execute("COMMIT").await.unwrap();
    assert_eq!(
        next_notice(&mut rx, Duration::from_secs(5)).await,
        Some(upload.to_string()),
        "the idle worker is told"
    );
    assert_eq!(
        claim(&idle, "idle", "1 minute").await.unwrap().recording_id,
        upload
    );
}

/// The other order: an upload saw the head job waiting and stayed quiet,
/// but has not committed when a worker claims that job. The claim waits for
/// the upload to commit, sees its job and passes the wake-up on.
#[tokio::test]
async fn a_claim_of_the_head_job_waits_for_quiet_uploads_and_passes_the_wake_up_on() {
    let db = TestDb::new().await;
    let user = register(&db.admin, "pia").await;
    // Another account, so the claim does not wait on the upload's
    // subscription lock for a reason of its own.
    let other = register(&db.admin, "pim").await;
    let head = new_recording(&db.admin, user, "upload").await;
    let (_listener, mut rx) = listen(&db, "s2t_jobs").await;
    let uploader = db.connect_admin().await;
    uploader.batch_execute("BEGIN").await.unwrap();
    let upload = new_recording(&uploader, other, "upload").await;
    assert_eq!(next_notice(&mut rx, Duration::from_millis(300)).await, None);
    let worker = db.connect_as(WORKER_LOGIN).await;
    let claiming = tokio::spawn(async move {
        let c = claim(&worker, "w", "1 minute")
            .await
            .map(|c| c.recording_id);
        (worker, c)
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !claiming.is_finished(),
        "the claim waits for the upload's commit"
    );
    uploader.batch_execute("COMMIT").await.unwrap();
    let (worker, claimed) = tokio::time::timeout(Duration::from_secs(10), claiming)
        .await
        .expect("the claim finishes once the upload commits")
        .unwrap();
    assert_eq!(claimed, Some(head));
    assert_eq!(
        next_notice(&mut rx, Duration::from_secs(5)).await,
        Some(upload.to_string())
    );
    assert_eq!(
        claim(&worker, "w", "1 minute").await.unwrap().recording_id,
        upload
    );
}
