//! Sign-up, login, logout, tokens and the account.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{EncodingKey, Header, encode};
use serde_json::json;

use crate::both_stores;
use crate::helpers::TestApp;

fn claims(user_id: i64, exp_offset: i64) -> serde_json::Value {
    let now = chrono::Utc::now().timestamp();
    json!({
        "sub": user_id.to_string(), "email": "x@example.com", "role": "admin",
        "permissions": ["events:read", "events:create", "events:update", "events:delete", "users:manage", "admin:access"],
        "iat": now, "exp": now + exp_offset, "jti": uuid::Uuid::new_v4().to_string()
    })
}

fn node_secret(app: &TestApp) -> Vec<u8> {
    std::fs::read(app.dir.0.join("jwt_secret")).unwrap()
}

both_stores! {
    async fn sign_up_login_and_account(app) {
        let user = app.sign_up("Ada@Example.com").await;
        assert_eq!(user.email, "Ada@Example.com");

        let dup = app.send("POST", "/api/v1/auth/register", None,
            Some(json!({"email": "ada@example.com", "password": "another password", "name": "Ada"}))).await;
        assert_eq!(dup.status, 409);
        assert_eq!(dup.body["error"], "email_taken");

        let ok = app.send("POST", "/api/v1/auth/login", None,
            Some(json!({"email": "ADA@example.com", "password": "correct horse battery"}))).await;
        assert_eq!(ok.status, 200);
        assert_eq!(ok.body["token_type"], "Bearer");
        assert!(ok.body["expires_in"].as_i64().unwrap() > 0);

        let wrong = app.send("POST", "/api/v1/auth/login", None,
            Some(json!({"email": "ada@example.com", "password": "wrong horse battery"}))).await;
        let unknown = app.send("POST", "/api/v1/auth/login", None,
            Some(json!({"email": "nobody@example.com", "password": "wrong horse battery"}))).await;
        assert_eq!((wrong.status, unknown.status), (401, 401));
        assert_eq!(wrong.body["message"], unknown.body["message"]);

        // The token carries exactly the seed's claims.
        let token = ok.body["access_token"].as_str().unwrap();
        let payload = token.split('.').nth(1).unwrap();
        let claims: serde_json::Value = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(payload).unwrap()).unwrap();
        let mut keys: Vec<_> = claims.as_object().unwrap().keys().cloned().collect();
        keys.sort();
        assert_eq!(keys, ["email", "exp", "iat", "jti", "permissions", "role", "sub"]);
        assert_eq!(claims["permissions"], json!(["events:read", "events:create"]));

        let me = app.send("GET", "/api/v1/users/me", Some(token), None).await;
        assert_eq!(me.status, 200);
        assert_eq!(me.body["email"], "ada@example.com");

        let patched = app.send("PATCH", "/api/v1/users/me", Some(token),
            Some(json!({"name": "Ada L.", "profile": {"city": "Lyon", "langs": ["rust"]}}))).await;
        assert_eq!(patched.status, 200, "{}", patched.body);
        assert_eq!(patched.body["profile"]["city"], "Lyon");
        assert_eq!(patched.body["version"], 2);

        let bad = app.send("PATCH", "/api/v1/users/me", Some(token), Some(json!({"profile": [1, 2], "name": ""}))).await;
        assert_eq!(bad.status, 422);
        let again = app.send("GET", "/api/v1/users/me", Some(token), None).await;
        assert_eq!(again.body["name"], "Ada L.", "a refused change changes nothing");
    }

    async fn logout_revokes_only_that_token(app) {
        let user = app.sign_up("grace@example.com").await;
        let other = app.send("POST", "/api/v1/auth/login", None,
            Some(json!({"email": "grace@example.com", "password": "correct horse battery"}))).await;
        let other_token = other.body["access_token"].as_str().unwrap().to_owned();

        assert_eq!(app.send("POST", "/api/v1/auth/logout", Some(&user.token), None).await.status, 204);
        let after = app.send("GET", "/api/v1/users/me", Some(&user.token), None).await;
        assert_eq!(after.status, 401);
        assert_eq!(after.body["message"], "the token has been revoked");
        assert_eq!(app.send("POST", "/api/v1/auth/logout", Some(&user.token), None).await.status, 401);
        assert_eq!(app.send("GET", "/api/v1/users/me", Some(&other_token), None).await.status, 200);
    }

    async fn forged_expired_and_unsigned_tokens_are_refused(app) {
        let user = app.sign_up("eve@example.com").await;
        let secret = node_secret(&app);

        let expired = encode(&Header::default(), &claims(user.id, -10), &EncodingKey::from_secret(&secret)).unwrap();
        let a = app.send("GET", "/api/v1/users/me", Some(&expired), None).await;
        assert_eq!(a.status, 401);
        assert_eq!(a.body["message"], "the token has expired");

        let foreign = encode(&Header::default(), &claims(user.id, 600),
            &EncodingKey::from_secret(b"some other secret that is long enough")).unwrap();
        assert_eq!(app.send("GET", "/api/v1/users/me", Some(&foreign), None).await.status, 401);

        let header = URL_SAFE_NO_PAD.encode(br#"{"alg":"none","typ":"JWT"}"#);
        let body = URL_SAFE_NO_PAD.encode(claims(user.id, 600).to_string());
        let unsigned = format!("{header}.{body}.");
        assert_eq!(app.send("GET", "/api/v1/users/me", Some(&unsigned), None).await.status, 401);

        for garbage in ["", "abc", "a.b.c", "Bearer"] {
            assert_eq!(app.send("GET", "/api/v1/users/me", Some(garbage), None).await.status, 401, "{garbage:?}");
        }
        assert_eq!(app.send("GET", "/api/v1/users/me", None, None).await.status, 401);

        // A correctly signed token with the node's secret works, which shows the refusals above
        // are about the token and not the test.
        let good = encode(&Header::default(), &claims(user.id, 600), &EncodingKey::from_secret(&secret)).unwrap();
        assert_eq!(app.send("GET", "/api/v1/users/me", Some(&good), None).await.status, 200);
    }
}

both_stores! {
    async fn the_command_line_makes_an_admin(app) {
        let owner = app.sign_up("maker@example.com").await;
        let boss = app.sign_up("boss@example.com").await;
        let event = app.create_event(&owner, 10).await;
        let path = format!("/api/v1/events/{event}");
        assert_eq!(app.send("DELETE", &path, Some(&boss.token), None).await.status, 403);

        let run = |args: &[&str]| {
            std::process::Command::new(env!("CARGO_BIN_EXE_convene"))
                .args(args)
                .env_clear()
                .env("PATH", std::env::var("PATH").unwrap_or_default())
                .env("CONVENE_DATABASE_URL", &app.database)
                .env("CONVENE_DATA_DIR", &app.dir.0)
                .output()
                .unwrap()
        };
        let unknown = run(&["users", "grant-role", "nobody@example.com", "admin"]);
        assert!(!unknown.status.success());
        assert!(String::from_utf8_lossy(&unknown.stderr).contains("no account"));
        let bad_role = run(&["users", "grant-role", "boss@example.com", "emperor"]);
        assert!(!bad_role.status.success());
        assert_eq!(app.send("GET", "/api/v1/users/me", Some(&boss.token), None).await.body["role"], "user");
        let ok = run(&["users", "grant-role", "Boss@Example.com", "admin"]);
        assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
        // The account's actor is active, yet it shows the role written outside it.
        assert_eq!(app.send("GET", "/api/v1/users/me", Some(&boss.token), None).await.body["role"], "admin");

        let login = app.send("POST", "/api/v1/auth/login", None,
            Some(json!({"email": "boss@example.com", "password": "correct horse battery"}))).await;
        assert_eq!(login.body["user"]["role"], "admin");
        let token = login.body["access_token"].as_str().unwrap();
        let listed = app.send("GET", &format!("{path}/registrations"), Some(token), None).await;
        assert_eq!(listed.status, 200, "admins list any event's registrations");
        assert_eq!(app.send("DELETE", &path, Some(token), None).await.status, 204);
    }
}
