//! The gateway end to end with the worker: real HTTP, real audio, the
//! release worker with tiny.en. Run through `make test`.

mod common;

use common::{speech_wav, stack};
use reqwest::StatusCode;

const SPOKEN: &str =
    "Please check the weather report before you drive to the mountains this weekend.";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upload_to_transcript_download() {
    let s = stack(50 * 1024 * 1024, true).await;
    let (token, _) = s.user("ann").await;
    let (status, body) = s.upload(&token, speech_wav(SPOKEN), "en").await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let id = body["id"].as_str().unwrap().to_string();

    let events = s.follow(&token, &id).await;
    let last = events.last().expect("at least one event");
    assert_eq!(last["status"], "done", "{events:?}");
    assert!(events.iter().all(|e| e["recording_id"] == id.as_str()));
    assert!(
        events.iter().all(|e| e.get("user_id").is_none()),
        "no internals in events"
    );

    let (st, rec) = s.get_json(&format!("/recordings/{id}"), &token).await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(rec["status"], "done");
    assert_eq!(rec["language"], "en");
    assert!(rec["duration_ms"].as_i64().unwrap() > 3000);
    assert!(!rec["segments"].as_array().unwrap().is_empty());

    let res = s
        .get(&format!("/recordings/{id}/transcript.txt"), &token)
        .await;
    assert_eq!(res.status(), StatusCode::OK);
    let disposition = res.headers()["content-disposition"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(
        disposition.starts_with("attachment; filename=\"recording-")
            && disposition.ends_with(".txt\"")
    );
    let text = res.text().await.unwrap().to_lowercase();
    for word in ["weather", "report", "mountains", "weekend"] {
        assert!(text.contains(word), "{word} missing from {text:?}");
    }
    let srt = s
        .get(&format!("/recordings/{id}/transcript.srt"), &token)
        .await
        .text()
        .await
        .unwrap();
    let first: Vec<&str> = srt.lines().take(3).collect();
    assert_eq!(first[0], "1");
    assert!(
        first[1].len() == 29 && first[1].contains(" --> ") && first[1].contains(','),
        "{srt}"
    );
    let vtt = s
        .get(&format!("/recordings/{id}/transcript.vtt"), &token)
        .await
        .text()
        .await
        .unwrap();
    assert!(vtt.starts_with("WEBVTT\n\n"));
    assert!(vtt.lines().nth(2).unwrap().contains(" --> "));

    // Playback with Range.
    let res = s
        .http
        .get(s.url(&format!("/recordings/{id}/audio")))
        .bearer_auth(&token)
        .header("range", "bytes=0-3")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::PARTIAL_CONTENT);
    assert!(res.headers()["content-range"]
        .to_str()
        .unwrap()
        .starts_with("bytes 0-3/"));
    assert_eq!(res.bytes().await.unwrap().as_ref(), b"RIFF");

    let (_, list) = s.get_json("/recordings?status=done", &token).await;
    assert_eq!(list["recordings"][0]["id"], id.as_str());
    let del = s
        .http
        .delete(s.url(&format!("/recordings/{id}")))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(del.status(), StatusCode::NO_CONTENT);
    let (st, _) = s.get_json(&format!("/recordings/{id}"), &token).await;
    assert_eq!(st, StatusCode::NOT_FOUND);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upload_that_is_not_audio_fails_with_a_reason() {
    let s = stack(50 * 1024 * 1024, true).await;
    let (token, _) = s.user("bob").await;
    let (status, body) = s
        .upload(&token, b"this is a text file, not audio".repeat(40), "en")
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let id = body["id"].as_str().unwrap().to_string();
    let events = s.follow(&token, &id).await;
    let last = events.last().unwrap();
    assert_eq!(last["status"], "failed");
    assert!(
        last["failure_reason"]
            .as_str()
            .unwrap()
            .contains("not audio"),
        "{last}"
    );
    let res = s
        .get(&format!("/recordings/{id}/transcript.txt"), &token)
        .await;
    assert_eq!(res.status(), StatusCode::CONFLICT);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_official_openai_client_round_trip() {
    let s = stack(50 * 1024 * 1024, true).await;
    let (token, _) = s.user("oli").await;
    let dir = common::temp_dir("openai");
    let wav = dir.join("speech.wav");
    std::fs::write(&wav, speech_wav(SPOKEN)).unwrap();
    let r = common::python_client("openai_client.py", &wav, &s.base, &token).await;
    for key in ["json", "text"] {
        let text = r[key].as_str().unwrap().to_lowercase();
        assert!(
            text.contains("weather") && text.contains("mountains"),
            "{key}: {text}"
        );
    }
    assert_eq!(r["verbose"]["language"], "en");
    assert!(r["verbose"]["duration"].as_f64().unwrap() > 3.0);
    let segs = r["verbose"]["segments"].as_array().unwrap();
    assert!(!segs.is_empty());
    assert!(segs[0][0].as_f64().unwrap() <= segs[0][1].as_f64().unwrap());
    let srt = r["srt"].as_str().unwrap();
    assert!(srt.starts_with("1\n00:00:"), "{srt}");
    assert!(srt.to_lowercase().contains("weather"));
    assert_eq!(r["bad_model"], 400);
    // Four transcriptions, counted against the same quota as uploads.
    let (_, stats) = s.get_json("/me/stats", &token).await;
    assert_eq!(stats["current_cycle_usage"], 4);
    std::fs::remove_dir_all(&dir).ok();
}

/// Schemathesis (PyPI) generates requests from /openapi.json, valid and
/// not; whatever it sends, the gateway must not answer 5xx.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schema_fuzz_pass_finds_no_server_errors() {
    let s = stack(1 << 20, true).await;
    let (token, _) = s.user("fuzz").await;
    let schemathesis =
        std::path::Path::new(&std::env::var("S2T_PYTHON").expect("make test sets S2T_PYTHON"))
            .with_file_name("schemathesis");
    let report = common::temp_dir("fuzz");
    let (url, header, dir) = (
        s.url("/openapi.json"),
        format!("Authorization: Bearer {token}"),
        report.clone(),
    );
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(schemathesis)
            .args(["run", &url, "--checks", "not_a_server_error", "-H", &header])
            .args(["--max-examples", "10", "--seed", "7", "--workers", "1"])
            .args(["--phases", "examples,coverage,fuzzing", "--no-color"])
            .args(["--generation-database", ":memory:"])
            .args(["--request-timeout", "60", "--max-time", "90"])
            .arg("--report-dir")
            .arg(&dir)
            .env("SCHEMATHESIS_HOOKS", "")
            .output()
            .expect("run schemathesis")
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "schemathesis found problems:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // It really exercised the API.
    assert!(stdout.contains("passed"), "{stdout}");
    std::fs::remove_dir_all(&report).ok();
}

/// A minute of audio: a sentence, then silence, as a 16 kHz WAV whose
/// header declares 60 s.
fn minute_wav() -> Vec<u8> {
    let dir = common::temp_dir("minute");
    let speech = s2t_tests::speech_wav(SPOKEN, "en-us", 0.5, &dir, "speech");
    let out = dir.join("minute.wav");
    let ok = std::process::Command::new("sox")
        .arg(&speech)
        .arg(&out)
        .args(["pad", "0", "60", "trim", "0", "60"])
        .status()
        .expect("run sox");
    assert!(ok.success());
    let bytes = std::fs::read(&out).unwrap();
    std::fs::remove_dir_all(&dir).ok();
    bytes
}

/// The attack: a user with 2 minutes posts five 1-minute files at
/// once. Work in flight counts against the minutes, so two are admitted,
/// transcribed and billed (120 s in all) and three are refused with the
/// numbers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_concurrent_minute_uploads_on_a_two_minute_plan_bill_at_most_two_minutes() {
    // Let all five through the per-user cap on uploads in flight: this is
    // about the minutes.
    let s = common::stack_with(50 * 1024 * 1024, true, |c| c.max_uploads_in_flight = 8).await;
    let (token, _) = s.user("burst").await;
    let user: uuid::Uuid =
        s.db.admin
            .query_one("SELECT id FROM s2t.users WHERE user_name = 'burst'", &[])
            .await
            .unwrap()
            .get(0);
    s2t_tests::set_limits(&s.db.admin, user, 100, 2).await;
    let wav = minute_wav();
    let posts = (0..5).map(|_| s.upload(&token, wav.clone(), "en"));
    let answers = futures_util::future::join_all(posts).await;
    let mut accepted = Vec::new();
    for (status, body) in &answers {
        match *status {
            StatusCode::ACCEPTED => accepted.push(body["id"].as_str().unwrap().to_string()),
            StatusCode::TOO_MANY_REQUESTS => {
                assert_eq!(body["code"], "S2Q02", "{body}");
                let detail = body["detail"].as_str().unwrap();
                assert!(
                    detail.contains("60 seconds long") || detail.contains("used up"),
                    "{detail}"
                );
                assert_eq!(body["limit_value"], 120, "{body}");
            }
            other => panic!("unexpected {other}: {body}"),
        }
    }
    assert_eq!(accepted.len(), 2, "{answers:?}");
    for id in &accepted {
        let events = s.follow(&token, id).await;
        assert_eq!(events.last().unwrap()["status"], "done", "{events:?}");
    }
    let billed = s
        .count(&format!(
            "SELECT sum(billed_seconds)::bigint FROM s2t.recordings WHERE user_id = '{user}'"
        ))
        .await;
    assert_eq!(billed, 120);
    assert_eq!(
        s.count(&format!(
            "SELECT (used_seconds + reserved_seconds)::bigint FROM s2t.user_subscriptions WHERE user_id = '{user}'"
        ))
        .await,
        120
    );
    assert_eq!(
        s.count(&format!(
            "SELECT count(*) FROM s2t.recordings WHERE user_id = '{user}'"
        ))
        .await,
        2,
        "refused uploads left no rows"
    );
}
