//! Privilege boundaries, tried the way an attacker would: the application
//! and worker roles must not gain anything through the extension's
//! SECURITY DEFINER functions, and each role may call and read exactly what
//! the README says.

use s2t_tests::*;
use tokio_postgres::Client;
use uuid::Uuid;

/// Every SECURITY DEFINER function pins search_path with pg_temp last (or
/// PostgreSQL searches pg_temp first, and a caller's temporary table
/// shadows ours), and none is owned by a superuser.
#[tokio::test]
async fn every_security_definer_function_pins_pg_temp_last_and_has_no_superuser_owner() {
    let db = TestDb::new().await;
    let rows = db
        .admin
        .query(
            "SELECT p.oid::regprocedure::text, p.proconfig, r.rolsuper, r.rolbypassrls, r.rolname::text
               FROM pg_proc p JOIN pg_roles r ON r.oid = p.proowner
              WHERE p.pronamespace = 's2t'::regnamespace AND p.prosecdef",
            &[],
        )
        .await
        .unwrap();
    assert!(
        rows.len() > 30,
        "the check sees the functions ({})",
        rows.len()
    );
    for r in &rows {
        let name: String = r.get(0);
        let config: Option<Vec<String>> = r.get(1);
        let path = config
            .unwrap_or_default()
            .into_iter()
            .find_map(|c| c.strip_prefix("search_path=").map(str::to_string))
            .unwrap_or_else(|| panic!("{name} does not pin search_path"));
        assert!(
            path.replace(' ', "").ends_with(",pg_temp"),
            "{name}: search_path {path} must end with pg_temp"
        );
        assert!(!r.get::<_, bool>(2), "{name} is owned by a superuser");
        assert!(!r.get::<_, bool>(3), "{name}'s owner bypasses RLS");
        assert_eq!(r.get::<_, String>(4), "s2t_definer", "{name}");
    }
    // The owner can do nothing outside the data model.
    let definer = db
        .admin
        .query_one(
            "SELECT rolsuper, rolcanlogin, rolcreaterole, rolcreatedb, rolbypassrls
               FROM pg_roles WHERE rolname = 's2t_definer'",
            &[],
        )
        .await
        .unwrap();
    for i in 0..5 {
        assert!(!definer.get::<_, bool>(i), "s2t_definer attribute {i}");
    }
}

/// Lays the trap: for every table of the extension, a temporary view of the
/// same name over a temporary table with the same columns. Reading it calls
/// `pg_temp.spy()`, writing it fires a trigger that calls it too; spy counts
/// (in a sequence, which a rollback does not undo) every time it runs as a
/// role other than the attacker's, and tries to make the attacker a
/// superuser.
async fn lay_trap(db: &TestDb, attacker: &Client) {
    // Type names come out schema-qualified (s2t.vector) this way.
    let catalog = db.connect_admin().await;
    catalog
        .batch_execute("SET search_path = pg_catalog")
        .await
        .unwrap();
    let tables: Vec<(String, String)> = catalog
        .query(
            "SELECT c.relname::text,
                    string_agg(format('%I %s', a.attname, format_type(a.atttypid, a.atttypmod)), ', ' ORDER BY a.attnum)
               FROM pg_class c JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped
              WHERE c.relnamespace = 's2t'::regnamespace AND c.relkind = 'r'
              GROUP BY c.relname",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert!(tables.len() >= 15, "{tables:?}");
    attacker
        .batch_execute(
            r#"
            CREATE TEMP SEQUENCE hits;
            CREATE FUNCTION pg_temp.spy() RETURNS boolean LANGUAGE plpgsql VOLATILE AS $$
            BEGIN
                IF current_user <> session_user THEN
                    PERFORM nextval('pg_temp.hits');
                    BEGIN
                        EXECUTE format('ALTER ROLE %I SUPERUSER', session_user);
                    EXCEPTION WHEN others THEN NULL;
                    END;
                END IF;
                RETURN true;
            END $$;
            CREATE FUNCTION pg_temp.spy_trigger() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                PERFORM pg_temp.spy();
                RETURN NULL;
            END $$;
            "#,
        )
        .await
        .expect("the attacker may create temporary objects here");
    for (name, columns) in &tables {
        attacker
            .batch_execute(&format!(
                "CREATE TEMP TABLE \"_{name}\" ({columns});
                 INSERT INTO pg_temp.\"_{name}\" DEFAULT VALUES;
                 CREATE TRIGGER spy BEFORE INSERT OR UPDATE OR DELETE ON pg_temp.\"_{name}\"
                     FOR EACH STATEMENT EXECUTE FUNCTION pg_temp.spy_trigger();
                 CREATE TEMP VIEW \"{name}\" AS SELECT * FROM pg_temp.\"_{name}\" WHERE pg_temp.spy();"
            ))
            .await
            .unwrap_or_else(|e| panic!("trap for {name}: {:?}", e.as_db_error()));
    }
}

async fn hits(attacker: &Client) -> i64 {
    let r = attacker
        .query_one("SELECT last_value, is_called FROM pg_temp.hits", &[])
        .await
        .unwrap();
    if r.get::<_, bool>(1) {
        r.get(0)
    } else {
        0
    }
}

/// A plausible argument of each type, so calls get past argument checks.
fn argument(ty: &str, user: Uuid) -> String {
    match ty {
        "uuid" => format!("'{user}'::uuid"),
        "text" => "'FREE'".into(),
        "integer" => "1".into(),
        "bigint" => "1".into(),
        "real" => "0.5".into(),
        "boolean" => "false".into(),
        "jsonb" => "'[]'::jsonb".into(),
        "interval" => "interval '1 minute'".into(),
        "bytea" => "sha256('x')".into(),
        "timestamp with time zone" => "now() + interval '1 day'".into(),
        "text[]" => "NULL::text[]".into(),
        other => format!("NULL::{other}"),
    }
}

/// Calls every routine `role` may execute, once acting for `user` and once
/// for nobody, inside the trap; returns how many were called.
async fn call_everything(db: &TestDb, attacker: &Client, role: &str, user: Uuid) -> usize {
    let routines = db
        .admin
        .query(
            "SELECT p.oid::regprocedure::text, p.proname::text, p.prokind::text,
                    coalesce((SELECT array_agg(format_type(t, NULL) ORDER BY o)
                                FROM unnest(p.proargtypes::oid[]) WITH ORDINALITY AS a(t, o)), '{}')
               FROM pg_proc p
               JOIN pg_depend d ON d.classid = 'pg_proc'::regclass AND d.objid = p.oid AND d.deptype = 'e'
               JOIN pg_extension e ON e.oid = d.refobjid AND e.extname = 'pg_s2t'
              WHERE has_function_privilege($1, p.oid, 'EXECUTE') AND p.prorettype <> 'trigger'::regtype",
            &[&role],
        )
        .await
        .unwrap();
    for r in &routines {
        let name: String = r.get(1);
        let kind: String = r.get(2);
        let types: Vec<String> = r.get(3);
        let args: Vec<String> = types.iter().map(|t| argument(t, user)).collect();
        let call = if kind == "p" {
            format!("CALL s2t.{name}({})", args.join(", "))
        } else {
            format!("SELECT * FROM s2t.{name}({})", args.join(", "))
        };
        for acting in [Some(user), None] {
            attacker.batch_execute("BEGIN").await.unwrap();
            if let Some(u) = acting {
                attacker
                    .execute(
                        "SELECT set_config('s2t.user_id', $1, true)",
                        &[&u.to_string()],
                    )
                    .await
                    .unwrap();
            }
            // Most calls fail on these arguments, and every one is rolled
            // back; the trap's counter is a sequence, which survives both.
            let _ = attacker.batch_execute(&call).await;
            attacker.batch_execute("ROLLBACK").await.unwrap();
        }
    }
    routines.len()
}

async fn assert_attack_gains_nothing(login: &str, group: &str) {
    let db = TestDb::new().await;
    let user = register(&db.admin, "victim").await;
    new_recording(&db.admin, user, "upload").await;
    // Production revokes TEMP from PUBLIC; the functions must be safe even
    // where a deployment forgot to.
    db.admin
        .batch_execute(&format!(
            "GRANT TEMPORARY ON DATABASE {} TO {login}",
            db.name
        ))
        .await
        .unwrap();
    let attacker = db.connect_as(login).await;
    lay_trap(&db, &attacker).await;

    // The trap works: a definer function written the 0.2.0 way (pg_temp not
    // pinned last, owned by a superuser) falls into it.
    db.admin
        .batch_execute(&format!(
            "CREATE FUNCTION public.vulnerable() RETURNS bigint LANGUAGE sql SECURITY DEFINER
                 SET search_path = s2t, pg_catalog AS $$ SELECT count(*) FROM users $$;
             GRANT EXECUTE ON FUNCTION public.vulnerable() TO {group}"
        ))
        .await
        .unwrap();
    attacker
        .query_one("SELECT public.vulnerable()", &[])
        .await
        .unwrap();
    assert!(
        hits(&attacker).await > 0,
        "the trap catches a vulnerable function"
    );
    let superuser: bool = db
        .admin
        .query_one(
            "SELECT rolsuper FROM pg_roles WHERE rolname = $1",
            &[&login],
        )
        .await
        .unwrap()
        .get(0);
    assert!(superuser, "the old way made {login} a superuser");
    db.admin
        .batch_execute(&format!(
            "ALTER ROLE {login} NOSUPERUSER; DROP FUNCTION public.vulnerable()"
        ))
        .await
        .unwrap();
    let before = hits(&attacker).await;

    let called = call_everything(&db, &attacker, login, user).await;
    assert!(called >= 8, "{login} may call {called} routines");
    assert_eq!(
        hits(&attacker).await,
        before,
        "a function of the extension ran the attacker's temporary objects as another role"
    );
    let r = db
        .admin
        .query_one(
            "SELECT rolsuper, rolbypassrls, rolcreaterole FROM pg_roles WHERE rolname = $1",
            &[&login],
        )
        .await
        .unwrap();
    assert!(!r.get::<_, bool>(0) && !r.get::<_, bool>(1) && !r.get::<_, bool>(2));
}

#[tokio::test]
async fn temp_table_hijack_gains_the_application_role_nothing() {
    assert_attack_gains_nothing(APP_LOGIN, "s2t_app").await;
}

#[tokio::test]
async fn temp_table_hijack_gains_the_worker_role_nothing() {
    assert_attack_gains_nothing(WORKER_LOGIN, "s2t_worker").await;
}

async fn callable(db: &TestDb, role: &str) -> Vec<String> {
    db.admin
        .query(
            "SELECT p.proname::text FROM pg_proc p
               JOIN pg_depend d ON d.classid = 'pg_proc'::regclass AND d.objid = p.oid AND d.deptype = 'e'
               JOIN pg_extension e ON e.oid = d.refobjid AND e.extname = 'pg_s2t'
              WHERE has_function_privilege($1, p.oid, 'EXECUTE') AND p.prorettype <> 'trigger'::regtype
                AND NOT has_function_privilege('public', p.oid, 'EXECUTE')
              ORDER BY 1",
            &[&role],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

async fn table_privileges(db: &TestDb, role: &str) -> Vec<String> {
    db.admin
        .query(
            "SELECT c.relname || ':' || string_agg(DISTINCT p.priv, ',' ORDER BY p.priv)
               FROM pg_class c
              CROSS JOIN unnest(ARRAY['SELECT', 'INSERT', 'UPDATE', 'DELETE', 'TRUNCATE']) AS p(priv)
              WHERE c.relnamespace = 's2t'::regnamespace AND c.relkind = 'r'
                AND (has_table_privilege($1, c.oid, p.priv)
                     OR (p.priv IN ('SELECT', 'INSERT', 'UPDATE')
                         AND has_any_column_privilege($1, c.oid, p.priv)))
              GROUP BY c.relname ORDER BY 1",
            &[&role],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// The README's list, checked: a new grant must be added here on purpose.
#[tokio::test]
async fn each_role_can_call_and_touch_exactly_the_expected_list() {
    let db = TestDb::new().await;
    assert_eq!(
        callable(&db, "s2t_app").await,
        [
            "_admit_recording",
            "_ask_prompt",
            "_embed_or_null",
            "_embed_query",
            "_extract_answer",
            "_highlights",
            "_query_terms",
            "_rrf",
            "_search",
            "admin_change_plan",
            "admin_list_users",
            "admin_reset_usage",
            "admin_set_user_status",
            "admin_upsert_plan",
            "admit_question",
            "api_key_user",
            "append_audio",
            "apply_billing_event",
            "ask",
            "ask_context",
            "attach_audio",
            "auth_lookup",
            "check_quota_and_create_recording",
            "create_api_key",
            "embed",
            "embedding_available",
            "embedding_model",
            "issue_refresh_token",
            "issue_ws_ticket",
            "open_realtime_session",
            "queue_stats",
            "read_audio",
            "redeem_ws_ticket",
            "register_user",
            "resume_realtime_session",
            "revoke_refresh_token",
            "rotate_refresh_token",
            "seal_audio",
            "search",
            "search",
            "sp_change_user_plan",
            "sp_check_quota_and_create_recording",
            "sp_get_user_stats",
            "sp_register_user",
        ]
    );
    assert_eq!(
        callable(&db, "s2t_worker").await,
        [
            "add_realtime_final",
            "append_audio",
            "chunk_recording",
            "claim_chunks_to_embed",
            "claim_job",
            "complete_job",
            "complete_recording",
            "embedding_backlog",
            "end_realtime_session",
            "extend_realtime_grant",
            "fail_job",
            "fail_recording",
            "heartbeat_job",
            "heartbeat_worker",
            "purge_refresh_tokens",
            "purge_ws_tickets",
            "queue_stats",
            "read_audio",
            "register_worker",
            "release_job",
            "reset_monthly_cycles",
            "seal_audio",
            "settle_job_length",
            "sp_cleanup_old_recordings",
            "sp_complete_recording",
            "sp_reset_monthly_cycles",
            "store_chunk_embeddings",
            "take_realtime_session",
            "unregister_worker",
        ]
    );
    assert_eq!(
        table_privileges(&db, "s2t_app").await,
        [
            "answers:DELETE,INSERT,SELECT",
            "api_keys:SELECT,UPDATE",
            "avatars:DELETE,INSERT,SELECT,UPDATE",
            "plans:SELECT",
            "question_usage:SELECT",
            "recording_audio:SELECT",
            "recording_audio_chunks:INSERT",
            "recordings:DELETE,SELECT",
            "refresh_tokens:SELECT",
            "segments:SELECT",
            "transcript_chunks:SELECT",
            "user_profiles:SELECT,UPDATE",
            "user_subscriptions:SELECT",
            "users:SELECT",
        ]
    );
    assert_eq!(
        table_privileges(&db, "s2t_worker").await,
        [
            "jobs:SELECT",
            "plans:SELECT",
            "recording_audio:SELECT",
            "recording_audio_chunks:SELECT",
            "recordings:SELECT",
            "segments:SELECT",
            "transcript_chunks:SELECT",
        ]
    );
    // The application never reads a password hash or a token hash from a
    // table (auth_lookup hands it the one hash it is verifying).
    for (table, column) in [
        ("users", "password_hash"),
        ("refresh_tokens", "token_hash"),
        ("api_keys", "key_hash"),
        ("settings", "billing_webhook_secret"),
    ] {
        let may: bool = db
            .admin
            .query_one(
                "SELECT has_column_privilege('s2t_app', format('s2t.%I', $1::text), $2, 'SELECT')",
                &[&table, &column],
            )
            .await
            .unwrap()
            .get(0);
        assert!(!may, "s2t_app can read {table}.{column}");
    }
}

#[tokio::test]
async fn the_application_cannot_complete_fail_reset_upgrade_or_point_at_files() {
    let db = TestDb::new().await;
    let user = register(&db.admin, "mallory").await;
    let rec = new_recording(&db.admin, user, "upload").await;
    let app = db.connect_as(APP_LOGIN).await;
    for sql in [
        format!("SELECT s2t.complete_recording('{rec}', 0, '[]')"),
        format!("SELECT s2t.fail_recording('{rec}', 'x')"),
        format!("CALL s2t.sp_complete_recording('{rec}', 0, '[]')"),
        "SELECT s2t.reset_monthly_cycles()".to_string(),
        format!("UPDATE s2t.user_subscriptions SET used_seconds = 0 WHERE user_id = '{user}'"),
        format!("UPDATE s2t.recordings SET status = 'done' WHERE id = '{rec}'"),
    ] {
        act_as(&app, user).await;
        expect_code(app.batch_execute(&sql).await, "42501");
        app.batch_execute("ROLLBACK").await.unwrap();
    }
    act_as(&app, user).await;
    let (message, _, _) = expect_code(
        app.query(
            "SELECT * FROM s2t.sp_change_user_plan($1, 'FREE', true)",
            &[&user],
        )
        .await,
        "42501",
    );
    assert!(message.contains("reset"), "{message}");
    app.batch_execute("ROLLBACK").await.unwrap();
    act_as(&app, user).await;
    let (message, _, hint) = expect_code(
        app.query(
            "SELECT * FROM s2t.sp_change_user_plan($1, 'ENTERPRISE')",
            &[&user],
        )
        .await,
        "42501",
    );
    assert!(message.contains("paid upgrade"), "{message}");
    assert!(hint.contains("billing"), "{hint}");
    app.batch_execute("ROLLBACK").await.unwrap();
    for uri in ["file:///etc/passwd", "s3://bucket/x", ""] {
        act_as(&app, user).await;
        let (message, _, _) = expect_code(
            app.query(
                "SELECT s2t.check_quota_and_create_recording($1, 'upload', 'en', '{}', $2)",
                &[&user, &uri],
            )
            .await,
            "42501",
        );
        assert!(message.contains("audio_uri"), "{message}");
        app.batch_execute("ROLLBACK").await.unwrap();
    }
    // Signing up straight onto a paid plan is refused too.
    let (message, _, _) = expect_code(
        app.query(
            "SELECT s2t.register_user('rich@example.com', 'rich', '$argon2id$x', NULL, 'ENTERPRISE')",
            &[],
        )
        .await,
        "42501",
    );
    assert!(message.contains("paid plan"), "{message}");
    // Nothing changed.
    let row = db
        .admin
        .query_one(
            "SELECT r.status, p.code, s.usage_count,
                    (SELECT count(*) FROM s2t.users WHERE user_name = 'rich')
               FROM s2t.recordings r JOIN s2t.user_subscriptions s ON s.user_id = r.user_id
               JOIN s2t.plans p ON p.id = s.plan_id WHERE r.id = $1",
            &[&rec],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "processing");
    assert_eq!(row.get::<_, String>(1), "FREE");
    assert_eq!(row.get::<_, i32>(2), 1);
    assert_eq!(row.get::<_, i64>(3), 0);
    // Downgrades and free plans stay self-service; the open mode restores
    // the specification's behaviour.
    act_as(&app, user).await;
    expect_code(
        app.query(
            "SELECT * FROM s2t.sp_change_user_plan($1, 'BASIC')",
            &[&user],
        )
        .await,
        "42501",
    );
    app.batch_execute("ROLLBACK").await.unwrap();
    db.admin
        .batch_execute("UPDATE s2t.settings SET self_service_plan_changes = true")
        .await
        .unwrap();
    act_as(&app, user).await;
    let ok: bool = app
        .query_one(
            "SELECT success FROM s2t.sp_change_user_plan($1, 'BASIC')",
            &[&user],
        )
        .await
        .unwrap()
        .get(0);
    assert!(ok);
    app.batch_execute("COMMIT").await.unwrap();
}

#[tokio::test]
async fn admin_functions_need_an_admin_in_the_database() {
    let db = TestDb::new().await;
    let alice = register(&db.admin, "alice").await;
    let root = register(&db.admin, "root").await;
    db.admin
        .execute(
            "UPDATE s2t.users SET role = 'admin' WHERE id = $1",
            &[&root],
        )
        .await
        .unwrap();
    let app = db.connect_as(APP_LOGIN).await;
    let calls = [
        "SELECT * FROM s2t.admin_list_users()".to_string(),
        format!("SELECT s2t.admin_set_user_status('{alice}', 'disabled')"),
        format!("SELECT * FROM s2t.admin_change_plan('{alice}', 'ENTERPRISE')"),
        format!("SELECT s2t.admin_reset_usage('{alice}')"),
        "SELECT s2t.admin_upsert_plan('CHEAP', 'x', NULL, 'paid', 0, 0, 99999, 99999)".into(),
    ];
    for sql in &calls {
        // Neither as a plain user nor as nobody.
        act_as(&app, alice).await;
        let (message, _, _) = expect_code(app.batch_execute(sql).await, "42501");
        assert!(message.contains("administrator"), "{message}");
        app.batch_execute("ROLLBACK").await.unwrap();
        expect_code(app.batch_execute(sql).await, "42501");
    }
    act_as(&app, root).await;
    let n = app
        .query("SELECT * FROM s2t.admin_list_users('ali')", &[])
        .await
        .unwrap();
    assert_eq!(n.len(), 1);
    let ok: bool = app
        .query_one(
            "SELECT success FROM s2t.admin_change_plan($1, 'ENTERPRISE')",
            &[&alice],
        )
        .await
        .unwrap()
        .get(0);
    assert!(ok);
    app.query_one(
        "SELECT s2t.admin_set_user_status($1, 'disabled')",
        &[&alice],
    )
    .await
    .unwrap();
    app.batch_execute("COMMIT").await.unwrap();
    act_as(&app, root).await;
    expect_code(
        app.query("SELECT s2t.admin_set_user_status($1, 'disabled')", &[&root])
            .await,
        "S2S01",
    );
    app.batch_execute("ROLLBACK").await.unwrap();
    let row = db
        .admin
        .query_one(
            "SELECT u.status, p.code FROM s2t.users u JOIN s2t.user_subscriptions s ON s.user_id = u.id
               JOIN s2t.plans p ON p.id = s.plan_id WHERE u.id = $1",
            &[&alice],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "disabled");
    assert_eq!(row.get::<_, String>(1), "ENTERPRISE");
}

#[tokio::test]
async fn billing_events_apply_once_and_only_when_signed() {
    let db = TestDb::new().await;
    let user = register(&db.admin, "payer").await;
    let app = db.connect_as(APP_LOGIN).await;
    let payload =
        format!(r#"{{"event_id": "evt_1", "user_id": "{user}", "plan_code": "PREMIUM"}}"#);
    let now = chrono::Utc::now().timestamp();
    let secret = "test-billing-secret-0123456789abcdef";
    // Not configured: refused.
    expect_code(
        app.query(
            "SELECT s2t.apply_billing_event($1, $2)",
            &[&payload, &"t=1,v1=00"],
        )
        .await,
        "S2S01",
    );
    db.admin
        .execute(
            "UPDATE s2t.settings SET billing_webhook_secret = $1",
            &[&secret],
        )
        .await
        .unwrap();
    let good = s2t_core::billing::sign(secret.as_bytes(), payload.as_bytes(), now);
    let forged = s2t_core::billing::sign(
        b"guessed-secret-guessed-secret-guessed",
        payload.as_bytes(),
        now,
    );
    let stale = s2t_core::billing::sign(secret.as_bytes(), payload.as_bytes(), now - 3600);
    let other = payload.replace("PREMIUM", "ENTERPRISE");
    for (body, sig) in [
        (&payload, forged.as_str()),
        (&payload, stale.as_str()),
        (&other, good.as_str()),
        (&payload, "garbage"),
    ] {
        let (message, _, _) = expect_code(
            app.query("SELECT s2t.apply_billing_event($1, $2)", &[body, &sig])
                .await,
            "42501",
        );
        assert!(message.contains("signature"), "{message}");
    }
    let plan = || async {
        db.admin
            .query_one(
                "SELECT p.code FROM s2t.user_subscriptions s JOIN s2t.plans p ON p.id = s.plan_id WHERE s.user_id = $1",
                &[&user],
            )
            .await
            .unwrap()
            .get::<_, String>(0)
    };
    assert_eq!(plan().await, "FREE");
    for want in ["applied", "duplicate"] {
        let got: String = app
            .query_one("SELECT s2t.apply_billing_event($1, $2)", &[&payload, &good])
            .await
            .unwrap()
            .get(0);
        assert_eq!(got, want);
    }
    assert_eq!(plan().await, "PREMIUM");
    // The application role cannot read the secret it would need to forge.
    expect_code(
        app.query("SELECT billing_webhook_secret FROM s2t.settings", &[])
            .await,
        "42501",
    );
}

#[tokio::test]
async fn api_key_limit_holds_under_concurrent_creation_and_keys_expire() {
    let db = TestDb::new().await;
    let user = register(&db.admin, "keys").await;
    let mut tasks = Vec::new();
    for i in 0..30 {
        let url = db.url(APP_LOGIN);
        tasks.push(tokio::spawn(async move {
            let c = connect(&url).await;
            act_as(&c, user).await;
            let r = c
                .query(
                    "SELECT * FROM s2t.create_api_key($1, $2, 's2t_abc', sha256(convert_to($2, 'UTF8')))",
                    &[&user, &format!("key {i}")],
                )
                .await;
            let ok = r.is_ok();
            c.batch_execute(if ok { "COMMIT" } else { "ROLLBACK" })
                .await
                .unwrap();
            match r {
                Ok(_) => true,
                Err(e) => {
                    assert_eq!(sqlstate(&e), "S2S01", "{e}");
                    false
                }
            }
        }));
    }
    let mut created = 0;
    for t in tasks {
        created += t.await.unwrap() as i32;
    }
    assert_eq!(created, 20);
    let n: i64 = db
        .admin
        .query_one(
            "SELECT count(*) FROM s2t.api_keys WHERE user_id = $1",
            &[&user],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 20);

    // An expired key no longer names its user.
    db.admin
        .execute(
            "UPDATE s2t.api_keys SET expires_at = now() - interval '1 second'
              WHERE id = (SELECT id FROM s2t.api_keys WHERE user_id = $1 LIMIT 1)",
            &[&user],
        )
        .await
        .unwrap();
    let expired: Vec<u8> = db
        .admin
        .query_one(
            "SELECT key_hash FROM s2t.api_keys WHERE user_id = $1 AND expires_at < now() LIMIT 1",
            &[&user],
        )
        .await
        .unwrap()
        .get(0);
    let app = db.connect_as(APP_LOGIN).await;
    let who: Option<Uuid> = app
        .query_one("SELECT s2t.api_key_user($1)", &[&expired])
        .await
        .unwrap()
        .get(0);
    assert_eq!(who, None);
}

#[tokio::test]
async fn a_refresh_retried_within_the_grace_gets_the_same_successor_and_after_it_revokes() {
    let db = TestDb::new().await;
    let user = register(&db.admin, "tabs").await;
    let app = db.connect_as(APP_LOGIN).await;
    act_as(&app, user).await;
    app.query_one(
        "SELECT s2t.issue_refresh_token($1, sha256('t0'), interval '1 day')",
        &[&user],
    )
    .await
    .unwrap();
    app.batch_execute("COMMIT").await.unwrap();
    let rotate = |old: &'static str, new: &'static str, grace: &'static str| {
        let app = &app;
        async move {
            app.query_one(
                &format!(
                    "SELECT outcome FROM s2t.rotate_refresh_token(sha256('{old}'), sha256('{new}'), interval '1 day', interval '{grace}')"
                ),
                &[],
            )
            .await
            .unwrap()
            .get::<_, String>(0)
        }
    };
    assert_eq!(rotate("t0", "t1", "30 seconds").await, "rotated");
    // The second tab presents t0 with the same derived successor: fine.
    assert_eq!(rotate("t0", "t1", "30 seconds").await, "rotated");
    let live: i64 = db
        .admin
        .query_one(
            "SELECT count(*) FROM s2t.refresh_tokens WHERE user_id = $1 AND revoked_at IS NULL",
            &[&user],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(live, 1, "one live token, no duplicate");
    // A different successor for a spent token is theft, even in the window.
    assert_eq!(rotate("t0", "t9", "30 seconds").await, "reused");
    assert_eq!(rotate("t1", "t2", "30 seconds").await, "revoked");

    // After the window the same replay revokes the family.
    let other = register(&db.admin, "late").await;
    act_as(&app, other).await;
    app.query_one(
        "SELECT s2t.issue_refresh_token($1, sha256('u0'), interval '1 day')",
        &[&other],
    )
    .await
    .unwrap();
    app.batch_execute("COMMIT").await.unwrap();
    assert_eq!(rotate("u0", "u1", "0 seconds").await, "rotated");
    assert_eq!(rotate("u0", "u1", "0 seconds").await, "reused");
    assert_eq!(rotate("u1", "u2", "0 seconds").await, "revoked");
}
