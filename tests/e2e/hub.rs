//! Hub auth and isolation: MCPHub keys checked against the registry (Redis, written by the real
//! `mcp-sidecar keys` CLI, and the static key file), per-user tokens injected upstream, sessions
//! bound to their user across pods, tool filtering by group, `offerings/list`. The upstreams
//! are FastMCP servers that record every request they receive (`--capture`), so the tests
//! assert on what actually reached them.

use crate::harness::*;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const ENCRYPTION_KEY: &str = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
const CACHE_TTL: Duration = Duration::from_secs(1);

/// The route policy under test: the seeds' headers, the token as `Authorization`, and groups.
fn route(prefix: &str, upstream: &str, server: &str) -> String {
    format!(
        r#"  - prefix: {prefix}
    upstream: '{upstream}'
    server_name: {server}
    auth: required
    required_tokens: [GITHUB_TOKEN]
    inject_headers:
      X-MCPHub-User-Id: "{{user.id}}"
      X-MCPHub-User-Session-Id: "{{user.session_id}}"
      X-MCPHub-Session-Id: "{{session.id}}"
      X-MCPHub-Request-Id: "{{request.id}}"
      X-MCPHub-GitHub-Token: "{{token.GITHUB_TOKEN}}"
      X-MCPHub-Atlassian-Token: "{{token.ATLASSIAN_TOKEN}}"
      X-MCPHub-Protocol-Version: "{{protocol.version}}"
      Authorization: "Bearer {{token.GITHUB_TOKEN}}"
    tool_groups:
      dev: ["*"]
      readers: ["echo", "request_headers", "who*"]
"#
    )
}

fn random_key() -> String {
    format!("mcphub_{}", uuid::Uuid::new_v4().simple()) + &uuid::Uuid::new_v4().simple().to_string()
}

fn sha256(s: &str) -> String {
    hex::encode(Sha256::digest(s.as_bytes()))
}

/// Static key file entries: an inactive user, an expired user (and a valid file user).
struct FileKeys {
    inactive: String,
    expired: String,
    file_user: String,
}

fn write_key_file(path: &Path) -> FileKeys {
    let keys = FileKeys {
        inactive: random_key(),
        expired: random_key(),
        file_user: random_key(),
    };
    std::fs::write(
        path,
        format!(
            "keys:\n  - {{key_sha256: {}, user_id: ina, active: false, tokens: {{GITHUB_TOKEN: ghp_ina}}}}\n  - {{key_sha256: {}, user_id: old, expires_at: 1000, tokens: {{GITHUB_TOKEN: ghp_old}}}}\n  - {{key_sha256: {}, user_id: carol, groups: [readers], tokens: {{GITHUB_TOKEN: ghp_carol_file}}}}\n",
            sha256(&keys.inactive),
            sha256(&keys.expired),
            sha256(&keys.file_user)
        ),
    )
    .unwrap();
    keys
}

/// Pods with capturing FastMCP upstreams, sharing Redis, behind round-robin nginx.
struct Hub {
    dir: PathBuf,
    redis: Redis,
    pods: Vec<(FastMcp, Sidecar, PathBuf)>,
    entry: RoundRobin,
    file_keys: FileKeys,
}

impl Hub {
    fn start(name: &str, pods: usize) -> Hub {
        let dir = test_dir(name);
        let redis = Redis::deployment(&dir);
        let keys_file = dir.join("keys.yaml");
        let file_keys = write_key_file(&keys_file);
        let pods: Vec<(FastMcp, Sidecar, PathBuf)> = (1..=pods)
            .map(|i| {
                let (up, sidecar, capture) = capturing_pod(&dir, i, |up| {
                    format!(
                        "redis: {}\npeer: {{secret: {PEER_SECRET}}}\nadmin: {{token: {ADMIN_TOKEN}}}\nauth: {{cache_ttl: 1s, keys_file: '{}', token_encryption_key: '{ENCRYPTION_KEY}'}}\nroutes:\n{}",
                        redis.section(),
                        keys_file.display(),
                        route("/mcp", &format!("{}/mcp", up.base()), "github")
                    )
                });
                (up, sidecar, capture)
            })
            .collect();
        let entry = RoundRobin::start(&dir, &backends(pods.iter().map(|(_, s, _)| s)));
        Hub {
            dir,
            redis,
            pods,
            entry,
            file_keys,
        }
    }

    fn config(&self) -> &Path {
        &self.pods[0].1.config
    }

    /// `keys create` through the real CLI; returns the key it printed.
    fn create_key(&self, args: &[&str]) -> String {
        let (ok, out, err) = keys_cli(self.config(), &[&["create"], args].concat());
        assert!(ok, "keys create failed: {err}");
        let key = out.trim().to_string();
        assert!(key.starts_with("mcphub_") && key.len() == 71, "{out}");
        assert!(!err.contains(&key), "the key is printed once, on stdout");
        key
    }

    /// Everything the upstreams received, as text, one capture record per line.
    fn captured(&self) -> Vec<serde_json::Value> {
        read_captures(self.pods.iter().map(|(_, _, c)| c))
    }

    fn logs(&self) -> String {
        self.pods.iter().map(|(_, s, _)| s.log()).collect()
    }
}

fn with_key(url: &str, key: &str) -> String {
    format!("{url}?key={key}")
}

/// The JSON-RPC error of a refused request, with its status and `WWW-Authenticate`.
async fn refusal(resp: reqwest::Response) -> (u16, Option<String>, serde_json::Value) {
    let status = resp.status().as_u16();
    let challenge = resp
        .headers()
        .get("www-authenticate")
        .map(|v| v.to_str().unwrap().to_string());
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["jsonrpc"], "2.0", "{body}");
    (status, challenge, body)
}

#[tokio::test(flavor = "multi_thread")]
async fn users_see_only_their_own_identity_and_tokens_and_nothing_leaks() {
    let hub = Hub::start("hub-isolation", 2);
    let alice_token = "ghp_alice_0123456789abcdef";
    let bob_token = "ghp_bob_fedcba9876543210";
    let alice = hub.create_key(&[
        "--user",
        "alice",
        "--group",
        "dev",
        "--token",
        &format!("GITHUB_TOKEN={alice_token}"),
    ]);
    let bob = hub.create_key(&[
        "--user",
        "bob",
        "--group",
        "readers",
        "--token",
        &format!("GITHUB_TOKEN={bob_token}"),
    ]);

    // at rest: the registry holds digests and ciphertext, never the key or a token
    let mut redis = hub.redis.conn().await;
    let stored: std::collections::HashMap<String, String> = redis::cmd("HGETALL")
        .arg(format!("mcp:hub:key:{}", sha256(&alice)))
        .query_async(&mut redis)
        .await
        .unwrap();
    assert_eq!(stored["user_id"], "alice");
    assert!(
        stored["token:GITHUB_TOKEN"].starts_with("enc:v2:"),
        "{stored:?}"
    );
    let dump: Vec<String> = redis::cmd("KEYS")
        .arg("*")
        .query_async(&mut redis)
        .await
        .unwrap();
    for k in &dump {
        assert!(!k.contains(&alice[7..]) && !k.contains(&bob[7..]), "{k}");
    }
    assert!(!format!("{stored:?}").contains(alice_token));

    // many rounds, concurrently, across both pods (round robin): alice with ?key=, bob with
    // a bearer key and a forged identity of his own
    let url = hub.entry.url("/mcp");
    let rounds = "15";
    let mut runs = Vec::new();
    for i in 0..4 {
        let (url, args): (String, Vec<String>) = if i % 2 == 0 {
            (with_key(&url, &alice), vec![])
        } else {
            (
                url.clone(),
                vec![
                    "--header".into(),
                    format!("Authorization=Bearer {bob}"),
                    "--header".into(),
                    format!("X-MCPHub-GitHub-Token={alice_token}"),
                    "--header".into(),
                    "X-MCPHub-User-Id=alice".into(),
                    // a token header bob's key has no token for, and one no template sets
                    "--header".into(),
                    "X-MCPHub-Atlassian-Token=spoofed-atlassian".into(),
                    "--header".into(),
                    "X-MCPHub-Role=spoofed-admin".into(),
                ],
            )
        };
        runs.push(tokio::task::spawn_blocking(move || {
            let mut a: Vec<&str> = vec!["--calls", "0", "--header-rounds", rounds];
            a.extend(args.iter().map(String::as_str));
            python_client(&url, Transport::StreamableHttp, &a)
        }));
    }
    let mut seen_rounds = 0;
    for (i, run) in runs.into_iter().enumerate() {
        let out = run.await.unwrap();
        let (user, token) = if i % 2 == 0 {
            ("alice", alice_token)
        } else {
            ("bob", bob_token)
        };
        let sid = out["session_id"].as_str().unwrap();
        for h in out["header_rounds"].as_array().unwrap() {
            seen_rounds += 1;
            assert_eq!(h["x-mcphub-user-id"], user, "{h}");
            assert_eq!(h["x-mcphub-github-token"], token, "{h}");
            assert_eq!(h["authorization"], format!("Bearer {token}"), "{h}");
            assert_eq!(h["x-mcphub-session-id"], sid, "{h}");
            assert_eq!(
                h["x-mcphub-user-session-id"],
                format!("{user}-{}", &sid[..8]),
                "{h}"
            );
            assert_eq!(
                h["x-mcphub-protocol-version"], out["protocol_version"],
                "{h}"
            );
            assert!(h["x-mcphub-request-id"]
                .as_str()
                .is_some_and(|r| !r.is_empty()));
            assert!(h.get("x-mcphub-key").is_none(), "{h}");
        }
    }
    assert_eq!(seen_rounds, 60);
    // the rounds went through both pods, so some were forwarded over the peer hop
    let logs = hub.logs();
    assert!(
        logs.contains("via=forwarded"),
        "expected forwarded requests"
    );

    // everything the upstreams received: no hub key anywhere; each token only in its own
    // user's requests and only in the two headers that carry it
    let captured = hub.captured();
    assert!(captured.len() > 100, "{} records", captured.len());
    for rec in &captured {
        let text = rec.to_string();
        for key in [&alice, &bob] {
            assert!(
                !text.contains(&key[7..]),
                "a hub key reached the upstream: {text}"
            );
        }
        if rec["kind"] != "head" {
            continue;
        }
        let headers = rec["headers"].as_array().unwrap();
        let get = |name: &str| -> Vec<String> {
            headers
                .iter()
                .filter(|h| h[0] == name)
                .map(|h| h[1].as_str().unwrap().to_string())
                .collect()
        };
        let user = get("x-mcphub-user-id");
        assert_eq!(user.len(), 1, "exactly one identity header: {text}");
        let token = if user[0] == "alice" {
            alice_token
        } else {
            bob_token
        };
        let other = if user[0] == "alice" {
            bob_token
        } else {
            alice_token
        };
        assert!(
            !text.contains(other),
            "another user's token reached this request: {text}"
        );
        assert_eq!(get("x-mcphub-github-token"), [token], "{text}");
        assert_eq!(get("authorization"), [format!("Bearer {token}")], "{text}");
        for h in headers {
            let (name, value) = (h[0].as_str().unwrap(), h[1].as_str().unwrap());
            if value.contains(token) {
                assert!(
                    name == "x-mcphub-github-token" || name == "authorization",
                    "token in {name}"
                );
            }
            assert!(
                !name.starts_with("x-mcp-sidecar-"),
                "hop header upstream: {name}"
            );
            assert!(
                !value.starts_with("spoofed-"),
                "a client's own {name} got through"
            );
        }
    }
    // and the sidecars' logs name users, never keys or tokens
    for secret in [&alice[7..], &bob[7..], alice_token, bob_token] {
        assert!(!logs.contains(secret), "a secret reached the logs");
    }
    assert!(logs.contains("user=alice") && logs.contains("user=bob"));
}

#[tokio::test(flavor = "multi_thread")]
async fn another_users_session_id_gets_404_on_every_pod() {
    let hub = Hub::start("hub-hijack", 2);
    let alice = hub.create_key(&["--user", "alice", "--token", "GITHUB_TOKEN=ghp_a1"]);
    let bob = hub.create_key(&["--user", "bob", "--token", "GITHUB_TOKEN=ghp_b1"]);
    let client = reqwest::Client::new();
    let (a_pod, b_pod) = (&hub.pods[0].1, &hub.pods[1].1);
    let sid = open_session(&client, &with_key(&a_pod.url("/mcp"), &alice)).await;
    let ping = r#"{"jsonrpc":"2.0","id":7,"method":"ping"}"#;
    // bob on the owner pod, and on the other pod (which would forward it)
    for pod in [a_pod, b_pod] {
        let resp = session_post(&client, &with_key(&pod.url("/mcp"), &bob), &sid, ping).await;
        let (status, _, body) = refusal(resp).await;
        assert_eq!(status, 404, "{body}");
        assert_eq!(body["id"], 7);
    }
    // bob cannot end alice's session either
    let resp = client
        .delete(with_key(&a_pod.url("/mcp"), &bob))
        .header("mcp-session-id", &sid)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
    // alice still can, from both pods
    for pod in [a_pod, b_pod] {
        let resp = session_post(&client, &with_key(&pod.url("/mcp"), &alice), &sid, ping).await;
        assert_eq!(resp.status(), 200);
    }
    // without a key at all: 401, not the session
    let resp = session_post(&client, &a_pod.url("/mcp"), &sid, ping).await;
    assert_eq!(resp.status(), 401);
    wait_metric(
        a_pod,
        "mcp_sidecar_hub_refusals_total",
        &[("route", "github"), ("reason", "session_user")],
        2.0,
    )
    .await;
    // a client posing as a peer with alice's identity on the public port is refused
    let resp = mcp_post(&client, &with_key(&b_pod.url("/mcp"), &bob))
        .header("mcp-session-id", &sid)
        .header("x-mcp-sidecar-hop-user", sha256(&alice))
        .body(ping)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 403);
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_keys_get_401_and_revocation_takes_effect_within_the_cache_ttl() {
    let hub = Hub::start("hub-bad-keys", 1);
    let pod = &hub.pods[0].1;
    let client = reqwest::Client::new();
    let url = pod.url("/mcp");
    let init = |u: String| {
        let client = client.clone();
        async move { mcp_post(&client, &u).body(INITIALIZE).send().await.unwrap() }
    };
    let good = hub.create_key(&["--user", "dave", "--token", "GITHUB_TOKEN=ghp_d"]);
    let no_token = hub.create_key(&["--user", "erin"]);
    let cases: Vec<(&str, reqwest::Response, &str)> = vec![
        ("missing", init(url.clone()).await, "missing"),
        (
            "malformed",
            init(format!("{url}?key=mcphub_not-a-key")).await,
            "malformed",
        ),
        (
            "malformed bearer",
            mcp_post(&client, &url)
                .header("authorization", "Bearer mcphub_123")
                .body(INITIALIZE)
                .send()
                .await
                .unwrap(),
            "malformed",
        ),
        (
            "unknown",
            init(with_key(&url, &random_key())).await,
            "unknown",
        ),
        (
            "inactive",
            init(with_key(&url, &hub.file_keys.inactive)).await,
            "inactive",
        ),
        (
            "expired",
            init(with_key(&url, &hub.file_keys.expired)).await,
            "expired",
        ),
    ];
    let mut counts = std::collections::HashMap::new();
    for (what, resp, label) in cases {
        *counts.entry(label).or_insert(0.0) += 1.0;
        let (status, challenge, body) = refusal(resp).await;
        assert_eq!(status, 401, "{what}: {body}");
        let challenge = challenge.unwrap_or_else(|| panic!("{what}: no WWW-Authenticate"));
        assert!(
            challenge.starts_with("Bearer realm=\"mcp-sidecar\""),
            "{challenge}"
        );
        assert_eq!(body["id"], 0, "{what}: the request id is echoed");
        assert!(
            body["error"]["message"]
                .as_str()
                .unwrap()
                .contains(if label == "missing" {
                    "required"
                } else {
                    label
                }),
            "{what}: {body}"
        );
    }
    for (label, count) in counts {
        wait_metric(pod, "mcp_sidecar_auth_total", &[("result", label)], count).await;
    }
    // a user without the route's required token: 403 naming the token
    let (status, _, body) = refusal(init(with_key(&url, &no_token)).await).await;
    assert_eq!(status, 403);
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("GITHUB_TOKEN"));
    // the key header works too, and the static file's users
    let resp = mcp_post(&client, &url)
        .header("x-mcphub-key", &good)
        .body(INITIALIZE)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        init(with_key(&url, &hub.file_keys.file_user))
            .await
            .status(),
        200
    );

    // keys list: users, prefixes, groups, token names; never keys or token values
    let (ok, out, _) = keys_cli(hub.config(), &["list", "--json"]);
    assert!(ok);
    assert!(
        !out.contains(&good[15..]) && !out.contains("ghp_d"),
        "{out}"
    );
    let list: Vec<serde_json::Value> = serde_json::from_str(&out).unwrap();
    let dave = list.iter().find(|k| k["user"] == "dave").unwrap();
    assert_eq!(dave["keyPrefix"], &good[..15]);
    assert_eq!(dave["tokens"], serde_json::json!(["GITHUB_TOKEN"]));
    assert_eq!(dave["state"], "active");

    // a working session, then the key is revoked by prefix: refused within the cache TTL
    let sid = open_session(&client, &with_key(&url, &good)).await;
    let ping = r#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#;
    assert_eq!(
        session_post(&client, &with_key(&url, &good), &sid, ping)
            .await
            .status(),
        200
    );
    let (ok, _, err) = keys_cli(hub.config(), &["revoke", "--prefix", &good[..15]]);
    assert!(ok, "{err}");
    let revoked = Instant::now();
    loop {
        let status = session_post(&client, &with_key(&url, &good), &sid, ping)
            .await
            .status();
        if status == 401 {
            break;
        }
        assert_eq!(status, 200);
        assert!(
            revoked.elapsed() < CACHE_TTL + Duration::from_millis(1500),
            "a revoked key still works after auth.cache_ttl"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (_, out, _) = keys_cli(hub.config(), &["list", "--json"]);
    assert!(out.contains("\"revoked\""), "{out}");
}

#[tokio::test(flavor = "multi_thread")]
async fn set_token_changes_what_the_upstream_receives() {
    let hub = Hub::start("hub-set-token", 1);
    let pod = &hub.pods[0].1;
    let client = reqwest::Client::new();
    let key = hub.create_key(&[
        "--user",
        "frank",
        "--group",
        "readers",
        "--token",
        "GITHUB_TOKEN=ghp_old_value",
    ]);
    let url = with_key(&pod.url("/mcp"), &key);
    let sid = open_session(&client, &url).await;
    let seen = |text: String| -> serde_json::Value { serde_json::from_str(&text).unwrap() };
    let h = seen(
        call_tool(
            &client,
            &url,
            &sid,
            "request_headers",
            serde_json::json!({}),
        )
        .await,
    );
    assert_eq!(h["x-mcphub-github-token"], "ghp_old_value");
    // from the environment, so the value is in no command line
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_mcp-sidecar"))
        .arg("-c")
        .arg(hub.config())
        .args(["keys", "set-token", "--user", "frank", "GITHUB_TOKEN"])
        .env("GITHUB_TOKEN", "ghp_new_value")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let started = Instant::now();
    loop {
        let h = seen(
            call_tool(
                &client,
                &url,
                &sid,
                "request_headers",
                serde_json::json!({}),
            )
            .await,
        );
        if h["x-mcphub-github-token"] == "ghp_new_value" {
            break;
        }
        assert!(started.elapsed() < CACHE_TTL + Duration::from_millis(1500));
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// tools/list answers and tools/call requests on a route with tool groups, for a server that
/// answers with SSE (FastMCP's default) and one that answers with JSON.
#[tokio::test(flavor = "multi_thread")]
async fn tools_are_filtered_by_group_in_json_and_sse_answers() {
    let dir = test_dir("hub-filter");
    let redis = Redis::deployment(&dir);
    let keys_file = dir.join("keys.yaml");
    let file_keys = write_key_file(&keys_file);
    let capture = dir.join("capture.jsonl");
    let sse_up = FastMcp::start_args(
        &dir,
        "127.0.0.1",
        free_port(),
        Transport::StreamableHttp,
        &["--capture", capture.to_str().unwrap()],
    );
    let json_up = FastMcp::start_args(
        &dir,
        "127.0.0.1",
        free_port(),
        Transport::StreamableHttp,
        &["--json-response", "--capture", capture.to_str().unwrap()],
    );
    let sidecar = Sidecar::start(
        &dir,
        &format!(
            "redis: {}\npeer: {{secret: {PEER_SECRET}}}\nauth: {{keys_file: '{}'}}\nroutes:\n{}{}",
            redis.section(),
            keys_file.display(),
            route("/sse-answers", &format!("{}/mcp", sse_up.base()), "sse"),
            route("/json-answers", &format!("{}/mcp", json_up.base()), "json"),
        ),
    );
    let (ok, dev, err) = keys_cli(
        &sidecar.config,
        &[
            "create",
            "--user",
            "gina",
            "--group",
            "dev",
            "--token",
            "GITHUB_TOKEN=ghp_g",
        ],
    );
    assert!(ok, "{err}");
    let dev = dev.trim().to_string();
    let reader = &file_keys.file_user; // carol, group readers
    let client = reqwest::Client::new();
    let list = r#"{"jsonrpc":"2.0","id":3,"method":"tools/list"}"#;
    for (prefix, content_type) in [
        ("/sse-answers", "text/event-stream"),
        ("/json-answers", "application/json"),
    ] {
        let names = |key: String| {
            let client = client.clone();
            let url = with_key(&sidecar.url(prefix), &key);
            async move {
                let sid = open_session(&client, &url).await;
                let resp = session_post(&client, &url, &sid, list).await;
                assert_eq!(resp.status(), 200);
                let ct = resp.headers()["content-type"].to_str().unwrap().to_string();
                assert!(ct.starts_with(content_type), "{ct}");
                let msgs = messages(&resp.text().await.unwrap());
                let result = msgs.iter().find(|m| m["id"] == 3).unwrap();
                let mut names: Vec<String> = result["result"]["tools"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|t| t["name"].as_str().unwrap().to_string())
                    .collect();
                names.sort();
                (names, sid, url)
            }
        };
        let (all, _, _) = names(dev.clone()).await;
        assert!(
            all.contains(&"add".to_string()) && all.len() >= 6,
            "{prefix}: {all:?}"
        );
        let (some, sid, url) = names(reader.clone()).await;
        assert_eq!(some, ["echo", "request_headers", "whoami"], "{prefix}");
        // a denied call is refused here and never reaches the upstream
        let call = r#"{"jsonrpc":"2.0","id":9,"method":"tools/call","params":{"name":"add","arguments":{"a":40,"b":2}}}"#;
        let (status, _, body) = refusal(session_post(&client, &url, &sid, call).await).await;
        assert_eq!(status, 403, "{prefix}: {body}");
        assert_eq!(body["id"], 9);
        assert!(body["error"]["message"].as_str().unwrap().contains("add"));
        // smuggled in a batch: refused as a whole
        let batch = format!(r#"[{{"jsonrpc":"2.0","id":10,"method":"ping"}},{call}]"#);
        assert_eq!(session_post(&client, &url, &sid, batch).await.status(), 403);
        // an allowed call goes through
        assert_eq!(
            call_tool(
                &client,
                &url,
                &sid,
                "echo",
                serde_json::json!({"text": "ok"})
            )
            .await,
            "ok"
        );
    }
    let captured = std::fs::read_to_string(&capture).unwrap();
    assert!(captured.contains("\\\"echo\\\""), "allowed calls arrive");
    assert!(
        !captured.contains("\\\"a\\\": 40") && !captured.contains("\\\"a\\\":40"),
        "a denied call reached the upstream"
    );
    wait_metric(
        &sidecar,
        "mcp_sidecar_hub_refusals_total",
        &[("route", "json"), ("reason", "tool_denied")],
        2.0,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn offerings_list_combines_tools_prompts_and_resources() {
    let hub = Hub::start("hub-offerings", 2);
    let client = reqwest::Client::new();
    let reader = &hub.file_keys.file_user;
    let dev = hub.create_key(&[
        "--user",
        "hank",
        "--group",
        "dev",
        "--token",
        "GITHUB_TOKEN=ghp_h",
    ]);
    let offerings = r#"{"jsonrpc":"2.0","id":"o-1","method":"offerings/list","params":{}}"#;
    for (key, pod_of_call) in [(&dev, 0), (reader, 1)] {
        // opened on pod 0; asked on pod 1 in the second round (the owner answers)
        let sid = open_session(&client, &with_key(&hub.pods[0].1.url("/mcp"), key)).await;
        let url = with_key(&hub.pods[pod_of_call].1.url("/mcp"), key);
        let resp = session_post(&client, &url, &sid, offerings).await;
        assert_eq!(resp.status(), 200);
        let v: serde_json::Value = resp.json().await.unwrap();
        assert_eq!(v["id"], "o-1", "{v}");
        let names = |field: &str, name: &str| -> Vec<String> {
            v["result"][field]
                .as_array()
                .unwrap_or_else(|| panic!("{field} missing: {v}"))
                .iter()
                .map(|t| t[name].as_str().unwrap().to_string())
                .collect()
        };
        let tools = names("tools", "name");
        assert_eq!(names("prompts", "name"), ["greet"]);
        assert_eq!(names("resources", "uri"), ["test://info"]);
        if key == &dev {
            assert!(tools.contains(&"add".to_string()), "{tools:?}");
        } else {
            let mut t = tools.clone();
            t.sort();
            assert_eq!(t, ["echo", "request_headers", "whoami"]);
        }
    }
    // the sidecar's own calls to the upstream carried the user's headers, never the key
    for rec in hub.captured() {
        if rec["kind"] == "body"
            && rec["body"]
                .as_str()
                .unwrap()
                .contains("mcp-sidecar-offerings")
        {
            continue;
        }
        assert!(!rec.to_string().contains(&dev[7..]));
    }
    let heads: Vec<serde_json::Value> = hub.captured();
    assert!(heads.iter().any(|r| r["kind"] == "head"
        && r["headers"]
            .as_array()
            .unwrap()
            .iter()
            .any(|h| h[0] == "x-mcphub-user-id" && h[1] == "hank")));
    let _ = &hub.dir;
}

async fn hub_record(redis: &Redis, key: &str) -> std::collections::HashMap<String, String> {
    let mut c = redis.conn().await;
    redis::cmd("HGETALL")
        .arg(format!("mcp:hub:key:{}", sha256(key)))
        .query_async(&mut c)
        .await
        .unwrap()
}

async fn set_token(redis: &Redis, key: &str, name: &str, value: &str) {
    let mut c = redis.conn().await;
    let _: () = redis::cmd("HSET")
        .arg(format!("mcp:hub:key:{}", sha256(key)))
        .arg(format!("token:{name}"))
        .arg(value)
        .query_async(&mut c)
        .await
        .unwrap();
}

async fn initialize_status(client: &reqwest::Client, url: &str) -> u16 {
    let resp = mcp_post(client, url).body(INITIALIZE).send().await.unwrap();
    resp.status().as_u16()
}

#[tokio::test(flavor = "multi_thread")]
async fn token_ciphertexts_are_bound_to_their_record_and_name_and_v1_is_read_until_reencrypted() {
    let hub = Hub::start("hub-token-binding", 1);
    let pod = &hub.pods[0].1;
    let client = reqwest::Client::new();
    let alice_token = "ghp_alice_bound_0123456789";
    let alice = hub.create_key(&[
        "--user",
        "alice",
        "--token",
        &format!("GITHUB_TOKEN={alice_token}"),
    ]);
    let bob = hub.create_key(&["--user", "bob", "--token", "GITHUB_TOKEN=ghp_bob_bound"]);
    let alice_ct = hub_record(&hub.redis, &alice).await["token:GITHUB_TOKEN"].clone();
    assert!(alice_ct.starts_with("enc:v2:"), "{alice_ct}");

    // alice's ciphertext copied into bob's record, and to another name in her own: neither
    // decrypts, so neither key is accepted
    set_token(&hub.redis, &bob, "GITHUB_TOKEN", &alice_ct).await;
    assert_eq!(
        initialize_status(&client, &with_key(&pod.url("/mcp"), &bob)).await,
        401
    );
    set_token(&hub.redis, &alice, "ATLASSIAN_TOKEN", &alice_ct).await;
    assert_eq!(
        initialize_status(&client, &with_key(&pod.url("/mcp"), &alice)).await,
        401
    );
    let logs = hub.logs();
    assert!(
        logs.contains("token GITHUB_TOKEN: encrypted token does not decrypt"),
        "{logs}"
    );
    assert!(
        logs.contains("token ATLASSIAN_TOKEN: encrypted token does not decrypt"),
        "{logs}"
    );
    assert!(
        !logs.contains(alice_token) && !logs.contains(&alice_ct[7..]),
        "values in the log"
    );

    // a token the previous release wrote (enc:v1, no associated data) still works...
    use aes_gcm::aead::{Aead, KeyInit};
    let cipher = aes_gcm::Aes256Gcm::new_from_slice(&hex::decode(ENCRYPTION_KEY).unwrap()).unwrap();
    let nonce = [7u8; 12];
    let ct = cipher
        .encrypt(aes_gcm::Nonce::from_slice(&nonce), b"ghp_carol_v1".as_ref())
        .unwrap();
    let carol = hub.create_key(&[
        "--user",
        "carol",
        "--group",
        "readers",
        "--token",
        "GITHUB_TOKEN=placeholder",
    ]);
    set_token(
        &hub.redis,
        &carol,
        "GITHUB_TOKEN",
        &format!("enc:v1:{}:{}", hex::encode(nonce), hex::encode(ct)),
    )
    .await;
    let url = with_key(&pod.url("/mcp"), &carol);
    let sid = open_session(&client, &url).await;
    let seen = call_tool(
        &client,
        &url,
        &sid,
        "request_headers",
        serde_json::json!({}),
    )
    .await;
    let seen: serde_json::Value = serde_json::from_str(&seen).unwrap();
    assert_eq!(seen["x-mcphub-github-token"], "ghp_carol_v1");
    pod.wait_log("is stored as enc:v1");
    // ...until `keys reencrypt` rewrites it as v2, bound to carol's record
    let (ok, _, err) = keys_cli(hub.config(), &["reencrypt"]);
    assert!(ok, "{err}");
    assert!(err.contains("rewrote 1 token(s)"), "{err}");
    let stored = hub_record(&hub.redis, &carol).await["token:GITHUB_TOKEN"].clone();
    assert!(stored.starts_with("enc:v2:"), "{stored}");
    tokio::time::sleep(CACHE_TTL + Duration::from_millis(200)).await;
    let seen = call_tool(
        &client,
        &url,
        &sid,
        "request_headers",
        serde_json::json!({}),
    )
    .await;
    let seen: serde_json::Value = serde_json::from_str(&seen).unwrap();
    assert_eq!(seen["x-mcphub-github-token"], "ghp_carol_v1");
}

#[tokio::test(flavor = "multi_thread")]
async fn without_an_encryption_key_startup_and_readiness_warn() {
    let dir = test_dir("hub-no-encryption-key");
    let redis = Redis::start(&dir);
    let sidecar = Sidecar::start(
        &dir,
        &format!(
            "redis: {{url: '{}'}}\npeer: {{secret: {PEER_SECRET}}}\nroutes:\n  - {{prefix: /mcp, upstream: 'http://127.0.0.1:9/mcp', server_name: github, auth: required}}\n",
            redis.url()
        ),
    );
    sidecar.wait_log("auth.token_encryption_key is not set");
    let resp = reqwest::get(sidecar.admin("/readyz")).await.unwrap();
    assert_eq!(
        resp.status(),
        200,
        "a warning does not make the pod unready"
    );
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["status"], "ready", "{body}");
    assert!(
        body["warnings"][0]
            .as_str()
            .unwrap_or_default()
            .contains("auth.token_encryption_key is not set"),
        "{body}"
    );
}
