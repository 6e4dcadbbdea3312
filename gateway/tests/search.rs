//! Search end to end: real audio (a LibriVox recording, espeak-ng English
//! and Vietnamese) uploaded through the gateway, transcribed and embedded
//! by the release worker, found with `GET /search/semantic` at the right
//! recording and time; two users never see each other's passages.

mod common;
use common::*;
use reqwest::StatusCode;
use serde_json::Value;

/// Two espeak passages with `gap_s` of silence between them.
fn two_passages(first: &str, second: &str, gap_s: f32) -> Vec<u8> {
    let dir = temp_dir("passages");
    let a = s2t_tests::speech_wav(first, "en-us", 0.3, &dir, "a");
    let b = s2t_tests::speech_wav(second, "en-us", 0.3, &dir, "b");
    let gap = dir.join("gap.wav");
    s2t_tests::silence_wav(&gap, gap_s);
    let out = dir.join("both.wav");
    s2t_tests::run(
        "sox",
        &[
            a.to_str().unwrap(),
            gap.to_str().unwrap(),
            b.to_str().unwrap(),
            out.to_str().unwrap(),
        ],
    );
    let bytes = std::fs::read(&out).unwrap();
    std::fs::remove_dir_all(&dir).ok();
    bytes
}

async fn search(s: &Stack, token: &str, query: &str) -> Value {
    let url = format!("/search/semantic?q={}&k=5", query.replace(' ', "%20"));
    let (status, body) = s.get_json(&url, token).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body
}

#[tokio::test]
async fn spoken_transcripts_are_found_by_meaning_and_by_words_at_their_time() {
    let s = stack(50 * 1024 * 1024, true).await;
    let (alice, _) = s.user("alice_search").await;
    let (bob, _) = s.user("bob_search").await;
    // Longer than one chunk (150 words), so the last passage is in a chunk
    // of its own that starts well into the recording.
    let filler = [
        "The team reviewed the release notes for the mobile application on Monday morning.",
        "Several customers reported that the login screen was slow on older phones.",
        "The designers showed three new layouts for the settings page and the reports.",
        "Everyone preferred the second layout because the buttons were larger and clearer.",
        "The support group asked for better error messages when a payment does not go through.",
        "Testing will continue through the week, with a short demo planned for Friday afternoon.",
        "The documentation needs new screenshots before the public announcement goes out.",
        "Marketing wants a short video that explains the main features in one minute.",
        "The data team will check whether the weekly report matches the numbers from last month.",
        "A few questions about the contract renewal were left for the next meeting.",
        "Finally the group thanked the interns for their work on the search feature.",
    ]
    .join(" ");
    let budget = transcribed(
        &s,
        &alice,
        two_passages(
            &format!("We agreed to cut the travel budget by twenty percent next quarter. {filler}"),
            "The new office in the north opens in March with fifteen engineers.",
            1.0,
        ),
        "en",
    )
    .await;
    let (path, _) = s2t_tests::librivox()
        .into_iter()
        .find(|(p, _)| p.to_string_lossy().contains("0880"))
        .expect("the LibriVox clip");
    let novel = transcribed(&s, &alice, std::fs::read(path).unwrap(), "en").await;
    let dir = temp_dir("vi");
    let vi_wav = s2t_tests::speech_wav(
        "Xin chào các bạn. Hôm nay chúng ta sẽ họp về kế hoạch của dự án.",
        "vi",
        0.5,
        &dir,
        "vi",
    );
    let vi = transcribed(&s, &alice, std::fs::read(&vi_wav).unwrap(), "vi").await;
    std::fs::remove_dir_all(&dir).ok();
    let bobs = transcribed(
        &s,
        &bob,
        speech_wav("Our travel budget for the next quarter will be cut."),
        "en",
    )
    .await;
    all_embedded(&s).await;

    // By meaning, with no topic word in common.
    let body = search(&s, &alice, "spending less money on trips").await;
    assert_eq!(body["mode"], "hybrid");
    let top = &body["hits"][0];
    assert_eq!(top["recording_id"], budget.as_str(), "{body}");
    assert!(top["start_ms"].as_i64().unwrap() < 2000, "{top}");
    assert_eq!(top["dense_rank"], 1);
    assert_eq!(
        top["link"],
        format!("/recordings/{budget}?t={}", top["start_ms"])
    );
    // The second passage, after the pause, at its own time.
    let body = search(&s, &alice, "opening a branch with new staff").await;
    let top = &body["hits"][0];
    assert_eq!(top["recording_id"], budget.as_str(), "{body}");
    assert!(top["start_ms"].as_i64().unwrap() >= 20_000, "{top}");
    assert!(top["text"].as_str().unwrap().contains("office"), "{top}");
    // The real recording.
    let body = search(&s, &alice, "a young man who was not unkind").await;
    assert_eq!(body["hits"][0]["recording_id"], novel.as_str(), "{body}");
    // Vietnamese typed without diacritics: the words find it, highlighted.
    let body = search(&s, &alice, "hop ke hoach du an").await;
    let top = &body["hits"][0];
    assert_eq!(top["recording_id"], vi.as_str(), "{body}");
    assert_eq!(top["lexical_rank"], 1);
    let text: Vec<char> = top["text"].as_str().unwrap().chars().collect();
    let marked: Vec<String> = top["highlights"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| {
            text[h[0].as_u64().unwrap() as usize..h[1].as_u64().unwrap() as usize]
                .iter()
                .collect::<String>()
                .to_lowercase()
        })
        .collect();
    assert!(marked.contains(&"kế".to_string()), "{marked:?}");

    // Each user finds only their own.
    for (token, own) in [(&alice, vec![&budget, &novel, &vi]), (&bob, vec![&bobs])] {
        let body = search(&s, token, "travel budget").await;
        let hits = body["hits"].as_array().unwrap();
        assert!(!hits.is_empty());
        for h in hits {
            assert!(own.iter().any(|id| h["recording_id"] == id.as_str()), "{h}");
        }
    }
    let (status, _) = s
        .get_json(
            &format!("/search/semantic?q=budget&recording_id={budget}"),
            &bob,
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    // One recording only.
    let (status, body) = s
        .get_json(
            &format!("/search/semantic?q=budget&recording_id={novel}"),
            &alice,
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert!(body["hits"]
        .as_array()
        .unwrap()
        .iter()
        .all(|h| h["recording_id"] == novel.as_str()));
}

#[tokio::test]
async fn bad_search_parameters_are_problems_naming_the_field() {
    let s = stack(1 << 20, false).await;
    let (token, _) = s.user("searchargs").await;
    for (query, field) in [
        ("", "q"),
        ("q=", "q"),
        ("q=x&k=0", "k"),
        ("q=x&k=abc", "k"),
        ("q=x&k=101", "k"),
        ("q=x&recording_id=nope", "recording_id"),
        ("q=x&since=yesterday", "since"),
        (
            "q=x&since=2026-12-02T00:00:00Z&until=2026-12-01T00:00:00Z",
            "since",
        ),
        ("q=x&language=Vietnamese", "language"),
    ] {
        let res = s.get(&format!("/search/semantic?{query}"), &token).await;
        assert_eq!(res.status(), StatusCode::UNPROCESSABLE_ENTITY, "{query}");
        assert!(res.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("application/problem+json"));
        let body: Value = res.json().await.unwrap();
        assert!(body["errors"][field].is_string(), "{query}: {body}");
    }
    let res = s
        .http
        .get(s.url("/search/semantic?q=budget"))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    let (status, body) = s
        .get_json(
            &format!(
                "/search/semantic?q=budget&recording_id={}",
                uuid::Uuid::new_v4()
            ),
            &token,
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    // Nothing there yet: an empty answer, not an error.
    let (status, body) = s.get_json("/search/semantic?q=budget", &token).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["hits"], serde_json::json!([]));
}
