//! The gateway end to end without the worker: auth, tokens, quotas, limits
//! and isolation, over real HTTP against the real database.

mod common;

use common::{stack, stack_with, SECRET};
use reqwest::StatusCode;
use serde_json::{json, Value};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registration_validates_every_field_and_refuses_duplicates() {
    let s = stack(1 << 20, false).await;
    let (st, body) = s
        .post_json(
            "/auth/register",
            json!({"email": "not-an-email", "user_name": "a b", "password": "short"}),
            None,
        )
        .await;
    assert_eq!(st, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(body["status"], 422);
    for field in ["email", "user_name", "password"] {
        assert!(body["errors"][field].is_string(), "{field}: {body}");
    }
    s.user("cat").await;
    for (email, name, field) in [
        ("cat@example.com", "other", "email"),
        ("other@example.com", "CAT", "user_name"),
    ] {
        let (st, body) = s
            .post_json(
                "/auth/register",
                json!({"email": email, "user_name": name, "password": "a good password"}),
                None,
            )
            .await;
        assert_eq!(st, StatusCode::CONFLICT, "{body}");
        assert!(body["errors"][field].is_string(), "{body}");
    }
    // The stored hash is argon2id, never the password.
    let hash: String =
        s.db.admin
            .query_one(
                "SELECT password_hash FROM s2t.users WHERE user_name = 'cat'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
    assert!(hash.starts_with("$argon2id$"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_by_email_or_name_and_the_token_shape() {
    let s = stack(1 << 20, false).await;
    s.user("dan").await;
    for login in ["dan", "DAN@example.com"] {
        let res = s
            .http
            .post(s.url("/auth/login"))
            .json(&json!({"login": login, "password": "a good password"}))
            .send()
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!(res.headers()["cache-control"], "no-store");
        let t: Value = res.json().await.unwrap();
        assert_eq!(t["token_type"], "Bearer");
        assert_eq!(t["expires_in"], 900);
        assert_eq!(t["access_token"].as_str().unwrap().split('.').count(), 3);
        assert_eq!(t["refresh_token"].as_str().unwrap().len(), 43);
        let (st, me) = s.get_json("/me", t["access_token"].as_str().unwrap()).await;
        assert_eq!(st, StatusCode::OK);
        assert_eq!(me["user_name"], "dan");
        assert_eq!(me["plan"], "FREE");
    }
    let (st, body) = s.login("dan", "wrong password").await;
    assert_eq!(st, StatusCode::UNAUTHORIZED);
    assert_eq!(body["detail"], "wrong login or password");
    let (st, _) = s.login("nobody", "whatever1").await;
    assert_eq!(st, StatusCode::UNAUTHORIZED, "unknown users look the same");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_failed_logins_are_throttled() {
    let s = stack(1 << 20, false).await;
    s.user("eve").await;
    for _ in 0..5 {
        let (st, _) = s.login("eve", "guess guess").await;
        assert_eq!(st, StatusCode::UNAUTHORIZED);
    }
    let (st, _) = s.login("eve", "guess guess").await;
    assert_eq!(st, StatusCode::UNAUTHORIZED);
    // Now even the right password waits.
    let res = s
        .http
        .post(s.url("/auth/login"))
        .json(&json!({"login": "eve", "password": "a good password"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    // The first wait is 2 s from the last failure, rounded up to whole seconds.
    let retry = common::retry_after(&res);
    assert!((1..=2).contains(&retry), "retry-after {retry}");
    let body: Value = res.json().await.unwrap();
    assert!(body["detail"]
        .as_str()
        .unwrap()
        .contains("too many failed logins"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_from_one_address_behind_the_proxy_block_only_that_address() {
    // The test gateway trusts 127.0.0.1 as its reverse proxy, so the
    // address it throttles is the one the proxy forwarded.
    let s = stack(1 << 20, false).await;
    s.user("gus").await;
    let attempt = |from: &'static str, login: String, password: &'static str| {
        s.http
            .post(s.url("/auth/login"))
            .header("x-forwarded-for", from)
            .json(&json!({"login": login, "password": password}))
            .send()
    };
    // One failure each for many names: no single login reaches its limit,
    // but the address does after 30.
    for i in 0..31 {
        let res = attempt("203.0.113.5", format!("user{i}"), "guess guess")
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::UNAUTHORIZED, "attempt {i}");
    }
    let res = attempt("203.0.113.5", "gus".into(), "a good password")
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(res.headers().contains_key("retry-after"));
    // Someone else behind the same proxy is not locked out.
    let res = attempt("203.0.113.6", "gus".into(), "a good password")
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    // A client cannot escape by writing its own header: the proxy appends
    // the address it saw, and only that last entry is believed.
    let res = attempt("203.0.113.6, 203.0.113.5", "gus".into(), "a good password")
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_tabs_refreshing_at_once_keep_the_session() {
    let s = stack(1 << 20, false).await;
    let (_, first) = s.user("tabby").await;
    let (a, b) = tokio::join!(s.refresh(&first), s.refresh(&first));
    assert_eq!(a.0, StatusCode::OK, "{}", a.1);
    assert_eq!(b.0, StatusCode::OK, "{}", b.1);
    let next = a.1["refresh_token"].as_str().unwrap();
    assert_eq!(
        next,
        b.1["refresh_token"].as_str().unwrap(),
        "the same successor"
    );
    assert_ne!(next, first);
    // The session lives on: the successor refreshes, the family is intact.
    let (st, third) = s.refresh(next).await;
    assert_eq!(st, StatusCode::OK, "{third}");
    assert_eq!(
        s.count("SELECT count(*) FROM s2t.refresh_tokens WHERE revoked_at IS NULL")
            .await,
        1
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_rotates_and_reuse_revokes_the_family() {
    // No grace: a spent token presented again is theft at once.
    let s = stack_with(1 << 20, false, |c| c.refresh_grace_secs = 0).await;
    let (_, first) = s.user("fay").await;
    let (st, second) = s.refresh(&first).await;
    assert_eq!(st, StatusCode::OK, "{second}");
    let second_refresh = second["refresh_token"].as_str().unwrap().to_string();
    assert_ne!(second_refresh, first);
    assert_eq!(
        s.get_json("/me", second["access_token"].as_str().unwrap())
            .await
            .0,
        StatusCode::OK
    );

    // The first token comes back: someone copied it. The whole session ends.
    let (st, body) = s.refresh(&first).await;
    assert_eq!(st, StatusCode::UNAUTHORIZED);
    assert!(
        body["detail"].as_str().unwrap().contains("already used"),
        "{body}"
    );
    let (st, _) = s.refresh(&second_refresh).await;
    assert_eq!(
        st,
        StatusCode::UNAUTHORIZED,
        "the rotated-to token died with its family"
    );

    // Logout revokes a live session.
    let (_, t) = s.login("fay", "a good password").await;
    let live = t["refresh_token"].as_str().unwrap();
    let (st, _) = s
        .post_json("/auth/logout", json!({"refresh_token": live}), None)
        .await;
    assert_eq!(st, StatusCode::NO_CONTENT);
    let (st, body) = s.refresh(live).await;
    assert_eq!(st, StatusCode::UNAUTHORIZED);
    assert!(
        body["detail"].as_str().unwrap().contains("revoked"),
        "{body}"
    );
    let (st, _) = s.refresh("made-up").await;
    assert_eq!(st, StatusCode::UNAUTHORIZED);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bad_token_gets_401_with_its_reason() {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    use base64::Engine as _;
    let s = stack(1 << 20, false).await;
    let (good, _) = s.user("gus").await;
    let user: uuid::Uuid = s.get_json("/me", &good).await.1["id"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let now = chrono::Utc::now().timestamp();
    let keys = s2t_gateway::tokens::JwtKeys::new(SECRET.as_bytes());
    let expired = keys.issue(user, now - 2000, 900);
    let forged = s2t_gateway::tokens::JwtKeys::new(b"someone else's secret, 32+ bytes!")
        .issue(user, now, 900);
    let payload = good.split('.').nth(1).unwrap();
    let none = format!(
        "{}.{payload}.",
        URL_SAFE_NO_PAD.encode(r#"{"alg":"none","typ":"JWT"}"#)
    );
    let cases = [
        (None, "missing Authorization"),
        (Some("Basic abc".to_string()), "Bearer"),
        (Some("Bearer not.a.jwt".to_string()), "malformed"),
        (Some(format!("Bearer {expired}")), "expired"),
        (Some(format!("Bearer {forged}")), "signature"),
        (Some(format!("Bearer {none}")), "\"none\""),
    ];
    for (header, reason) in cases {
        let mut req = s.http.get(s.url("/me"));
        if let Some(h) = &header {
            req = req.header("authorization", h);
        }
        let res = req.send().await.unwrap();
        assert_eq!(res.status(), StatusCode::UNAUTHORIZED, "{header:?}");
        assert_eq!(res.headers()["content-type"], "application/problem+json");
        assert!(res.headers().contains_key("www-authenticate"));
        let body: Value = res.json().await.unwrap();
        assert!(
            body["detail"].as_str().unwrap().contains(reason),
            "{header:?}: {body}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_quota_uploads_are_refused_with_nothing_created() {
    let s = stack(1 << 20, false).await;
    let (token, _) = s.user("hal").await;
    s.db.admin
        .batch_execute(
            "INSERT INTO s2t.plans (code, name, monthly_minutes, monthly_usage_limit) VALUES ('ONE', 'One', 60, 1);
             UPDATE s2t.user_subscriptions SET plan_id = (SELECT id FROM s2t.plans WHERE code = 'ONE');",
        )
        .await
        .unwrap();
    let (st, body) = s.upload(&token, b"RIFF....".repeat(100), "en").await;
    assert_eq!(st, StatusCode::ACCEPTED, "{body}");
    let form = reqwest::multipart::Form::new().part(
        "file",
        reqwest::multipart::Part::bytes(vec![7u8; 2000]).file_name("b.wav"),
    );
    let res = s.post_form(&token, form).await;
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry = common::retry_after(&res);
    assert!(retry > 0 && retry <= 32 * 86_400);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["code"], "S2Q01");
    assert_eq!(body["limit"], "monthly_usage_limit");
    assert_eq!(body["limit_value"], 1);
    assert!(body["resets_at"].as_str().unwrap().ends_with('Z'));
    assert!(body["detail"].as_str().unwrap().contains("resets at"));
    assert_eq!(s.count("SELECT count(*) FROM s2t.recordings").await, 1);
    assert_eq!(s.count("SELECT count(*) FROM s2t.recording_audio").await, 1);
    assert_eq!(
        std::fs::read_dir(&s.spool).unwrap().count(),
        0,
        "spool cleaned"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_upload_gets_413_and_stores_nothing() {
    let s = stack(100_000, false).await;
    let (token, _) = s.user("ida").await;
    let (st, body) = s.upload(&token, vec![1u8; 300_000], "en").await;
    assert_eq!(st, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
    assert!(body["detail"].as_str().unwrap().contains("100000 bytes"));
    // Without a Content-Length the limit is enforced while streaming.
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        (0..30).map(|_| Ok(vec![2u8; 10_000])).collect();
    let part = reqwest::multipart::Part::stream(reqwest::Body::wrap_stream(
        futures_util::stream::iter(chunks),
    ))
    .file_name("big.wav");
    // Refused mid-stream, so that connection closes: a client of its own.
    let res = reqwest::Client::new()
        .post(s.url("/recordings"))
        .bearer_auth(&token)
        .multipart(reqwest::multipart::Form::new().part("file", part))
        .send()
        .await;
    if let Ok(res) = res {
        assert_eq!(res.status(), StatusCode::PAYLOAD_TOO_LARGE);
    }
    // Text fields are capped too.
    let form = reqwest::multipart::Form::new()
        .text("language", "x".repeat(10_000))
        .part(
            "file",
            reqwest::multipart::Part::bytes(vec![1u8; 100]).file_name("a.wav"),
        );
    let res = s.post_form(&token, form).await;
    assert_eq!(res.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let body: Value = res.json().await.unwrap();
    assert_eq!(body["errors"]["language"], "at most 4096 bytes");
    assert_eq!(s.count("SELECT count(*) FROM s2t.recordings").await, 0);
    assert_eq!(s.count("SELECT count(*) FROM s2t.recording_audio").await, 0);
    let used: i32 =
        s.db.admin
            .query_one("SELECT usage_count FROM s2t.user_subscriptions", &[])
            .await
            .unwrap()
            .get(0);
    assert_eq!(used, 0, "nothing charged");
    assert_eq!(
        std::fs::read_dir(&s.spool).unwrap().count(),
        0,
        "spool cleaned"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_users_recording_is_404_on_every_endpoint() {
    let s = stack(1 << 20, false).await;
    let (ann, _) = s.user("jan").await;
    let (bob, _) = s.user("ken").await;
    let (st, body) = s.upload(&ann, b"RIFF....".repeat(100), "en").await;
    assert_eq!(st, StatusCode::ACCEPTED);
    let id = body["id"].as_str().unwrap();
    for path in [
        format!("/recordings/{id}"),
        format!("/recordings/{id}/events"),
        format!("/recordings/{id}/transcript.txt"),
        format!("/recordings/{id}/transcript.srt"),
        format!("/recordings/{id}/audio"),
    ] {
        let res = s.get(&path, &bob).await;
        assert_eq!(res.status(), StatusCode::NOT_FOUND, "{path}");
        // The owner sees it (the transcript is not ready yet: 409).
        let own = s.get(&path, &ann).await.status();
        assert!(
            own == StatusCode::OK || own == StatusCode::CONFLICT,
            "{path}: {own}"
        );
    }
    let res = s
        .http
        .delete(s.url(&format!("/recordings/{id}")))
        .bearer_auth(&bob)
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
    let (_, list) = s.get_json("/recordings", &bob).await;
    assert_eq!(list["recordings"].as_array().unwrap().len(), 0);
    let (_, list) = s.get_json("/recordings", &ann).await;
    assert_eq!(list["recordings"].as_array().unwrap().len(), 1);
    assert_eq!(
        s.count("SELECT count(*) FROM s2t.recordings").await,
        1,
        "still there"
    );
    // Nonsense ids are 404 too, not 400 or 500.
    assert_eq!(
        s.get("/recordings/not-a-uuid", &bob).await.status(),
        StatusCode::NOT_FOUND
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn profile_stats_plans_and_listing() {
    let s = stack(1 << 20, false).await;
    let (token, _) = s.user("lea").await;
    let res = s
        .http
        .patch(s.url("/me"))
        .bearer_auth(&token)
        .json(&json!({"name": "Léa"}))
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.json::<Value>().await.unwrap()["name"], "Léa");

    // Avatar: checked by content, served back at avatar_url.
    let png = b"\x89PNG\r\n\x1a\n0000IHDR-rest-of-image".to_vec();
    let res = s
        .http
        .put(s.url("/me/avatar"))
        .bearer_auth(&token)
        .header("content-type", "image/png")
        .body(png.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let url = res.json::<Value>().await.unwrap()["avatar_url"]
        .as_str()
        .unwrap()
        .to_string();
    let got = s.get(&url, &token).await;
    assert_eq!(got.headers()["content-type"], "image/png");
    assert_eq!(got.bytes().await.unwrap().as_ref(), png.as_slice());
    let res = s
        .http
        .put(s.url("/me/avatar"))
        .bearer_auth(&token)
        .header("content-type", "image/png")
        .body("<svg/>")
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    // Refused before the body is read, so the server closes that
    // connection: send it on a client of its own.
    let res = reqwest::Client::new()
        .put(s.url("/me/avatar"))
        .bearer_auth(&token)
        .body(vec![0xFFu8; 3 * 1024 * 1024])
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::PAYLOAD_TOO_LARGE);

    let (st, plans) = s.get_json("/plans", &token).await;
    assert_eq!(st, StatusCode::OK);
    let codes: Vec<&str> = plans["plans"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["code"].as_str().unwrap())
        .collect();
    assert_eq!(codes, ["FREE", "BASIC", "PREMIUM", "ENTERPRISE"]);
    // A paid upgrade is a sale: refused here, bought through billing.
    let (st, body) = s
        .post_json("/me/plan", json!({"plan_code": "PREMIUM"}), Some(&token))
        .await;
    assert_eq!(st, StatusCode::FORBIDDEN, "{body}");
    assert!(
        body["detail"].as_str().unwrap().contains("paid upgrade"),
        "{body}"
    );
    assert_eq!(body["code"], "42501");
    // An admin put the user on ENTERPRISE; moving down is the user's choice.
    s.db.admin
        .execute(
            "SELECT s2t.admin_change_plan(u.id, 'ENTERPRISE') FROM s2t.users u WHERE u.user_name = 'lea'",
            &[],
        )
        .await
        .unwrap();
    let (st, body) = s
        .post_json("/me/plan", json!({"plan_code": "PREMIUM"}), Some(&token))
        .await;
    assert_eq!(st, StatusCode::OK, "{body}");
    assert_eq!(body["me"]["plan"], "PREMIUM");
    assert_eq!(
        s.post_json("/me/plan", json!({"plan_code": "PREMIUM"}), Some(&token))
            .await
            .0,
        StatusCode::CONFLICT
    );
    assert_eq!(
        s.post_json("/me/plan", json!({"plan_code": "GOLD"}), Some(&token))
            .await
            .0,
        StatusCode::NOT_FOUND
    );

    for _ in 0..3 {
        assert_eq!(
            s.upload(&token, b"RIFF....".repeat(10), "vi").await.0,
            StatusCode::ACCEPTED
        );
    }
    let (_, stats) = s.get_json("/me/stats", &token).await;
    assert_eq!(stats["current_cycle_usage"], 3);
    assert_eq!(stats["plan_code"], "PREMIUM");
    assert!(stats["quota_usage_percent"].as_f64().unwrap() > 0.0);
    assert!(stats["resets_at"].is_string());
    // Two pages of two, newest first, no overlap.
    let (_, p1) = s.get_json("/recordings?limit=2", &token).await;
    assert_eq!(p1["recordings"].as_array().unwrap().len(), 2);
    let cursor = p1["next_cursor"].as_str().unwrap();
    let (_, p2) = s
        .get_json(&format!("/recordings?limit=2&cursor={cursor}"), &token)
        .await;
    assert_eq!(p2["recordings"].as_array().unwrap().len(), 1);
    assert!(p2["next_cursor"].is_null());
    assert_ne!(p1["recordings"][1]["id"], p2["recordings"][0]["id"]);
    assert!(
        p1["recordings"][0]["created_at"].as_str() >= p1["recordings"][1]["created_at"].as_str()
    );
    assert_eq!(
        s.get("/recordings?cursor=garbage", &token).await.status(),
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        s.get("/recordings?status=weird", &token).await.status(),
        StatusCode::BAD_REQUEST
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_readiness_metrics_and_json_404() {
    let s = stack(1 << 20, false).await;
    assert_eq!(
        s.http.get(s.url("/healthz")).send().await.unwrap().status(),
        StatusCode::OK
    );
    let res = s.http.get(s.url("/readyz")).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(
        res.json::<Value>().await.unwrap()["extension"],
        env!("CARGO_PKG_VERSION")
    );
    let res = s.http.get(s.url("/nope")).send().await.unwrap();
    assert_eq!(res.status(), StatusCode::NOT_FOUND);
    assert_eq!(res.headers()["content-type"], "application/problem+json");
    assert!(res.headers().contains_key("x-request-id"));
    let text = s
        .http
        .get(s.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        text.contains(
            "s2t_http_requests_total{method=\"GET\",route=\"/healthz\",status=\"200\"} 1"
        ),
        "{text}"
    );
    assert!(
        text.contains("s2t_queue_jobs{state=\"queued\"} 0"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cors_allows_only_the_configured_origins() {
    let s = stack(1 << 20, false).await;
    let preflight = |origin: &'static str| {
        s.http
            .request(reqwest::Method::OPTIONS, s.url("/recordings"))
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header("access-control-request-headers", "authorization")
            .send()
    };
    let ok = preflight("http://app.test").await.unwrap();
    assert_eq!(
        ok.headers()["access-control-allow-origin"],
        "http://app.test"
    );
    let methods = ok.headers()["access-control-allow-methods"]
        .to_str()
        .unwrap()
        .to_string();
    assert!(methods.contains("POST"), "{methods}");
    let other = preflight("http://evil.test").await.unwrap();
    assert!(!other.headers().contains_key("access-control-allow-origin"));
}

/// The real binary: SIGTERM ends open event streams and the process exits
/// cleanly, instead of waiting for streams that would never finish.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_shuts_down_gracefully_with_streams_open() {
    use futures_util::StreamExt;
    let db = s2t_tests::TestDb::new().await;
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_s2t-gateway"))
        .env("APP_DATABASE_URL", db.url(s2t_tests::APP_LOGIN))
        .env("S2T_GATEWAY_LISTEN", format!("127.0.0.1:{port}"))
        .env("S2T_JWT_SECRET", SECRET)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let base = format!("http://127.0.0.1:{port}");
    let http = reqwest::Client::new();
    let mut ready = false;
    for _ in 0..100 {
        if http
            .get(format!("{base}/readyz"))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            ready = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert!(ready, "the gateway came up");
    let body =
        json!({"email": "sam@example.com", "user_name": "sam", "password": "a good password"});
    assert!(http
        .post(format!("{base}/auth/register"))
        .json(&body)
        .send()
        .await
        .unwrap()
        .status()
        .is_success());
    let t: Value = http
        .post(format!("{base}/auth/login"))
        .json(&json!({"login": "sam", "password": "a good password"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = t["access_token"].as_str().unwrap().to_string();
    let form = reqwest::multipart::Form::new().part(
        "file",
        reqwest::multipart::Part::bytes(vec![1u8; 1000]).file_name("a.wav"),
    );
    let r: Value = http
        .post(format!("{base}/recordings"))
        .bearer_auth(&token)
        .multipart(form)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = r["id"].as_str().unwrap();
    // No worker: the recording stays processing and the stream stays open.
    let mut stream = http
        .get(format!("{base}/recordings/{id}/events"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .bytes_stream();
    assert!(stream.next().await.is_some(), "the first event arrives");
    let started = std::time::Instant::now();
    assert!(std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap()
        .success());
    let ended = tokio::time::timeout(std::time::Duration::from_secs(10), async {
        while let Some(Ok(_)) = stream.next().await {}
    })
    .await;
    assert!(ended.is_ok(), "the event stream ended on shutdown");
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            started.elapsed() < std::time::Duration::from_secs(10),
            "the gateway exits"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    };
    assert!(status.success(), "clean exit: {status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_keys_work_as_bearer_tokens_until_revoked() {
    let s = stack(1 << 20, false).await;
    let (ann, _) = s.user("uma").await;
    let (bob, _) = s.user("vic").await;
    let (st, created) = s
        .post_json("/me/api-keys", json!({"name": "my script"}), Some(&ann))
        .await;
    assert_eq!(st, StatusCode::CREATED, "{created}");
    let key = created["key"].as_str().unwrap().to_string();
    assert!(key.starts_with("s2t_") && key.starts_with(created["prefix"].as_str().unwrap()));
    let (st, me) = s.get_json("/me", &key).await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(me["user_name"], "uma");
    // Listed without the key; stored only as a hash.
    let (_, list) = s.get_json("/me/api-keys", &ann).await;
    assert_eq!(list["api_keys"].as_array().unwrap().len(), 1);
    assert!(list["api_keys"][0].get("key").is_none());
    assert!(list["api_keys"][0]["last_used_at"].is_string());
    assert_eq!(
        s.count("SELECT count(*) FROM s2t.api_keys WHERE octet_length(key_hash) = 32")
            .await,
        1
    );
    let (st, _) = s
        .post_json("/me/api-keys", json!({"name": ""}), Some(&ann))
        .await;
    assert_eq!(st, StatusCode::UNPROCESSABLE_ENTITY);
    // Another user can neither see nor revoke it.
    let (_, other) = s.get_json("/me/api-keys", &bob).await;
    assert_eq!(other["api_keys"].as_array().unwrap().len(), 0);
    let id = created["id"].as_str().unwrap();
    let del = |token: String| {
        s.http
            .delete(s.url(&format!("/me/api-keys/{id}")))
            .bearer_auth(token)
            .send()
    };
    assert_eq!(
        del(bob.clone()).await.unwrap().status(),
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        del(ann.clone()).await.unwrap().status(),
        StatusCode::NO_CONTENT
    );
    let res = s.get("/me", &key).await;
    assert_eq!(res.status(), StatusCode::UNAUTHORIZED);
    let body: Value = res.json().await.unwrap();
    assert!(
        body["detail"].as_str().unwrap().contains("revoked"),
        "{body}"
    );
    assert_eq!(
        s.get("/me", "s2t_made-up").await.status(),
        StatusCode::UNAUTHORIZED
    );
}
