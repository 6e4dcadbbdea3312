//! Minutes are enforced for work in flight: admission reserves a
//! recording's declared length, claim caps what a worker may transcribe at
//! what is left, and completion, failure or deletion settles the reservation.

use s2t_tests::*;
use serde_json::json;
use tokio_postgres::Client;
use uuid::Uuid;

async fn reserved(db: &TestDb, user: Uuid) -> (i32, i32) {
    let r = db
        .admin
        .query_one(
            "SELECT reserved_seconds, used_seconds FROM s2t.user_subscriptions WHERE user_id = $1",
            &[&user],
        )
        .await
        .unwrap();
    (r.get(0), r.get(1))
}

async fn admit(
    c: &Client,
    user: Uuid,
    expected_ms: Option<i32>,
) -> Result<Uuid, tokio_postgres::Error> {
    c.query_one(
        "SELECT s2t.check_quota_and_create_recording($1, 'upload', 'en', '{}', 'db:', $2)",
        &[&user, &expected_ms],
    )
    .await
    .map(|r| r.get(0))
}

struct Claimed {
    job_id: i64,
    lease: Uuid,
    recording_id: Uuid,
    max_ms: Option<i32>,
}

async fn claim(worker: &Client) -> Option<Claimed> {
    worker
        .query_opt(
            "SELECT job_id, lease_token, recording_id, max_ms FROM s2t.claim_job('w1')",
            &[],
        )
        .await
        .unwrap()
        .map(|r| Claimed {
            job_id: r.get(0),
            lease: r.get(1),
            recording_id: r.get(2),
            max_ms: r.get(3),
        })
}

#[tokio::test]
async fn five_concurrent_one_minute_files_on_a_two_minute_plan_admit_two() {
    let db = TestDb::new().await;
    let user = register(&db.admin, "eve").await;
    set_limits(&db.admin, user, 100, 2).await;
    let mut tasks = Vec::new();
    for _ in 0..5 {
        let url = db.url(APP_LOGIN);
        tasks.push(tokio::spawn(async move {
            let c = connect(&url).await;
            act_as(&c, user).await;
            let r = admit(&c, user, Some(60_000)).await;
            c.batch_execute(if r.is_ok() { "COMMIT" } else { "ROLLBACK" })
                .await
                .unwrap();
            r.map_err(|e| {
                let db = e.as_db_error().expect("a database error");
                (
                    db.code().code().to_string(),
                    db.message().to_string(),
                    db.detail().unwrap_or_default().to_string(),
                )
            })
        }));
    }
    let mut admitted = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(_) => admitted += 1,
            Err((code, message, detail)) => {
                assert_eq!(code, "S2Q02", "{message}");
                assert!(
                    message.contains("60 seconds long") || message.contains("used up"),
                    "{message}"
                );
                assert!(message.contains("reserved"), "{message}");
                assert!(detail.contains("reserved: 120"), "{detail}");
            }
        }
    }
    assert_eq!(admitted, 2);
    assert_eq!(reserved(&db, user).await, (120, 0));

    // The worker may transcribe each one's length, and no more.
    let worker = db.connect_as(WORKER_LOGIN).await;
    let a = claim(&worker).await.expect("first job");
    let b = claim(&worker).await.expect("second job");
    assert!(claim(&worker).await.is_none());
    // Together they never exceed the 120 s allowance.
    let caps = a.max_ms.unwrap() + b.max_ms.unwrap();
    assert!(caps <= 120_000, "caps {caps}");
    assert_eq!(a.max_ms, Some(60_000));
    let ok: bool = worker
        .query_one(
            "SELECT s2t.complete_job($1, 60000, $2)",
            &[&a.job_id, &json!([seg(0, 0, 60_000, "one minute")])],
        )
        .await
        .unwrap()
        .get(0);
    assert!(ok);
    let (res, used) = reserved(&db, user).await;
    assert_eq!(used, 60);
    assert_eq!(
        res,
        b.max_ms.unwrap() / 1000,
        "only b's reservation is left"
    );
    // A third file is refused while b runs, with the numbers.
    let app = db.connect_as(APP_LOGIN).await;
    act_as(&app, user).await;
    expect_code(admit(&app, user, Some(1000)).await, "S2Q02");
    app.batch_execute("ROLLBACK").await.unwrap();
    worker
        .query_one(
            "SELECT s2t.complete_job($1, 60000, $2)",
            &[&b.job_id, &json!([seg(0, 0, 60_000, "another")])],
        )
        .await
        .unwrap();
    assert_eq!(reserved(&db, user).await, (0, 120));
    let billed: i64 = db
        .admin
        .query_one(
            "SELECT sum(billed_seconds) FROM s2t.recordings WHERE user_id = $1",
            &[&user],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(billed, 120);
}

#[tokio::test]
async fn a_file_of_unknown_length_holds_what_is_left_until_its_length_is_known() {
    let db = TestDb::new().await;
    let user = register(&db.admin, "nolen").await;
    set_limits(&db.admin, user, 100, 10).await;
    let first = admit(&db.admin, user, None).await.unwrap();
    let second = admit(&db.admin, user, None).await.unwrap();
    assert_eq!(
        reserved(&db, user).await,
        (0, 0),
        "nothing known, nothing reserved yet"
    );
    let worker = db.connect_as(WORKER_LOGIN).await;
    let a = claim(&worker).await.expect("first");
    assert_eq!(a.recording_id, first);
    assert_eq!(a.max_ms, Some(600_000), "all ten minutes");
    // The second waits (queued, not failed) while the first holds them.
    assert!(claim(&worker).await.is_none());
    let (state, why): (String, Option<String>) = {
        let r = db
            .admin
            .query_one(
                "SELECT state, last_error FROM s2t.jobs WHERE recording_id = $1",
                &[&second],
            )
            .await
            .unwrap();
        (r.get(0), r.get(1))
    };
    assert_eq!(state, "queued");
    assert!(why.unwrap().contains("reserved"));
    // Decoded: 90 s. The reservation shrinks to it and the rest is free.
    let cap: i32 = worker
        .query_one(
            "SELECT s2t.settle_job_length($1, $2, 90000)",
            &[&a.job_id, &a.lease],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(cap, 90_000);
    assert_eq!(reserved(&db, user).await, (90, 0));
    // Never grows: a later, larger report keeps the cap.
    let cap: i32 = worker
        .query_one(
            "SELECT s2t.settle_job_length($1, $2, 900000)",
            &[&a.job_id, &a.lease],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(cap, 90_000);
    db.admin
        .execute(
            "UPDATE s2t.jobs SET visible_at = now() WHERE recording_id = $1",
            &[&second],
        )
        .await
        .unwrap();
    let b = claim(&worker)
        .await
        .expect("second, now that minutes are free");
    assert_eq!(b.max_ms, Some(510_000));
    // A stranger's lease cannot settle anything.
    expect_code(
        worker
            .query_one(
                "SELECT s2t.settle_job_length($1, $2, 1000)",
                &[&b.job_id, &Uuid::new_v4()],
            )
            .await,
        "S2S01",
    );
}

#[tokio::test]
async fn a_job_whose_minutes_ran_out_before_it_started_fails_with_nothing_charged() {
    let db = TestDb::new().await;
    let user = register(&db.admin, "late").await;
    set_limits(&db.admin, user, 100, 1).await;
    let rec = admit(&db.admin, user, Some(30_000)).await.unwrap();
    // Meanwhile the month's minutes went elsewhere (say a realtime session).
    db.admin
        .execute(
            "UPDATE s2t.user_subscriptions SET used_seconds = 60 WHERE user_id = $1",
            &[&user],
        )
        .await
        .unwrap();
    let worker = db.connect_as(WORKER_LOGIN).await;
    assert!(claim(&worker).await.is_none());
    let r = db
        .admin
        .query_one(
            "SELECT r.status, r.failure_reason, r.billed_seconds, j.state
               FROM s2t.recordings r JOIN s2t.jobs j ON j.recording_id = r.id WHERE r.id = $1",
            &[&rec],
        )
        .await
        .unwrap();
    assert_eq!(r.get::<_, String>(0), "failed");
    assert!(r.get::<_, String>(1).contains("minutes were used up"));
    assert_eq!(r.get::<_, i32>(2), 0);
    assert_eq!(r.get::<_, String>(3), "failed");
    assert_eq!(reserved(&db, user).await, (0, 60));
}

#[tokio::test]
async fn failing_or_deleting_a_recording_gives_its_minutes_back() {
    let db = TestDb::new().await;
    let user = register(&db.admin, "undo").await;
    let a = admit(&db.admin, user, Some(100_000)).await.unwrap();
    let b = admit(&db.admin, user, Some(200_000)).await.unwrap();
    assert_eq!(reserved(&db, user).await, (300, 0));
    db.admin
        .query_one("SELECT s2t.fail_recording($1, 'broken file')", &[&a])
        .await
        .unwrap();
    assert_eq!(reserved(&db, user).await, (200, 0));
    let app = db.connect_as(APP_LOGIN).await;
    act_as(&app, user).await;
    app.execute(
        "DELETE FROM s2t.recordings WHERE id = $1 AND user_id = $2",
        &[&b, &user],
    )
    .await
    .unwrap();
    app.batch_execute("COMMIT").await.unwrap();
    assert_eq!(reserved(&db, user).await, (0, 0));
}

#[tokio::test]
async fn a_declared_length_longer_than_what_is_left_is_refused_up_front() {
    let db = TestDb::new().await;
    let user = register(&db.admin, "long").await;
    // FREE: 60 minutes. A four-hour file cannot fit.
    let (message, detail, _) =
        expect_code(admit(&db.admin, user, Some(4 * 3600 * 1000)).await, "S2Q02");
    assert!(message.contains("14400 seconds long"), "{message}");
    assert!(message.contains("3600"), "{message}");
    assert!(detail.contains("requested: 14400"), "{detail}");
    assert_eq!(reserved(&db, user).await, (0, 0));
    let n: i64 = db
        .admin
        .query_one(
            "SELECT count(*) FROM s2t.recordings WHERE user_id = $1",
            &[&user],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 0, "nothing created");
    expect_code(admit(&db.admin, user, Some(-1)).await, "S2V01");
}

/// Claiming a file of known length takes nothing beyond its reservation, so
/// a file that fits is still admitted while the first one runs.
#[tokio::test]
async fn a_claim_does_not_take_minutes_from_later_admissions() {
    let db = TestDb::new().await;
    let user = register(&db.admin, "steady").await;
    set_limits(&db.admin, user, 100, 2).await;
    admit(&db.admin, user, Some(60_000)).await.unwrap();
    let worker = db.connect_as(WORKER_LOGIN).await;
    let a = claim(&worker).await.expect("first job");
    assert_eq!(a.max_ms, Some(60_000));
    assert_eq!(reserved(&db, user).await, (60, 0));
    admit(&db.admin, user, Some(60_000))
        .await
        .expect("the second minute still fits");
    assert_eq!(reserved(&db, user).await, (120, 0));
}
