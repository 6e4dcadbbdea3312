//! Refresh tokens in SQL: rotation outcomes, and maintenance purging the
//! dead ones (callable by workers, not by the application).

use s2t_tests::*;

fn hash(n: u8) -> Vec<u8> {
    vec![n; 32]
}

#[tokio::test]
async fn rotation_outcomes_and_purging() {
    let db = TestDb::new().await;
    let user = register(&db.admin, "tess").await;
    let issue = |h: Vec<u8>| {
        let admin = &db.admin;
        async move {
            admin
                .query_one(
                    "SELECT s2t.issue_refresh_token($1, $2, interval '1 hour')",
                    &[&user, &h],
                )
                .await
                .unwrap()
        }
    };
    issue(hash(1)).await;
    let rotate = |old: Vec<u8>, new: Vec<u8>| {
        let admin = &db.admin;
        async move {
            let r = admin
                .query_one(
                    "SELECT outcome FROM s2t.rotate_refresh_token($1, $2, interval '1 hour')",
                    &[&old, &new],
                )
                .await
                .unwrap();
            r.get::<_, String>(0)
        }
    };
    assert_eq!(rotate(hash(1), hash(2)).await, "rotated");
    assert_eq!(rotate(hash(9), hash(10)).await, "unknown");
    assert_eq!(rotate(hash(1), hash(3)).await, "reused");
    // Reuse revoked the family, including the token it was rotated to.
    assert_eq!(rotate(hash(2), hash(4)).await, "revoked");
    expect_code(
        db.admin
            .query_one(
                "SELECT s2t.issue_refresh_token($1, $2, interval '1 hour')",
                &[&user, &vec![1u8; 5]],
            )
            .await,
        "S2V01",
    );

    issue(hash(5)).await;
    db.admin
        .execute(
            "UPDATE s2t.refresh_tokens SET created_at = now() - interval '30 days',
                    expires_at = now() - interval '10 days' WHERE token_hash = $1",
            &[&hash(5)],
        )
        .await
        .unwrap();
    assert_eq!(rotate(hash(5), hash(6)).await, "expired");
    issue(hash(7)).await;
    let app = db.connect_as(APP_LOGIN).await;
    assert!(
        app.query_one("SELECT s2t.purge_refresh_tokens()", &[])
            .await
            .is_err(),
        "the application may not purge"
    );
    let worker = db.connect_as(WORKER_LOGIN).await;
    // Revoked ones go after the grace period; with none, all dead tokens go.
    let purged: i32 = worker
        .query_one("SELECT s2t.purge_refresh_tokens(interval '0')", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(purged, 3, "1, 2 (revoked) and 5 (expired)");
    let left: i64 = db
        .admin
        .query_one("SELECT count(*) FROM s2t.refresh_tokens", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(left, 1, "only the live token 7");
}
