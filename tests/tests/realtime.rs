//! Realtime sessions in SQL (realtime.sql): the worker registry, opening a
//! session under the quota, the one-time hand-off, finals saved with their
//! audio, minutes granted as the stream goes, and exactly one ending, also
//! for sessions whose worker died.

use s2t_tests::*;
use tokio_postgres::Client;
use uuid::Uuid;

fn hash(seed: u8) -> Vec<u8> {
    let mut h = vec![seed; 32];
    h[0] = rand_byte();
    h
}

fn rand_byte() -> u8 {
    Uuid::new_v4().as_bytes()[0]
}

async fn worker(client: &Client, name: &str, capacity: i32) -> Uuid {
    client
        .query_one(
            "SELECT s2t.register_worker($1, 'ws://127.0.0.1:7071', $2)",
            &[&name, &capacity],
        )
        .await
        .expect("register worker")
        .get(0)
}

/// Open a 16 kHz s16 session for `user` as the gateway does; returns the
/// recording, the assigned worker and the hand-off hash.
async fn open(
    app: &Client,
    user: Uuid,
) -> Result<(Uuid, Uuid, Vec<u8>, Vec<u8>), tokio_postgres::Error> {
    let handoff = hash(1);
    let resume = hash(2);
    act_as(app, user).await;
    let row = app
        .query_one(
            "SELECT recording_id, worker_id FROM s2t.open_realtime_session($1, 'en', 16000, 'pcm_s16le', '{}', $2, $3)",
            &[&user, &handoff, &resume],
        )
        .await;
    match row {
        Ok(row) => {
            app.batch_execute("COMMIT").await.expect("commit");
            Ok((row.get(0), row.get(1), handoff, resume))
        }
        Err(e) => {
            app.batch_execute("ROLLBACK").await.expect("rollback");
            Err(e)
        }
    }
}

async fn take(
    w: &Client,
    worker_id: Uuid,
    handoff: &[u8],
) -> Result<tokio_postgres::Row, tokio_postgres::Error> {
    w.query_one(
        "SELECT recording_id, next_idx, stored_ms, granted_ms FROM s2t.take_realtime_session($1, $2)",
        &[&worker_id, &handoff],
    )
    .await
}

async fn grant(w: &Client, rec: Uuid, worker_id: Uuid, through_ms: i64) -> i64 {
    w.query_one(
        "SELECT s2t.extend_realtime_grant($1, $2, $3)",
        &[&rec, &worker_id, &through_ms],
    )
    .await
    .expect("grant")
    .get(0)
}

/// End a session with its last `audio`, done or failed; false if it had
/// already ended.
async fn end(w: &Client, rec: Uuid, worker_id: Uuid, audio: &[u8], failure: Option<&str>) -> bool {
    w.query_one(
        "SELECT s2t.end_realtime_session($1, $2, $3, $4)",
        &[&rec, &worker_id, &audio, &failure],
    )
    .await
    .expect("end")
    .get(0)
}

/// A heartbeat with no live sessions; how many orphans it ended.
async fn heartbeat(w: &Client, worker_id: Uuid) -> i32 {
    w.query_one("SELECT s2t.heartbeat_worker($1, '{}')", &[&worker_id])
        .await
        .expect("heartbeat")
        .get(0)
}

/// One counter of the user's subscription.
async fn subscription(db: &TestDb, user: Uuid, column: &str) -> i32 {
    db.admin
        .query_one(
            &format!("SELECT {column} FROM s2t.user_subscriptions WHERE user_id = $1"),
            &[&user],
        )
        .await
        .expect("subscription")
        .get(0)
}

/// `ms` of 16 kHz s16 audio.
fn pcm(ms: usize) -> Vec<u8> {
    vec![0u8; ms * 16 * 2]
}

async fn final_(
    w: &Client,
    rec: Uuid,
    worker_id: Uuid,
    audio: &[u8],
    segment: Option<serde_json::Value>,
) -> Result<bool, tokio_postgres::Error> {
    w.query_one(
        "SELECT s2t.add_realtime_final($1, $2, $3, $4)",
        &[&rec, &worker_id, &audio, &segment],
    )
    .await
    .map(|r| r.get(0))
}

#[tokio::test]
async fn a_session_saves_finals_as_they_come_and_ends_once_billed_for_its_audio() {
    let db = TestDb::new().await;
    let user = register(&db.admin, "rt_ana").await;
    let w = db.connect_as(WORKER_LOGIN).await;
    let app = db.connect_as(APP_LOGIN).await;
    let wid = worker(&w, "w1", 4).await;
    let (rec, assigned, handoff, _) = open(&app, user).await.expect("open");
    assert_eq!(assigned, wid);
    let row = take(&w, wid, &handoff).await.expect("take");
    assert_eq!(row.get::<_, Uuid>(0), rec);
    assert_eq!(row.get::<_, i32>(1), 0, "no final yet");
    assert_eq!(row.get::<_, i64>(2), 0, "no audio yet");

    let granted = grant(&w, rec, wid, 10000).await;
    assert_eq!(granted, 10_000);
    let reserved = subscription(&db, user, "reserved_seconds").await;
    assert_eq!(reserved, 10, "the grant is reserved against the quota");

    assert!(final_(
        &w,
        rec,
        wid,
        &pcm(2000),
        Some(seg(0, 100, 1900, "hello there"))
    )
    .await
    .unwrap());
    // A retry of the same final changes nothing.
    assert!(
        !final_(&w, rec, wid, &[], Some(seg(0, 100, 1900, "hello there")))
            .await
            .unwrap()
    );
    // A gap in the numbering is refused.
    expect_code(
        final_(&w, rec, wid, &[], Some(seg(2, 1900, 2000, "x"))).await,
        "S2V01",
    );
    // A final past the audio stored is refused, and its audio with it.
    expect_code(
        final_(&w, rec, wid, &pcm(500), Some(seg(1, 2000, 9000, "too far"))).await,
        "S2V01",
    );
    // An odd byte count is not whole samples.
    expect_code(final_(&w, rec, wid, &[0u8; 3], None).await, "S2V01");
    assert!(final_(
        &w,
        rec,
        wid,
        &pcm(1500),
        Some(seg(1, 2000, 3400, "general kenobi"))
    )
    .await
    .unwrap());

    assert!(end(&w, rec, wid, &pcm(250), None).await);
    assert!(
        !end(&w, rec, wid, &[], None).await,
        "a session ends exactly once"
    );
    expect_code(final_(&w, rec, wid, &pcm(10), None).await, "S2S01");

    let r = db
        .admin
        .query_one(
            "SELECT status, duration_ms, billed_seconds, reserved_seconds FROM s2t.recordings WHERE id = $1",
            &[&rec],
        )
        .await
        .unwrap();
    assert_eq!(r.get::<_, String>(0), "done");
    assert_eq!(r.get::<_, i32>(1), 3750, "2000 + 1500 + 250 ms of audio");
    assert_eq!(r.get::<_, i32>(2), 4);
    assert_eq!(used_seconds(&db, user).await, 4);
    let reserved = subscription(&db, user, "reserved_seconds").await;
    assert_eq!(reserved, 0, "the grant is released at the end");
    let texts: Vec<String> = db
        .admin
        .query(
            "SELECT text FROM s2t.segments WHERE recording_id = $1 ORDER BY idx",
            &[&rec],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(texts, ["hello there", "general kenobi"]);

    // The audio is a complete WAV: its header has the sizes.
    let head: Vec<u8> = db
        .admin
        .query_one("SELECT s2t.read_audio($1, 0, 44)", &[&rec])
        .await
        .unwrap()
        .get(0);
    let le32 = |at: usize| u32::from_le_bytes(head[at..at + 4].try_into().unwrap());
    assert_eq!(&head[0..4], b"RIFF");
    assert_eq!(&head[8..16], b"WAVEfmt ");
    let data = 3750 * 32;
    assert_eq!(le32(40), data as u32);
    assert_eq!(le32(4), data as u32 + 36);
    assert_eq!(le32(24), 16_000, "sample rate");
    let sealed: bool = db
        .admin
        .query_one(
            "SELECT sealed FROM s2t.recording_audio WHERE recording_id = $1",
            &[&rec],
        )
        .await
        .unwrap()
        .get(0);
    assert!(sealed);
}

#[tokio::test]
async fn a_hand_off_works_once_before_it_expires_and_only_on_its_worker() {
    let db = TestDb::new().await;
    let user = register(&db.admin, "rt_ben").await;
    let w = db.connect_as(WORKER_LOGIN).await;
    let app = db.connect_as(APP_LOGIN).await;
    let w1 = worker(&w, "w1", 1).await;
    let w2 = worker(&w, "w2", 0).await; // takes nothing: never assigned
    let (rec, assigned, handoff, _) = open(&app, user).await.expect("open");
    assert_eq!(assigned, w1);
    expect_code(take(&w, w2, &handoff).await, "S2N01");
    take(&w, w1, &handoff)
        .await
        .expect("the assigned worker takes it");
    expect_code(take(&w, w1, &handoff).await, "S2N01");
    // Another worker cannot write into it.
    expect_code(final_(&w, rec, w2, &pcm(10), None).await, "S2N01");

    let user2 = register(&db.admin, "rt_ben2").await;
    let w3 = worker(&w, "w3", 1).await;
    let (_, assigned, handoff, _) = open(&app, user2).await.expect("open on the free worker");
    assert_eq!(assigned, w3);
    db.admin
        .execute(
            "UPDATE s2t.realtime_sessions SET handoff_until = now() - interval '1 second' WHERE worker_id = $1",
            &[&w3],
        )
        .await
        .unwrap();
    expect_code(take(&w, w3, &handoff).await, "S2N01");
}

#[tokio::test]
async fn without_room_opening_is_busy_and_counts_nothing() {
    let db = TestDb::new().await;
    let user = register(&db.admin, "rt_cleo").await;
    let w = db.connect_as(WORKER_LOGIN).await;
    let app = db.connect_as(APP_LOGIN).await;
    let (_, detail, _) = expect_code(open(&app, user).await, "S2B01");
    assert!(detail.contains("retry_after"), "{detail}");
    let wid = worker(&w, "w1", 1).await;
    open(&app, user).await.expect("one session fits");
    expect_code(open(&app, user).await, "S2B01");
    // A worker that stopped beating gets nothing.
    let other = worker(&w, "w2", 5).await;
    db.admin
        .execute(
            "UPDATE s2t.workers SET heartbeat_at = now() - interval '20 seconds' WHERE id = $1",
            &[&other],
        )
        .await
        .unwrap();
    expect_code(open(&app, user).await, "S2B01");
    let usage = subscription(&db, user, "usage_count").await;
    assert_eq!(usage, 1, "busy refusals are not counted");
    // A heartbeat brings it back.
    let ended = heartbeat(&w, other).await;
    assert_eq!(ended, 0);
    open(&app, user)
        .await
        .expect("the live worker has room again");
    let _ = wid;
}

#[tokio::test]
async fn minutes_are_granted_only_as_far_as_the_quota_goes_across_sessions() {
    let db = TestDb::new().await;
    let user = register(&db.admin, "rt_dora").await;
    set_limits(&db.admin, user, 100, 1).await;
    let w = db.connect_as(WORKER_LOGIN).await;
    let app = db.connect_as(APP_LOGIN).await;
    let wid = worker(&w, "w1", 4).await;
    let (a, _, ha, _) = open(&app, user).await.expect("open a");
    let (b, _, hb, _) = open(&app, user).await.expect("open b");
    take(&w, wid, &ha).await.unwrap();
    take(&w, wid, &hb).await.unwrap();
    let ga = grant(&w, a, wid, 45000).await;
    assert_eq!(ga, 45_000);
    let gb = grant(&w, b, wid, 45000).await;
    assert_eq!(
        gb, 15_000,
        "only 15 of the 60 s are left for the second session"
    );
    // A third session cannot even start.
    expect_code(open(&app, user).await, "S2Q02");
    // Ending a short: the unused grant comes back.
    assert!(end(&w, a, wid, &pcm(5000), None).await);
    assert_eq!(used_seconds(&db, user).await, 5);
    let gb = grant(&w, b, wid, 45000).await;
    assert_eq!(gb, 45_000);
}

#[tokio::test]
async fn a_session_whose_worker_died_is_ended_by_the_next_heartbeat_with_its_audio() {
    let db = TestDb::new().await;
    let user = register(&db.admin, "rt_emil").await;
    let w = db.connect_as(WORKER_LOGIN).await;
    let app = db.connect_as(APP_LOGIN).await;
    let dead = worker(&w, "dead", 2).await;
    let (rec, _, handoff, _) = open(&app, user).await.unwrap();
    take(&w, dead, &handoff).await.unwrap();
    final_(&w, rec, dead, &pcm(1200), Some(seg(0, 0, 1100, "kept")))
        .await
        .unwrap();
    // A live session is not touched by another worker's heartbeat.
    let alive = worker(&w, "alive", 2).await;
    let n = heartbeat(&w, alive).await;
    assert_eq!(n, 0);
    db.admin
        .execute(
            "UPDATE s2t.realtime_sessions SET heartbeat_at = now() - interval '61 seconds' WHERE recording_id = $1",
            &[&rec],
        )
        .await
        .unwrap();
    let n = heartbeat(&w, alive).await;
    assert_eq!(n, 1);
    let r = db
        .admin
        .query_one(
            "SELECT status, duration_ms, billed_seconds FROM s2t.recordings WHERE id = $1",
            &[&rec],
        )
        .await
        .unwrap();
    assert_eq!(r.get::<_, String>(0), "done");
    assert_eq!(r.get::<_, i32>(1), 1200);
    assert_eq!(r.get::<_, i32>(2), 2);
    // The dead worker, back, cannot end it a second time.
    assert!(!end(&w, rec, dead, &[], Some("late")).await);
}

#[tokio::test]
async fn a_failed_session_keeps_its_finals_unbilled_and_resume_needs_the_owner() {
    let db = TestDb::new().await;
    let user = register(&db.admin, "rt_fay").await;
    let mallory = register(&db.admin, "rt_mallory").await;
    let w = db.connect_as(WORKER_LOGIN).await;
    let app = db.connect_as(APP_LOGIN).await;
    let wid = worker(&w, "w1", 4).await;
    let (rec, _, handoff, resume) = open(&app, user).await.unwrap();
    take(&w, wid, &handoff).await.unwrap();

    // Another user holding the resume token gets nothing.
    act_as(&app, mallory).await;
    expect_code(
        app.query_one(
            "SELECT * FROM s2t.resume_realtime_session($1, $2, $3)",
            &[&mallory, &resume, &hash(9)],
        )
        .await,
        "S2N01",
    );
    app.batch_execute("ROLLBACK").await.unwrap();
    // The owner resumes, on the same live worker, with a new hand-off.
    act_as(&app, user).await;
    let again = hash(8);
    let row = app
        .query_one(
            "SELECT recording_id, worker_id, same_worker FROM s2t.resume_realtime_session($1, $2, $3)",
            &[&user, &resume, &again],
        )
        .await
        .expect("resume");
    app.batch_execute("COMMIT").await.unwrap();
    assert_eq!(row.get::<_, Uuid>(0), rec);
    assert!(row.get::<_, bool>(2));
    take(&w, wid, &again)
        .await
        .expect("take the resumed session");

    final_(
        &w,
        rec,
        wid,
        &pcm(800),
        Some(seg(0, 0, 700, "before the fault")),
    )
    .await
    .unwrap();
    assert!(end(&w, rec, wid, &[], Some("the client sent a malformed frame")).await);
    let r = db
        .admin
        .query_one(
            "SELECT status, failure_reason, billed_seconds FROM s2t.recordings WHERE id = $1",
            &[&rec],
        )
        .await
        .unwrap();
    assert_eq!(r.get::<_, String>(0), "failed");
    assert!(r.get::<_, String>(1).contains("malformed"));
    assert_eq!(r.get::<_, i32>(2), 0);
    let n: i64 = db
        .admin
        .query_one(
            "SELECT count(*) FROM s2t.segments WHERE recording_id = $1",
            &[&rec],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 1, "the final already sent is kept");
    act_as(&app, user).await;
    expect_code(
        app.query_one(
            "SELECT * FROM s2t.resume_realtime_session($1, $2, $3)",
            &[&user, &resume, &hash(7)],
        )
        .await,
        "S2N01",
    );
    app.batch_execute("ROLLBACK").await.unwrap();
}

#[tokio::test]
async fn a_worker_the_gateway_cannot_reach_loses_the_session_to_another_at_once() {
    let db = TestDb::new().await;
    let user = register(&db.admin, "rt_ivo").await;
    let w = db.connect_as(WORKER_LOGIN).await;
    let app = db.connect_as(APP_LOGIN).await;
    let gone = worker(&w, "w1", 4).await;
    let (rec, at, handoff, resume) = open(&app, user).await.unwrap();
    assert_eq!(at, gone);
    take(&w, gone, &handoff).await.unwrap();
    final_(&w, rec, gone, &pcm(500), Some(seg(0, 0, 400, "kept")))
        .await
        .unwrap();
    let resume_naming = |unreachable: Uuid, handoff: Vec<u8>| {
        let (app, resume) = (&app, resume.clone());
        async move {
            act_as(app, user).await;
            let row = app
                .query_one(
                    "SELECT recording_id, worker_id, same_worker FROM s2t.resume_realtime_session($1, $2, $3, $4)",
                    &[&user, &resume, &handoff, &unreachable],
                )
                .await;
            app.batch_execute(if row.is_ok() { "COMMIT" } else { "ROLLBACK" })
                .await
                .unwrap();
            row
        }
    };
    // It still beats, but the gateway could not connect: with no other
    // worker the answer is busy, and the session stays where it was.
    expect_code(resume_naming(gone, hash(3)).await, "S2B01");
    let live = worker(&w, "w2", 4).await;
    let handoff = hash(4);
    let moved = resume_naming(gone, handoff.clone()).await.expect("moved");
    assert_eq!(moved.get::<_, Uuid>(0), rec);
    assert_eq!(moved.get::<_, Uuid>(1), live);
    assert!(!moved.get::<_, bool>(2));
    // The old worker can no longer write to it or end it; the new one goes
    // on after the saved final.
    expect_code(
        final_(&w, rec, gone, &pcm(100), Some(seg(1, 500, 600, "late"))).await,
        "S2N01",
    );
    let taken = take(&w, live, &handoff)
        .await
        .expect("the new worker takes it");
    assert_eq!(taken.get::<_, i32>(1), 1, "next final after the saved one");
    // Naming a worker that is not the session's changes nothing else.
    let stays = resume_naming(gone, hash(5)).await.expect("resume");
    assert_eq!(stays.get::<_, Uuid>(1), live);
    assert!(stays.get::<_, bool>(2));
    assert!(end(&w, rec, live, &[], None).await);
}

#[tokio::test]
async fn the_application_cannot_play_the_worker() {
    let db = TestDb::new().await;
    let user = register(&db.admin, "rt_gus").await;
    let w = db.connect_as(WORKER_LOGIN).await;
    let app = db.connect_as(APP_LOGIN).await;
    let wid = worker(&w, "w1", 4).await;
    let (rec, _, handoff, _) = open(&app, user).await.unwrap();
    act_as(&app, user).await;
    for (sql, args) in [
        ("SELECT s2t.register_worker('evil', 'ws://evil:1', 100)", 0),
        ("SELECT * FROM s2t.take_realtime_session($1, $2)", 1),
        ("SELECT s2t.end_realtime_session($1, $2, NULL)", 2),
        ("SELECT s2t.extend_realtime_grant($1, $2, 999999)", 2),
        ("SELECT * FROM s2t.workers", 0),
        ("SELECT * FROM s2t.realtime_sessions", 0),
    ] {
        app.batch_execute("SAVEPOINT s").await.unwrap();
        let result = match args {
            0 => app.query(sql, &[]).await,
            1 => app.query(sql, &[&wid, &handoff]).await,
            _ => app.query(sql, &[&rec, &wid]).await,
        };
        expect_code(result, "42501");
        app.batch_execute("ROLLBACK TO SAVEPOINT s").await.unwrap();
    }
    app.batch_execute("ROLLBACK").await.unwrap();
    // Without s2t.user_id the application opens nothing.
    expect_code(
        app.query(
            "SELECT * FROM s2t.open_realtime_session($1, 'en', 16000, 'pcm_s16le', '{}', $2, $3)",
            &[&user, &hash(3), &hash(4)],
        )
        .await,
        "42501",
    );
    // Bad formats are refused before anything is admitted.
    act_as(&app, user).await;
    for (rate, encoding) in [(4000, "pcm_s16le"), (96000, "pcm_s16le"), (16000, "mp3")] {
        app.batch_execute("SAVEPOINT s").await.unwrap();
        expect_code(
            app.query(
                "SELECT * FROM s2t.open_realtime_session($1, 'en', $2, $3, '{}', $4, $5)",
                &[&user, &rate, &encoding, &hash(3), &hash(4)],
            )
            .await,
            "S2V01",
        );
        app.batch_execute("ROLLBACK TO SAVEPOINT s").await.unwrap();
    }
    app.batch_execute("ROLLBACK").await.unwrap();
}

/// 32 random bytes, as a ticket's SHA-256 is.
fn random_hash() -> Vec<u8> {
    [Uuid::new_v4(), Uuid::new_v4()]
        .iter()
        .flat_map(|u| *u.as_bytes())
        .collect()
}

/// Issue a WebSocket ticket for `user` acting as them; its hash.
async fn issue(app: &Client, user: Uuid) -> Result<Vec<u8>, tokio_postgres::Error> {
    let ticket = random_hash();
    act_as(app, user).await;
    let r = app
        .query_one("SELECT s2t.issue_ws_ticket($1, $2)", &[&user, &ticket])
        .await;
    app.batch_execute(if r.is_ok() { "COMMIT" } else { "ROLLBACK" })
        .await
        .unwrap();
    r.map(|_| ticket)
}

async fn redeem(app: &Client, ticket: &[u8]) -> Option<Uuid> {
    app.query_one("SELECT s2t.redeem_ws_ticket($1)", &[&ticket])
        .await
        .expect("redeem")
        .get(0)
}

#[tokio::test]
async fn a_websocket_ticket_is_good_once_until_it_expires_and_twenty_at_most_under_a_race() {
    let db = TestDb::new().await;
    let user = register(&db.admin, "rt_tess").await;
    let app = db.connect_as(APP_LOGIN).await;

    let t = issue(&app, user).await.expect("issue");
    // Any connection (any gateway) redeems it, once.
    let other = db.connect_as(APP_LOGIN).await;
    assert_eq!(redeem(&other, &t).await, Some(user));
    assert_eq!(redeem(&app, &t).await, None, "spent");
    assert_eq!(redeem(&app, &hash(9)).await, None, "never issued");

    let late = issue(&app, user).await.unwrap();
    db.admin
        .execute(
            "UPDATE s2t.ws_tickets SET expires_at = now() - interval '1 second' WHERE ticket_hash = $1",
            &[&late],
        )
        .await
        .unwrap();
    assert_eq!(redeem(&app, &late).await, None, "expired");

    // Not for someone else, not a malformed hash, not too long a life.
    let mallory = register(&db.admin, "rt_mallory").await;
    act_as(&app, mallory).await;
    expect_code(
        app.query_one("SELECT s2t.issue_ws_ticket($1, $2)", &[&user, &hash(3)])
            .await,
        "S2N01",
    );
    app.batch_execute("ROLLBACK").await.unwrap();
    act_as(&app, user).await;
    expect_code(
        app.query_one("SELECT s2t.issue_ws_ticket($1, '\\x00'::bytea)", &[&user])
            .await,
        "S2V01",
    );
    app.batch_execute("ROLLBACK").await.unwrap();
    act_as(&app, user).await;
    expect_code(
        app.query_one(
            "SELECT s2t.issue_ws_ticket($1, $2, interval '1 hour')",
            &[&user, &hash(3)],
        )
        .await,
        "S2V01",
    );
    app.batch_execute("ROLLBACK").await.unwrap();

    // 40 at once from separate connections: exactly 20 are issued.
    let mut tasks = Vec::new();
    for _ in 0..40 {
        let url = db.url(APP_LOGIN);
        tasks.push(tokio::spawn(async move {
            let c = connect(&url).await;
            match issue(&c, user).await {
                Ok(t) => Some(t),
                Err(e) => {
                    let (_, detail, _) = expect_code(Err::<(), _>(e), "S2L01");
                    let secs: i64 = detail
                        .strip_prefix("retry_after: ")
                        .and_then(|s| s.parse().ok())
                        .unwrap_or_else(|| panic!("{detail}"));
                    assert!((1..=30).contains(&secs), "{detail}");
                    None
                }
            }
        }));
    }
    let mut issued = Vec::new();
    for t in tasks {
        issued.extend(t.await.unwrap());
    }
    assert_eq!(issued.len(), 20);
    // Spending one makes room for one more.
    assert_eq!(redeem(&app, &issued[0]).await, Some(user));
    issue(&app, user).await.expect("room for one");
    expect_code(issue(&app, user).await, "S2L01");

    // A disabled account's tickets are refused, and it gets no new ones.
    db.admin
        .execute(
            "UPDATE s2t.users SET status = 'disabled' WHERE id = $1",
            &[&user],
        )
        .await
        .unwrap();
    assert_eq!(redeem(&app, &issued[1]).await, None);
    expect_code(issue(&app, user).await, "S2N01");

    // The application cannot read the table; maintenance purges the expired.
    expect_code(
        app.query_one("SELECT count(*) FROM s2t.ws_tickets", &[])
            .await,
        "42501",
    );
    db.admin
        .execute(
            "UPDATE s2t.ws_tickets SET expires_at = now() - interval '1 second'",
            &[],
        )
        .await
        .unwrap();
    let w = db.connect_as(WORKER_LOGIN).await;
    let purged: i32 = w
        .query_one("SELECT s2t.purge_ws_tickets()", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(purged, 19, "the unspent ones");
    let left: i64 = db
        .admin
        .query_one("SELECT count(*) FROM s2t.ws_tickets", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(left, 0);
}
