//! The attacks of issue 7 on the gateway, each against the real stack:
//! guessing in parallel, flooding logins and registrations, API keys that
//! mint keys, disabled accounts, roles that bypass row-level security,
//! bodies sent past the quota, paused players, a lying event stream, TLS
//! and CORS. Run through `make test`.

mod common;

use common::{stack, stack_with, test_config};
use futures_util::StreamExt;
use reqwest::StatusCode;
use serde_json::{json, Value};
use std::time::{Duration, Instant};

/// A WAV of `secs` seconds of silence, 16 kHz mono 16-bit.
fn silence_wav(secs: u32) -> Vec<u8> {
    let data_len = secs * 16_000 * 2;
    let mut w = Vec::with_capacity(44 + data_len as usize);
    w.extend_from_slice(b"RIFF");
    w.extend_from_slice(&(36 + data_len).to_le_bytes());
    w.extend_from_slice(b"WAVEfmt ");
    w.extend_from_slice(&16u32.to_le_bytes());
    w.extend_from_slice(&1u16.to_le_bytes()); // PCM
    w.extend_from_slice(&1u16.to_le_bytes()); // mono
    w.extend_from_slice(&16_000u32.to_le_bytes());
    w.extend_from_slice(&32_000u32.to_le_bytes());
    w.extend_from_slice(&2u16.to_le_bytes());
    w.extend_from_slice(&16u16.to_le_bytes());
    w.extend_from_slice(b"data");
    w.extend_from_slice(&data_len.to_le_bytes());
    w.resize(44 + data_len as usize, 0);
    w
}

/// `POST path` with a multipart body that sends the start of a `file` and
/// then stalls forever: a server that answers has not waited for the body.
async fn stalled_upload(
    http: &reqwest::Client,
    url: String,
    token: &str,
) -> reqwest::Result<reqwest::Response> {
    let head = "--XyZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.wav\"\r\n\
                Content-Type: audio/wav\r\n\r\n";
    let mut first = head.as_bytes().to_vec();
    first.extend_from_slice(&silence_wav(1)[..4096]);
    let body = futures_util::stream::once(async move { Ok::<_, std::io::Error>(first) })
        .chain(futures_util::stream::pending());
    http.post(url)
        .bearer_auth(token)
        .header("content-type", "multipart/form-data; boundary=XyZ")
        .body(reqwest::Body::wrap_stream(body))
        .send()
        .await
}

async fn user_id(s: &common::Stack, name: &str) -> uuid::Uuid {
    s.db.admin
        .query_one("SELECT id FROM s2t.users WHERE user_name = $1", &[&name])
        .await
        .unwrap()
        .get(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parallel_guesses_are_counted_before_the_password_is_verified() {
    let s = stack(1 << 20, false).await;
    s.user("pat").await;
    let guesses =
        (0..20).map(|i| s.login("pat", if i % 2 == 0 { "guess one" } else { "guess two" }));
    let statuses: Vec<StatusCode> = futures_util::future::join_all(guesses)
        .await
        .into_iter()
        .map(|(st, _)| st)
        .collect();
    let wrong = statuses
        .iter()
        .filter(|s| **s == StatusCode::UNAUTHORIZED)
        .count();
    let throttled = statuses
        .iter()
        .filter(|s| **s == StatusCode::TOO_MANY_REQUESTS)
        .count();
    // Five free attempts and the one that earns the first wait; counted
    // after verifying, all twenty were checked.
    assert_eq!((wrong, throttled), (6, 14), "{statuses:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_overlong_login_is_refused_before_anything_is_counted() {
    let s = stack(1 << 20, false).await;
    let (st, body) = s.login(&"a".repeat(255), "some password").await;
    assert_eq!(st, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert!(
        body["errors"]["login"].as_str().unwrap().contains("254"),
        "{body}"
    );
    let (st, _) = s.login(&"a".repeat(254), "some password").await;
    assert_eq!(
        st,
        StatusCode::UNAUTHORIZED,
        "254 bytes is a login like any other"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registrations_are_throttled_per_address() {
    let s = stack(1 << 20, false).await;
    let register = |from: &'static str, i: usize| {
        s.http
            .post(s.url("/auth/register"))
            .header("x-forwarded-for", from)
            .json(
                &json!({"email": format!("r{i}@example.com"), "user_name": format!("reg{i}"),
                          "password": "a good password"}),
            )
            .send()
    };
    for i in 0..20 {
        let res = register("198.51.100.20", i).await.unwrap();
        assert_eq!(res.status(), StatusCode::CREATED, "registration {i}");
    }
    let res = register("198.51.100.20", 20).await.unwrap();
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(res.headers().contains_key("retry-after"));
    let body: Value = res.json().await.unwrap();
    assert!(
        body["detail"].as_str().unwrap().contains("registrations"),
        "{body}"
    );
    // Nothing was created for the refused one, and others may still sign up.
    assert_eq!(
        s.count("SELECT count(*) FROM s2t.users WHERE user_name = 'reg20'")
            .await,
        0
    );
    let res = register("198.51.100.21", 21).await.unwrap();
    assert_eq!(res.status(), StatusCode::CREATED);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_login_flood_gets_503_with_retry_after_instead_of_queueing_without_end() {
    let s = stack_with(1 << 20, false, |c| {
        c.hash_concurrency = 1;
        c.hash_wait_ms = 1;
    })
    .await;
    s.user("flo").await;
    // Distinct names from distinct addresses: no throttle applies, only
    // the bound on hashing.
    let attempts = (0..24).map(|i| {
        s.http
            .post(s.url("/auth/login"))
            .header("x-forwarded-for", format!("192.0.2.{}", i + 1))
            .json(&json!({"login": format!("nobody{i}"), "password": "guess guess"}))
            .send()
    });
    let started = Instant::now();
    let responses = futures_util::future::join_all(attempts).await;
    let elapsed = started.elapsed();
    let mut busy = 0;
    for res in responses {
        let res = res.unwrap();
        match res.status() {
            StatusCode::UNAUTHORIZED => {}
            StatusCode::SERVICE_UNAVAILABLE => {
                busy += 1;
                assert!(res.headers().contains_key("retry-after"));
            }
            other => panic!("unexpected {other}"),
        }
    }
    eprintln!("24 concurrent logins, 1 hashing slot: {busy} got 503, all answered in {elapsed:?}");
    assert!(busy > 0, "some were turned away");
    // Turned away is not counted as a failure: the right password works.
    let (st, _) = s.login("flo", "a good password").await;
    assert_eq!(st, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_keys_cannot_mint_keys_expire_and_hold_the_limit_under_concurrency() {
    let s = stack(1 << 20, false).await;
    let (token, _) = s.user("kim").await;
    let (st, created) = s
        .post_json(
            "/me/api-keys",
            json!({"name": "ci", "expires_in_days": 1}),
            Some(&token),
        )
        .await;
    assert_eq!(st, StatusCode::CREATED, "{created}");
    let key = created["key"].as_str().unwrap().to_string();
    assert!(created["expires_at"].is_string(), "{created}");

    // A key works, but cannot create another key.
    assert_eq!(s.get("/me", &key).await.status(), StatusCode::OK);
    let (st, body) = s
        .post_json("/me/api-keys", json!({"name": "child"}), Some(&key))
        .await;
    assert_eq!(st, StatusCode::FORBIDDEN, "{body}");
    assert!(
        body["detail"].as_str().unwrap().contains("API key"),
        "{body}"
    );

    // Bad expiries.
    for bad in [
        json!({"name": "x", "expires_in_days": 0}),
        json!({"name": "x", "expires_in_days": 3651}),
        json!({"name": "x", "expires_at": "2001-01-01T00:00:00Z"}),
    ] {
        let (st, body) = s.post_json("/me/api-keys", bad.clone(), Some(&token)).await;
        assert_eq!(st, StatusCode::UNPROCESSABLE_ENTITY, "{bad}: {body}");
    }

    // Listed with its expiry; once past it, refused.
    let (_, list) = s.get_json("/me/api-keys", &token).await;
    assert_eq!(list["api_keys"][0]["expires_at"], created["expires_at"]);
    s.db.admin
        .execute(
            "UPDATE s2t.api_keys SET expires_at = now() - interval '1 second' WHERE prefix = $1",
            &[&created["prefix"].as_str().unwrap()],
        )
        .await
        .unwrap();
    let res = s.get("/me", &key).await;
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    let res = s
        .http
        .delete(s.url(&format!("/me/api-keys/{}", created["id"].as_str().unwrap())))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::NO_CONTENT);

    // Thirty at once for one user: exactly twenty active keys in the end.
    let creates = (0..30).map(|i| {
        s.post_json(
            "/me/api-keys",
            json!({"name": format!("k{i}")}),
            Some(&token),
        )
    });
    let statuses: Vec<StatusCode> = futures_util::future::join_all(creates)
        .await
        .into_iter()
        .map(|(st, _)| st)
        .collect();
    let active = s
        .count("SELECT count(*) FROM s2t.api_keys WHERE revoked_at IS NULL")
        .await;
    assert_eq!(active, 20, "{statuses:?}");
    let made = statuses
        .iter()
        .filter(|s| **s == StatusCode::CREATED)
        .count();
    let refused = statuses
        .iter()
        .filter(|s| **s == StatusCode::CONFLICT)
        .count();
    assert_eq!(made, 20, "{statuses:?}");
    assert_eq!(refused, 30 - made, "the rest are 409: {statuses:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disabled_users_tokens_and_keys_stop_at_once() {
    let s = stack(1 << 20, false).await;
    let (token, _) = s.user("dee").await;
    let (_, created) = s
        .post_json("/me/api-keys", json!({"name": "tool"}), Some(&token))
        .await;
    let key = created["key"].as_str().unwrap().to_string();
    assert_eq!(s.get("/me", &token).await.status(), StatusCode::OK);
    assert_eq!(s.get("/recordings", &key).await.status(), StatusCode::OK);
    let user = user_id(&s, "dee").await;
    s.db.admin
        .execute(
            "UPDATE s2t.users SET status = 'disabled' WHERE id = $1",
            &[&user],
        )
        .await
        .unwrap();
    // The access token is still valid for 15 minutes; the account is not.
    let res = s.get("/me", &token).await;
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
    let body: Value = res.json().await.unwrap();
    assert!(
        body["detail"].as_str().unwrap().contains("disabled"),
        "{body}"
    );
    assert_eq!(
        s.get("/recordings", &token).await.status(),
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        s.get("/recordings", &key).await.status(),
        StatusCode::UNAUTHORIZED
    );
    // Nor can it upload: refused before the body is read.
    let res = tokio::time::timeout(
        Duration::from_secs(10),
        stalled_upload(&s.http, s.url("/recordings"), &token),
    )
    .await
    .expect("answered without the body")
    .unwrap();
    assert_eq!(res.status(), StatusCode::FORBIDDEN);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_refuses_roles_that_bypass_row_level_security() {
    let s = stack(1 << 20, false).await;
    let tag = uuid::Uuid::new_v4().simple().to_string()[..8].to_string();
    let (bypass, plain) = (format!("gw_bypass_{tag}"), format!("gw_plain_{tag}"));
    s.db.admin
        .batch_execute(&format!(
            "CREATE ROLE {bypass} LOGIN BYPASSRLS IN ROLE s2t_app;
             CREATE ROLE {plain} LOGIN IN ROLE s2t_app;"
        ))
        .await
        .unwrap();
    let spool = common::temp_dir("roles");
    let config_for = |role: &str| {
        let mut c = test_config(&s.db, &spool, 1 << 20);
        c.database_url = s.db.url(role);
        c
    };
    // A superuser (the test cluster's owner role) and a BYPASSRLS role.
    let err = common::serve(config_for("s2t"))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("superuser"), "{err}");
    let err = common::serve(config_for(&bypass))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("BYPASSRLS"), "{err}");
    // A plain member starts; made BYPASSRLS later, it is no longer ready.
    let base = common::serve(config_for(&plain)).await.expect("starts");
    let ready = || s.http.get(format!("{base}/readyz")).send();
    assert_eq!(ready().await.unwrap().status(), StatusCode::OK);
    s.db.admin
        .batch_execute(&format!("ALTER ROLE {plain} BYPASSRLS"))
        .await
        .unwrap();
    let res = ready().await.unwrap();
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body: Value = res.json().await.unwrap();
    assert!(
        body["detail"].as_str().unwrap().contains("BYPASSRLS"),
        "{body}"
    );
    std::fs::remove_dir_all(&spool).ok();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_quota_uploads_are_refused_without_reading_the_body() {
    let s = stack(50 << 20, false).await;
    let (token, _) = s.user("quinn").await;
    let user = user_id(&s, "quinn").await;
    s2t_tests::set_limits(&s.db.admin, user, 2, 1).await;
    let refused = |path: &'static str| {
        let (http, url) = (s.http.clone(), s.url(path));
        let token = token.clone();
        async move {
            let res =
                tokio::time::timeout(Duration::from_secs(10), stalled_upload(&http, url, &token))
                    .await
                    .expect("answered without the body")
                    .unwrap();
            let status = res.status();
            (status, res.json::<Value>().await.unwrap())
        }
    };
    s.db.admin
        .execute(
            "UPDATE s2t.user_subscriptions SET usage_count = 2 WHERE user_id = $1",
            &[&user],
        )
        .await
        .unwrap();
    for path in ["/recordings", "/v1/audio/transcriptions"] {
        let (st, body) = refused(path).await;
        assert_eq!(st, StatusCode::TOO_MANY_REQUESTS, "{path}: {body}");
        assert_eq!(body["code"], "S2Q01", "{body}");
        assert_eq!(body["limit"], "monthly_usage_limit");
        assert_eq!(
            (body["used"].as_i64(), body["limit_value"].as_i64()),
            (Some(2), Some(2))
        );
        assert!(body["resets_at"].is_string());
    }
    s.db.admin
        .execute(
            "UPDATE s2t.user_subscriptions SET usage_count = 0, used_seconds = 60 WHERE user_id = $1",
            &[&user],
        )
        .await
        .unwrap();
    let (st, body) = refused("/recordings").await;
    assert_eq!(st, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert_eq!(body["code"], "S2Q02");
    assert_eq!(
        (body["used"].as_i64(), body["limit_value"].as_i64()),
        (Some(60), Some(60))
    );
    assert_eq!(
        s.count("SELECT count(*) FROM s2t.recordings").await,
        0,
        "nothing was created"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_in_flight_per_user_are_capped() {
    let s = stack_with(50 << 20, false, |c| c.max_uploads_in_flight = 2).await;
    let (ann, _) = s.user("cap").await;
    let (bob, _) = s.user("cop").await;
    let holders: Vec<_> = (0..2)
        .map(|_| {
            let (http, url, token) = (s.http.clone(), s.url("/recordings"), ann.clone());
            tokio::spawn(async move { stalled_upload(&http, url, &token).await })
        })
        .collect();
    // Both are spooling once their files exist.
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::fs::read_dir(&s.spool).map_or(0, |d| d.count()) < 2 {
        assert!(Instant::now() < deadline, "the stalled uploads started");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (st, body) = s.upload(&ann, silence_wav(2), "en").await;
    assert_eq!(st, StatusCode::TOO_MANY_REQUESTS, "{body}");
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .contains("at most 2 uploads"),
        "{body}"
    );
    let (st, body) = s.upload(&bob, silence_wav(2), "en").await;
    assert_eq!(
        st,
        StatusCode::ACCEPTED,
        "another user is not affected: {body}"
    );
    // The slots come back when the stalled uploads go away.
    for h in holders {
        h.abort();
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (st, body) = s.upload(&ann, silence_wav(2), "en").await;
        if st == StatusCode::ACCEPTED {
            break;
        }
        assert_eq!(st, StatusCode::TOO_MANY_REQUESTS, "{body}");
        assert!(Instant::now() < deadline, "slots were given back");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paused_players_do_not_stall_the_api() {
    // The harness's pool has 4 connections; 20 players that never read.
    let s = stack(64 << 20, false).await;
    let (token, _) = s.user("player").await;
    let wav = silence_wav(600); // 19.2 MB, more than socket buffers hold
    let size = wav.len();
    let (st, body) = s.upload(&token, wav, "en").await;
    assert_eq!(st, StatusCode::ACCEPTED, "{body}");
    let id = body["id"].as_str().unwrap().to_string();
    let mut players = Vec::new();
    for _ in 0..20 {
        let res = s.get(&format!("/recordings/{id}/audio"), &token).await;
        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!(res.content_length(), Some(size as u64));
        players.push(res);
    }
    // Let them fill their buffers and stop.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let started = Instant::now();
    let res = s.get("/me", &token).await;
    let took = started.elapsed();
    eprintln!("GET /me with 20 paused players: {took:?}");
    assert_eq!(res.status(), StatusCode::OK);
    assert!(took < Duration::from_secs(2), "answered in {took:?}");
    // A player that resumes still gets every byte.
    let first = players.pop().unwrap();
    let bytes = first.bytes().await.unwrap();
    assert_eq!(bytes.len(), size);
    assert_eq!(&bytes[..4], b"RIFF");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_false_done_event_does_not_end_a_synchronous_transcription() {
    let s = stack_with(10 << 20, false, |c| c.sync_timeout_secs = 6).await;
    let (token, _) = s.user("sync").await;
    let post = || {
        let (http, url, token) = (
            s.http.clone(),
            s.url("/v1/audio/transcriptions"),
            token.clone(),
        );
        tokio::spawn(async move {
            let form = reqwest::multipart::Form::new()
                .text("model", "whisper-1")
                .part(
                    "file",
                    reqwest::multipart::Part::bytes(silence_wav(2))
                        .file_name("a.wav")
                        .mime_str("audio/wav")
                        .unwrap(),
                );
            let res = http
                .post(url)
                .bearer_auth(token)
                .multipart(form)
                .send()
                .await
                .unwrap();
            let status = res.status();
            (status, res.json::<Value>().await.unwrap_or(Value::Null))
        })
    };
    // Waits for the n-th recording, then claims on the event channel that
    // it is done (as a lagging, reconnecting or hostile notifier might).
    let s = &s;
    let lie = |n: i64| async move {
        let deadline = Instant::now() + Duration::from_secs(10);
        let id: uuid::Uuid = loop {
            let row =
                s.db.admin
                    .query_opt(
                        "SELECT id FROM s2t.recordings ORDER BY created_at OFFSET $1 LIMIT 1",
                        &[&(n - 1)],
                    )
                    .await
                    .unwrap();
            if let Some(r) = row {
                break r.get(0);
            }
            assert!(Instant::now() < deadline, "the recording was admitted");
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        tokio::time::sleep(Duration::from_millis(300)).await;
        let payload = json!({"recording_id": id, "status": "done", "progress": 1.0}).to_string();
        s.db.admin
            .execute("SELECT pg_notify('s2t_recording_events', $1)", &[&payload])
            .await
            .unwrap();
        id
    };

    // Still processing when the wait runs out: 504, never an empty 200.
    let started = Instant::now();
    let waiting = post();
    let id = lie(1).await;
    let (st, body) = waiting.await.unwrap();
    assert_eq!(st, StatusCode::GATEWAY_TIMEOUT, "{body}");
    assert_eq!(body["recording_id"], id.to_string());
    assert!(started.elapsed() >= Duration::from_secs(5), "it waited");

    // Really done after the false event: the answer has the text.
    let waiting = post();
    let id = lie(2).await;
    s.db.admin
        .execute(
            "SELECT s2t.complete_recording($1, 2000, $2)",
            &[
                &id,
                &json!([{"idx": 0, "start_ms": 0, "end_ms": 1500, "text": "stored by the worker"}]),
            ],
        )
        .await
        .unwrap();
    let (st, body) = waiting.await.unwrap();
    assert_eq!(st, StatusCode::OK, "{body}");
    assert_eq!(body["text"], "stored by the worker");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cors_star_allows_any_origin_without_credentials_and_bad_origins_are_refused() {
    let s = stack_with(1 << 20, false, |c| c.cors_origins = vec!["*".into()]).await;
    let res = s
        .http
        .request(reqwest::Method::OPTIONS, s.url("/recordings"))
        .header("origin", "https://anywhere.example")
        .header("access-control-request-method", "GET")
        .header("access-control-request-headers", "authorization")
        .send()
        .await
        .unwrap();
    assert!(res.status().is_success());
    assert_eq!(res.headers()["access-control-allow-origin"], "*");
    assert!(!res
        .headers()
        .contains_key("access-control-allow-credentials"));
    let spool = common::temp_dir("cors");
    let mut config = test_config(&s.db, &spool, 1 << 20);
    config.cors_origins = vec!["app.example.com".into()];
    let err = common::serve(config).await.unwrap_err().to_string();
    assert!(err.contains("S2T_CORS_ORIGINS"), "{err}");
    std::fs::remove_dir_all(&spool).ok();
}

/// A CA and a server certificate for localhost and 127.0.0.1, made with
/// openssl; returns (ca.pem, server.crt, server.key).
fn certificates(
    dir: &std::path::Path,
) -> (std::path::PathBuf, std::path::PathBuf, std::path::PathBuf) {
    let run = |args: &[&str]| {
        let out = std::process::Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .output()
            .expect("run openssl");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=s2t test CA",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
    ]);
    run(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=localhost",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
    ]);
    std::fs::write(
        dir.join("san.ext"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\n",
    )
    .unwrap();
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        "san.ext",
        "-out",
        "server.crt",
    ]);
    (
        dir.join("ca.pem"),
        dir.join("server.crt"),
        dir.join("server.key"),
    )
}

/// A TLS-terminating PostgreSQL proxy on loopback: it answers the
/// client's SSLRequest, completes the handshake with `identity` and
/// relays the plaintext to `upstream`. The PostgreSQL of the test wheel is
/// built without OpenSSL ("SSL is not supported by this build"), so this
/// stands in for a TLS server; the client side, which is ours, is real.
/// Returns its address and the local ports of its upstream connections
/// (which is how the server sees each relayed client).
async fn tls_proxy(
    identity: native_tls::Identity,
    upstream: String,
) -> (String, std::sync::Arc<std::sync::Mutex<Vec<u16>>>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let acceptor =
        tokio_native_tls::TlsAcceptor::from(native_tls::TlsAcceptor::new(identity).unwrap());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let ports = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let seen = ports.clone();
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            let (acceptor, upstream, seen) = (acceptor.clone(), upstream.clone(), seen.clone());
            tokio::spawn(async move {
                let mut request = [0u8; 8];
                if sock.read_exact(&mut request).await.is_err() {
                    return;
                }
                // Length 8, code 80877103: SSLRequest. Anything else is a
                // plain client, which this proxy does not serve.
                if request != [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f] {
                    return;
                }
                sock.write_all(b"S").await.unwrap();
                let Ok(mut tls) = acceptor.accept(sock).await else {
                    return;
                };
                let mut up = tokio::net::TcpStream::connect(&upstream).await.unwrap();
                seen.lock().unwrap().push(up.local_addr().unwrap().port());
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut up).await;
            });
        }
    });
    (addr, ports)
}

/// The gateway with sslmode=verify-full through a TLS proxy: its pool and
/// its LISTEN connection both arrive over verified TLS, `require` works
/// without verification, and a server whose certificate another CA signed
/// is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pool_and_the_listener_use_tls_when_the_url_asks() {
    let s = stack(1 << 20, false).await;
    let dir = common::temp_dir("tls");
    let (ca, crt, key) = certificates(&dir);
    let identity = native_tls::Identity::from_pkcs8(
        &std::fs::read(&crt).unwrap(),
        &std::fs::read(&key).unwrap(),
    )
    .unwrap();
    let url = s.db.url(s2t_tests::APP_LOGIN);
    let host_port = url
        .split('@')
        .nth(1)
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .to_string();
    let (proxy, ports) = tls_proxy(identity, host_port.clone()).await;
    let spool = common::temp_dir("tls-spool");
    let via_proxy = |query: String| {
        let mut c = test_config(&s.db, &spool, 1 << 20);
        c.database_url = format!("{}?{query}", url.replace(&host_port, &proxy));
        c
    };
    let base = common::serve(via_proxy(format!(
        "sslmode=verify-full&sslrootcert={}&application_name=gw_tls",
        ca.display()
    )))
    .await
    .expect("starts over TLS");
    let res = s.http.get(format!("{base}/readyz")).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    s.user_at(&base, "tess").await;
    // Every connection of that gateway, the listener included, came
    // through the proxy, so over TLS.
    let deadline = Instant::now() + Duration::from_secs(10);
    let (total, relayed, listening) = loop {
        let relayed: Vec<i32> = ports
            .lock()
            .unwrap()
            .iter()
            .map(|p| i32::from(*p))
            .collect();
        let row =
            s.db.admin
                .query_one(
                    "SELECT count(*), count(*) FILTER (WHERE client_port = ANY($1)),
                        count(*) FILTER (WHERE client_port = ANY($1) AND query ILIKE 'LISTEN%')
                   FROM pg_stat_activity
                  WHERE datname = current_database() AND application_name = 'gw_tls'",
                    &[&relayed],
                )
                .await
                .unwrap();
        let counts: (i64, i64, i64) = (row.get(0), row.get(1), row.get(2));
        if counts.2 > 0 || Instant::now() > deadline {
            break counts;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        total >= 2 && relayed == total && listening == 1,
        "connections {total}, through TLS {relayed}, listening {listening}"
    );
    // sslmode=require encrypts without checking the certificate.
    common::serve(via_proxy("sslmode=require".into()))
        .await
        .expect("require works");
    // A root that did not sign the server's certificate: refused.
    let other = common::temp_dir("tls-other");
    let (other_ca, _, _) = certificates(&other);
    let err = common::serve(via_proxy(format!(
        "sslmode=verify-full&sslrootcert={}",
        other_ca.display()
    )))
    .await
    .unwrap_err();
    eprintln!("an unverifiable server: {err:#}");
    assert!(format!("{err:#}").contains("TLS handshake"), "{err:#}");
    // And the plain default still connects without TLS.
    let before = ports.lock().unwrap().len();
    common::serve(test_config(&s.db, &spool, 1 << 20))
        .await
        .expect("plain");
    assert_eq!(ports.lock().unwrap().len(), before);
    for d in [&dir, &other, &spool] {
        std::fs::remove_dir_all(d).ok();
    }
}
