//! Answers in the extension, against the real server with the real
//! embedding model: s2t.ask quotes the sentence that answers, at its time,
//! says "not found" rather than invent, never cites another user's
//! passages; the monthly question quota holds under concurrency; answers
//! are kept per user under row-level security.

use s2t_tests::*;
use serde_json::{json, Value};
use tokio_postgres::Client;
use uuid::Uuid;

fn budget_meeting() -> Value {
    json!([
        seg(
            0,
            0,
            4000,
            "Good morning everyone, this is the quarterly budget review."
        ),
        seg(
            1,
            4500,
            8000,
            "Revenue for the quarter came in slightly above the forecast."
        ),
        seg(
            2,
            8500,
            13000,
            "We agreed to cut travel spending by twenty percent starting next month."
        ),
        seg(
            3,
            13500,
            17000,
            "Conference trips are still allowed when a talk has been accepted."
        ),
        seg(
            4,
            17500,
            22000,
            "The engineering team needs twelve new laptops before the summer."
        ),
        seg(
            5,
            22500,
            26000,
            "Finance approved the laptops, but the order must be placed in April."
        ),
        seg(
            6,
            26500,
            30000,
            "The next budget review is planned for the first week of July."
        ),
    ])
}

fn bread_class() -> Value {
    json!([
        seg(
            0,
            0,
            5000,
            "Welcome to the bread baking class, today we make a simple white loaf."
        ),
        seg(
            1,
            5500,
            10000,
            "You need five hundred grams of flour, ten grams of salt and some dry yeast."
        ),
        seg(
            2,
            10500,
            14000,
            "Hot water kills the yeast and the bread will not rise."
        ),
        seg(
            3,
            14500,
            19000,
            "Bake the loaf for thirty minutes, until the crust is golden brown."
        ),
    ])
}

fn vi_meeting() -> Value {
    json!([
        seg(
            0,
            0,
            4000,
            "Chào mọi người, hôm nay chúng ta họp về ngân sách quý ba."
        ),
        seg(
            1,
            4500,
            8000,
            "Ngân sách quảng cáo trên mạng xã hội sẽ tăng gấp đôi."
        ),
        seg(
            2,
            8500,
            12000,
            "Chị Lan sẽ gửi báo giá máy chủ trước thứ sáu."
        ),
    ])
}

/// Small chunks, so a recording has several and times matter.
async fn recording(c: &Client, user: Uuid, segments: Value, language: &str, title: &str) -> Uuid {
    c.batch_execute("SET s2t.chunk_max_tokens = 25")
        .await
        .unwrap();
    let rec = done_recording(c, user, segments, language).await;
    c.execute(
        "UPDATE s2t.recordings SET meta = meta || jsonb_build_object('title', $2::text) WHERE id = $1",
        &[&rec, &title],
    )
    .await
    .unwrap();
    rec
}

async fn ask(app: &Client, q: &str, extra: &str) -> Value {
    app.query_one(&format!("SELECT s2t.ask($1{extra})"), &[&q])
        .await
        .unwrap_or_else(|e| panic!("{q}: {e}"))
        .get(0)
}

/// The highlighted span of a citation.
fn highlighted(c: &Value) -> String {
    let text: Vec<char> = c["text"].as_str().unwrap().chars().collect();
    let (s, e) = (
        c["highlight"][0].as_u64().unwrap() as usize,
        c["highlight"][1].as_u64().unwrap() as usize,
    );
    text[s..e].iter().collect()
}

#[tokio::test]
async fn answers_quote_the_sentence_that_answers_at_its_time() {
    let db = TestDb::new().await;
    let alice = register(&db.admin, "alice_ask").await;
    let budget = recording(&db.admin, alice, budget_meeting(), "en", "Budget review").await;
    let bread = recording(&db.admin, alice, bread_class(), "en", "Bread class").await;
    let vi = recording(&db.admin, alice, vi_meeting(), "vi", "Họp ngân sách").await;
    let chunks: i64 = db
        .admin
        .query_one("SELECT count(*) FROM s2t.transcript_chunks", &[])
        .await
        .unwrap()
        .get(0);
    assert!(chunks >= 5, "{chunks} chunks");
    embed_all(&db.admin).await;
    let app = db.connect_as(APP_LOGIN).await;
    act_as(&app, alice).await;

    for (q, rec, start, words) in [
        (
            "what did we decide about travel spending",
            budget,
            8500,
            "twenty percent",
        ),
        (
            "how many laptops does engineering need",
            budget,
            17500,
            "twelve new laptops",
        ),
        (
            "why should the water not be hot",
            bread,
            10500,
            "kills the yeast",
        ),
        (
            "how much flour do I need",
            bread,
            5500,
            "five hundred grams",
        ),
        ("ngan sach quang cao", vi, 4500, "quảng cáo"),
    ] {
        let a = ask(&app, q, "").await;
        assert_eq!(a["found"], true, "{q}: {a}");
        assert_eq!(a["mode"], "extractive");
        assert_eq!(a["model"], EMBED_MODEL);
        let first = &a["citations"][0];
        assert_eq!(first["n"], 1);
        assert_eq!(first["recording_id"], rec.to_string(), "{q}: {a}");
        assert_eq!(first["start_ms"], start, "{q}: {a}");
        assert!(
            highlighted(first).contains(words),
            "{q}: {}",
            highlighted(first)
        );
        let answer = a["answer"].as_str().unwrap();
        assert!(answer.starts_with("From “"), "{answer}");
        assert!(answer.contains(words) && answer.contains("[1]"), "{answer}");
        // Every marker names a citation, every citation a marker.
        let n = a["citations"].as_array().unwrap().len();
        for i in 1..=n {
            assert!(answer.contains(&format!("[{i}]")), "{answer}");
        }
        assert!(!answer.contains(&format!("[{}]", n + 1)));
        // The same question gives the same answer.
        assert_eq!(ask(&app, q, "").await, a);
    }
    // The lead in Vietnamese.
    let a = ask(&app, "ai gửi báo giá máy chủ", ", lang => 'vi'").await;
    assert!(
        a["answer"]
            .as_str()
            .unwrap()
            .starts_with("Theo “Họp ngân sách”"),
        "{a}"
    );
    assert!(highlighted(&a["citations"][0]).contains("Lan"));
    // Nothing relevant: not found, and nothing made up.
    for q in [
        "what is the capital of Australia",
        "who won the football match on Saturday",
    ] {
        let a = ask(&app, q, "").await;
        assert_eq!(a["found"], false, "{q}: {a}");
        assert_eq!(a["answer"], "");
        assert_eq!(a["citations"], json!([]));
    }
    // One recording only.
    let a = ask(
        &app,
        "budget",
        &format!(", recording_id => '{bread}'::uuid"),
    )
    .await;
    assert!(a["citations"]
        .as_array()
        .unwrap()
        .iter()
        .all(|c| c["recording_id"] == bread.to_string()));
    // The context any language can answer from: numbered passages and the
    // prompt that cites them.
    let ctx: Value = app
        .query_one("SELECT s2t.ask_context('travel spending', 3)", &[])
        .await
        .unwrap()
        .get(0);
    let passages = ctx["passages"].as_array().unwrap();
    assert!(!passages.is_empty() && passages.len() <= 3);
    assert_eq!(passages[0]["n"], 1);
    assert!(!passages[0]["segments"].as_array().unwrap().is_empty());
    let user = ctx["messages"][1]["content"].as_str().unwrap();
    assert!(
        user.contains(&format!("[1] ({}", passages[0]["title"].as_str().unwrap())),
        "{user}"
    );
    assert!(user.ends_with("Question: travel spending"));
    // Bad arguments.
    expect_code(
        app.query("SELECT s2t.ask_context('x', 0)", &[]).await,
        "S2V01",
    );
    app.batch_execute("ROLLBACK").await.unwrap();
    act_as(&app, alice).await;
    expect_code(app.query("SELECT s2t.ask('', 3)", &[]).await, "S2V01");
    app.batch_execute("ROLLBACK").await.unwrap();
    act_as(&app, alice).await;
    expect_code(
        app.query("SELECT s2t.ask('budget', max_sentences => 0)", &[])
            .await,
        "22023",
    );
    app.batch_execute("ROLLBACK").await.unwrap();
}

#[tokio::test]
async fn a_question_never_cites_another_users_passages() {
    let db = TestDb::new().await;
    let alice = register(&db.admin, "alice_iso").await;
    let bob = register(&db.admin, "bob_iso").await;
    let a_rec = recording(&db.admin, alice, budget_meeting(), "en", "Alice budget").await;
    let b_rec = recording(&db.admin, bob, budget_meeting(), "en", "Bob budget").await;
    embed_all(&db.admin).await;
    let app = db.connect_as(APP_LOGIN).await;
    for (user, own, other) in [(alice, a_rec, b_rec), (bob, b_rec, a_rec)] {
        act_as(&app, user).await;
        for q in [
            "travel spending",
            "laptops for engineering",
            "budget review in July",
        ] {
            let a = ask(&app, q, "").await;
            assert_eq!(a["found"], true, "{q}");
            for c in a["citations"].as_array().unwrap() {
                assert_eq!(c["recording_id"], own.to_string(), "{q}: {c}");
            }
        }
        let err = app
            .query(
                &format!("SELECT s2t.ask('budget', recording_id => '{other}')"),
                &[],
            )
            .await;
        expect_code(err, "S2N01");
        app.batch_execute("ROLLBACK").await.unwrap();
    }
    // Without s2t.user_id nothing is found.
    let a = ask(&app, "travel spending", "").await;
    assert_eq!(a["found"], false);
    assert_eq!(a["passages"], 0);
}

async fn limit_questions(c: &Client, user: Uuid, questions: i32) {
    set_limits(c, user, 100, 100).await;
    c.execute(
        "UPDATE s2t.plans SET monthly_questions = $2 WHERE id = (SELECT plan_id FROM s2t.user_subscriptions WHERE user_id = $1)",
        &[&user, &questions],
    )
    .await
    .unwrap();
}

#[tokio::test]
async fn the_monthly_question_limit_holds_under_concurrent_questions() {
    let db = TestDb::new().await;
    let alice = register(&db.admin, "alice_q").await;
    limit_questions(&db.admin, alice, 2).await;
    let app = db.connect_as(APP_LOGIN).await;
    for want in [1, 2] {
        act_as(&app, alice).await;
        let used: i32 = app
            .query_one("SELECT s2t.admit_question($1)", &[&alice])
            .await
            .unwrap()
            .get(0);
        assert_eq!(used, want);
        app.batch_execute("COMMIT").await.unwrap();
    }
    act_as(&app, alice).await;
    let err = app
        .query_one("SELECT s2t.admit_question($1)", &[&alice])
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&err), "S2Q03");
    let db_err = err.as_db_error().unwrap();
    assert!(db_err.message().contains("2 of 2"), "{}", db_err.message());
    let reset: String = db
        .admin
        .query_one(
            "SELECT s2t._utc(date_add(date_trunc('month', now(), 'UTC'), interval '1 month', 'UTC'))",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(db_err
        .detail()
        .unwrap()
        .contains(&format!("resets_at: {reset}")));
    app.batch_execute("ROLLBACK").await.unwrap();
    // Acting for someone else, or for nobody.
    let bob = register(&db.admin, "bob_q").await;
    act_as(&app, bob).await;
    expect_code(
        app.query("SELECT s2t.admit_question($1)", &[&alice]).await,
        "S2N01",
    );
    app.batch_execute("ROLLBACK").await.unwrap();
    expect_code(
        app.query("SELECT s2t.admit_question($1)", &[&alice]).await,
        "42501",
    );
    // A plan without questions.
    limit_questions(&db.admin, bob, 0).await;
    act_as(&app, bob).await;
    expect_code(
        app.query("SELECT s2t.admit_question($1)", &[&bob]).await,
        "S2Q03",
    );
    app.batch_execute("ROLLBACK").await.unwrap();

    // Twelve at once against a limit of five: exactly five are counted.
    let carol = register(&db.admin, "carol_q").await;
    limit_questions(&db.admin, carol, 5).await;
    let mut tasks = Vec::new();
    for _ in 0..12 {
        let c = db.connect_as(APP_LOGIN).await;
        tasks.push(tokio::spawn(async move {
            act_as(&c, carol).await;
            let r = c
                .query_one("SELECT s2t.admit_question($1)", &[&carol])
                .await;
            let ok = r.is_ok();
            if ok {
                c.batch_execute("COMMIT").await.unwrap();
            } else {
                assert_eq!(sqlstate(&r.unwrap_err()), "S2Q03");
            }
            ok
        }));
    }
    let mut admitted = 0;
    for t in tasks {
        admitted += usize::from(t.await.unwrap());
    }
    assert_eq!(admitted, 5);
    let counted: i32 = db
        .admin
        .query_one(
            "SELECT questions FROM s2t.question_usage WHERE user_id = $1",
            &[&carol],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(counted, 5);
}

#[tokio::test]
async fn answers_are_kept_per_user() {
    let db = TestDb::new().await;
    let alice = register(&db.admin, "alice_h").await;
    let bob = register(&db.admin, "bob_h").await;
    let app = db.connect_as(APP_LOGIN).await;
    let insert = "INSERT INTO s2t.answers (user_id, question, answer, citations, mode, found) \
                  VALUES ($1, 'q?', 'a [1]', '[{\"n\": 1}]', 'extractive', true) RETURNING id";
    act_as(&app, alice).await;
    let id: Uuid = app.query_one(insert, &[&alice]).await.unwrap().get(0);
    app.batch_execute("COMMIT").await.unwrap();
    // Bob sees none of it and cannot write as Alice.
    act_as(&app, bob).await;
    let seen = app.query("SELECT id FROM s2t.answers", &[]).await.unwrap();
    assert!(seen.is_empty());
    let gone = app
        .execute("DELETE FROM s2t.answers WHERE id = $1", &[&id])
        .await
        .unwrap();
    assert_eq!(gone, 0);
    expect_code(app.query(insert, &[&alice]).await, "42501");
    app.batch_execute("ROLLBACK").await.unwrap();
    // Nor can the application change an answer after the fact.
    act_as(&app, alice).await;
    expect_code(
        app.query("UPDATE s2t.answers SET answer = 'forged' RETURNING id", &[])
            .await,
        "42501",
    );
    app.batch_execute("ROLLBACK").await.unwrap();
    act_as(&app, alice).await;
    let mine = app.query("SELECT id FROM s2t.answers", &[]).await.unwrap();
    assert_eq!(mine.len(), 1);
    app.batch_execute("ROLLBACK").await.unwrap();
}
