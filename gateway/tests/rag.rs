//! Answers end to end: espeak speech uploaded through the gateway,
//! transcribed and embedded by the release worker, asked with
//! `POST /rag/ask` (JSON and Server-Sent Events): the citation points at
//! the right recording and time and highlights the answering sentence, an
//! unanswerable question is "not found", answers are kept per user in
//! `GET /rag/history`, and the monthly question limit answers 429.

mod common;
use common::*;
use reqwest::StatusCode;
use serde_json::{json, Value};

fn highlighted(c: &Value) -> String {
    let text: Vec<char> = c["text"].as_str().unwrap().chars().collect();
    let (s, e) = (
        c["highlight"][0].as_u64().unwrap() as usize,
        c["highlight"][1].as_u64().unwrap() as usize,
    );
    text[s..e].iter().collect()
}

async fn ask(s: &Stack, token: &str, body: Value) -> (StatusCode, Value) {
    s.post_json("/rag/ask", body, Some(token)).await
}

/// The events of a streamed answer: (event, data).
async fn ask_stream(s: &Stack, token: &str, body: Value) -> Vec<(String, Value)> {
    let res = s
        .http
        .post(s.url("/rag/ask?stream=true"))
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert!(res.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    let text = res.text().await.unwrap();
    let mut out = Vec::new();
    for block in text.split("\n\n") {
        let mut event = String::new();
        let mut data = String::new();
        for line in block.lines() {
            if let Some(e) = line.strip_prefix("event: ") {
                event = e.to_string();
            } else if let Some(d) = line.strip_prefix("data: ") {
                data.push_str(d);
            }
        }
        if !event.is_empty() {
            out.push((event, serde_json::from_str(&data).unwrap()));
        }
    }
    out
}

#[tokio::test]
async fn spoken_meetings_answer_with_checked_citations_at_their_time() {
    let s = stack(50 * 1024 * 1024, true).await;
    let (alice, _) = s.user("alice_rag").await;
    let (bob, _) = s.user("bob_rag").await;
    let meeting = transcribed(
        &s,
        &alice,
        speech_wav(
            "Good morning everyone, this is the quarterly budget review. \
             Revenue for the quarter came in slightly above the forecast. \
             We agreed to cut travel spending by twenty percent starting next month. \
             The engineering team needs twelve new laptops before the summer.",
        ),
        "en",
    )
    .await;
    let bobs = transcribed(
        &s,
        &bob,
        speech_wav("The bread should bake for thirty minutes until the crust is brown."),
        "en",
    )
    .await;
    all_embedded(&s).await;

    let (status, a) = ask(
        &s,
        &alice,
        json!({"question": "what did we decide about travel spending"}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{a}");
    assert_eq!(a["found"], true, "{a}");
    assert_eq!(a["mode"], "extractive");
    let c = &a["citations"][0];
    assert_eq!(c["recording_id"], meeting.as_str());
    let said = highlighted(c).to_lowercase();
    // Whisper writes "twenty percent" as it likes ("20%"): the words
    // around it.
    assert!(
        said.contains("travel") && said.contains("spending"),
        "{said}"
    );
    // The third sentence is spoken after the first two (about 8 s of speech).
    let start = c["start_ms"].as_i64().unwrap();
    assert!(
        start >= 4000 && start < c["end_ms"].as_i64().unwrap(),
        "{c}"
    );
    assert_eq!(c["link"], format!("/recordings/{meeting}?t={start}"));
    assert!(a["answer"].as_str().unwrap().contains("[1]"));

    // Streamed: the citations first, then the text, then the whole answer.
    let events = ask_stream(
        &s,
        &alice,
        json!({"question": "how many laptops does engineering need"}),
    )
    .await;
    let names: Vec<&str> = events.iter().map(|(e, _)| e.as_str()).collect();
    assert_eq!(names.first(), Some(&"citations"), "{names:?}");
    assert_eq!(names.last(), Some(&"done"));
    assert!(names.contains(&"answer"));
    let done = &events.last().unwrap().1;
    let pieces: Vec<&str> = events
        .iter()
        .filter(|(e, _)| e == "answer")
        .map(|(_, d)| d["text"].as_str().unwrap())
        .collect();
    assert_eq!(pieces.join(" "), done["answer"].as_str().unwrap());
    assert_eq!(events[0].1["citations"], done["citations"]);
    assert!(highlighted(&done["citations"][0])
        .to_lowercase()
        .contains("laptops"));

    // Nothing relevant: not found, nothing invented.
    let (_, a) = ask(
        &s,
        &alice,
        json!({"question": "what is the capital of Australia"}),
    )
    .await;
    assert_eq!(a["found"], false, "{a}");
    assert_eq!(a["citations"], json!([]));
    // Bob's question never reaches Alice's meeting, nor may he name it.
    let (_, a) = ask(&s, &bob, json!({"question": "travel spending"})).await;
    for c in a["citations"].as_array().unwrap() {
        assert_eq!(c["recording_id"], bobs.as_str());
    }
    let (status, _) = ask(
        &s,
        &bob,
        json!({"question": "budget", "recording_id": meeting}),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // The history: Alice's three answers, newest first, paged; none of Bob's.
    let (status, h) = s.get_json("/rag/history?limit=2", &alice).await;
    assert_eq!(status, StatusCode::OK);
    let page = h["answers"].as_array().unwrap();
    assert_eq!(page.len(), 2);
    assert_eq!(page[0]["question"], "what is the capital of Australia");
    let (_, rest) = s
        .get_json(
            &format!("/rag/history?cursor={}", h["next_cursor"].as_str().unwrap()),
            &alice,
        )
        .await;
    assert_eq!(rest["answers"].as_array().unwrap().len(), 1);
    assert_eq!(rest["next_cursor"], Value::Null);
    assert_eq!(
        rest["answers"][0]["question"],
        "what did we decide about travel spending"
    );
    let (_, h) = s.get_json("/rag/history", &bob).await;
    assert!(h["answers"]
        .as_array()
        .unwrap()
        .iter()
        .all(|a| a["question"] != "what is the capital of Australia"));
}

#[tokio::test]
async fn bad_questions_are_problems_and_the_monthly_limit_is_429() {
    let s = stack(1024 * 1024, false).await;
    let (alice, _) = s.user("alice_rag_q").await;
    for (body, field) in [
        (json!({}), "question"),
        (json!({"question": " "}), "question"),
        (json!({"question": "x".repeat(2001)}), "question"),
        (json!({"question": "x", "k": 0}), "k"),
        (
            json!({"question": "x", "recording_id": "nope"}),
            "recording_id",
        ),
        (json!({"question": "x", "since": "yesterday"}), "since"),
        (json!({"question": "x", "lang": "fr"}), "lang"),
    ] {
        let (status, p) = ask(&s, &alice, body.clone()).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}: {p}");
        assert!(p["errors"][field].is_string(), "{body}: {p}");
    }
    let (status, _) = s
        .post_json("/rag/ask", json!({"question": "x"}), None)
        .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    // Two questions a month.
    s.db
        .admin
        .execute(
            "INSERT INTO s2t.plans (code, name, monthly_minutes, monthly_usage_limit, monthly_questions) \
             VALUES ('Q2', 'Q2', 10, 10, 2)",
            &[],
        )
        .await
        .unwrap();
    s.db
        .admin
        .execute(
            "UPDATE s2t.user_subscriptions SET plan_id = (SELECT id FROM s2t.plans WHERE code = 'Q2') \
             WHERE user_id = (SELECT id FROM s2t.users WHERE user_name = 'alice_rag_q')",
            &[],
        )
        .await
        .unwrap();
    for _ in 0..2 {
        let (status, a) = ask(&s, &alice, json!({"question": "anything at all"})).await;
        assert_eq!(status, StatusCode::OK, "{a}");
        assert_eq!(a["found"], false);
    }
    let res = s
        .http
        .post(s.url("/rag/ask"))
        .bearer_auth(&alice)
        .json(&json!({"question": "one more"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(retry_after(&res) >= 1);
    let p: Value = res.json().await.unwrap();
    assert_eq!(p["code"], "S2Q03");
    assert_eq!(p["limit"], "monthly_questions");
    assert!(p["resets_at"].as_str().unwrap().ends_with("Z"));
    // The refused question is not kept.
    let (_, h) = s.get_json("/rag/history", &alice).await;
    assert_eq!(h["answers"].as_array().unwrap().len(), 2);
}
