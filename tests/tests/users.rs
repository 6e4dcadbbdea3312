//! Registration: sp_register_user / register_user.

use s2t_tests::*;
use uuid::Uuid;

#[tokio::test]
async fn register_creates_user_profile_and_free_subscription() {
    let db = TestDb::new().await;
    let id: Uuid = db
        .admin
        .query_one(
            "SELECT s2t.register_user('  Ann@Example.COM ', 'ann', '$argon2id$x', 'Ann Lee')",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let row = db
        .admin
        .query_one(
            "SELECT u.email, u.user_name, u.status, p.name, pl.code, s.usage_count, s.used_seconds,
                    s.cycle_start = date_trunc('month', now(), 'UTC') AS cycle_ok
               FROM s2t.users u JOIN s2t.user_profiles p ON p.user_id = u.id
               JOIN s2t.user_subscriptions s ON s.user_id = u.id JOIN s2t.plans pl ON pl.id = s.plan_id
              WHERE u.id = $1",
            &[&id],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "ann@example.com");
    assert_eq!(row.get::<_, String>(1), "ann");
    assert_eq!(row.get::<_, String>(2), "active");
    assert_eq!(row.get::<_, String>(3), "Ann Lee");
    assert_eq!(row.get::<_, String>(4), "FREE");
    assert_eq!(row.get::<_, i32>(5), 0);
    assert_eq!(row.get::<_, i32>(6), 0);
    assert!(row.get::<_, bool>(7));
}

#[tokio::test]
async fn sp_register_user_procedure_registers_on_the_named_plan() {
    let db = TestDb::new().await;
    db.admin
        .execute(
            "CALL s2t.sp_register_user('bo@example.com', 'bo_1', '$argon2id$x', 'Bo', 'PREMIUM')",
            &[],
        )
        .await
        .unwrap();
    let plan: String = db
        .admin
        .query_one(
            "SELECT pl.code FROM s2t.users u JOIN s2t.user_subscriptions s ON s.user_id = u.id
               JOIN s2t.plans pl ON pl.id = s.plan_id WHERE u.user_name = 'bo_1'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(plan, "PREMIUM");
}

#[tokio::test]
async fn invalid_registration_input_names_the_field_and_writes_nothing() {
    let db = TestDb::new().await;
    let cases = [
        ("not-an-email", "carol", "$h", Some("Carol"), "field: email"),
        (
            "c@example.com",
            "c",
            "$h",
            Some("Carol"),
            "field: user_name",
        ),
        (
            "c@example.com",
            "bad name!",
            "$h",
            Some("Carol"),
            "field: user_name",
        ),
        (
            "c@example.com",
            "carol",
            "",
            Some("Carol"),
            "field: password_hash",
        ),
        ("c@example.com", "carol", "$h", Some("   "), "field: name"),
    ];
    for (email, user_name, hash, name, field) in cases {
        let (message, detail, hint) = expect_code(
            db.admin
                .query_one(
                    "SELECT s2t.register_user($1, $2, $3, $4)",
                    &[&email, &user_name, &hash, &name],
                )
                .await,
            "S2V01",
        );
        assert_eq!(detail, field, "{message}");
        assert!(!hint.is_empty(), "a hint for {field}");
    }
    let users: i64 = db
        .admin
        .query_one("SELECT count(*) FROM s2t.users", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(users, 0);
}

#[tokio::test]
async fn duplicate_email_or_user_name_is_a_conflict() {
    let db = TestDb::new().await;
    register(&db.admin, "dave").await;
    let (message, detail, _) = expect_code(
        db.admin
            .query_one(
                "SELECT s2t.register_user('DAVE@example.com', 'dave2', '$h', NULL)",
                &[],
            )
            .await,
        "S2C01",
    );
    assert_eq!(detail, "field: email", "{message}");
    // User names collide regardless of case.
    let (_, detail, _) = expect_code(
        db.admin
            .query_one(
                "SELECT s2t.register_user('other@example.com', 'Dave', '$h', NULL)",
                &[],
            )
            .await,
        "S2C01",
    );
    assert_eq!(detail, "field: user_name");
    let users: i64 = db
        .admin
        .query_one("SELECT count(*) FROM s2t.users", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(users, 1, "a refused registration leaves no rows behind");
}

#[tokio::test]
async fn unknown_plan_is_not_found() {
    let db = TestDb::new().await;
    let (message, _, hint) = expect_code(
        db.admin
            .execute(
                "CALL s2t.sp_register_user('e@example.com', 'erin', '$h', 'Erin', 'GOLD')",
                &[],
            )
            .await,
        "S2N01",
    );
    assert!(message.contains("GOLD"), "{message}");
    assert!(
        hint.contains("FREE") && hint.contains("ENTERPRISE"),
        "{hint}"
    );
}

#[tokio::test]
async fn seeded_plans_and_comments_exist() {
    let db = TestDb::new().await;
    let codes: Vec<String> = db
        .admin
        .query("SELECT code FROM s2t.plans ORDER BY monthly_minutes", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(codes, ["FREE", "BASIC", "PREMIUM", "ENTERPRISE"]);
    // Every table and every routine of ours is documented.
    let undocumented: Vec<String> = db
        .admin
        .query(
            "SELECT c.relname::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
              WHERE n.nspname = 's2t' AND c.relkind = 'r' AND obj_description(c.oid, 'pg_class') IS NULL
             UNION ALL
             SELECT p.oid::regprocedure::text FROM pg_proc p
               JOIN pg_depend d ON d.classid = 'pg_proc'::regclass AND d.objid = p.oid AND d.deptype = 'e'
               JOIN pg_extension e ON e.oid = d.refobjid AND e.extname = 'pg_s2t'
              WHERE obj_description(p.oid, 'pg_proc') IS NULL",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(
        undocumented.is_empty(),
        "missing COMMENT ON: {undocumented:?}"
    );
    let version: String = db
        .admin
        .query_one(
            "SELECT s2t.extension_version() || '/' || extversion FROM pg_extension WHERE extname = 'pg_s2t'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let expected = env!("CARGO_PKG_VERSION");
    assert_eq!(version, format!("{expected}/{expected}"));
}
