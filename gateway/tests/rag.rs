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
    read_events(res, |_, _| {}).await
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
    let (_, stats) = s.get_json("/me/stats", &alice).await;
    assert_eq!(stats["questions_used"], 2, "{stats}");
    assert_eq!(stats["monthly_questions"], 2);
    let (_, plans) = s.get_json("/plans", &alice).await;
    let q2 = plans["plans"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["code"] == "Q2")
        .unwrap()
        .clone();
    assert_eq!(q2["monthly_questions"], 2);
    // The refused question is not kept.
    let (_, h) = s.get_json("/rag/history", &alice).await;
    assert_eq!(h["answers"].as_array().unwrap().len(), 2);
}

/// The real `s2t-llm` with SmolLM2 on a loopback port.
struct LocalModel {
    child: std::process::Child,
    url: String,
}

impl Drop for LocalModel {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

const LLM_NAME: &str = "smollm2";

async fn local_model() -> LocalModel {
    let bin = std::env::var("S2T_LLM_BIN").expect("make test sets S2T_LLM_BIN");
    let model = std::env::var("S2T_LLM_MODEL_FILE").expect("make test sets S2T_LLM_MODEL_FILE");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let child = std::process::Command::new(bin)
        .args(["--model", &model, "--name", LLM_NAME])
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("start s2t-llm");
    let base = format!("http://127.0.0.1:{port}");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while reqwest::get(format!("{base}/healthz")).await.is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "s2t-llm did not start"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    LocalModel {
        child,
        url: format!("{base}/v1"),
    }
}

/// Reads a streamed answer event by event; `on` sees each as it arrives
/// (and may act, for example kill the model). Bounded in time.
async fn read_events(
    res: reqwest::Response,
    mut on: impl FnMut(&str, &Value),
) -> Vec<(String, Value)> {
    use futures_util::StreamExt;
    let mut body = res.bytes_stream();
    let mut buf = String::new();
    let mut out = Vec::new();
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(120);
    loop {
        while let Some(end) = buf.find("\n\n") {
            let block: String = buf.drain(..end + 2).collect();
            let (mut event, mut data) = (String::new(), String::new());
            for line in block.lines() {
                if let Some(e) = line.strip_prefix("event: ") {
                    event = e.to_string();
                } else if let Some(d) = line.strip_prefix("data: ") {
                    data.push_str(d);
                }
            }
            if !event.is_empty() {
                let v: Value = serde_json::from_str(&data).unwrap();
                on(&event, &v);
                out.push((event, v));
            }
        }
        match tokio::time::timeout_at(deadline, body.next()).await {
            Err(_) => panic!("the answer stream hung: {out:?}"),
            Ok(None) => return out,
            Ok(Some(chunk)) => buf.push_str(&String::from_utf8_lossy(&chunk.unwrap())),
        }
    }
}

#[tokio::test]
async fn the_local_model_answers_through_the_check_and_a_killed_model_falls_back() {
    let mut model = local_model().await;
    let url = model.url.clone();
    let s = stack_with(50 * 1024 * 1024, true, |c| {
        c.llm_url = Some(url);
        c.llm_model = Some(LLM_NAME.into());
        c.llm_timeout_secs = 60;
        c.llm_max_tokens = 300;
    })
    .await;
    let (alice, _) = s.user("alice_rag_llm").await;
    let meeting = transcribed(
        &s,
        &alice,
        speech_wav(
            "This is the quarterly budget review. \
             We agreed to cut travel spending by twenty percent starting next month. \
             The engineering team needs twelve new laptops before the summer.",
        ),
        "en",
    )
    .await;
    all_embedded(&s).await;

    // Streamed: the passages the answer may cite, the model's own text
    // token by token, then the checked answer. Whatever SmolLM2 wrote, the
    // done event is exactly what the check makes of it.
    let q = json!({"question": "what did we decide about travel spending", "k": 2});
    let res = s
        .http
        .post(s.url("/rag/ask?stream=true"))
        .bearer_auth(&alice)
        .json(&q)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let events = read_events(res, |_, _| {}).await;
    let names: Vec<&str> = events.iter().map(|(e, _)| e.as_str()).collect();
    assert_eq!(names[0], "citations", "{names:?}");
    assert_eq!(events[0].1["final"], false);
    assert_eq!(events[0].1["model"], LLM_NAME);
    assert_eq!(names.last(), Some(&"done"));
    let offered: Vec<String> = events[0].1["citations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            assert_eq!(c["recording_id"], meeting.as_str());
            c["text"].as_str().unwrap().to_string()
        })
        .collect();
    assert!(!offered.is_empty());
    let raw: String = events
        .iter()
        .take_while(|(e, _)| e == "answer" || e == "citations")
        .filter(|(e, _)| e == "answer")
        .map(|(_, d)| d["text"].as_str().unwrap())
        .collect();
    assert!(!raw.is_empty(), "the model wrote nothing: {names:?}");
    let texts: Vec<&str> = offered.iter().map(String::as_str).collect();
    let expected = s2t_core::answer::check(&raw, &texts);
    let done = &events.last().unwrap().1;
    eprintln!("the model wrote {raw:?}; the check made {done}");
    assert_eq!(done["removed_markers"], json!(expected.removed), "{raw:?}");
    if done["mode"] == "generative" {
        assert_eq!(done["answer"], expected.answer.as_str());
        assert_eq!(done["model"], LLM_NAME);
        assert_eq!(done["fallback"], Value::Null);
        let cited: Vec<u64> = done["citations"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["n"].as_u64().unwrap())
            .collect();
        assert_eq!(
            cited,
            expected.cited.iter().map(|&n| n as u64).collect::<Vec<_>>()
        );
        assert!(cited
            .iter()
            .all(|&n| (1..=offered.len() as u64).contains(&n)));
        assert_eq!(
            done["flagged"].as_array().unwrap().len(),
            expected.flagged.len()
        );
    } else {
        // No valid citation (or a refusal): the extractive answer, saying
        // why, never the model's unchecked text.
        assert_eq!(done["mode"], "extractive");
        let why = done["fallback"].as_str().unwrap();
        assert!(
            why.contains("cited no retrieved passage") || why.contains("found no answer"),
            "{why}"
        );
        assert!(expected.cited.is_empty() || why.contains("found no answer"));
        assert!(names.contains(&"fallback"), "{names:?}");
        assert_eq!(done["found"], true);
        assert_eq!(done["citations"][0]["recording_id"], meeting.as_str());
    }
    // Invalid markers never survive into the stored answer.
    for n in &expected.removed {
        assert!(!done["answer"].as_str().unwrap().contains(&format!("[{n}]")));
    }

    // Asked for extractive: the model is not used.
    let (status, a) = ask(
        &s,
        &alice,
        json!({"question": "how many laptops does engineering need", "mode": "extractive"}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{a}");
    assert_eq!(a["mode"], "extractive");
    assert_eq!(a["fallback"], Value::Null);

    // The model killed mid-answer: an error event, then the extractive
    // answer, and the stream ends.
    let res = s
        .http
        .post(s.url("/rag/ask?stream=true"))
        .bearer_auth(&alice)
        .json(&json!({"question": "how many laptops does engineering need before the summer"}))
        .send()
        .await
        .unwrap();
    let mut killed = false;
    let events = read_events(res, |event, _| {
        if event == "answer" && !killed {
            let _ = model.child.kill();
            let _ = model.child.wait();
            killed = true;
        }
    })
    .await;
    let names: Vec<&str> = events.iter().map(|(e, _)| e.as_str()).collect();
    assert!(killed, "the model never started answering: {names:?}");
    let error = names
        .iter()
        .position(|&e| e == "error")
        .expect("an error event");
    assert_eq!(names.last(), Some(&"done"));
    assert!(names[error..].contains(&"citations"));
    let done = &events.last().unwrap().1;
    assert_eq!(done["mode"], "extractive");
    assert!(
        done["fallback"].as_str().unwrap().contains("broke off"),
        "{done}"
    );
    assert!(highlighted(&done["citations"][0])
        .to_lowercase()
        .contains("laptops"));

    // With the model gone, JSON answers fall back at once, and say why.
    let started = std::time::Instant::now();
    let (status, a) = ask(&s, &alice, json!({"question": "travel spending"})).await;
    assert_eq!(status, StatusCode::OK, "{a}");
    assert_eq!(a["mode"], "extractive");
    assert!(
        a["fallback"]
            .as_str()
            .unwrap()
            .contains("cannot be reached"),
        "{a}"
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(10));
    // The history keeps each answer with its fallback.
    let (_, h) = s.get_json("/rag/history", &alice).await;
    let kept = h["answers"].as_array().unwrap();
    assert_eq!(kept.len(), 4);
    assert!(kept[0]["fallback"]
        .as_str()
        .unwrap()
        .contains("cannot be reached"));
}

#[tokio::test]
async fn a_model_that_never_answers_times_out_into_the_extractive_answer() {
    // Accepts connections and says nothing.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/v1", silent.local_addr().unwrap());
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((sock, _)) = silent.accept().await {
            held.push(sock);
        }
    });
    let s = stack_with(1024 * 1024, false, |c| {
        c.llm_url = Some(url);
        c.llm_model = Some("any".into());
        c.llm_timeout_secs = 2;
    })
    .await;
    let (alice, _) = s.user("alice_rag_silent").await;
    // Nothing relevant: the model is not even asked.
    let started = std::time::Instant::now();
    let (status, a) = ask(&s, &alice, json!({"question": "anything"})).await;
    assert_eq!(status, StatusCode::OK, "{a}");
    assert_eq!(a["found"], false);
    assert!(a["fallback"].as_str().unwrap().contains("not asked"), "{a}");
    assert!(started.elapsed() < std::time::Duration::from_secs(2));
    // A transcript to find, then the silent model: the answer comes after
    // the 2 s deadline, extractive.
    let user: uuid::Uuid =
        s.db.admin
            .query_one(
                "SELECT id FROM s2t.users WHERE user_name = 'alice_rag_silent'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
    let segments = json!([s2t_tests::seg(
        0,
        0,
        5000,
        "The travel budget was cut by twenty percent."
    )]);
    s2t_tests::done_recording(&s.db.admin, user, segments, "en").await;
    s2t_tests::embed_all(&s.db.admin).await;
    let started = std::time::Instant::now();
    let (status, a) = ask(
        &s,
        &alice,
        json!({"question": "travel budget", "mode": "generative"}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{a}");
    assert_eq!(a["found"], true, "{a}");
    assert!(
        a["fallback"].as_str().unwrap().contains("within 2 s"),
        "{a}"
    );
    assert_eq!(a["mode"], "extractive");
    let took = started.elapsed();
    assert!(
        took >= std::time::Duration::from_secs(2) && took < std::time::Duration::from_secs(10),
        "{took:?}"
    );
    // An unknown mode is a problem, not a guess.
    let (status, p) = ask(&s, &alice, json!({"question": "x", "mode": "creative"})).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
    assert!(p["errors"]["mode"].is_string());
}

#[tokio::test]
async fn read_speech_from_a_book_answers_from_the_right_recording() {
    // The five read sentences of pocketsphinx-testdata (real human speech,
    // 16 kHz), one recording each, transcribed by the worker.
    let s = stack(50 * 1024 * 1024, true).await;
    let (reader, _) = s.user("reader_rag").await;
    let mut ids = std::collections::HashMap::new();
    for (wav, text) in s2t_tests::librivox() {
        let id = transcribed(&s, &reader, std::fs::read(&wav).unwrap(), "en").await;
        ids.insert(
            wav.file_stem().unwrap().to_string_lossy().into_owned(),
            (id, text),
        );
    }
    all_embedded(&s).await;
    for (question, file, words) in [
        (
            "what might have made him more respectable",
            "sense_and_sensibility_01_austen_64kb-0920",
            &["respectable"][..],
        ),
        (
            "who had leisure to consider what was in his power",
            "sense_and_sensibility_01_austen_64kb-0870",
            &["leisure", "power"][..],
        ),
        (
            "was he a cold hearted and selfish man",
            "sense_and_sensibility_01_austen_64kb-0890",
            &["selfish"][..],
        ),
    ] {
        let (status, a) = ask(&s, &reader, json!({"question": question})).await;
        assert_eq!(status, StatusCode::OK, "{a}");
        assert_eq!(a["found"], true, "{question}: {a}");
        let c = &a["citations"][0];
        assert_eq!(c["recording_id"], ids[file].0.as_str(), "{question}: {a}");
        let said = highlighted(c).to_lowercase();
        for w in words {
            assert!(said.contains(w), "{question}: {said}");
        }
        assert!(c["start_ms"].as_i64().unwrap() < c["end_ms"].as_i64().unwrap());
    }
    let (_, a) = ask(
        &s,
        &reader,
        json!({"question": "what is the price of a train ticket to Hanoi"}),
    )
    .await;
    assert_eq!(a["found"], false, "{a}");
}
