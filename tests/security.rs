//! Security end to end against a real `sokana serve`: every route × every role, logins with a
//! second factor, refresh-token rotation and reuse detection, lockout, API keys, bad tokens,
//! masking by role on every raw table and mart (over HTTP and the wire), and the audit chain.

mod common;

use common::{JsonRequest, JsonResponse};

use std::collections::BTreeMap;
use std::process::Command;

use reqwest::StatusCode;
use serde_json::{Value, json};
use sokana::api::Access;
use sokana::auth::{Auth, Permission, Role, Visibility};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const PASSWORD: &str = "security-test-password";

struct Http {
    client: reqwest::Client,
    base: String,
}

impl Http {
    fn new(port: u16) -> Http {
        let client = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().expect("client");
        Http { client, base: format!("http://127.0.0.1:{port}") }
    }

    async fn send(&self, method: &str, path: &str, token: Option<&str>, body: Option<Value>) -> (StatusCode, Value) {
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let mut request = self.client.request(method, format!("{}{path}", self.base));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.expect("request");
        let status = response.status();
        // An event stream stays open: its status is the answer.
        if response.headers().get("content-type").is_some_and(|t| t == "text/event-stream") {
            return (status, Value::Null);
        }
        let text = response.text().await.expect("body");
        (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }

    async fn login(&self, user: &str, password: &str, extra: Value) -> (StatusCode, Value) {
        let mut body = json!({ "username": user, "password": password });
        if let Value::Object(more) = extra {
            body.as_object_mut().expect("object").extend(more);
        }
        self.send("POST", "/api/v1/auth/login", None, Some(body)).await
    }
}

fn token(body: &Value, field: &str) -> String {
    body[field].as_str().unwrap_or_else(|| panic!("no {field} in {body}")).to_string()
}

/// Logs the admin in for the first time: the enrolment-only session, the second factor set up
/// and confirmed; the full session's tokens, the TOTP secret and the recovery codes.
async fn enrol_admin(http: &Http) -> (Value, String, Vec<String>) {
    let (status, first) = http.login("admin", PASSWORD, json!({})).await;
    assert_eq!(status, 200, "{first}");
    assert_eq!(first["mfa_enrollment_required"], true);
    let enrolling = token(&first, "access_token");
    let (status, refused) = http.send("GET", "/api/v1/tables", Some(&enrolling), None).await;
    assert_eq!((status, refused["error"]["code"].as_str()), (StatusCode::FORBIDDEN, Some("mfa_enrollment_required")));
    let (status, setup) = http.send("POST", "/api/v1/auth/mfa/setup", Some(&enrolling), None).await;
    assert_eq!(status, 200, "{setup}");
    let secret = token(&setup, "secret");
    assert!(setup["otpauth_url"].as_str().is_some_and(|u| u.starts_with("otpauth://totp/")));
    let (status, wrong) =
        http.send("POST", "/api/v1/auth/mfa/confirm", Some(&enrolling), Some(json!({"code": "000000"}))).await;
    assert_eq!(status, 401, "a wrong code does not confirm: {wrong}");
    let code = Auth::current_code(&secret, "admin").expect("code");
    let (status, confirmed) =
        http.send("POST", "/api/v1/auth/mfa/confirm", Some(&enrolling), Some(json!({ "code": code }))).await;
    assert_eq!(status, 200, "{confirmed}");
    let codes: Vec<String> = confirmed["recovery_codes"]
        .as_array()
        .expect("codes")
        .iter()
        .map(|c| c.as_str().unwrap_or("").to_string())
        .collect();
    assert_eq!(codes.len(), 10);
    let (status, _) = http.send("GET", "/api/v1/auth/me", Some(&enrolling), None).await;
    assert_eq!(status, 401, "the enrolment session ended");
    // The code just used cannot log in again (replay), a recovery code can, once.
    let (status, replay) = http.login("admin", PASSWORD, json!({ "totp": code })).await;
    assert_eq!((status, replay["error"]["code"].as_str()), (StatusCode::UNAUTHORIZED, Some("invalid_mfa")));
    let (status, missing) = http.login("admin", PASSWORD, json!({})).await;
    assert_eq!((status, missing["error"]["code"].as_str()), (StatusCode::UNAUTHORIZED, Some("mfa_required")));
    let (status, recovered) = http.login("admin", PASSWORD, json!({ "recovery_code": codes[0] })).await;
    assert_eq!(status, 200, "{recovered}");
    assert_eq!(recovered["mfa_enrollment_required"], false);
    let (status, _) = http.login("admin", PASSWORD, json!({ "recovery_code": codes[0] })).await;
    assert_eq!(status, 401, "a recovery code works once");
    (confirmed, secret, codes)
}

/// The route's path with its parameters filled with names that match nothing.
fn concrete(path: &str) -> String {
    path.replace("{name}/{action}", "nobody/disable").replace("{name}", "nothing").replace("{id}", "nothing")
}

#[tokio::test(flavor = "multi_thread")]
async fn every_route_checks_every_role() {
    let project = common::sokana_project("[auth]\nlogins_per_minute = 10000\n").await;
    let config = project.config();
    let auth = Auth::open(&config).await.expect("auth");
    auth.ensure_admin(PASSWORD).await.expect("admin");
    for role in [Role::Manager, Role::Billing, Role::Analyst, Role::Viewer] {
        auth.add_user(role.name(), role, PASSWORD).await.expect("user");
    }
    let server = common::serve(&project);
    let http_port = server.http;
    let http = Http::new(http_port);
    let (admin, _, _) = enrol_admin(&http).await;

    let mut tokens: BTreeMap<Role, String> = BTreeMap::new();
    tokens.insert(Role::Admin, token(&admin, "access_token"));
    for role in [Role::Manager, Role::Billing, Role::Analyst, Role::Viewer] {
        let (status, body) = http.login(role.name(), PASSWORD, json!({})).await;
        assert_eq!(status, 200, "{role}: {body}");
        tokens.insert(role, token(&body, "access_token"));
    }

    let pages: Vec<&str> = sokana::api::pages().iter().map(|r| r.path).collect();
    let mut routes = sokana::api::routes();
    routes.extend(sokana::api::pages());
    // Logging out ends the session the walk goes on with: last.
    routes.sort_by_key(|r| r.path == "/api/v1/auth/logout");
    let mut checked = 0;
    for route in &routes {
        let path = concrete(route.path);
        let method = route.method.as_str();
        let body = (method == "POST").then(|| json!({}));
        if route.access == Access::Public {
            continue;
        }
        let (status, _) = http.send(method, &path, None, body.clone()).await;
        // A page sends its reader to sign in.
        let expected = if pages.contains(&route.path) { 303 } else { 401 };
        assert_eq!(status, expected, "{method} {path} without a token");
        let (status, _) = http.send(method, &path, Some("not-a-token"), body.clone()).await;
        assert_eq!(status, 401, "{method} {path} with a malformed token");
        for (role, token) in &tokens {
            let allowed = match route.access {
                Access::Needs(permission) => role.allows(permission),
                _ => true,
            };
            let (status, answer) = http.send(method, &path, Some(token), body.clone()).await;
            if allowed {
                assert!(status != 401 && status != 403, "{role} may {method} {path}, got {status}: {answer}");
            } else {
                assert_eq!(status, 403, "{role} may not {method} {path}: {answer}");
            }
            checked += 1;
        }
    }
    assert!(checked >= 5 * 20, "walked {checked} route × role pairs");
    // Health stays open.
    let (status, _) = http.send("GET", "/health/live", None, None).await;
    assert_eq!(status, 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn tokens_rotate_and_a_reused_refresh_token_ends_the_session() {
    let project = common::sokana_project("[auth]\nlogins_per_minute = 10000\nlockout_after = 3\n").await;
    let config = project.config();
    let auth = Auth::open(&config).await.expect("auth");
    auth.add_user("ana", Role::Analyst, PASSWORD).await.expect("user");
    auth.ensure_admin(PASSWORD).await.expect("admin");
    let server = common::serve(&project);
    let http_port = server.http;
    let http = Http::new(http_port);

    let (status, first) = http.login("ana", PASSWORD, json!({})).await;
    assert_eq!(status, 200, "{first}");
    let (status, second) =
        http.send("POST", "/api/v1/auth/refresh", None, Some(json!({ "refresh_token": first["refresh_token"] }))).await;
    assert_eq!(status, 200, "{second}");
    assert_ne!(second["refresh_token"], first["refresh_token"], "the refresh token rotates");
    let access = token(&second, "access_token");
    let (status, _) = http.send("GET", "/api/v1/tables", Some(&access), None).await;
    assert_eq!(status, 200);
    // The first refresh token again: theft assumed, the session ends for everyone holding it.
    let (status, reused) =
        http.send("POST", "/api/v1/auth/refresh", None, Some(json!({ "refresh_token": first["refresh_token"] }))).await;
    assert_eq!((status, reused["error"]["code"].as_str()), (StatusCode::UNAUTHORIZED, Some("token_reused")));
    let (status, _) = http
        .send("POST", "/api/v1/auth/refresh", None, Some(json!({ "refresh_token": second["refresh_token"] })))
        .await;
    assert_eq!(status, 401, "the newest refresh token of that session is dead too");
    let (status, _) = http.send("GET", "/api/v1/tables", Some(&access), None).await;
    assert_eq!(status, 401, "and so is its access token");

    // Sessions are listed with their device, and can be revoked by their owner.
    let agent = "security-test/1.0";
    let login = http
        .client
        .post(format!("{}/api/v1/auth/login", http.base))
        .header("user-agent", agent)
        .json(&json!({ "username": "ana", "password": PASSWORD }))
        .send()
        .await
        .expect("login");
    let fresh: Value = login.json().await.expect("json");
    let access = token(&fresh, "access_token");
    let (_, sessions) = http.send("GET", "/api/v1/auth/sessions", Some(&access), None).await;
    let listed = sessions["sessions"].as_array().expect("sessions");
    let current = listed.iter().find(|s| s["id"] == fresh["session_id"]).expect("the session is listed");
    assert_eq!((current["user_agent"].as_str(), current["ip_prefix"].as_str()), (Some(agent), Some("127.0.0.0/24")));
    assert!(listed.iter().any(|s| s["revoked_reason"] == "refresh token reused"), "{sessions}");
    let (status, _) = http.send("GET", "/api/v1/auth/sessions?all=true", Some(&access), None).await;
    assert_eq!(status, 403, "only admins list everyone's sessions");
    let (status, _) = http.send("POST", "/api/v1/auth/logout", Some(&access), None).await;
    assert_eq!(status, 204);
    let (status, _) = http.send("GET", "/api/v1/auth/me", Some(&access), None).await;
    assert_eq!(status, 401, "logged out");

    // In a browser: the same session in cookies, with a CSRF token for anything that changes state.
    let browser = |method: &str, path: &str, cookie: String, csrf: Option<String>, body: Value| {
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let mut request =
            http.client.request(method, format!("{}{path}", http.base)).header("cookie", cookie).json(&body);
        if let Some(csrf) = csrf {
            request = request.header("x-csrf-token", csrf);
        }
        async move {
            let response = request.send().await.expect("request");
            let set: Vec<String> = response
                .headers()
                .get_all("set-cookie")
                .iter()
                .map(|v| v.to_str().expect("ascii").to_string())
                .collect();
            let status = response.status();
            let text = response.text().await.expect("body");
            (status, serde_json::from_str::<Value>(&text).unwrap_or(Value::String(text)), set)
        }
    };
    let cookie = |set: &[String], name: &str| -> (String, String) {
        let line = set.iter().find(|c| c.starts_with(&format!("{name}="))).expect("cookie set").clone();
        let value = line.split(';').next().and_then(|p| p.split_once('=')).map(|(_, v)| v.to_string());
        (value.expect("value"), line)
    };
    let (status, _, set) =
        browser("POST", "/api/v1/auth/login", String::new(), None, json!({ "username": "ana", "password": PASSWORD }))
            .await;
    assert_eq!(status, 200);
    let ((access, access_line), (refresh, refresh_line), (csrf, csrf_line)) =
        (cookie(&set, "sokana_access"), cookie(&set, "sokana_refresh"), cookie(&set, "sokana_csrf"));
    for line in [&access_line, &refresh_line] {
        assert!(line.contains("HttpOnly") && line.contains("Secure") && line.contains("SameSite=Strict"), "{line}");
    }
    assert!(refresh_line.contains("Path=/api/v1/auth/refresh"), "{refresh_line}");
    assert!(!csrf_line.contains("HttpOnly") && csrf_line.contains("SameSite=Strict"), "{csrf_line}");
    let jar = format!("sokana_access={access}; sokana_csrf={csrf}");
    let (status, me, _) = browser("GET", "/api/v1/auth/me", jar.clone(), None, json!(null)).await;
    assert_eq!((status, me["user"].as_str()), (StatusCode::OK, Some("ana")), "{me}");
    let query = json!({ "sql": "SELECT 1 AS one" });
    for forged in [None, Some("00".to_string()), Some(hex::encode([7u8; 32]))] {
        let (status, body, _) = browser("POST", "/api/v1/query", jar.clone(), forged, query.clone()).await;
        assert_eq!((status, body["error"]["code"].as_str()), (StatusCode::FORBIDDEN, Some("csrf")), "{body}");
    }
    let (status, body, _) = browser("POST", "/api/v1/query", jar.clone(), Some(csrf.clone()), query.clone()).await;
    assert_eq!(status, 200, "{body}");
    let refresh_jar = format!("sokana_refresh={refresh}; sokana_csrf={csrf}");
    let (status, body, _) = browser("POST", "/api/v1/auth/refresh", refresh_jar.clone(), None, json!({})).await;
    assert_eq!((status, body["error"]["code"].as_str()), (StatusCode::FORBIDDEN, Some("csrf")), "{body}");
    let (status, _, set) = browser("POST", "/api/v1/auth/refresh", refresh_jar, Some(csrf.clone()), json!({})).await;
    assert_eq!(status, 200);
    let (access, _) = cookie(&set, "sokana_access");
    let jar = format!("sokana_access={access}; sokana_csrf={csrf}");
    let (status, _, set) = browser("POST", "/api/v1/auth/logout", jar.clone(), Some(csrf), json!(null)).await;
    assert_eq!(status, 204);
    assert!(set.iter().all(|c| c.contains("Max-Age=0")) && set.len() == 3, "{set:?}");
    let (status, _, _) = browser("GET", "/api/v1/auth/me", jar, None, json!(null)).await;
    assert_eq!(status, 401, "the cookie's session ended");

    // Bad tokens: wrongly signed, expired.
    let key = sokana::keyfile::read_or_create(&config.state_dir().join("auth.key")).expect("key");
    let now = chrono::Utc::now().timestamp();
    let sign = |secret: &[u8], exp: i64| {
        let claims = json!({ "sub": "ana", "sid": fresh["session_id"], "iat": now, "exp": exp });
        jsonwebtoken::encode(&jsonwebtoken::Header::default(), &claims, &jsonwebtoken::EncodingKey::from_secret(secret))
            .expect("sign")
    };
    let (status, body) = http.send("GET", "/api/v1/auth/me", Some(&sign(b"someone else's key", now + 600)), None).await;
    assert_eq!((status, body["error"]["code"].as_str()), (StatusCode::UNAUTHORIZED, Some("invalid_token")));
    use sha2::Digest;
    let signing: [u8; 32] =
        sha2::Sha256::new().chain_update(&key).chain_update(b"sokana access tokens").finalize().into();
    let (status, body) = http.send("GET", "/api/v1/auth/me", Some(&sign(&signing, now - 3600)), None).await;
    assert_eq!((status, body["error"]["code"].as_str()), (StatusCode::UNAUTHORIZED, Some("token_expired")));

    // Brute force: after three wrong passwords the name is locked, even for the right one.
    for _ in 0..3 {
        let (status, _) = http.login("ana", "not the password", json!({})).await;
        assert_eq!(status, 401);
    }
    let response = http
        .client
        .post(format!("{}/api/v1/auth/login", http.base))
        .json(&json!({ "username": "ana", "password": PASSWORD }))
        .send()
        .await
        .expect("login");
    assert_eq!(response.status(), 429);
    assert!(response.headers().get("retry-after").is_some());

    // Oversized and malformed bodies. A declared length over the limit is answered before the body
    // is sent; sending it all would race the server's close (a broken pipe, not an answer).
    let mut socket = tokio::net::TcpStream::connect(("127.0.0.1", http_port)).await.expect("connect");
    let head = "POST /api/v1/auth/login HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n\
                Content-Length: 4194304\r\nConnection: close\r\n\r\n";
    socket.write_all(head.as_bytes()).await.expect("send the head");
    let mut answer = String::new();
    socket.read_to_string(&mut answer).await.expect("read the answer");
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    assert!(answer.contains("body_too_large"), "{answer}");
    let malformed = http
        .client
        .post(format!("{}/api/v1/auth/login", http.base))
        .header("content-type", "application/json")
        .body("{\"username\": ")
        .send()
        .await
        .expect("send");
    assert_eq!(malformed.status(), 400);
}

#[tokio::test(flavor = "multi_thread")]
async fn api_keys_are_scoped_expiring_and_revocable() {
    let project = common::sokana_project("").await;
    let config = project.config();
    let auth = Auth::open(&config).await.expect("auth");
    auth.ensure_admin(PASSWORD).await.expect("admin");
    let admin_key = auth.create_api_key("setup", Role::Admin, 1, "admin").await.expect("key").key;
    let server = common::serve(&project);
    let http_port = server.http;
    let http = Http::new(http_port);

    let (status, created) = http
        .send("POST", "/api/v1/api-keys", Some(&admin_key), Some(json!({ "name": "dashboards", "role": "viewer" })))
        .await;
    assert_eq!(status, 201, "{created}");
    let viewer_key = token(&created, "key");
    let (status, _) = http.send("GET", "/api/v1/tables", Some(&viewer_key), None).await;
    assert_eq!(status, 200);
    let (status, _) = http.send("POST", "/api/v1/query", Some(&viewer_key), Some(json!({ "sql": "select 1" }))).await;
    assert_eq!(status, 403, "a viewer's key may not run SQL");
    let (_, listed) = http.send("GET", "/api/v1/api-keys", Some(&admin_key), None).await;
    assert!(!listed.to_string().contains(&viewer_key), "keys are never listed");
    let id = token(&created, "id");
    let (status, _) = http.send("DELETE", &format!("/api/v1/api-keys/{id}"), Some(&admin_key), None).await;
    assert_eq!(status, 204);
    let (status, _) = http.send("GET", "/api/v1/tables", Some(&viewer_key), None).await;
    assert_eq!(status, 401, "revoked");
    let forged = format!("{}x", &viewer_key[..viewer_key.len() - 1]);
    let (status, _) = http.send("GET", "/api/v1/tables", Some(&forged), None).await;
    assert_eq!(status, 401);
}

#[tokio::test(flavor = "multi_thread")]
async fn each_role_sees_each_column_as_the_policy_says() {
    let project = common::sokana_project("[auth]\nlogins_per_minute = 10000\n").await;
    let config = project.config();
    let auth = Auth::open(&config).await.expect("auth");
    auth.ensure_admin(PASSWORD).await.expect("admin");
    let admin_key = auth.create_api_key("admin", Role::Admin, 1, "admin").await.expect("key").key;
    let mut keys = BTreeMap::new();
    for role in [Role::Manager, Role::Billing, Role::Analyst] {
        auth.add_user(role.name(), role, PASSWORD).await.expect("user");
        keys.insert(role, auth.create_api_key(role.name(), role, 1, role.name()).await.expect("key").key);
    }
    let server = common::serve(&project);
    let (http_port, pg) = (server.http, server.pg);
    let http = Http::new(http_port);
    let classes = project.opened().classes().clone();
    let query = |key: String, sql: String| {
        let http = &http;
        async move { http.send("POST", "/api/v1/query", Some(&key), Some(json!({ "sql": sql }))).await }
    };

    let (_, tables) = http.send("GET", "/api/v1/tables", Some(&admin_key), None).await;
    let tables: Vec<String> = tables["tables"]
        .as_array()
        .expect("tables")
        .iter()
        .map(|t| t["table"].as_str().unwrap_or("").to_string())
        .collect();
    assert!(tables.iter().any(|t| t.starts_with("marts.")) && tables.iter().any(|t| t.starts_with("raw.")));
    for table in &tables {
        // Row order may differ between roles (a masked key sorts differently): compare columns
        // as sorted lists of values.
        let sql = format!("SELECT * FROM {table}");
        let (status, stored) = query(admin_key.clone(), sql.clone()).await;
        assert_eq!(status, 200, "{table}: {stored}");
        for (role, key) in &keys {
            let (status, seen) = query(key.clone(), sql.clone()).await;
            assert_eq!(status, 200, "{role} {table}: {seen}");
            let (Some(stored_rows), Some(seen_rows)) = (stored["rows"].as_array(), seen["rows"].as_array()) else {
                panic!("{table}: rows missing")
            };
            assert_eq!(stored_rows.len(), seen_rows.len(), "{role} {table}: masking keeps every row");
            for field in seen["columns"].as_array().expect("columns") {
                let column = field["name"].as_str().expect("name");
                let class = classes.class_of(&table.parse().expect("table name"), column);
                let sorted = |rows: &[Value]| {
                    let mut cells: Vec<String> = rows.iter().map(|r| r[column].to_string()).collect();
                    cells.sort();
                    cells
                };
                let (values, originals) = (sorted(seen_rows), sorted(stored_rows));
                match role.sees(class) {
                    Visibility::Clear => assert_eq!(values, originals, "{role} sees {table}.{column} ({class})"),
                    Visibility::Hidden => {
                        assert!(values.iter().all(|v| v == "null"), "{role} must not see {table}.{column} ({class})")
                    }
                    Visibility::Pseudonymised => {
                        let stored: std::collections::HashSet<&String> =
                            originals.iter().filter(|v| *v != "null").collect();
                        assert!(
                            values.iter().all(|v| !stored.contains(v)),
                            "{role} sees a stored key in {table}.{column}"
                        );
                    }
                }
            }
        }
    }

    // Ways around the mask, as an analyst: none returns a stored name.
    let name: String = rusqlite::Connection::open(project.sqlite_path())
        .expect("sqlite")
        .query_row("SELECT first_name FROM phi_clients WHERE first_name IS NOT NULL LIMIT 1", [], |r| r.get(0))
        .expect("a name");
    let analyst = keys[&Role::Analyst].clone();
    for sql in [
        "SELECT first_name AS x FROM raw.phi_clients".to_string(),
        "SELECT x FROM (SELECT first_name AS x FROM raw.phi_clients) s".to_string(),
        "WITH c AS (SELECT * FROM raw.phi_clients) SELECT c.first_name, c.email FROM c".to_string(),
        "SELECT first_name FROM raw.phi_clients UNION ALL SELECT last_name FROM raw.phi_clients".to_string(),
        "SELECT c.first_name FROM raw.phi_contracts k JOIN raw.phi_clients c ON c.id = k.client_id".to_string(),
        "SELECT max(first_name), min(email), string_agg(phone, ',') FROM raw.phi_clients".to_string(),
        "SELECT upper(first_name) || '' FROM raw.phi_clients".to_string(),
        "SELECT (SELECT max(last_name) FROM raw.phi_clients) AS x".to_string(),
        "SELECT medications, allergies, health_history FROM raw.phi_clients".to_string(),
    ] {
        let (status, answer) = query(analyst.clone(), sql.clone()).await;
        assert_eq!(status, 200, "{sql}: {answer}");
        let rows = answer["rows"].as_array().expect("rows");
        assert!(
            rows.iter().all(|r| r.as_object().expect("row").values().all(Value::is_null)),
            "{sql} revealed values: {}",
            answer.to_string().chars().take(300).collect::<String>()
        );
    }
    let (status, answer) =
        query(analyst.clone(), format!("SELECT count(*) AS n FROM raw.phi_clients WHERE first_name = '{name}'")).await;
    assert_eq!((status, answer["rows"][0]["n"].as_i64()), (StatusCode::OK, Some(0)), "predicates see masked values");
    let (status, _) = http
        .send(
            "POST",
            "/api/v1/query",
            Some(&analyst),
            Some(json!({ "sql": "SELECT first_name FROM raw.phi_clients", "engine": "duckdb" })),
        )
        .await;
    assert_eq!(status, StatusCode::FORBIDDEN, "DuckDB is refused to a masked role");
    // A masked key joins the marts' keys: same keyed hash.
    let (_, joined) = query(
        analyst.clone(),
        "SELECT count(*) AS n FROM raw.phi_clients c JOIN marts.dim_clients d ON d.client_key = c.id".into(),
    )
    .await;
    assert!(joined["rows"][0]["n"].as_i64().is_some_and(|n| n > 0), "{joined}");
    // Exports are masked too.
    let csv = http
        .client
        .post(format!("{}/api/v1/query", http.base))
        .bearer_auth(&analyst)
        .json(&json!({ "sql": "SELECT first_name, email FROM raw.phi_clients", "format": "csv" }))
        .send()
        .await
        .expect("csv")
        .text()
        .await
        .expect("text");
    assert!(!csv.contains(&name) && !csv.contains('@'), "{}", csv.chars().take(200).collect::<String>());

    // Over the wire, an analyst logs in with a password and sees the same masks.
    let psql = |password: &str, sql: &str| {
        let bin = common::pg_bin_dir().join("psql");
        Command::new(if bin.exists() { bin } else { "psql".into() })
            .env("PGPASSWORD", password)
            .env("PGCONNECT_TIMEOUT", "10")
            .args(["-h", "127.0.0.1", "-p", &pg.to_string(), "-U", "analyst", "-d", "sokana", "-tA", "-c", sql])
            .output()
            .expect("psql")
    };
    let out = psql(PASSWORD, "select first_name, email from raw.phi_clients limit 5");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim().lines().collect::<Vec<_>>(), vec!["|"; 5]);
    let out = psql(
        PASSWORD,
        &format!("select count(*) from raw.phi_clients where last_name is not null or first_name = '{name}'"),
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "0");

    // One record per query request: the query's own (the route's would repeat it); a request that
    // failed keeps the route's record with its status.
    let (status, answered) = query(analyst.clone(), "SELECT count(*) AS n FROM raw.phi_contracts".into()).await;
    assert_eq!(status, 200, "{answered}");
    let (status, failed) = query(analyst.clone(), "SELECT no_such_column FROM raw.phi_contracts".into()).await;
    assert_eq!(status, 400, "{failed}");

    // The audit trail: the analyst's queries with the columns and classes read, no values.
    let (status, audit) = http.send("GET", "/api/v1/audit?limit=10000", Some(&admin_key), None).await;
    assert_eq!(status, 200);
    let entries = audit["entries"].as_array().expect("entries");
    let with_id = |id: &Value| entries.iter().filter(|e| e["request_id"] == *id).collect::<Vec<_>>();
    let records = with_id(&answered["request_id"]);
    assert_eq!(records.len(), 1, "{records:?}");
    assert_eq!((records[0]["action"].as_str(), records[0]["outcome"].as_str()), (Some("query"), Some("ok")));
    let records = with_id(&failed["error"]["request_id"]);
    assert!(records.iter().any(|e| e["action"] == "POST /api/v1/query" && e["outcome"] == "400"), "{records:?}");
    let theirs: Vec<&Value> = entries.iter().filter(|e| e["user"] == "analyst" && e["action"] == "query").collect();
    assert!(theirs.len() >= 10, "{} analyst queries audited", theirs.len());
    assert!(entries.iter().any(|e| e["origin"] == "pgwire" && e["action"] == "login" && e["outcome"] == "ok"));
    assert!(
        entries.iter().any(|e| e["user"] == "admin"
            && e["columns"].as_array().is_some_and(|c| c.iter().any(|c| c == "raw.phi_clients.first_name:pii"))),
        "an admin's read of a pii column is recorded with its class"
    );
    assert!(!audit.to_string().contains(&name), "the audit trail holds no data");
    let (status, forbidden) = http.send("GET", "/api/v1/audit", Some(&analyst), None).await;
    assert_eq!(status, 403, "{forbidden}");

    // An answer whose audit record cannot be written is withheld.
    let meta = rusqlite::Connection::open(config.state_dir().join("meta.db")).expect("meta");
    meta.execute_batch(
        "CREATE TRIGGER refuse_audit BEFORE INSERT ON audit BEGIN SELECT RAISE(ABORT, 'no audit for the test'); END;",
    )
    .expect("trigger");
    let (status, withheld) = query(analyst.clone(), "SELECT count(*) AS n FROM raw.doulas".into()).await;
    assert_eq!(
        (status, withheld["error"]["code"].as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, Some("audit_unavailable")),
        "{withheld}"
    );
    assert!(withheld.get("rows").is_none());
    let export = json!({ "sql": "SELECT id FROM raw.doulas" });
    let (status, withheld) = http.send("POST", "/api/v1/query?format=csv", Some(&analyst), Some(export)).await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "a streamed export too: {withheld}");
    // A person's privacy export too: it leaves only after its record is stored.
    let client: String = rusqlite::Connection::open(project.sqlite_path())
        .expect("sqlite")
        .query_row("SELECT id FROM phi_clients LIMIT 1", [], |r| r.get(0))
        .expect("a client");
    let (status, withheld) =
        http.send("POST", "/api/v1/privacy/export", Some(&admin_key), Some(json!({ "client": client }))).await;
    assert_eq!(
        (status, withheld["error"]["code"].as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, Some("audit_unavailable")),
        "a privacy export: {withheld}"
    );
    assert!(withheld.get("tables").is_none());
    meta.execute_batch("DROP TRIGGER refuse_audit").expect("drop trigger");
    let (status, answered) = query(analyst.clone(), "SELECT count(*) AS n FROM raw.doulas".into()).await;
    assert_eq!(status, 200, "{answered}");

    // The built-in pipeline copies the trail into the warehouse, where only administrators read it.
    let out = project.cli().args(["pipeline", "run", "sokana_audit"]).output().expect("audit pipeline");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let (status, copied) =
        query(admin_key.clone(), "SELECT count(*) AS n, max(seq) AS last FROM raw.sokana_audit".into()).await;
    assert_eq!(status, 200, "{copied}");
    let n = copied["rows"][0]["n"].as_u64().expect("n");
    assert!(n >= entries.len() as u64, "{n} records copied, {} listed before", entries.len());
    assert_eq!(copied["rows"][0]["last"].as_u64(), Some(n), "every record up to the last one");
    let listed = |key: String| {
        let http = &http;
        async move { http.send("GET", "/api/v1/tables", Some(&key), None).await.1.to_string() }
    };
    assert!(listed(admin_key.clone()).await.contains("raw.sokana_audit"));
    assert!(!listed(analyst.clone()).await.contains("raw.sokana_audit"), "not listed to an analyst");
    for sql in [
        "SELECT table_name FROM information_schema.tables WHERE table_schema = 'raw'",
        "SELECT DISTINCT table_name FROM information_schema.columns",
        "SELECT relname AS table_name FROM pg_catalog.pg_class",
    ] {
        let names = |key: String| async move { query(key, sql.into()).await.1.to_string() };
        let admin_sees = names(admin_key.clone()).await;
        assert!(admin_sees.contains("sokana_audit"), "{sql}: {admin_sees}");
        let analyst_sees = names(analyst.clone()).await;
        assert!(
            analyst_sees.contains("phi_clients") && !analyst_sees.contains("sokana_audit"),
            "{sql}: {analyst_sees}"
        );
    }
    for sql in [
        "SELECT count(*) FROM raw.sokana_audit",
        "WITH a AS (SELECT * FROM raw.sokana_audit) SELECT detail FROM a",
        "SELECT 1 FROM raw.phi_clients WHERE id IN (SELECT request_id FROM raw.sokana_audit)",
    ] {
        let (status, refused) = query(analyst.clone(), sql.into()).await;
        assert_eq!((status, refused["error"]["code"].as_str()), (StatusCode::FORBIDDEN, Some("forbidden")), "{sql}");
    }

    let out = project.cli().args(["audit", "verify"]).output().expect("verify");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains(&format!("copy (raw.sokana_audit) up to record {n}")));
    // Cutting off the newest records leaves a valid chain; the warehouse's copy shows the cut.
    drop(server);
    meta.execute("DELETE FROM audit WHERE seq >= ?1", [n as i64]).expect("truncate");
    let out = project.cli().args(["audit", "verify"]).output().expect("verify");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(&format!("record {n}")) && stderr.contains("removed"), "{stderr}");
    rusqlite::Connection::open(config.state_dir().join("meta.db"))
        .expect("meta")
        .execute("UPDATE audit SET user_name = 'someone' WHERE seq = 2", [])
        .expect("tamper");
    let out = project.cli().args(["audit", "verify"]).output().expect("verify");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("record 2"), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn permissions_cover_the_routes() {
    // Every permission guards at least one route, so none is dead weight.
    let routes = sokana::api::routes();
    for permission in [
        Permission::RunSql,
        Permission::ReadCatalog,
        Permission::ViewPipelines,
        Permission::RunPipelines,
        Permission::ViewOperations,
        Permission::Administer,
    ] {
        assert!(routes.iter().any(|r| r.access == Access::Needs(permission)), "{permission:?} guards nothing");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_metadata_store_runs_on_postgresql() {
    let pg = common::Postgres::start();
    let project = common::Project::new("sqlite://operational.db");
    let mut text = std::fs::read_to_string(&project.config_path).expect("config");
    text.push_str(&format!("\n[auth]\nstore = {:?}\n", pg.url()));
    std::fs::write(&project.config_path, text).expect("config");
    let config = project.config();
    let auth = Auth::open(&config).await.expect("auth on PostgreSQL");
    auth.add_user("ana", Role::Analyst, PASSWORD).await.expect("user");
    assert!(matches!(auth.add_user("ana", Role::Viewer, PASSWORD).await, Err(sokana::auth::AuthError::UserExists(_))));
    let device = sokana::auth::Device::default();
    let login =
        sokana::auth::Login { username: "ana".into(), password: PASSWORD.into(), totp: None, recovery_code: None };
    let first = auth.login(&login, &device).await.expect("login");
    let second = auth.refresh(&first.refresh_token, &device).await.expect("refresh");
    assert!(matches!(auth.refresh(&first.refresh_token, &device).await, Err(sokana::auth::AuthError::TokenReused)));
    assert!(auth.verify_access_token(&second.access_token).await.is_err(), "the session was revoked");
    let key = auth.create_api_key("pg", Role::Viewer, 1, "ana").await.expect("key");
    assert_eq!(auth.verify_bearer(&key.key).await.expect("key works").role, Role::Viewer);
    auth.audit().flush().await.expect("flush");
    let verified = auth.verify_audit().await.expect("chain");
    assert_eq!(verified.records, 1, "the login is audited: {verified:?}");
    // A second instance on the same store sees the same users and continues the same chain.
    let other = Auth::open(&config).await.expect("second instance");
    assert_eq!(other.users().await.expect("users").len(), 1);
    assert!(other.login(&login, &device).await.is_ok());
    other.audit().flush().await.expect("flush");
    assert!(other.verify_audit().await.expect("chain").records > verified.records);
}

#[tokio::test(flavor = "multi_thread")]
async fn with_a_certificate_both_endpoints_speak_tls_only() {
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).expect("certificate");
    let project = common::sokana_project("tls_cert = \"tls/cert.pem\"\ntls_key = \"tls/key.pem\"\n").await;
    let dir = project.dir.path().join("tls");
    std::fs::create_dir_all(&dir).expect("tls dir");
    std::fs::write(dir.join("cert.pem"), certified.cert.pem()).expect("cert");
    std::fs::write(dir.join("key.pem"), certified.signing_key.serialize_pem()).expect("key");
    let auth = Auth::open(&project.config()).await.expect("auth");
    auth.add_user("ana", Role::Analyst, PASSWORD).await.expect("user");
    drop(auth);
    let server = common::serve(&project);
    let (http_port, pg) = (server.http, server.pg);

    let mut roots = rustls::RootCertStore::empty();
    roots.add(certified.cert.der().clone()).expect("root");
    let client =
        rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(rustls::crypto::aws_lc_rs::default_provider()))
            .with_safe_default_protocol_versions()
            .expect("versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
    let connector = tokio_rustls::TlsConnector::from(std::sync::Arc::new(client));
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", http_port)).await.expect("connect");
    let name = rustls::pki_types::ServerName::try_from("localhost").expect("name");
    let mut tls = connector.connect(name, tcp).await.expect("TLS handshake");
    tls.write_all(b"GET /health/live HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").await.expect("send");
    let mut answer = String::new();
    tls.read_to_string(&mut answer).await.expect("answer");
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    assert!(answer.to_lowercase().contains("strict-transport-security: max-age=31536000"), "{answer}");

    // Plain HTTP gets no answer.
    let mut plain = tokio::net::TcpStream::connect(("127.0.0.1", http_port)).await.expect("connect");
    plain.write_all(b"GET /health/live HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").await.expect("send");
    let mut bytes = Vec::new();
    let _ = plain.read_to_end(&mut bytes).await;
    assert!(!String::from_utf8_lossy(&bytes).contains("200"), "plain HTTP was answered");

    let psql = |sslmode: &str| {
        let bin = common::pg_bin_dir().join("psql");
        Command::new(if bin.exists() { bin } else { "psql".into() })
            .env("PGPASSWORD", PASSWORD)
            .env("PGCONNECT_TIMEOUT", "10")
            .arg(format!("host=127.0.0.1 port={pg} user=ana dbname=sokana sslmode={sslmode}"))
            .args(["-tA", "-c", "\\conninfo", "-c", "select count(*) from raw.doulas"])
            .output()
            .expect("psql")
    };
    let out = psql("require");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("SSL connection"), "{stdout}");
    let out = psql("disable");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("TLS connections only"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A psycopg connection kept open by a Python process that runs each line written to it as one
/// statement and answers `ok VALUE` or `error SQLSTATE`: lets a test act between two statements
/// of the same wire connection.
struct WireClient {
    child: std::process::Child,
    input: std::process::ChildStdin,
    output: std::io::BufReader<std::process::ChildStdout>,
}

impl WireClient {
    fn connect(port: u16, user: &str, password: &str) -> WireClient {
        let script = format!(
            r#"
import sys, psycopg
c = psycopg.connect(host="127.0.0.1", port={port}, user={user:?}, password={password:?}, dbname="sokana", autocommit=True)
for line in sys.stdin:
    try:
        row = c.execute(line).fetchone()
        print("ok", row[0], flush=True)
    except psycopg.Error as e:
        print("error", e.sqlstate, flush=True)
"#
        );
        let mut child = Command::new("python3")
            .arg("-c")
            .arg(script)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("python3");
        let input = child.stdin.take().expect("stdin");
        let output = std::io::BufReader::new(child.stdout.take().expect("stdout"));
        WireClient { child, input, output }
    }

    /// Runs `sql` on the open connection: `Ok(first value)` or `Err(SQLSTATE)`.
    fn run(&mut self, sql: &str) -> Result<String, String> {
        use std::io::{BufRead, Write};
        writeln!(self.input, "{sql}").expect("send");
        let mut line = String::new();
        self.output.read_line(&mut line).expect("answer");
        match line.trim().split_once(' ') {
            Some(("ok", value)) => Ok(value.to_string()),
            Some(("error", state)) => Err(state.to_string()),
            _ => panic!("the client ended: {line:?}"),
        }
    }
}

impl Drop for WireClient {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Revoking a key, disabling a user, a new password and a new role take effect on wire
/// connections that are already open, at their next statement, as over HTTP.
#[tokio::test(flavor = "multi_thread")]
async fn open_wire_connections_follow_changes_to_their_login() {
    let project = common::sokana_project("[auth]\nlogins_per_minute = 10000\n").await;
    let auth = Auth::open(&project.config()).await.expect("auth");
    auth.ensure_admin(PASSWORD).await.expect("admin");
    for user in ["revoked", "disabled", "reset", "promoted"] {
        auth.add_user(user, Role::Analyst, PASSWORD).await.expect("user");
    }
    let key = auth.create_api_key("wire", Role::Analyst, 1, "revoked").await.expect("key");
    let server = common::serve(&project);
    let count = "select count(*) from raw.phi_clients";
    let named = "select count(first_name) from raw.phi_clients";

    let mut by_key = WireClient::connect(server.pg, "revoked", &key.key);
    let clients = by_key.run(count).expect("the key works");
    auth.revoke_api_key(&key.id).await.expect("revoke");
    assert_eq!(by_key.run(count), Err("28000".into()), "a revoked key ends at once");

    let mut disabled = WireClient::connect(server.pg, "disabled", PASSWORD);
    assert_eq!(disabled.run(count).as_deref(), Ok(clients.as_str()));
    auth.set_disabled("disabled", true).await.expect("disable");
    assert_eq!(disabled.run(count), Err("28000".into()), "a disabled user ends at once");

    let mut reset = WireClient::connect(server.pg, "reset", PASSWORD);
    assert!(reset.run(count).is_ok());
    auth.reset_password("reset", "another-password-for-reset").await.expect("reset");
    assert_eq!(reset.run(count), Err("28000".into()), "a new password ends logins made with the old one");

    // An analyst sees no names; as billing staff, the same connection sees them; as a viewer it
    // may not run SQL at all.
    let mut promoted = WireClient::connect(server.pg, "promoted", PASSWORD);
    assert_eq!(promoted.run(named).as_deref(), Ok("0"), "names are hidden from analysts");
    auth.set_role("promoted", Role::Billing).await.expect("role");
    assert_eq!(promoted.run(named).as_deref(), Ok(clients.as_str()), "billing sees names, at once");
    auth.set_role("promoted", Role::Viewer).await.expect("role");
    assert_eq!(promoted.run(count), Err("42501".into()), "viewers may not run SQL");
}

/// `DESCRIBE` and the wire protocol's Describe show an administrators' table to no one else, as
/// a scan of it is refused.
#[tokio::test(flavor = "multi_thread")]
async fn administrators_tables_are_described_to_administrators_only() {
    let project = common::sokana_project("[auth]\nlogins_per_minute = 10000\n").await;
    let auth = Auth::open(&project.config()).await.expect("auth");
    auth.ensure_admin(PASSWORD).await.expect("admin");
    auth.add_user("ana", Role::Analyst, PASSWORD).await.expect("user");
    let admin_key = auth.create_api_key("admin", Role::Admin, 1, "admin").await.expect("key").key;
    let analyst_key = auth.create_api_key("ana", Role::Analyst, 1, "ana").await.expect("key").key;
    let out = project.cli().args(["pipeline", "run", "sokana_audit"]).output().expect("audit pipeline");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let server = common::serve(&project);
    let http = Http::new(server.http);
    let describe = |key: String, sql: &'static str| {
        let http = &http;
        async move { http.send("POST", "/api/v1/query", Some(&key), Some(json!({ "sql": sql }))).await }
    };
    let (status, described) = describe(admin_key.clone(), "DESCRIBE raw.sokana_audit").await;
    assert_eq!(status, 200, "{described}");
    assert!(described.to_string().contains("prev_hash"), "{described}");
    let (status, refused) = describe(analyst_key.clone(), "DESCRIBE raw.sokana_audit").await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{refused}");
    assert!(!refused.to_string().contains("prev_hash"), "{refused}");
    let (status, described) = describe(analyst_key.clone(), "DESCRIBE raw.phi_clients").await;
    assert_eq!(status, 200, "an analyst may describe what they may read: {described}");

    // psycopg's prepared statements send Parse and Describe before any row is asked for.
    let script = format!(
        r#"
import psycopg
with psycopg.connect(host="127.0.0.1", port={pg}, user="ana", password={password:?}, dbname="sokana", autocommit=True) as c:
    try:
        c.cursor().execute("select * from raw.sokana_audit where seq > %s", (0,), prepare=True)
        print("described")
    except psycopg.Error as e:
        print("refused", e.sqlstate)
    print(c.cursor().execute("select count(*) from raw.phi_clients where 1 = %s", (1,), prepare=True).fetchone()[0] > 0)
"#,
        pg = server.pg,
        password = PASSWORD
    );
    let out = Command::new("python3").arg("-c").arg(&script).output().expect("python3");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(stdout.lines().collect::<Vec<_>>(), ["refused 42501", "True"], "{stdout}");
}

/// An access token ends with its session, whatever its own expiry says: a session that has run
/// out stops its tokens at once, and a token issued near a session's end lives no longer than it.
#[tokio::test(flavor = "multi_thread")]
async fn access_tokens_end_with_their_session() {
    let project = common::Project::new("sqlite://operational.db");
    let config = project.config();
    let auth = Auth::open(&config).await.expect("auth");
    auth.add_user("ana", Role::Analyst, PASSWORD).await.expect("user");
    let device = sokana::auth::Device::default();
    let login =
        sokana::auth::Login { username: "ana".into(), password: PASSWORD.into(), totp: None, recovery_code: None };
    let tokens = auth.login(&login, &device).await.expect("login");
    assert!(auth.verify_access_token(&tokens.access_token).await.is_ok());
    let now = chrono::Utc::now().timestamp();
    auth.store()
        .execute(
            "UPDATE sessions SET expires_at = $2 WHERE id = $1",
            &[tokens.session_id.as_str().into(), (now + 30).into()],
        )
        .await
        .expect("shorten");
    let refreshed = auth.refresh(&tokens.refresh_token, &device).await.expect("refresh");
    assert!(refreshed.expires_in <= 30, "a token lives no longer than its session: {}", refreshed.expires_in);
    auth.store()
        .execute(
            "UPDATE sessions SET expires_at = $2 WHERE id = $1",
            &[tokens.session_id.as_str().into(), (now - 1).into()],
        )
        .await
        .expect("expire");
    assert!(matches!(auth.verify_access_token(&refreshed.access_token).await, Err(sokana::auth::AuthError::Expired)));
}

/// Masking is in the session states, not in a call the engine remembers to make: the wire
/// endpoint's own session (for `SET` and `SHOW`) refuses to read the warehouse, and an `EXPLAIN`
/// planned as an analyst shows the masked scan.
#[tokio::test(flavor = "multi_thread")]
async fn every_session_state_masks_what_it_plans() {
    use sokana::query::Params;
    use sokana::query::engine::{Caller, EngineChoice, QueryRequest};
    let project = common::sokana_project("").await;
    let state = sokana::api::AppState::open(&project.opened()).await.expect("state");
    let wire = state.engine.session().expect("wire session");
    let frame = wire.sql("SELECT first_name FROM raw.phi_clients").await.expect("planned");
    let refused = frame.collect().await.expect_err("the wire's own session reads no warehouse table");
    assert!(refused.to_string().contains("reads no warehouse table"), "{refused}");
    let show = wire.sql("SHOW datafusion.execution.batch_size").await.expect("SHOW");
    assert_eq!(show.collect().await.expect("SHOW runs").len(), 1);

    let explain = |scope: &str| QueryRequest {
        sql: "EXPLAIN SELECT first_name FROM raw.phi_clients".into(),
        engine: EngineChoice::Datafusion,
        params: Params::None,
        page: None,
        caller: Caller { scope: scope.into(), ..Caller::cli() },
    };
    let shown = |output: sokana::query::engine::QueryOutput| {
        arrow::util::pretty::pretty_format_batches(&output.result.batches).expect("format").to_string()
    };
    let analyst = shown(state.engine.query(&explain("analyst")).await.expect("analyst's EXPLAIN"));
    let admin = shown(state.engine.query(&explain("admin")).await.expect("admin's EXPLAIN"));
    assert!(!analyst.contains("projection=[first_name"), "first_name is not read for analysts:\n{analyst}");
    assert!(admin.contains("first_name"), "{admin}");
}
