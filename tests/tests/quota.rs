//! Admission: check_quota_and_create_recording, its specification twin, the
//! usage trigger, concurrency and the month boundary.

use s2t_tests::*;
use uuid::Uuid;

async fn usage(db: &TestDb, user: Uuid) -> (i32, i32) {
    let row = db
        .admin
        .query_one(
            "SELECT usage_count, used_seconds FROM s2t.user_subscriptions WHERE user_id = $1",
            &[&user],
        )
        .await
        .unwrap();
    (row.get(0), row.get(1))
}

async fn count_recordings(db: &TestDb, user: Uuid) -> i64 {
    db.admin
        .query_one(
            "SELECT count(*) FROM s2t.recordings WHERE user_id = $1",
            &[&user],
        )
        .await
        .unwrap()
        .get(0)
}

#[tokio::test]
async fn admission_creates_a_recording_and_the_trigger_counts_it() {
    let db = TestDb::new().await;
    let user = register(&db.admin, "ann").await;
    let rec = new_recording(&db.admin, user, "realtime").await;
    let row = db
        .admin
        .query_one(
            "SELECT status, source, language, user_id FROM s2t.recordings WHERE id = $1",
            &[&rec],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "processing");
    assert_eq!(row.get::<_, String>(1), "realtime");
    assert_eq!(row.get::<_, String>(2), "en");
    assert_eq!(row.get::<_, Uuid>(3), user);
    assert_eq!(usage(&db, user).await, (1, 0));

    // The specification's row-returning form.
    let row = db
        .admin
        .query_one(
            "SELECT * FROM s2t.sp_check_quota_and_create_recording($1, 'upload')",
            &[&user],
        )
        .await
        .unwrap();
    assert!(row.get::<_, Option<Uuid>>(0).is_some());
    assert!(row.get::<_, bool>(1));
    assert_eq!(row.get::<_, String>(2), "");
    assert_eq!(usage(&db, user).await, (2, 0));
}

#[tokio::test]
async fn usage_limit_is_refused_with_usage_and_reset_time() {
    let db = TestDb::new().await;
    let user = register(&db.admin, "bob").await;
    set_limits(&db.admin, user, 2, 60).await;
    new_recording(&db.admin, user, "upload").await;
    new_recording(&db.admin, user, "upload").await;
    let (message, detail, hint) = expect_code(
        db.admin
            .query_one(
                "SELECT s2t.check_quota_and_create_recording($1, 'upload')",
                &[&user],
            )
            .await,
        "S2Q01",
    );
    let reset: String = db
        .admin
        .query_one(
            "SELECT s2t._utc(cycle_end) FROM s2t.user_subscriptions WHERE user_id = $1",
            &[&user],
        )
        .await
        .unwrap()
        .get(0);
    assert!(message.contains("2 of 2"), "{message}");
    assert!(
        message.contains(&reset),
        "{message} should name the reset {reset}"
    );
    assert!(detail.contains("limit: monthly_usage_limit"), "{detail}");
    assert!(hint.contains("larger plan"), "{hint}");
    assert_eq!(count_recordings(&db, user).await, 2, "nothing created");
    assert_eq!(usage(&db, user).await, (2, 0));

    let row = db
        .admin
        .query_one(
            "SELECT * FROM s2t.sp_check_quota_and_create_recording($1, 'upload')",
            &[&user],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, Option<Uuid>>(0), None);
    assert!(!row.get::<_, bool>(1));
    assert!(row
        .get::<_, String>(2)
        .contains("monthly transcription limit reached"));
    let jobs: i64 = db
        .admin
        .query_one("SELECT count(*) FROM s2t.jobs", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(jobs, 2, "refusals enqueue nothing");
}

#[tokio::test]
async fn minutes_limit_is_refused() {
    let db = TestDb::new().await;
    let user = register(&db.admin, "cyd").await;
    set_limits(&db.admin, user, 100, 1).await;
    let rec = new_recording(&db.admin, user, "realtime").await;
    db.admin
        .query_one("SELECT s2t.complete_recording($1, 60000, '[]')", &[&rec])
        .await
        .unwrap();
    let (message, detail, _) = expect_code(
        db.admin
            .query_one(
                "SELECT s2t.check_quota_and_create_recording($1, 'realtime')",
                &[&user],
            )
            .await,
        "S2Q02",
    );
    assert!(message.contains("60 of 60 seconds"), "{message}");
    assert!(detail.contains("resets_at"), "{detail}");
}

#[tokio::test]
async fn bad_admission_input_and_unknown_or_disabled_users() {
    let db = TestDb::new().await;
    let user = register(&db.admin, "dee").await;
    for (source, language, meta) in [
        ("phone", "vi", "{}"),
        ("upload", "Vietnamese", "{}"),
        ("upload", "vi", "[1]"),
    ] {
        let (_, detail, _) = expect_code(
            db.admin
                .query_one(
                    "SELECT s2t.check_quota_and_create_recording($1, $2, $3, $4::text::jsonb)",
                    &[&user, &source, &language, &meta],
                )
                .await,
            "S2V01",
        );
        assert!(detail.starts_with("field: "), "{detail}");
    }
    expect_code(
        db.admin
            .query_one(
                "SELECT s2t.check_quota_and_create_recording($1, 'upload')",
                &[&Uuid::new_v4()],
            )
            .await,
        "S2N01",
    );
    let row = db
        .admin
        .query_one(
            "SELECT * FROM s2t.sp_check_quota_and_create_recording($1, 'upload')",
            &[&Uuid::new_v4()],
        )
        .await
        .unwrap();
    assert!(!row.get::<_, bool>(1));
    db.admin
        .execute(
            "UPDATE s2t.users SET status = 'disabled' WHERE id = $1",
            &[&user],
        )
        .await
        .unwrap();
    expect_code(
        db.admin
            .query_one(
                "SELECT s2t.check_quota_and_create_recording($1, 'upload')",
                &[&user],
            )
            .await,
        "S2S01",
    );
    assert_eq!(count_recordings(&db, user).await, 0);
}

/// 50 concurrent admissions against a limit of 10: exactly 10 recordings,
/// 40 refusals that say why. The specification's version over-admits here.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_concurrent_admissions_create_exactly_the_limit() {
    let db = TestDb::new().await;
    let user = register(&db.admin, "eve").await;
    set_limits(&db.admin, user, 10, 600).await;
    let mut clients = Vec::new();
    for _ in 0..50 {
        clients.push(db.connect_admin().await);
    }
    let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(50));
    let mut tasks = Vec::new();
    for client in clients {
        let barrier = barrier.clone();
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            client
                .query_one(
                    "SELECT * FROM s2t.sp_check_quota_and_create_recording($1, 'upload')",
                    &[&user],
                )
                .await
                .map(|row| (row.get::<_, bool>(1), row.get::<_, String>(2)))
        }));
    }
    let mut admitted = 0;
    let mut refused = 0;
    for task in tasks {
        let (ok, message) = task.await.unwrap().expect("no call errors");
        if ok {
            admitted += 1;
        } else {
            assert!(
                message.contains("monthly transcription limit reached"),
                "{message}"
            );
            refused += 1;
        }
    }
    assert_eq!((admitted, refused), (10, 40));
    assert_eq!(count_recordings(&db, user).await, 10);
    assert_eq!(usage(&db, user).await.0, 10);
}

#[tokio::test]
async fn an_ended_cycle_rolls_forward_on_admission() {
    let db = TestDb::new().await;
    let user = register(&db.admin, "fay").await;
    set_limits(&db.admin, user, 3, 1).await;
    // The user used everything last month, and the reset job has not run.
    db.admin
        .execute(
            "UPDATE s2t.user_subscriptions
                SET cycle_start = date_trunc('month', now(), 'UTC') - interval '1 month',
                    cycle_end = date_trunc('month', now(), 'UTC'),
                    usage_count = 3, used_seconds = 60
              WHERE user_id = $1",
            &[&user],
        )
        .await
        .unwrap();
    // Stats already show the new, empty cycle without writing.
    let row = db
        .admin
        .query_one(
            "SELECT current_cycle_usage, current_cycle_seconds, cycle_start = date_trunc('month', now(), 'UTC')
               FROM s2t.sp_get_user_stats($1)",
            &[&user],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, i32>(0), 0);
    assert_eq!(row.get::<_, i32>(1), 0);
    assert!(row.get::<_, bool>(2));

    new_recording(&db.admin, user, "upload").await;
    let row = db
        .admin
        .query_one(
            "SELECT usage_count, used_seconds, cycle_start = date_trunc('month', now(), 'UTC'),
                    cycle_end = date_add(date_trunc('month', now(), 'UTC'), interval '1 month', 'UTC')
               FROM s2t.user_subscriptions WHERE user_id = $1",
            &[&user],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, i32>(0), 1, "new cycle, one recording");
    assert_eq!(row.get::<_, i32>(1), 0);
    assert!(row.get::<_, bool>(2) && row.get::<_, bool>(3));
}

#[tokio::test]
async fn monthly_reset_rolls_only_ended_cycles() {
    let db = TestDb::new().await;
    let old = register(&db.admin, "gus").await;
    let current = register(&db.admin, "hal").await;
    db.admin
        .execute(
            "UPDATE s2t.user_subscriptions
                SET cycle_start = now() - interval '40 days', cycle_end = now() - interval '10 days',
                    usage_count = 7, used_seconds = 99
              WHERE user_id = $1",
            &[&old],
        )
        .await
        .unwrap();
    db.admin
        .execute(
            "UPDATE s2t.user_subscriptions SET usage_count = 5, used_seconds = 50 WHERE user_id = $1",
            &[&current],
        )
        .await
        .unwrap();
    let reset: i32 = db
        .admin
        .query_one("SELECT s2t.reset_monthly_cycles()", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(reset, 1);
    assert_eq!(usage(&db, old).await, (0, 0));
    assert_eq!(usage(&db, current).await, (5, 50));
    // The procedure form runs and is idempotent.
    db.admin
        .execute("CALL s2t.sp_reset_monthly_cycles()", &[])
        .await
        .unwrap();
    let again: i32 = db
        .admin
        .query_one("SELECT s2t.reset_monthly_cycles()", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(again, 0);
    assert_eq!(usage(&db, current).await, (5, 50));
}

#[tokio::test]
async fn the_trigger_counts_direct_inserts_and_restarts_ended_cycles() {
    let db = TestDb::new().await;
    let user = register(&db.admin, "ida").await;
    let insert = "INSERT INTO s2t.recordings (user_id, source) VALUES ($1, 'realtime')";
    db.admin.execute(insert, &[&user]).await.unwrap();
    db.admin.execute(insert, &[&user]).await.unwrap();
    assert_eq!(usage(&db, user).await, (2, 0));
    // An admitted recording is counted once, not by both the check and the trigger.
    new_recording(&db.admin, user, "realtime").await;
    assert_eq!(usage(&db, user).await, (3, 0));
    // A forged marker for another row does not stop the count.
    db.admin.batch_execute("BEGIN").await.unwrap();
    db.admin
        .execute(
            "SELECT set_config('s2t.counted_recording', gen_random_uuid()::text, true)",
            &[],
        )
        .await
        .unwrap();
    db.admin.execute(insert, &[&user]).await.unwrap();
    db.admin.batch_execute("COMMIT").await.unwrap();
    assert_eq!(usage(&db, user).await, (4, 0));
    db.admin
        .execute(
            "UPDATE s2t.user_subscriptions SET cycle_start = now() - interval '2 months',
                    cycle_end = now() - interval '1 month', used_seconds = 500 WHERE user_id = $1",
            &[&user],
        )
        .await
        .unwrap();
    db.admin.execute(insert, &[&user]).await.unwrap();
    assert_eq!(
        usage(&db, user).await,
        (1, 0),
        "a new cycle, counting this recording"
    );
}
