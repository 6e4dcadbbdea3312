//! Stored audio in chunks (audio.sql): what the application may store and
//! read, and what a hostile application session cannot do with the chunk
//! table, which has no row-level security.

use s2t_tests::*;
use tokio_postgres::Client;
use uuid::Uuid;

const MIB: usize = 1024 * 1024;

/// Deterministic bytes that differ at every offset a test reads.
fn pattern(len: usize, seed: u32) -> Vec<u8> {
    (0..len as u32)
        .map(|i| (i.wrapping_mul(2_654_435_761).wrapping_add(seed) >> 11) as u8)
        .collect()
}

/// A `db:` upload admitted for `user`, as the gateway does.
async fn db_recording(admin: &Client, user: Uuid, source: &str) -> Uuid {
    admin
        .query_one(
            "SELECT s2t.check_quota_and_create_recording($1, $2, 'en', '{}', 'db:', 1000)",
            &[&user, &source],
        )
        .await
        .expect("admit")
        .get(0)
}

/// Insert `bytes` as the application does, in `piece`-sized chunks.
async fn insert_chunks(
    app: &Client,
    audio: Uuid,
    bytes: &[u8],
    piece: usize,
) -> Result<(), tokio_postgres::Error> {
    for (i, part) in bytes.chunks(piece).enumerate() {
        app.execute(
            "INSERT INTO s2t.recording_audio_chunks (audio_id, byte_offset, data) VALUES ($1, $2, $3)",
            &[&audio, &((i * piece) as i64), &part],
        )
        .await?;
    }
    Ok(())
}

async fn read(app: &Client, rec: Uuid, offset: i64, len: i32) -> Vec<u8> {
    app.query_one("SELECT s2t.read_audio($1, $2, $3)", &[&rec, &offset, &len])
        .await
        .expect("read_audio")
        .get(0)
}

#[tokio::test]
async fn an_upload_is_stored_in_chunks_and_read_back_by_any_range() {
    let db = TestDb::new().await;
    let user = register(&db.admin, "ana").await;
    let rec = db_recording(&db.admin, user, "upload").await;
    let app = db.connect_as(APP_LOGIN).await;
    let bytes = pattern(2 * MIB + 12_345, 7);
    act_as(&app, user).await;
    let audio = Uuid::new_v4();
    insert_chunks(&app, audio, &bytes, MIB).await.unwrap();
    let size: i64 = app
        .query_one(
            "SELECT s2t.attach_audio($1, $2, 'audio/wav')",
            &[&rec, &audio],
        )
        .await
        .unwrap()
        .get(0);
    app.batch_execute("COMMIT").await.unwrap();
    assert_eq!(size, bytes.len() as i64);
    let row = db
        .admin
        .query_one(
            "SELECT size_bytes, chunk_count, sealed, content_type, user_id FROM s2t.recording_audio WHERE recording_id = $1",
            &[&rec],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, i64>(0), bytes.len() as i64);
    assert_eq!(row.get::<_, i32>(1), 3);
    assert!(row.get::<_, bool>(2));
    assert_eq!(row.get::<_, String>(3), "audio/wav");
    assert_eq!(row.get::<_, Uuid>(4), user);
    // Every chunk carries the acting user, stamped by the trigger.
    let owners: i64 = db
        .admin
        .query_one(
            "SELECT count(*) FROM s2t.recording_audio_chunks WHERE audio_id = $1 AND user_id = $2",
            &[&audio, &user],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(owners, 3);

    act_as(&app, user).await;
    // Within a chunk, across one boundary, across two, the tail, past it.
    for (offset, len) in [
        (0usize, 100usize),
        (MIB - 10, 20),
        (MIB - 1, MIB + 2),
        (5, 2 * MIB + 12_340),
        (2 * MIB + 12_000, 1_000),
    ] {
        let got = read(&app, rec, offset as i64, len as i32).await;
        let want = &bytes[offset..(offset + len).min(bytes.len())];
        assert_eq!(got.len(), want.len(), "range {offset}+{len}");
        assert!(got == want, "bytes of range {offset}+{len}");
    }
    assert!(read(&app, rec, bytes.len() as i64, 10).await.is_empty());
    for sql in [
        "SELECT s2t.read_audio($1, -1, 10)",
        "SELECT s2t.read_audio($1, 0, 9000000)",
    ] {
        app.batch_execute("SAVEPOINT s").await.unwrap();
        expect_code(app.query_one(sql, &[&rec]).await, "S2V01");
        app.batch_execute("ROLLBACK TO SAVEPOINT s").await.unwrap();
    }
    app.batch_execute("ROLLBACK").await.unwrap();

    // Deleting the recording takes its chunks along.
    act_as(&app, user).await;
    app.execute("DELETE FROM s2t.recordings WHERE id = $1", &[&rec])
        .await
        .unwrap();
    app.batch_execute("COMMIT").await.unwrap();
    let left: i64 = db
        .admin
        .query_one(
            "SELECT count(*) FROM s2t.recording_audio_chunks WHERE audio_id = $1",
            &[&audio],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(left, 0);
}

#[tokio::test]
async fn attaching_refuses_empty_gapped_twice_and_finished_audio() {
    let db = TestDb::new().await;
    let user = register(&db.admin, "bea").await;
    let app = db.connect_as(APP_LOGIN).await;

    let rec = db_recording(&db.admin, user, "upload").await;
    act_as(&app, user).await;
    let (msg, _, _) = expect_code(
        app.query_one(
            "SELECT s2t.attach_audio($1, gen_random_uuid(), 'audio/wav')",
            &[&rec],
        )
        .await,
        "S2V01",
    );
    assert!(msg.contains("empty"), "{msg}");
    app.batch_execute("ROLLBACK").await.unwrap();

    // A gap: chunks at 0 and 2 MiB, nothing at 1 MiB.
    act_as(&app, user).await;
    let audio = Uuid::new_v4();
    for offset in [0i64, 2 * MIB as i64] {
        app.execute(
            "INSERT INTO s2t.recording_audio_chunks (audio_id, byte_offset, data) VALUES ($1, $2, $3)",
            &[&audio, &offset, &pattern(MIB, 1)],
        )
        .await
        .unwrap();
    }
    let (msg, detail, _) = expect_code(
        app.query_one(
            "SELECT s2t.attach_audio($1, $2, 'audio/wav')",
            &[&rec, &audio],
        )
        .await,
        "S2V01",
    );
    assert!(
        msg.contains("contiguous") && detail.contains("1 of 2"),
        "{msg} / {detail}"
    );
    app.batch_execute("ROLLBACK").await.unwrap();

    // Attached once; a second attach, and a chunk added behind the
    // recorded size, are refused.
    act_as(&app, user).await;
    let audio = Uuid::new_v4();
    insert_chunks(&app, audio, &pattern(1000, 2), MIB)
        .await
        .unwrap();
    app.execute(
        "SELECT s2t.attach_audio($1, $2, 'audio/ogg')",
        &[&rec, &audio],
    )
    .await
    .unwrap();
    app.batch_execute("COMMIT").await.unwrap();
    act_as(&app, user).await;
    let other = Uuid::new_v4();
    insert_chunks(&app, other, &pattern(10, 3), MIB)
        .await
        .unwrap();
    expect_code(
        app.query_one(
            "SELECT s2t.attach_audio($1, $2, 'audio/ogg')",
            &[&rec, &other],
        )
        .await,
        "S2C01",
    );
    app.batch_execute("ROLLBACK").await.unwrap();
    act_as(&app, user).await;
    let (msg, _, _) = expect_code(
        app.execute(
            "INSERT INTO s2t.recording_audio_chunks (audio_id, byte_offset, data) VALUES ($1, 1000, '\\x00'::bytea)",
            &[&audio],
        )
        .await,
        "S2S01",
    );
    assert!(msg.contains("already attached"), "{msg}");
    app.batch_execute("ROLLBACK").await.unwrap();

    // A finished recording's audio can no longer be attached.
    let done = db_recording(&db.admin, user, "upload").await;
    db.admin
        .execute(
            "SELECT s2t.complete_recording($1, 1000, '[]'::jsonb)",
            &[&done],
        )
        .await
        .unwrap();
    act_as(&app, user).await;
    let audio = Uuid::new_v4();
    insert_chunks(&app, audio, &pattern(10, 4), MIB)
        .await
        .unwrap();
    expect_code(
        app.query_one(
            "SELECT s2t.attach_audio($1, $2, 'audio/wav')",
            &[&done, &audio],
        )
        .await,
        "S2S01",
    );
    app.batch_execute("ROLLBACK").await.unwrap();
}

#[tokio::test]
async fn a_hostile_application_session_cannot_forge_orphan_or_read_chunks() {
    let db = TestDb::new().await;
    let victim = register(&db.admin, "vic").await;
    let attacker = register(&db.admin, "mal").await;
    let rec = db_recording(&db.admin, victim, "upload").await;
    let bytes = pattern(3000, 9);
    db.admin.batch_execute("BEGIN").await.unwrap();
    let audio = store_audio(&db.admin, rec, victim, &bytes, "audio/wav").await;
    db.admin.batch_execute("COMMIT").await.unwrap();
    let app = db.connect_as(APP_LOGIN).await;

    // Appending to the victim's audio by its id: the row stamps the
    // attacker, and the foreign key on (audio_id, user_id) refuses it at
    // commit.
    act_as(&app, attacker).await;
    app.execute(
        "INSERT INTO s2t.recording_audio_chunks (audio_id, byte_offset, data) VALUES ($1, 3000, '\\xdeadbeef'::bytea)",
        &[&audio],
    )
    .await
    .expect("the insert itself cannot see the victim's audio");
    expect_code(app.batch_execute("COMMIT").await, "23503");
    // Naming another owner is not even allowed.
    act_as(&app, attacker).await;
    expect_code(
        app.execute(
            "INSERT INTO s2t.recording_audio_chunks (audio_id, byte_offset, user_id, data) VALUES ($1, 3000, $2, '\\x00'::bytea)",
            &[&audio, &victim],
        )
        .await,
        "42501",
    );
    app.batch_execute("ROLLBACK").await.unwrap();
    // Chunks never attached (storage with no recording, no quota) do not
    // survive commit.
    act_as(&app, attacker).await;
    insert_chunks(&app, Uuid::new_v4(), &pattern(MIB, 5), MIB)
        .await
        .unwrap();
    expect_code(app.batch_execute("COMMIT").await, "23503");
    // Without s2t.user_id nothing can be stored at all.
    app.batch_execute("BEGIN").await.unwrap();
    expect_code(
        insert_chunks(&app, Uuid::new_v4(), &pattern(10, 5), MIB).await,
        "42501",
    );
    app.batch_execute("ROLLBACK").await.unwrap();
    // The chunks cannot be read, changed or deleted directly, and
    // read_audio answers only for one's own recording.
    act_as(&app, attacker).await;
    for sql in [
        "SELECT data FROM s2t.recording_audio_chunks",
        "UPDATE s2t.recording_audio_chunks SET data = '\\x00'",
        "DELETE FROM s2t.recording_audio_chunks",
    ] {
        app.batch_execute("SAVEPOINT s").await.unwrap();
        expect_code(app.execute(sql, &[]).await, "42501");
        app.batch_execute("ROLLBACK TO SAVEPOINT s").await.unwrap();
    }
    app.batch_execute("SAVEPOINT s").await.unwrap();
    expect_code(
        app.query_one("SELECT s2t.read_audio($1, 0, 100)", &[&rec])
            .await,
        "S2N01",
    );
    app.batch_execute("ROLLBACK TO SAVEPOINT s").await.unwrap();
    let seen: i64 = app
        .query_one("SELECT count(*) FROM s2t.recording_audio", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(seen, 0, "the attacker sees no one else's audio rows");
    app.batch_execute("ROLLBACK").await.unwrap();
    // The victim's audio is untouched.
    act_as(&app, victim).await;
    assert_eq!(read(&app, rec, 0, 8192).await, bytes);
    app.batch_execute("ROLLBACK").await.unwrap();
}

#[tokio::test]
async fn open_audio_grows_by_appends_until_sealed() {
    let db = TestDb::new().await;
    let user = register(&db.admin, "rui").await;
    let other = register(&db.admin, "oto").await;
    let rec = db_recording(&db.admin, user, "realtime").await;
    let app = db.connect_as(APP_LOGIN).await;
    act_as(&app, user).await;
    let size: i64 = app
        .query_one(
            "SELECT s2t.attach_audio($1, gen_random_uuid(), 'audio/pcm', false)",
            &[&rec],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(size, 0);
    app.batch_execute("COMMIT").await.unwrap();
    let pieces = [pattern(32_000, 1), pattern(5, 2), pattern(70_000, 3)];
    let mut all = Vec::new();
    for p in &pieces {
        act_as(&app, user).await;
        let size: i64 = app
            .query_one("SELECT s2t.append_audio($1, $2)", &[&rec, &p.as_slice()])
            .await
            .unwrap()
            .get(0);
        app.batch_execute("COMMIT").await.unwrap();
        all.extend_from_slice(p);
        assert_eq!(size, all.len() as i64);
    }
    // The worker serving a session may append too.
    let worker = db.connect_as(WORKER_LOGIN).await;
    worker
        .execute("SELECT s2t.append_audio($1, '\\x0102'::bytea)", &[&rec])
        .await
        .unwrap();
    all.extend_from_slice(&[1, 2]);
    // Another user cannot append to it or read it.
    act_as(&app, other).await;
    expect_code(
        app.query_one("SELECT s2t.append_audio($1, '\\x00'::bytea)", &[&rec])
            .await,
        "S2N01",
    );
    app.batch_execute("ROLLBACK").await.unwrap();
    act_as(&app, user).await;
    assert_eq!(read(&app, rec, 0, 200_000).await, all);
    assert_eq!(
        read(&app, rec, 31_990, 20).await,
        all[31_990..32_010].to_vec()
    );
    expect_code(
        app.query_one("SELECT s2t.append_audio($1, ''::bytea)", &[&rec])
            .await,
        "S2V01",
    );
    app.batch_execute("ROLLBACK").await.unwrap();
    act_as(&app, user).await;
    let sealed: i64 = app
        .query_one("SELECT s2t.seal_audio($1)", &[&rec])
        .await
        .unwrap()
        .get(0);
    assert_eq!(sealed, all.len() as i64);
    app.batch_execute("COMMIT").await.unwrap();
    act_as(&app, user).await;
    expect_code(
        app.query_one("SELECT s2t.append_audio($1, '\\x00'::bytea)", &[&rec])
            .await,
        "S2S01",
    );
    app.batch_execute("ROLLBACK").await.unwrap();
    let chunks: i32 = db
        .admin
        .query_one(
            "SELECT chunk_count FROM s2t.recording_audio WHERE recording_id = $1",
            &[&rec],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(chunks, 4);
}
