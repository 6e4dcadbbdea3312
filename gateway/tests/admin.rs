//! The admin surface and the billing webhook over real HTTP: who may use
//! them is decided in the database, and billing events are verified there.

mod common;

use common::stack;
use reqwest::StatusCode;
use serde_json::{json, Value};

async fn plan_of(s: &common::Stack, user_name: &str) -> String {
    s.db.admin
        .query_one(
            "SELECT p.code FROM s2t.users u JOIN s2t.user_subscriptions s ON s.user_id = u.id
               JOIN s2t.plans p ON p.id = s.plan_id WHERE u.user_name = $1",
            &[&user_name],
        )
        .await
        .unwrap()
        .get(0)
}

async fn patch(s: &common::Stack, path: &str, token: &str, body: Value) -> (StatusCode, Value) {
    let res = s
        .http
        .patch(s.url(path))
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .unwrap();
    let st = res.status();
    (st, res.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_admins_administer_and_never_with_an_api_key() {
    let s = stack(1 << 20, false).await;
    let (admin, _) = s.user("boss").await;
    let (user, _) = s.user("worker_bee").await;
    let bee: uuid::Uuid =
        s.db.admin
            .query_one(
                "SELECT id FROM s2t.users WHERE user_name = 'worker_bee'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
    // Not an admin yet: every admin route says so.
    let (st, body) = s.get_json("/admin/users", &admin).await;
    assert_eq!(st, StatusCode::FORBIDDEN, "{body}");
    assert!(body["detail"].as_str().unwrap().contains("administrator"));
    let (st, _) = patch(
        &s,
        &format!("/admin/users/{bee}"),
        &user,
        json!({"plan_code": "ENTERPRISE"}),
    )
    .await;
    assert_eq!(st, StatusCode::FORBIDDEN);
    assert_eq!(plan_of(&s, "worker_bee").await, "FREE");

    s.db.admin
        .execute(
            "UPDATE s2t.users SET role = 'admin' WHERE user_name = 'boss'",
            &[],
        )
        .await
        .unwrap();
    let (st, body) = s.get_json("/admin/users?search=bee", &admin).await;
    assert_eq!(st, StatusCode::OK, "{body}");
    assert_eq!(body["users"].as_array().unwrap().len(), 1);
    assert_eq!(body["users"][0]["plan_code"], "FREE");

    let (st, body) = patch(
        &s,
        &format!("/admin/users/{bee}"),
        &admin,
        json!({"plan_code": "PREMIUM", "reset_usage": true}),
    )
    .await;
    assert_eq!(st, StatusCode::OK, "{body}");
    assert_eq!(body["plan_code"], "PREMIUM");
    assert_eq!(plan_of(&s, "worker_bee").await, "PREMIUM");

    let (st, body) = s
        .http
        .put(s.url("/admin/plans/TEAM"))
        .bearer_auth(&admin)
        .json(&json!({"name": "Team", "plan_cost": 50, "monthly_minutes": 6000, "monthly_usage_limit": 3000}))
        .send()
        .await
        .map(|r| (r.status(), r))
        .unwrap();
    assert_eq!(st, StatusCode::OK, "{:?}", body.text().await);
    let team = |plans: &Value| {
        plans["plans"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["code"] == "TEAM")
            .cloned()
            .expect("TEAM is listed")
    };
    let (_, plans) = s.get_json("/admin/plans", &admin).await;
    // A new plan without a question limit gets the default.
    assert_eq!(team(&plans)["monthly_questions"], 100);
    let put = |body: Value| {
        s.http
            .put(s.url("/admin/plans/TEAM"))
            .bearer_auth(&admin)
            .json(&body)
            .send()
    };
    let r = put(
        json!({"name": "Team", "monthly_minutes": 6000, "monthly_usage_limit": 3000,
                       "monthly_questions": 2500}),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    // An update that leaves it out keeps it.
    let r = put(json!({"name": "Team", "monthly_minutes": 7000, "monthly_usage_limit": 3000}))
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let (_, plans) = s.get_json("/admin/plans", &admin).await;
    assert_eq!(team(&plans)["monthly_questions"], 2500);
    assert_eq!(team(&plans)["monthly_minutes"], 7000);
    // A negative limit is refused by the table's check.
    let r = put(
        json!({"name": "Team", "monthly_minutes": 7000, "monthly_usage_limit": 3000,
                       "monthly_questions": -1}),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);

    // An admin's API key is not an admin session.
    let (st, key) = s
        .post_json("/me/api-keys", json!({"name": "ci"}), Some(&admin))
        .await;
    assert_eq!(st, StatusCode::CREATED, "{key}");
    let (st, _) = s
        .get_json("/admin/users", key["key"].as_str().unwrap())
        .await;
    assert_eq!(st, StatusCode::FORBIDDEN);

    // Disabling ends the user's access at once.
    let (st, body) = patch(
        &s,
        &format!("/admin/users/{bee}"),
        &admin,
        json!({"status": "disabled"}),
    )
    .await;
    assert_eq!(st, StatusCode::OK, "{body}");
    let (st, _) = s.get_json("/me", &user).await;
    assert!(
        st == StatusCode::UNAUTHORIZED || st == StatusCode::FORBIDDEN,
        "{st}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_billing_webhook_applies_signed_events_once() {
    let s = stack(1 << 20, false).await;
    let (_, _) = s.user("payer").await;
    let user: uuid::Uuid =
        s.db.admin
            .query_one("SELECT id FROM s2t.users WHERE user_name = 'payer'", &[])
            .await
            .unwrap()
            .get(0);
    let payload = json!({"event_id": "evt_42", "user_id": user, "plan_code": "BASIC"}).to_string();
    let secret = "webhook-test-secret-0123456789abcdef";
    let post = |body: String, sig: String| {
        let s = &s;
        async move {
            let res = s
                .http
                .post(s.url("/billing/webhook"))
                .header("s2t-signature", sig)
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await
                .unwrap();
            let st = res.status();
            (st, res.json::<Value>().await.unwrap_or(Value::Null))
        }
    };
    let now = chrono::Utc::now().timestamp();
    let good = s2t_core::billing::sign(secret.as_bytes(), payload.as_bytes(), now);
    // Billing off until the database owner sets a secret.
    let (st, body) = post(payload.clone(), good.clone()).await;
    assert_eq!(st, StatusCode::CONFLICT, "{body}");
    s.db.admin
        .execute(
            "UPDATE s2t.settings SET billing_webhook_secret = $1",
            &[&secret],
        )
        .await
        .unwrap();
    let forged = s2t_core::billing::sign(
        b"not-the-secret-not-the-secret-not-it",
        payload.as_bytes(),
        now,
    );
    let (st, body) = post(payload.clone(), forged).await;
    assert_eq!(st, StatusCode::UNAUTHORIZED, "{body}");
    assert!(
        body["detail"].as_str().unwrap().contains("signature"),
        "{body}"
    );
    let (st, _) = post(payload.replace("BASIC", "ENTERPRISE"), good.clone()).await;
    assert_eq!(st, StatusCode::UNAUTHORIZED);
    assert_eq!(plan_of(&s, "payer").await, "FREE");
    let (st, body) = post(payload.clone(), good.clone()).await;
    assert_eq!(st, StatusCode::OK, "{body}");
    assert_eq!(body["result"], "applied");
    let (st, body) = post(payload.clone(), good).await;
    assert_eq!(st, StatusCode::OK, "{body}");
    assert_eq!(body["result"], "duplicate");
    assert_eq!(plan_of(&s, "payer").await, "BASIC");
    // Oversized bodies are refused before the database sees them.
    let (st, _) = post("x".repeat(100 * 1024), "t=1,v1=00".into()).await;
    assert_eq!(st, StatusCode::PAYLOAD_TOO_LARGE);
}
