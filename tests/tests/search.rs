//! Search in the extension, against the real server with the real
//! embedding model loaded in the backend: chunking at completion (and its
//! idempotence), the embedding queue's leases, hybrid search in Vietnamese
//! and English, row-level security, the lexical fallback and bad arguments.

use s2t_tests::*;
use serde_json::json;
use tokio_postgres::Client;
use uuid::Uuid;

const MODEL: &str = EMBED_MODEL;

fn meeting_vi() -> serde_json::Value {
    json!([
        seg(
            0,
            0,
            4200,
            "Xin chào mọi người. Hôm nay chúng ta họp về kế hoạch ngân sách năm sau."
        ),
        seg(1, 4300, 9000, "Phòng kỹ thuật cần thêm hai máy chủ mới."),
        seg(
            2,
            20000,
            26000,
            "Cuối cùng, buổi liên hoan của công ty sẽ vào thứ sáu."
        ),
    ])
}

fn meeting_en() -> serde_json::Value {
    json!([
        seg(
            0,
            0,
            5000,
            "Good morning everyone. Let us review the quarterly sales numbers."
        ),
        seg(
            1,
            5200,
            11000,
            "We agreed to cut the travel budget by twenty percent next quarter."
        ),
        seg(
            2,
            30000,
            36000,
            "The new office in Da Nang opens in March with fifteen engineers."
        ),
    ])
}

async fn search(c: &Client, q: &str) -> Vec<(Uuid, i32, Option<i32>, Option<i32>)> {
    c.query(
        "SELECT recording_id, start_ms, dense_rank, lexical_rank FROM s2t.search($1, 5)",
        &[&q],
    )
    .await
    .expect("search")
    .iter()
    .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
    .collect()
}

#[tokio::test]
async fn completion_chunks_the_transcript_with_times_and_segment_ranges() {
    let db = TestDb::new().await;
    let user = register(&db.admin, "chunker").await;
    let rec = done_recording(&db.admin, user, meeting_vi(), "vi").await;
    let rows = db
        .admin
        .query(
            "SELECT chunk_index, start_ms, end_ms, first_segment_idx, last_segment_idx, text, length(content_hash), embedding IS NULL
               FROM s2t.transcript_chunks WHERE recording_id = $1 ORDER BY chunk_index",
            &[&rec],
        )
        .await
        .unwrap();
    // The 11 s pause before segment 2 cuts; the first two share a chunk.
    assert_eq!(rows.len(), 2);
    assert_eq!(
        (
            rows[0].get::<_, i32>(1),
            rows[0].get::<_, i32>(2),
            rows[0].get::<_, i32>(3),
            rows[0].get::<_, i32>(4)
        ),
        (0, 9000, 0, 1)
    );
    assert_eq!(
        (
            rows[1].get::<_, i32>(1),
            rows[1].get::<_, i32>(2),
            rows[1].get::<_, i32>(3),
            rows[1].get::<_, i32>(4)
        ),
        (20000, 26000, 2, 2)
    );
    assert!(rows[0].get::<_, String>(5).contains("họp về kế hoạch"));
    assert_eq!(rows[0].get::<_, i32>(6), 64);
    assert!(rows.iter().all(|r| r.get::<_, bool>(7)));
    // The owner comes from the recording.
    let owner: Uuid = db
        .admin
        .query_one(
            "SELECT DISTINCT user_id FROM s2t.transcript_chunks WHERE recording_id = $1",
            &[&rec],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(owner, user);
    // An empty transcript gives no chunks, and that is not an error.
    let empty = done_recording(&db.admin, user, json!([]), "vi").await;
    let n: i32 = db
        .admin
        .query_one("SELECT s2t.chunk_recording($1)", &[&empty])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 0);
    expect_code(
        db.admin
            .query_one("SELECT s2t.chunk_recording($1)", &[&Uuid::new_v4()])
            .await,
        "S2N01",
    );
}

#[tokio::test]
async fn rechunking_is_idempotent_and_only_changed_chunks_lose_their_vector() {
    let db = TestDb::new().await;
    let user = register(&db.admin, "rechunk").await;
    let rec = done_recording(&db.admin, user, meeting_en(), "en").await;
    assert_eq!(embed_all(&db.admin).await, 2);
    let state = |rows: Vec<tokio_postgres::Row>| -> Vec<(Uuid, String, bool, String)> {
        rows.iter()
            .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
            .collect()
    };
    let q = "SELECT id, content_hash, embedding IS NOT NULL, xmin::text FROM s2t.transcript_chunks
              WHERE recording_id = $1 ORDER BY chunk_index";
    let before = state(db.admin.query(q, &[&rec]).await.unwrap());
    assert!(before.iter().all(|c| c.2), "all embedded");
    // Twice more: nothing is written (same row versions).
    for _ in 0..2 {
        let n: i32 = db
            .admin
            .query_one("SELECT s2t.chunk_recording($1)", &[&rec])
            .await
            .unwrap()
            .get(0);
        assert_eq!(n, 2);
    }
    assert_eq!(state(db.admin.query(q, &[&rec]).await.unwrap()), before);
    // Correct a word in the last segment: that chunk is new and waits for a
    // vector; the first keeps its id and vector.
    db.admin
        .execute(
            "UPDATE s2t.segments SET text = 'The new office in Hue opens in March with fifteen engineers.'
              WHERE recording_id = $1 AND idx = 2",
            &[&rec],
        )
        .await
        .unwrap();
    db.admin
        .query_one("SELECT s2t.chunk_recording($1)", &[&rec])
        .await
        .unwrap();
    let after = state(db.admin.query(q, &[&rec]).await.unwrap());
    assert_eq!(after.len(), 2);
    assert_eq!(
        (after[0].0, &after[0].1, after[0].2),
        (before[0].0, &before[0].1, true)
    );
    assert_ne!(after[1].1, before[1].1);
    assert!(!after[1].2, "the changed chunk lost its vector");
    let waiting: i64 = db
        .admin
        .query_one("SELECT unembedded FROM s2t.embedding_backlog()", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(waiting, 1);
}

#[tokio::test]
async fn the_embedding_queue_leases_and_stores_each_chunk_once() {
    let db = TestDb::new().await;
    let user = register(&db.admin, "leases").await;
    done_recording(&db.admin, user, meeting_en(), "en").await;
    let worker = db.connect_as(WORKER_LOGIN).await;
    let claim = "SELECT chunk_id, content_hash, text FROM s2t.claim_chunks_to_embed($1, 10, interval '1 second')";
    let first = worker.query(claim, &[&MODEL]).await.unwrap();
    assert_eq!(first.len(), 2);
    // Leased: a second worker gets nothing now...
    assert!(worker.query(claim, &[&MODEL]).await.unwrap().is_empty());
    // ...and everything once the lease is over (the first worker died).
    tokio::time::sleep(std::time::Duration::from_millis(1200)).await;
    let again = worker.query(claim, &[&MODEL]).await.unwrap();
    assert_eq!(again.len(), 2);
    let ids: Vec<Uuid> = again.iter().map(|r| r.get(0)).collect();
    let hashes: Vec<String> = again.iter().map(|r| r.get(1)).collect();
    let flat: Vec<f32> = (0..2 * 384).map(|i| (i % 7) as f32).collect();
    let store = "SELECT s2t.store_chunk_embeddings($1, $2, $3, $4)";
    let n: i32 = worker
        .query_one(store, &[&MODEL, &ids, &hashes, &flat])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 2);
    // The late worker's store changes nothing.
    let n: i32 = worker
        .query_one(store, &[&MODEL, &ids, &hashes, &flat])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 0);
    // A stale hash (the chunk was re-cut) is not stored.
    let stale = vec!["0".repeat(64), "0".repeat(64)];
    let n: i32 = worker
        .query_one(store, &[&"other-model", &ids, &stale, &flat])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 0);
    // A vector too short for its chunks is refused whole.
    let (msg, _, _) = expect_code(
        worker
            .query_one(store, &[&MODEL, &ids, &hashes, &flat[..384].to_vec()])
            .await,
        "S2V01",
    );
    assert!(msg.contains("768"), "{msg}");
    expect_code(
        worker
            .query(claim.replace("10", "0").as_str(), &[&MODEL])
            .await,
        "S2V01",
    );
    // Another model's worker re-embeds them, after nothing else is waiting.
    let other = worker.query(claim, &[&"another-model"]).await.unwrap();
    assert_eq!(other.len(), 2);
    // The worker cannot write chunks directly.
    expect_code(
        worker
            .batch_execute("UPDATE s2t.transcript_chunks SET text = 'x'")
            .await,
        "42501",
    );
    expect_code(
        worker
            .batch_execute("DELETE FROM s2t.transcript_chunks")
            .await,
        "42501",
    );
}

#[tokio::test]
async fn hybrid_search_finds_the_right_passage_in_vietnamese_and_english() {
    let db = TestDb::new().await;
    let user = register(&db.admin, "searcher").await;
    let vi = done_recording(&db.admin, user, meeting_vi(), "vi").await;
    let en = done_recording(&db.admin, user, meeting_en(), "en").await;
    assert_eq!(embed_all(&db.admin).await, 4);
    let app = db.connect_as(APP_LOGIN).await;
    act_as(&app, user).await;
    // Without diacritics, as users type: the words find it.
    let hits = search(&app, "hop ke hoach ngan sach").await;
    assert_eq!((hits[0].0, hits[0].1), (vi, 0));
    assert_eq!(hits[0].3, Some(1));
    // With them, and a passage after the long pause.
    let hits = search(&app, "liên hoan công ty").await;
    assert_eq!((hits[0].0, hits[0].1), (vi, 20000));
    // A paraphrase with no shared topic word: the meaning finds it.
    let hits = search(&app, "spending less money on trips").await;
    assert_eq!((hits[0].0, hits[0].1), (en, 0));
    assert_eq!(hits[0].2, Some(1), "dense ranks it first");
    let hits = search(&app, "opening a branch with new staff").await;
    assert_eq!((hits[0].0, hits[0].1), (en, 30000));
    // Highlights are character offsets of the matched words.
    let row = app
        .query_one(
            "SELECT text, highlights FROM s2t.search('ke hoach', 1)",
            &[],
        )
        .await
        .unwrap();
    let text: String = row.get(0);
    let spans: serde_json::Value = row.get(1);
    let chars: Vec<char> = text.chars().collect();
    let words: Vec<String> = spans
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            chars[s[0].as_u64().unwrap() as usize..s[1].as_u64().unwrap() as usize]
                .iter()
                .collect()
        })
        .collect();
    assert_eq!(words, vec!["kế", "hoạch"]);
    // Filters: one recording, a language, a time range.
    let in_vi: Vec<Uuid> = app
        .query(
            "SELECT recording_id FROM s2t.search('budget spending', 10, recording_id => $1)",
            &[&vi],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(
        !in_vi.is_empty() && in_vi.iter().all(|r| *r == vi),
        "{in_vi:?}"
    );
    let only_vi: Vec<Uuid> = app
        .query(
            "SELECT recording_id FROM s2t.search('engineers office budget', 10, language => 'vi')",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(only_vi.iter().all(|r| *r == vi), "{only_vi:?}");
    let future: i64 = app
        .query_one(
            "SELECT count(*) FROM s2t.search('budget', 10, since => now() + interval '1 day')",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(future, 0);
    app.batch_execute("COMMIT").await.unwrap();
    // The index path gives the same first hit as the exact one.
    db.admin
        .batch_execute("SET s2t.exact_search_below = 0")
        .await
        .unwrap();
    let hits = search(&db.admin, "spending less money on trips").await;
    assert_eq!((hits[0].0, hits[0].1), (en, 0));
}

#[tokio::test]
async fn a_user_finds_only_their_own_passages() {
    let db = TestDb::new().await;
    let alice = register(&db.admin, "alice_s").await;
    let bob = register(&db.admin, "bob_s").await;
    let a_rec = done_recording(&db.admin, alice, meeting_en(), "en").await;
    let b_rec = done_recording(&db.admin, bob, meeting_en(), "en").await;
    embed_all(&db.admin).await;
    let app = db.connect_as(APP_LOGIN).await;
    for (user, own) in [(alice, a_rec), (bob, b_rec)] {
        act_as(&app, user).await;
        for q in [
            "travel budget",
            "spending less money on trips",
            "Da Nang office",
        ] {
            let hits = search(&app, q).await;
            assert!(!hits.is_empty(), "{q}");
            assert!(hits.iter().all(|h| h.0 == own), "{q}: {hits:?}");
        }
        // Naming the other's recording is as unknown as a missing one.
        let other = if own == a_rec { b_rec } else { a_rec };
        expect_code(
            app.query("SELECT * FROM s2t.search('budget', 10, $1)", &[&other])
                .await,
            "S2N01",
        );
        app.batch_execute("ROLLBACK").await.unwrap();
    }
    // Without s2t.user_id the application sees no chunk at all.
    let hits = app
        .query("SELECT * FROM s2t.search('budget', 10)", &[])
        .await
        .unwrap();
    assert!(hits.is_empty());
}

#[tokio::test]
async fn bad_arguments_get_sqlstates_and_a_missing_model_falls_back_to_words() {
    let db = TestDb::new().await;
    let user = register(&db.admin, "badargs").await;
    done_recording(&db.admin, user, meeting_en(), "en").await;
    for (sql, field) in [
        ("SELECT * FROM s2t.search('budget', 0)", "k"),
        ("SELECT * FROM s2t.search('budget', 101)", "k"),
        ("SELECT * FROM s2t.search('   ')", "query"),
        ("SELECT * FROM s2t.search(repeat('a', 2001))", "query"),
        ("SELECT * FROM s2t.search('budget', 10, since => now(), until => now() - interval '1 day')", "since"),
        ("SELECT * FROM s2t.search('budget', '[1,2,3]'::vector)", "query_embedding"),
    ] {
        let (_, detail, _) = expect_code(db.admin.query(sql, &[]).await, "S2V01");
        assert_eq!(detail, format!("field: {field}"), "{sql}");
    }
    // A backend that cannot load the model: words only, a NOTICE, no error.
    use futures_util::StreamExt;
    let (client, mut connection) = tokio_postgres::connect(&db.url("s2t"), tokio_postgres::NoTls)
        .await
        .unwrap();
    let (tx, mut notices) = tokio::sync::mpsc::unbounded_channel();
    let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
    tokio::spawn(async move {
        while let Some(Ok(m)) = messages.next().await {
            if let tokio_postgres::AsyncMessage::Notice(n) = m {
                let _ = tx.send(n.message().to_string());
            }
        }
    });
    client
        .batch_execute("SET s2t.onnxruntime_path = '/nonexistent/libonnxruntime.so'")
        .await
        .unwrap();
    let rows = client
        .query(
            "SELECT dense_rank, lexical_rank FROM s2t.search('travel budget', 5)",
            &[],
        )
        .await
        .unwrap();
    assert!(!rows.is_empty());
    assert!(rows.iter().all(|r| r.get::<_, Option<i32>>(0).is_none()));
    assert_eq!(rows[0].get::<_, Option<i32>>(1), Some(1));
    let available: bool = client
        .query_one("SELECT s2t.embedding_available()", &[])
        .await
        .unwrap()
        .get(0);
    assert!(!available);
    let notice = notices.recv().await.expect("a notice");
    assert!(notice.contains("ranks by words only"), "{notice}");
    // s2t.embed itself is an error there, with its SQLSTATE.
    expect_code(
        client.query_one("SELECT s2t.embed('x')", &[]).await,
        "58P01",
    );
    // And the application cannot point the backend at other files: not
    // once the library is loaded...
    let app = db.connect_as(APP_LOGIN).await;
    app.query_one("SELECT s2t.embedding_model()", &[])
        .await
        .unwrap();
    expect_code(
        app.batch_execute("SET s2t.embedding_model_dir = '/etc'")
            .await,
        "42501",
    );
    expect_code(
        app.batch_execute("SET s2t.onnxruntime_path = '/tmp/evil.so'")
            .await,
        "42501",
    );
    // ...nor before, through a placeholder the load would adopt.
    let early = db.connect_as(APP_LOGIN).await;
    early
        .batch_execute("SET s2t.onnxruntime_path = '/tmp/evil.so'")
        .await
        .unwrap();
    early
        .query_one("SELECT s2t.embedding_model()", &[])
        .await
        .unwrap();
    let path: String = early
        .query_one("SELECT current_setting('s2t.onnxruntime_path')", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(path, "", "the user's placeholder was not adopted");
}

/// Sum of the `stored` fields of a worker log's `chunks_embedded` lines.
fn stored_in_log(path: &std::path::Path) -> i64 {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["event"] == "chunks_embedded")
        .map(|v| v["stored"].as_i64().unwrap_or(0))
        .sum()
}

#[tokio::test]
async fn a_worker_killed_while_embedding_loses_no_chunk_and_stores_none_twice() {
    let bin = std::env::var("S2T_WORKER_BIN").expect("make test sets S2T_WORKER_BIN");
    let db = TestDb::new().await;
    let user = register(&db.admin, "crashy").await;
    set_limits(&db.admin, user, 1000, 100_000).await;
    const VOCAB: &[&str] = &[
        "budget",
        "meeting",
        "server",
        "quarter",
        "engineers",
        "office",
        "travel",
        "plan",
        "customer",
        "report",
        "deadline",
        "release",
        "design",
        "review",
        "hiring",
        "sales",
    ];
    // 30 recordings of 6 passages (~120 words each, 4 s apart): 180 chunks.
    for r in 0..30 {
        let segments: Vec<serde_json::Value> = (0..6)
            .map(|i| {
                let words: Vec<&str> = (0..120)
                    .map(|w| VOCAB[(w * 7 + i * 3 + r) % VOCAB.len()])
                    .collect();
                seg(
                    i as i32,
                    i as i32 * 10_000,
                    i as i32 * 10_000 + 6_000,
                    &format!("{}.", words.join(" ")),
                )
            })
            .collect();
        done_recording(&db.admin, user, serde_json::Value::Array(segments), "en").await;
    }
    let total: i64 = db
        .admin
        .query_one("SELECT count(*) FROM s2t.transcript_chunks", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(total, 180);
    let dir = std::env::temp_dir().join(format!("s2t-embed-crash-{}", Uuid::new_v4()));
    std::fs::create_dir_all(&dir).unwrap();
    let start = |n: u32| {
        let log = dir.join(format!("worker{n}.log"));
        let child = worker_command(bin.as_ref(), &db)
            .args(["--embed-batch", "8", "--embed-lease-secs", "3"])
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("start the worker");
        (child, log)
    };
    let embedded = || async {
        db.admin
            .query_one(
                "SELECT count(*) FROM s2t.transcript_chunks WHERE embedding IS NOT NULL",
                &[],
            )
            .await
            .unwrap()
            .get::<_, i64>(0)
    };
    let (mut first, first_log) = start(1);
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(120);
    while embedded().await < 24 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the first worker embedded nothing"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    // SIGKILL in the middle: its claimed batch is neither stored nor lost.
    first.kill().unwrap();
    first.wait().unwrap();
    let at_kill = embedded().await;
    assert!(at_kill < total, "killed too late to prove anything");
    let (mut second, second_log) = start(2);
    while embedded().await < total {
        assert!(
            tokio::time::Instant::now() < deadline + std::time::Duration::from_secs(60),
            "{} of {total} embedded after the restart",
            embedded().await
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    second.kill().unwrap();
    second.wait().unwrap();
    // Every chunk was stored exactly once across both workers.
    assert_eq!(
        stored_in_log(&first_log) + stored_in_log(&second_log),
        total
    );
    // And the stored vectors are the model's: the backend's own embedding
    // of a chunk's text agrees with the worker's.
    let agree: f64 = db
        .admin
        .query_one(
            "SELECT min(1 - (embedding <=> s2t.embed(text))) FROM
               (SELECT embedding, text FROM s2t.transcript_chunks ORDER BY id LIMIT 5) c",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(agree > 0.99, "cosine {agree}");
    std::fs::remove_dir_all(&dir).ok();
}
