//! Upgrades: a database created at 0.1.0 and updated with `ALTER EXTENSION
//! pg_s2t UPDATE` must end with exactly the catalog of a fresh install of
//! the current version: functions (with security, settings, body and
//! privileges), columns, relations, domains, indexes, policies, triggers,
//! constraints, comments and seed data. Privileges compare as sets (grant order differs).

use s2t_tests::*;

const SNAPSHOT: &str = r#"
SELECT kind, name, def FROM (
  SELECT 'function' AS kind, p.oid::regprocedure::text AS name,
         concat_ws(' | ', pg_get_function_result(p.oid), p.prosecdef, p.provolatile,
                   array_to_string(p.proconfig, ','), md5(p.prosrc),
                   (SELECT string_agg(a::text, ',' ORDER BY a::text) FROM unnest(p.proacl) a), obj_description(p.oid, 'pg_proc'),
                   p.proowner::regrole) AS def
    FROM pg_proc p WHERE p.pronamespace = 's2t'::regnamespace
  UNION ALL
  SELECT 'column', c.relname || '.' || a.attname,
         concat_ws(' | ', a.attnum, format_type(a.atttypid, a.atttypmod), a.attnotnull,
                   pg_get_expr(d.adbin, d.adrelid), a.attgenerated, a.attstorage,
                   (SELECT string_agg(x::text, ',' ORDER BY x::text) FROM unnest(a.attacl) x))
    FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
    LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
   WHERE c.relnamespace = 's2t'::regnamespace AND a.attnum > 0 AND NOT a.attisdropped
     AND c.relkind IN ('r', 'v', 'm', 'p')
  UNION ALL
  SELECT 'relation', c.relname,
         concat_ws(' | ', c.relkind, c.relpersistence, c.relrowsecurity,
                   (SELECT string_agg(x::text, ',' ORDER BY x::text) FROM unnest(c.relacl) x), array_to_string(c.reloptions, ','),
                   obj_description(c.oid, 'pg_class'), c.relowner::regrole)
    FROM pg_class c WHERE c.relnamespace = 's2t'::regnamespace AND c.relkind IN ('r', 'v', 'm', 'p', 'S')
  UNION ALL
  SELECT 'index', indexname, indexdef FROM pg_indexes WHERE schemaname = 's2t'
  UNION ALL
  SELECT 'policy', tablename || '.' || policyname,
         concat_ws(' | ', roles::text, cmd, permissive, qual, with_check)
    FROM pg_policies WHERE schemaname = 's2t'
  UNION ALL
  SELECT 'trigger', tgrelid::regclass::text || '.' || tgname, pg_get_triggerdef(oid)
    FROM pg_trigger WHERE NOT tgisinternal
     AND tgrelid IN (SELECT oid FROM pg_class WHERE relnamespace = 's2t'::regnamespace)
  UNION ALL
  SELECT 'constraint', conrelid::regclass::text || '.' || conname, pg_get_constraintdef(oid)
    FROM pg_constraint WHERE connamespace = 's2t'::regnamespace
  UNION ALL
  SELECT 'type', t.typname,
         concat_ws(' | ', t.typtype, format_type(t.typbasetype, t.typtypmod), t.typnotnull,
                   obj_description(t.oid, 'pg_type'))
    FROM pg_type t WHERE t.typnamespace = 's2t'::regnamespace AND t.typtype IN ('d', 'e')
  UNION ALL
  SELECT 'plan', code, concat_ws(' | ', name, description, plan_type, plan_cost, monthly_minutes, monthly_usage_limit)
    FROM s2t.plans
  UNION ALL
  SELECT 'extension', extname, extversion FROM pg_extension WHERE extname = 'pg_s2t'
) s ORDER BY 1, 2, 3
"#;

async fn snapshot(client: &tokio_postgres::Client) -> Vec<(String, String, String)> {
    client
        .query(SNAPSHOT, &[])
        .await
        .expect("catalog snapshot")
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect()
}

/// Installs `from`, leaves a user and a recording in it, updates to the
/// current version and compares the catalog with a fresh install.
async fn upgrade_matches_fresh_install(from: &str) {
    upgrade_with_audio(from, None).await;
}

/// As [`upgrade_matches_fresh_install`]; with `audio`, the recording gets
/// those bytes in the 0.3.0 layout (one bytea) before the upgrade, and they
/// must read back the same, in 1 MiB chunks, after it.
async fn upgrade_with_audio(from: &str, audio: Option<&[u8]>) {
    let fresh = TestDb::new().await;
    let old = TestDb::empty().await;
    old.admin
        .batch_execute(&format!("CREATE EXTENSION pg_s2t VERSION '{from}' CASCADE"))
        .await
        .unwrap_or_else(|e| panic!("{from} installs from its frozen script: {e}"));
    let before: String = old
        .admin
        .query_one(
            "SELECT extversion FROM pg_extension WHERE extname = 'pg_s2t'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(before, from);
    // A user and a recording made at the old version survive the upgrade.
    let user = register(&old.admin, "olga").await;
    let rec: uuid::Uuid = old
        .admin
        .query_one(
            "SELECT s2t.check_quota_and_create_recording($1, 'upload', 'en')",
            &[&user],
        )
        .await
        .unwrap()
        .get(0);
    if let Some(bytes) = audio {
        old.admin
            .execute(
                "UPDATE s2t.recordings SET audio_uri = 'db:' WHERE id = $1",
                &[&rec],
            )
            .await
            .unwrap();
        old.admin
            .execute(
                "INSERT INTO s2t.recording_audio (recording_id, content_type, data) VALUES ($1, 'audio/wav', $2)",
                &[&rec, &bytes],
            )
            .await
            .unwrap();
    }
    // A transcript completed at the old version is chunked by the upgrade.
    let done: uuid::Uuid = old
        .admin
        .query_one(
            "SELECT s2t.check_quota_and_create_recording($1, 'upload', 'en')",
            &[&user],
        )
        .await
        .unwrap()
        .get(0);
    old.admin
        .query_one(
            "SELECT s2t.complete_recording($1, 5000, $2)",
            &[
                &done,
                &serde_json::json!([seg(0, 0, 2000, "The budget was approved.")]),
            ],
        )
        .await
        .unwrap();
    old.admin
        .batch_execute("ALTER EXTENSION pg_s2t UPDATE")
        .await
        .expect("upgrade");
    let chunked: Vec<(String, i32, i32)> = old
        .admin
        .query(
            "SELECT text, first_segment_idx, last_segment_idx FROM s2t.transcript_chunks WHERE recording_id = $1",
            &[&done],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert_eq!(
        chunked,
        vec![("The budget was approved.".to_string(), 0, 0)]
    );
    if let Some(bytes) = audio {
        let row = old
            .admin
            .query_one(
                "SELECT size_bytes, chunk_count, content_type, user_id = $2, sealed FROM s2t.recording_audio WHERE recording_id = $1",
                &[&rec, &user],
            )
            .await
            .expect("the audio row survives");
        assert_eq!(row.get::<_, i64>(0), bytes.len() as i64);
        assert_eq!(
            row.get::<_, i32>(1) as usize,
            bytes.len().div_ceil(1024 * 1024)
        );
        assert_eq!(row.get::<_, String>(2), "audio/wav");
        assert!(row.get::<_, bool>(3) && row.get::<_, bool>(4));
        let back: Vec<u8> = old
            .admin
            .query_one(
                "SELECT string_agg(c.data, ''::bytea ORDER BY c.byte_offset) FROM s2t.recording_audio_chunks c
                   JOIN s2t.recording_audio a USING (audio_id) WHERE a.recording_id = $1",
                &[&rec],
            )
            .await
            .unwrap()
            .get(0);
        assert!(back == bytes, "the chunks hold the same bytes");
        let piece: Vec<u8> = old
            .admin
            .query_one("SELECT s2t.read_audio($1, 1048570, 20)", &[&rec])
            .await
            .unwrap()
            .get(0);
        assert_eq!(piece, bytes[1_048_570..1_048_590].to_vec());
    }
    let (want, got) = (snapshot(&fresh.admin).await, snapshot(&old.admin).await);
    let missing: Vec<_> = want.iter().filter(|r| !got.contains(r)).collect();
    let extra: Vec<_> = got.iter().filter(|r| !want.contains(r)).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "fresh install has, upgrade lacks: {missing:#?}\nupgrade has, fresh install lacks: {extra:#?}"
    );
    assert!(
        want.len() > 200,
        "the snapshot sees the schema ({} rows)",
        want.len()
    );
    let n: i64 = old
        .admin
        .query_one("SELECT count(*) FROM s2t.users WHERE id = $1", &[&user])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 1);
    // The recording queued before the upgrade is still claimable, with no
    // reservation of its own (its length was never declared).
    let worker = old.connect_as(WORKER_LOGIN).await;
    let claimed: uuid::Uuid = worker
        .query_one("SELECT recording_id FROM s2t.claim_job('w1')", &[])
        .await
        .expect("claim after upgrade")
        .get(0);
    assert_eq!(claimed, rec);
}

#[tokio::test]
async fn upgrading_from_0_1_0_matches_a_fresh_install() {
    upgrade_matches_fresh_install("0.1.0").await;
}

#[tokio::test]
async fn upgrading_from_0_2_0_matches_a_fresh_install() {
    upgrade_matches_fresh_install("0.2.0").await;
}

#[tokio::test]
async fn upgrading_from_0_3_0_matches_a_fresh_install_and_moves_audio_into_chunks() {
    let bytes: Vec<u8> = (0..(2 * 1024 * 1024 + 777) as u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    upgrade_with_audio("0.3.0", Some(&bytes)).await;
}
