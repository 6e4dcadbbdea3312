//! Completion, failure, statistics, plan changes and cleanup.

use s2t_tests::*;
use serde_json::json;
use uuid::Uuid;

async fn segment_count(db: &TestDb, rec: Uuid) -> i64 {
    db.admin
        .query_one(
            "SELECT count(*) FROM s2t.segments WHERE recording_id = $1",
            &[&rec],
        )
        .await
        .unwrap()
        .get(0)
}

#[tokio::test]
async fn completion_stores_segments_and_bills_rounded_up_seconds() {
    let db = TestDb::new().await;
    let user = register(&db.admin, "ann").await;
    let rec = new_recording(&db.admin, user, "upload").await;
    let segments = json!([
        seg(0, 0, 900, "xin chào"),
        {"idx": 1, "start_ms": 900, "end_ms": 1400, "text": "các bạn",
         "words": [{"word": "các", "start_ms": 900, "end_ms": 1100}]}
    ]);
    let done: bool = db
        .admin
        .query_one(
            "SELECT s2t.complete_recording($1, 1401, $2, 'vi')",
            &[&rec, &segments],
        )
        .await
        .unwrap()
        .get(0);
    assert!(done);
    let row = db
        .admin
        .query_one(
            "SELECT status, duration_ms, billed_seconds, completed_at IS NOT NULL, meta->>'progress',
                    (SELECT state FROM s2t.jobs WHERE recording_id = r.id)
               FROM s2t.recordings r WHERE id = $1",
            &[&rec],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "done");
    assert_eq!(row.get::<_, i32>(1), 1401);
    assert_eq!(row.get::<_, i32>(2), 2, "1401 ms bills 2 s, not 1");
    assert!(row.get::<_, bool>(3));
    assert_eq!(row.get::<_, String>(4), "1");
    assert_eq!(row.get::<_, String>(5), "done");
    assert_eq!(used_seconds(&db, user).await, 2);
    let words: serde_json::Value = db
        .admin
        .query_one(
            "SELECT words FROM s2t.segments WHERE recording_id = $1 AND idx = 1",
            &[&rec],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(words[0]["word"], "các");

    // A 400 ms clip is billed one second (the seed's integer division billed 0).
    let short = new_recording(&db.admin, user, "realtime").await;
    db.admin
        .execute("CALL s2t.sp_complete_recording($1, 400, '[]')", &[&short])
        .await
        .unwrap();
    assert_eq!(used_seconds(&db, user).await, 3);
}

#[tokio::test]
async fn completing_twice_charges_once_and_stores_segments_once() {
    let db = TestDb::new().await;
    let user = register(&db.admin, "bob").await;
    let rec = new_recording(&db.admin, user, "upload").await;
    let segments = json!([seg(0, 0, 1000, "one"), seg(1, 1000, 2500, "two")]);
    // Concurrently, from two sessions, as two workers would.
    let a = db.connect_admin().await;
    let b = db.connect_admin().await;
    let params: [&(dyn tokio_postgres::types::ToSql + Sync); 2] = [&rec, &segments];
    let (ra, rb) = tokio::join!(
        a.query_one("SELECT s2t.complete_recording($1, 2500, $2)", &params),
        b.query_one("SELECT s2t.complete_recording($1, 2500, $2)", &params),
    );
    let firsts = [ra.unwrap().get::<_, bool>(0), rb.unwrap().get::<_, bool>(0)];
    assert_eq!(firsts.iter().filter(|f| **f).count(), 1, "{firsts:?}");
    // And once more, sequentially.
    let again: bool = db
        .admin
        .query_one(
            "SELECT s2t.complete_recording($1, 2500, $2)",
            &[&rec, &segments],
        )
        .await
        .unwrap()
        .get(0);
    assert!(!again);
    assert_eq!(segment_count(&db, rec).await, 2);
    assert_eq!(used_seconds(&db, user).await, 3);
}

#[tokio::test]
async fn invalid_completions_are_refused_and_change_nothing() {
    let db = TestDb::new().await;
    let user = register(&db.admin, "cyd").await;
    let rec = new_recording(&db.admin, user, "upload").await;
    let cases = [
        (-1, json!([]), "duration_ms must not be negative"),
        (5000, json!([seg(0, 2000, 1000, "x")]), "before start_ms"),
        (
            5000,
            json!([seg(0, -1, 1000, "x")]),
            "start_ms must not be negative",
        ),
        (
            5000,
            json!([seg(0, 0, 1000, "a"), seg(0, 1000, 2000, "b")]),
            "duplicate idx 0",
        ),
        (1000, json!([seg(0, 0, 2000, "x")]), "past the end"),
        (1000, json!({"idx": 0}), "JSON array"),
    ];
    for (duration, segments, expected) in cases {
        let (message, _, hint) = expect_code(
            db.admin
                .query_one(
                    "SELECT s2t.complete_recording($1, $2, $3)",
                    &[&rec, &duration, &segments],
                )
                .await,
            "S2V01",
        );
        assert!(
            message.contains(expected),
            "{message} should contain {expected}"
        );
        assert!(!hint.is_empty());
    }
    expect_code(
        db.admin
            .execute("CALL s2t.sp_complete_recording($1, NULL, '[]')", &[&rec])
            .await,
        "S2V01",
    );
    expect_code(
        db.admin
            .query_one(
                "SELECT s2t.complete_recording($1, 10, '[]')",
                &[&Uuid::new_v4()],
            )
            .await,
        "S2N01",
    );
    assert_eq!(segment_count(&db, rec).await, 0);
    assert_eq!(used_seconds(&db, user).await, 0);
    let status: String = db
        .admin
        .query_one("SELECT status FROM s2t.recordings WHERE id = $1", &[&rec])
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        status, "processing",
        "a refused completion does not half-mark the recording"
    );
}

#[tokio::test]
async fn failing_a_recording_keeps_the_reason_and_blocks_completion() {
    let db = TestDb::new().await;
    let user = register(&db.admin, "dee").await;
    let rec = new_recording(&db.admin, user, "upload").await;
    expect_code(
        db.admin
            .query_one("SELECT s2t.fail_recording($1, '  ')", &[&rec])
            .await,
        "S2V01",
    );
    let first: bool = db
        .admin
        .query_one(
            "SELECT s2t.fail_recording($1, 'not an audio file')",
            &[&rec],
        )
        .await
        .unwrap()
        .get(0);
    assert!(first);
    let again: bool = db
        .admin
        .query_one("SELECT s2t.fail_recording($1, 'again')", &[&rec])
        .await
        .unwrap()
        .get(0);
    assert!(!again);
    let row = db
        .admin
        .query_one(
            "SELECT r.status, r.failure_reason, j.state, j.last_error
               FROM s2t.recordings r JOIN s2t.jobs j ON j.recording_id = r.id WHERE r.id = $1",
            &[&rec],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "failed");
    assert_eq!(row.get::<_, String>(1), "not an audio file");
    assert_eq!(row.get::<_, String>(2), "failed");
    assert_eq!(row.get::<_, String>(3), "not an audio file");
    let (_, detail, _) = expect_code(
        db.admin
            .query_one("SELECT s2t.complete_recording($1, 10, '[]')", &[&rec])
            .await,
        "S2S01",
    );
    assert!(detail.contains("not an audio file"));
    // A done recording cannot fail.
    let done = new_recording(&db.admin, user, "realtime").await;
    db.admin
        .query_one("SELECT s2t.complete_recording($1, 10, '[]')", &[&done])
        .await
        .unwrap();
    expect_code(
        db.admin
            .query_one("SELECT s2t.fail_recording($1, 'late')", &[&done])
            .await,
        "S2S01",
    );
    expect_code(
        db.admin
            .query_one("SELECT s2t.fail_recording($1, 'x')", &[&Uuid::new_v4()])
            .await,
        "S2N01",
    );
}

#[tokio::test]
async fn user_stats_report_totals_percentages_and_reset() {
    let db = TestDb::new().await;
    let user = register(&db.admin, "eve").await;
    set_limits(&db.admin, user, 4, 2).await;
    for duration in [30_000, 29_500] {
        let rec = new_recording(&db.admin, user, "upload").await;
        db.admin
            .query_one(
                "SELECT s2t.complete_recording($1, $2, $3)",
                &[
                    &rec,
                    &duration,
                    &json!([seg(0, 0, 1000, "a"), seg(1, 1000, 2000, "b")]),
                ],
            )
            .await
            .unwrap();
    }
    let row = db
        .admin
        .query_one(
            "SELECT total_recordings, total_duration_minutes::text, total_segments, current_cycle_usage,
                    current_cycle_seconds, quota_usage_percent::text, quota_minutes_percent::text,
                    monthly_usage_limit, monthly_minutes, cycle_end > now()
               FROM s2t.sp_get_user_stats($1)",
            &[&user],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, i64>(0), 2);
    assert_eq!(row.get::<_, String>(1), "0.99");
    assert_eq!(row.get::<_, i64>(2), 4);
    assert_eq!(row.get::<_, i32>(3), 2);
    assert_eq!(row.get::<_, i32>(4), 60);
    assert_eq!(row.get::<_, String>(5), "50.00");
    assert_eq!(row.get::<_, String>(6), "50.00");
    assert_eq!(row.get::<_, i32>(7), 4);
    assert_eq!(row.get::<_, i32>(8), 2);
    assert!(row.get::<_, bool>(9));
    expect_code(
        db.admin
            .query_one(
                "SELECT * FROM s2t.sp_get_user_stats($1)",
                &[&Uuid::new_v4()],
            )
            .await,
        "S2N01",
    );
}

#[tokio::test]
async fn change_plan_answers_every_case_as_a_row() {
    let db = TestDb::new().await;
    let user = register(&db.admin, "fay").await;
    new_recording(&db.admin, user, "realtime").await;
    let call = |plan: &'static str, prorate: bool| {
        let client = &db.admin;
        async move {
            let row = client
                .query_one(
                    "SELECT success, message FROM s2t.sp_change_user_plan($1, $2, $3)",
                    &[&user, &plan, &prorate],
                )
                .await
                .unwrap();
            (row.get::<_, bool>(0), row.get::<_, String>(1))
        }
    };
    assert_eq!(
        call("GOLD", false).await,
        (false, "Plan GOLD not found".into())
    );
    assert_eq!(
        call("FREE", false).await,
        (false, "Already on this plan".into())
    );
    assert_eq!(
        call("BASIC", false).await,
        (true, "Successfully changed plan to BASIC".into())
    );
    let usage: i32 = db
        .admin
        .query_one(
            "SELECT usage_count FROM s2t.user_subscriptions WHERE user_id = $1",
            &[&user],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(usage, 1, "without prorate the usage stays");
    assert!(call("PREMIUM", true).await.0);
    let row = db
        .admin
        .query_one(
            "SELECT p.code, s.usage_count FROM s2t.user_subscriptions s JOIN s2t.plans p ON p.id = s.plan_id
              WHERE s.user_id = $1",
            &[&user],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "PREMIUM");
    assert_eq!(
        row.get::<_, i32>(1),
        0,
        "prorate restarts the cycle's usage"
    );
    let row = db
        .admin
        .query_one(
            "SELECT success, message FROM s2t.sp_change_user_plan($1, 'BASIC')",
            &[&Uuid::new_v4()],
        )
        .await
        .unwrap();
    assert!(!row.get::<_, bool>(0));
    assert_eq!(row.get::<_, String>(1), "No active subscription found");
}

#[tokio::test]
async fn cleanup_deletes_old_finished_recordings_in_batches_with_exact_counts() {
    let db = TestDb::new().await;
    let user = register(&db.admin, "gus").await;
    set_limits(&db.admin, user, 100, 600).await;
    let mut old = Vec::new();
    for i in 0..5 {
        let rec = new_recording(&db.admin, user, "upload").await;
        let segments = json!((0..=i)
            .map(|k| seg(k, k * 10, k * 10 + 10, "x"))
            .collect::<Vec<_>>());
        db.admin
            .query_one(
                "SELECT s2t.complete_recording($1, 1000, $2)",
                &[&rec, &segments],
            )
            .await
            .unwrap();
        old.push(rec);
    }
    let processing = new_recording(&db.admin, user, "upload").await;
    let recent = new_recording(&db.admin, user, "upload").await;
    db.admin
        .query_one(
            "SELECT s2t.complete_recording($1, 1000, $2)",
            &[&recent, &json!([seg(0, 0, 10, "keep")])],
        )
        .await
        .unwrap();
    // Age everything but the recent one; the processing one must survive.
    db.admin
        .execute(
            "UPDATE s2t.recordings SET created_at = now() - interval '100 days' WHERE id <> $1",
            &[&recent],
        )
        .await
        .unwrap();
    // Oldest first: give the old ones distinct ages.
    for (i, rec) in old.iter().enumerate() {
        db.admin
            .execute(
                "UPDATE s2t.recordings SET created_at = now() - interval '100 days' - $2 * interval '1 hour' WHERE id = $1",
                &[rec, &((10 - i) as f64)],
            )
            .await
            .unwrap();
    }
    let row = db
        .admin
        .query_one("SELECT * FROM s2t.sp_cleanup_old_recordings(90, 2)", &[])
        .await
        .unwrap();
    // The two oldest are old[0] (1 segment) and old[1] (2 segments).
    assert_eq!((row.get::<_, i32>(0), row.get::<_, i32>(1)), (2, 3));
    let row = db
        .admin
        .query_one("SELECT * FROM s2t.sp_cleanup_old_recordings(90, 1000)", &[])
        .await
        .unwrap();
    assert_eq!((row.get::<_, i32>(0), row.get::<_, i32>(1)), (3, 3 + 4 + 5));
    let left: Vec<Uuid> = db
        .admin
        .query("SELECT id FROM s2t.recordings ORDER BY created_at", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(left, vec![processing, recent]);
    let orphans: i64 = db
        .admin
        .query_one(
            "SELECT count(*) FROM s2t.segments s WHERE NOT EXISTS (SELECT FROM s2t.recordings r WHERE r.id = s.recording_id)",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(orphans, 0);
    for (days, batch) in [(0, 10), (90, 0), (90, 100_001)] {
        expect_code(
            db.admin
                .query_one(
                    "SELECT * FROM s2t.sp_cleanup_old_recordings($1, $2)",
                    &[&days, &batch],
                )
                .await,
            "S2V01",
        );
    }
}

/// The single-column rules live in domains (cached per session) rather than
/// table CHECKs: they must still refuse bad values on every write path, even
/// for the superuser, with 23514 and the row unchanged.
#[tokio::test]
async fn column_rules_refuse_bad_values_even_for_the_owner() {
    let db = TestDb::new().await;
    let user = register(&db.admin, "rules").await;
    let rec = new_recording(&db.admin, user, "upload").await;
    let writes = [
        ("UPDATE s2t.recordings SET status = 'paused' WHERE id = $1", "recording_status"),
        ("UPDATE s2t.recordings SET source = 'tape' WHERE id = $1", "recording_source"),
        ("UPDATE s2t.recordings SET duration_ms = -1 WHERE id = $1", "nonnegative_int"),
        ("UPDATE s2t.recordings SET billed_seconds = billed_seconds - 1 WHERE id = $1", "nonnegative_int"),
        ("UPDATE s2t.recordings SET expected_ms = -5 WHERE id = $1", "nonnegative_int"),
        ("UPDATE s2t.jobs SET state = 'lost' WHERE recording_id = $1", "job_state"),
        ("UPDATE s2t.jobs SET max_attempts = 0 WHERE recording_id = $1", "positive_int"),
        ("UPDATE s2t.jobs SET attempts = -1 WHERE recording_id = $1", "nonnegative_int"),
        (
            "UPDATE s2t.user_subscriptions s SET usage_count = -1 FROM s2t.recordings r WHERE r.id = $1 AND s.user_id = r.user_id",
            "nonnegative_int",
        ),
        (
            "UPDATE s2t.user_subscriptions s SET reserved_seconds = s.reserved_seconds - 1000000 FROM s2t.recordings r WHERE r.id = $1 AND s.user_id = r.user_id",
            "nonnegative_int",
        ),
    ];
    for (sql, domain) in writes {
        let (message, _, _) = expect_code(db.admin.execute(sql, &[&rec]).await, "23514");
        assert!(message.contains(domain), "{sql}: {message}");
    }
    // A rule over two columns is still a table CHECK.
    expect_code(
        db.admin
            .execute(
                "UPDATE s2t.recordings SET status = 'failed', failure_reason = NULL WHERE id = $1",
                &[&rec],
            )
            .await,
        "23514",
    );
    let row = db
        .admin
        .query_one(
            "SELECT r.status, r.source, r.duration_ms, j.state, j.max_attempts, s.usage_count
               FROM s2t.recordings r JOIN s2t.jobs j ON j.recording_id = r.id
               JOIN s2t.user_subscriptions s ON s.user_id = r.user_id WHERE r.id = $1",
            &[&rec],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "processing");
    assert_eq!(row.get::<_, String>(1), "upload");
    assert_eq!(row.get::<_, Option<i32>>(2), Some(0));
    assert_eq!(row.get::<_, String>(3), "queued");
    assert_eq!(row.get::<_, i32>(4), 5);
    assert_eq!(row.get::<_, i32>(5), 1);
}
