//! Row-level security: as the application role, user A sees none of B's
//! rows and cannot write them, through tables and through functions.

use s2t_tests::*;
use serde_json::json;
use tokio_postgres::Client;
use uuid::Uuid;

struct World {
    db: TestDb,
    a: Uuid,
    b: Uuid,
    a_rec: Uuid,
    b_rec: Uuid,
}

async fn world() -> World {
    let db = TestDb::new().await;
    let a = register(&db.admin, "alice").await;
    let b = register(&db.admin, "bruno").await;
    let a_rec = new_recording(&db.admin, a, "upload").await;
    let b_rec = new_recording(&db.admin, b, "upload").await;
    for (rec, user) in [(a_rec, a), (b_rec, b)] {
        db.admin
            .query_one(
                "SELECT s2t.complete_recording($1, 2000, $2)",
                &[&rec, &json!([seg(0, 0, 1000, "secret words")])],
            )
            .await
            .unwrap();
        // complete_recording chunked it: one chunk, "secret words".
        db.admin
            .execute(
                "INSERT INTO s2t.recording_audio (recording_id, audio_id, user_id) VALUES ($1, gen_random_uuid(), $2)",
                &[&rec, &user],
            )
            .await
            .unwrap();
        db.admin
            .execute(
                "INSERT INTO s2t.refresh_tokens (user_id, family_id, token_hash, expires_at)
                 VALUES ($1, gen_random_uuid(), gen_random_uuid()::text::bytea, now() + interval '1 day')",
                &[&user],
            )
            .await
            .unwrap();
    }
    World {
        db,
        a,
        b,
        a_rec,
        b_rec,
    }
}

async fn ids_visible(app: &Client, sql: &str) -> Vec<Uuid> {
    app.query(sql, &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

#[tokio::test]
async fn the_app_role_sees_only_the_acting_users_rows() {
    let w = world().await;
    let app = w.db.connect_as(APP_LOGIN).await;
    act_as(&app, w.a).await;
    let checks = [
        ("SELECT id FROM s2t.users", w.a),
        ("SELECT user_id FROM s2t.user_profiles", w.a),
        ("SELECT user_id FROM s2t.user_subscriptions", w.a),
        ("SELECT id FROM s2t.recordings", w.a_rec),
        ("SELECT recording_id FROM s2t.segments", w.a_rec),
        ("SELECT recording_id FROM s2t.transcript_chunks", w.a_rec),
        ("SELECT recording_id FROM s2t.recording_audio", w.a_rec),
        ("SELECT user_id FROM s2t.refresh_tokens", w.a),
    ];
    for (sql, only) in checks {
        assert_eq!(ids_visible(&app, sql).await, vec![only], "{sql}");
    }
    // Token hashes are not readable even for one's own tokens.
    app.batch_execute("SAVEPOINT s").await.unwrap();
    expect_code(
        app.execute("SELECT token_hash FROM s2t.refresh_tokens", &[])
            .await,
        "42501",
    );
    app.batch_execute("ROLLBACK TO SAVEPOINT s").await.unwrap();
    app.batch_execute("COMMIT").await.unwrap();

    // Without s2t.user_id the app role sees nothing at all.
    for sql in [
        "SELECT id FROM s2t.users",
        "SELECT id FROM s2t.recordings",
        "SELECT recording_id FROM s2t.segments",
    ] {
        assert!(ids_visible(&app, sql).await.is_empty(), "{sql}");
    }
    // Plans are public.
    let plans: i64 = app
        .query_one("SELECT count(*) FROM s2t.plans", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(plans, 4);
}

#[tokio::test]
async fn the_app_role_cannot_write_another_users_rows() {
    let w = world().await;
    let app = w.db.connect_as(APP_LOGIN).await;
    act_as(&app, w.a).await;
    let updated = app
        .execute(
            "UPDATE s2t.user_profiles SET name = 'pwned' WHERE user_id = $1",
            &[&w.b],
        )
        .await
        .unwrap();
    assert_eq!(updated, 0);
    let deleted = app
        .execute("DELETE FROM s2t.recordings WHERE id = $1", &[&w.b_rec])
        .await
        .unwrap();
    assert_eq!(deleted, 0);
    // Handing one's own profile to another user is not even granted.
    expect_code(
        app.execute(
            "UPDATE s2t.user_profiles SET user_id = $2 WHERE user_id = $1",
            &[&w.a, &w.b],
        )
        .await,
        "42501",
    );
    app.batch_execute("ROLLBACK").await.unwrap();
    act_as(&app, w.a).await;
    let own = app
        .execute(
            "UPDATE s2t.user_profiles SET name = 'Alice B' WHERE user_id = $1",
            &[&w.a],
        )
        .await
        .unwrap();
    assert_eq!(own, 1, "one's own profile is writable");
    let own_delete = app
        .execute("DELETE FROM s2t.recordings WHERE id = $1", &[&w.a_rec])
        .await
        .unwrap();
    assert_eq!(own_delete, 1);
    app.batch_execute("COMMIT").await.unwrap();
    let row =
        w.db.admin
            .query_one(
                "SELECT (SELECT name FROM s2t.user_profiles WHERE user_id = $1),
                    (SELECT count(*) FROM s2t.recordings WHERE id = $2),
                    (SELECT count(*) FROM s2t.segments WHERE recording_id = $2)",
                &[&w.b, &w.b_rec],
            )
            .await
            .unwrap();
    assert_eq!(row.get::<_, String>(0), "Name of bruno");
    assert_eq!(row.get::<_, i64>(1), 1);
    assert_eq!(row.get::<_, i64>(2), 1);
}

#[tokio::test]
async fn direct_writes_and_secrets_are_not_granted() {
    let w = world().await;
    let app = w.db.connect_as(APP_LOGIN).await;
    for sql in [
        "SELECT password_hash FROM s2t.users",
        "INSERT INTO s2t.recordings (user_id, source) VALUES (s2t.current_user_id(), 'upload')",
        "UPDATE s2t.user_subscriptions SET usage_count = 0",
        "INSERT INTO s2t.segments (recording_id, idx, start_ms, end_ms, text) VALUES (gen_random_uuid(), 0, 0, 1, 'x')",
        "SELECT * FROM s2t.jobs",
        "SELECT * FROM s2t.claim_job('app', interval '1 minute')",
        "SELECT * FROM s2t.sp_cleanup_old_recordings(1, 1)",
        "SELECT s2t.reset_monthly_cycles()",
    ] {
        act_as(&app, w.a).await;
        expect_code(app.execute(sql, &[]).await, "42501");
        app.batch_execute("ROLLBACK").await.unwrap();
    }
}

#[tokio::test]
async fn functions_refuse_to_act_for_another_user() {
    let w = world().await;
    let app = w.db.connect_as(APP_LOGIN).await;
    let b = w.b;
    let probes: Vec<(&str, Vec<&(dyn tokio_postgres::types::ToSql + Sync)>)> = vec![
        ("SELECT * FROM s2t.sp_get_user_stats($1)", vec![&b]),
        (
            "SELECT s2t.check_quota_and_create_recording($1, 'upload')",
            vec![&b],
        ),
        (
            "SELECT * FROM s2t.sp_check_quota_and_create_recording($1, 'upload')",
            vec![&b],
        ),
        (
            "SELECT * FROM s2t.sp_change_user_plan($1, 'PREMIUM')",
            vec![&b],
        ),
        (
            "SELECT * FROM s2t.create_api_key($1, 'k', 's2t_x', sha256('k'))",
            vec![&b],
        ),
    ];
    for (sql, params) in &probes {
        act_as(&app, w.a).await;
        let (message, _, _) = expect_code(app.query(*sql, params).await, "S2N01");
        assert!(!message.contains("secret"), "{message}");
        app.batch_execute("ROLLBACK").await.unwrap();
    }
    // Without s2t.user_id the same calls are refused outright.
    for (sql, params) in &probes {
        expect_code(app.query(*sql, params).await, "42501");
    }
    let row =
        w.db.admin
            .query_one(
                "SELECT s.usage_count, p.code, r.status FROM s2t.user_subscriptions s
               JOIN s2t.plans p ON p.id = s.plan_id JOIN s2t.recordings r ON r.user_id = s.user_id
              WHERE s.user_id = $1",
                &[&b],
            )
            .await
            .unwrap();
    assert_eq!(row.get::<_, i32>(0), 1);
    assert_eq!(row.get::<_, String>(1), "FREE");
    assert_eq!(row.get::<_, String>(2), "done");
}

#[tokio::test]
async fn functions_work_for_the_acting_user() {
    let w = world().await;
    let app = w.db.connect_as(APP_LOGIN).await;
    act_as(&app, w.a).await;
    let rec: Uuid = app
        .query_one(
            "SELECT s2t.check_quota_and_create_recording($1, 'realtime')",
            &[&w.a],
        )
        .await
        .unwrap()
        .get(0);
    // Completing is the worker's word, not the application's.
    app.batch_execute("COMMIT").await.unwrap();
    let worker = w.db.connect_as(WORKER_LOGIN).await;
    let done: bool = worker
        .query_one(
            "SELECT s2t.complete_recording($1, 1500, $2)",
            &[&rec, &json!([seg(0, 0, 1500, "mine")])],
        )
        .await
        .unwrap()
        .get(0);
    assert!(done);
    act_as(&app, w.a).await;
    let total: i64 = app
        .query_one(
            "SELECT total_recordings FROM s2t.sp_get_user_stats($1)",
            &[&w.a],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(total, 2);
    app.batch_execute("COMMIT").await.unwrap();
    // Registration needs no acting user.
    let new_user = register(&app, "carla").await;
    assert_ne!(new_user, w.a);
    // Superuser SET ROLE to the app role is restricted the same way.
    let admin = w.db.connect_admin().await;
    admin.batch_execute("SET ROLE s2t_app").await.unwrap();
    expect_code(
        admin
            .query("SELECT * FROM s2t.sp_get_user_stats($1)", &[&w.b])
            .await,
        "42501",
    );
}
