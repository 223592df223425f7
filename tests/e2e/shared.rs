//! Shared upstream sessions (`session_mode: shared`): the clients of one context share one
//! upstream MCP session, and the sidecar multiplexes them so that colliding request ids never
//! mix answers up.

use crate::harness::*;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

fn shared_route(upstream: &str, server: &str, auth: bool) -> String {
    let hub = if auth {
        "    auth: required\n    inject_headers:\n      X-MCPHub-GitHub-Token: \"{token.GITHUB_TOKEN}\"\n      X-MCPHub-User-Id: \"{user.id}\"\n    tool_groups:\n      team: [echo, slow_echo]\n"
    } else {
        ""
    };
    format!(
        "  - prefix: /mcp\n    upstream: '{upstream}'\n    server_name: {server}\n    session_mode: shared\n{hub}"
    )
}

/// Pods with capturing FastMCP upstreams (answers delayed at random), sharing Redis, behind
/// round-robin nginx.
struct SharedPods {
    dir: PathBuf,
    redis: Redis,
    pods: Vec<(FastMcp, Sidecar, PathBuf)>,
    entry: RoundRobin,
}

impl SharedPods {
    fn start(name: &str, pods: usize, top: &str, auth: bool) -> SharedPods {
        Self::start_in(test_dir(name), pods, top, auth)
    }

    fn start_in(dir: PathBuf, pods: usize, top: &str, auth: bool) -> SharedPods {
        let redis = Redis::deployment(&dir);
        let pods: Vec<(FastMcp, Sidecar, PathBuf)> = (1..=pods)
            .map(|i| {
                let ip = format!("127.0.0.{i}");
                let capture = dir.join(format!("capture-{i}.jsonl"));
                let up = FastMcp::start_args(
                    &dir,
                    &ip,
                    free_port(),
                    Transport::StreamableHttp,
                    &["--capture", capture.to_str().unwrap(), "--echo-delay", "0.05"],
                );
                let sidecar = Sidecar::start_on(
                    &dir,
                    &ip,
                    &format!(
                        "redis: {}\npeer: {{secret: {PEER_SECRET}}}\nadmin: {{token: {ADMIN_TOKEN}}}\n{top}routes:\n{}",
                        redis.section(),
                        shared_route(&format!("{}/mcp", up.base()), "demo", auth)
                    ),
                );
                (up, sidecar, capture)
            })
            .collect();
        let entry = RoundRobin::start(&dir, &backends(pods.iter().map(|(_, s, _)| s)));
        SharedPods {
            dir,
            redis,
            pods,
            entry,
        }
    }

    fn captured(&self) -> Vec<Value> {
        read_captures(self.pods.iter().map(|(_, _, c)| c))
    }

    fn logs(&self) -> String {
        self.pods.iter().map(|(_, s, _)| s.log()).collect()
    }

    async fn upstream_sessions(&self) -> Vec<Value> {
        admin_api(
            &self.pods[0].1,
            reqwest::Method::GET,
            "/api/admin/upstream-sessions",
        )
        .await
        .as_array()
        .unwrap()
        .clone()
    }
}

/// What the upstreams saw: the session ids on their requests, and how many `initialize`
/// requests reached them.
fn upstream_view(captured: &[Value]) -> (BTreeSet<String>, usize) {
    let sessions = captured
        .iter()
        .filter(|r| r["kind"] == "head" && r["method"] == "POST")
        .filter_map(|r| {
            r["headers"]
                .as_array()
                .unwrap()
                .iter()
                .find(|h| h[0] == "mcp-session-id")
                .map(|h| h[1].as_str().unwrap().to_string())
        })
        .collect();
    let inits = captured
        .iter()
        .filter(|r| r["kind"] == "body")
        .filter(|r| {
            serde_json::from_str::<Value>(r["body"].as_str().unwrap_or(""))
                .is_ok_and(|b| b["method"] == "initialize")
        })
        .count();
    (sessions, inits)
}

fn assert_all_own_answers(out: &Value, clients: u64, calls: u64) {
    assert_eq!(out["mixup_count"], 0, "{out}");
    assert_eq!(out["error_count"], 0, "{out}");
    assert_eq!(out["ok"], clients * calls, "{out}");
    assert_eq!(out["session_ids"], clients, "{out}");
}

#[tokio::test(flavor = "multi_thread")]
async fn two_hundred_clients_with_colliding_ids_get_only_their_own_answers_on_one_upstream_session()
{
    let c = SharedPods::start("shared-collisions", 3, "", false);
    let url = c.entry.url("/mcp");
    // 200 official clients initialize at once (so the first requests race on every pod), then
    // each sends ids 1, 2, 3… like every other; the tool answers after a random delay, so
    // answers come back out of order
    let out = tokio::task::spawn_blocking({
        let url = url.clone();
        move || mux_client(&url, &["--clients", "200", "--calls", "3"])
    })
    .await
    .unwrap();
    assert_all_own_answers(&out, 200, 3);
    // progress notifications carry the client's own token back, on every call
    let out = tokio::task::spawn_blocking({
        let url = url.clone();
        move || mux_client(&url, &["--clients", "40", "--calls", "2", "--progress"])
    })
    .await
    .unwrap();
    assert_all_own_answers(&out, 40, 2);
    assert_eq!(out["progress_ok"], 80, "{out}");

    // the upstreams saw exactly one session, initialized exactly once, across all pods
    let (sessions, inits) = upstream_view(&c.captured());
    assert_eq!(sessions.len(), 1, "{sessions:?}");
    assert_eq!(inits, 1);
    let sid = sessions.into_iter().next().unwrap();
    let listed = c.upstream_sessions().await;
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0]["serverName"], "demo");
    assert_eq!(listed[0]["contextKey"], "shared");
    assert_eq!(listed[0]["sessionId"], sid.as_str());
    let ttl = listed[0]["ttl"].as_u64().unwrap();
    assert!(ttl > 3500 && ttl <= 3600, "{ttl}");
    // redis-cli GET shows the same
    let mut r = c.redis.conn().await;
    let stored: String = redis::cmd("GET")
        .arg("mcp:upstream:session:demo:shared")
        .query_async(&mut r)
        .await
        .unwrap();
    assert_eq!(stored, sid);
    let logs = c.logs();
    assert_eq!(
        logs.matches(" established for demo context shared").count(),
        1,
        "established once"
    );
    // every client got its own session id from the sidecar, naming the shared one
    assert_eq!(
        logs.matches(&format!("shares upstream session {sid}"))
            .count(),
        240
    );
    // the requests really were spread over the pods (owner and forwarded)
    assert!(logs.contains("via=forwarded"), "no request was forwarded");
}

#[tokio::test(flavor = "multi_thread")]
async fn users_share_an_upstream_session_only_with_the_same_token_values() {
    let key = |n: u8| format!("mcphub_{}", hex::encode([n; 32]));
    let digest = |k: &str| hex::encode(Sha256::digest(k.as_bytes()));
    let (alice, bob, carol) = (key(1), key(2), key(3));
    let dir = test_dir("shared-credentials");
    let keys_file = dir.join("keys.yaml");
    std::fs::write(
        &keys_file,
        format!(
            "keys:\n  - {{key_sha256: {}, user_id: alice, groups: [team], tokens: {{GITHUB_TOKEN: ghp_team_one}}}}\n  - {{key_sha256: {}, user_id: bob, groups: [team], tokens: {{GITHUB_TOKEN: ghp_team_two}}}}\n  - {{key_sha256: {}, user_id: carol, groups: [team], tokens: {{GITHUB_TOKEN: ghp_team_one}}}}\n",
            digest(&alice),
            digest(&bob),
            digest(&carol)
        ),
    )
    .unwrap();
    let top = format!("auth: {{keys_file: '{}'}}\n", keys_file.display());
    let c = SharedPods::start_in(dir, 2, &top, true);
    let url = c.entry.url("/mcp");
    for (k, n) in [(&alice, "6"), (&bob, "6"), (&carol, "6")] {
        let header = format!("Authorization=Bearer {k}");
        let url = url.clone();
        let out = tokio::task::spawn_blocking(move || {
            mux_client(&url, &["--clients", n, "--calls", "3", "--header", &header])
        })
        .await
        .unwrap();
        assert_all_own_answers(&out, 6, 3);
    }
    // tools/list through the shared session: filtered for the user's groups, and answered with
    // the client's own id
    let http = reqwest::Client::new();
    let resp = mcp_post(&http, &url)
        .header("authorization", format!("Bearer {alice}"))
        .body(INITIALIZE)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let sid = resp.headers()["mcp-session-id"]
        .to_str()
        .unwrap()
        .to_string();
    let resp = mcp_post(&http, &url)
        .header("authorization", format!("Bearer {alice}"))
        .header("mcp-session-id", &sid)
        .header("mcp-protocol-version", "2025-06-18")
        .body(r#"{"jsonrpc":"2.0","id":7,"method":"tools/list"}"#)
        .send()
        .await
        .unwrap();
    let msgs = messages(&resp.text().await.unwrap());
    let list = msgs.iter().find(|m| m.get("result").is_some()).unwrap();
    assert_eq!(list["id"], 7);
    let names: BTreeSet<&str> = list["result"]["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, BTreeSet::from(["echo", "slow_echo"]));

    // two contexts: alice and carol (same token value) share one, bob has his own
    let listed = c.upstream_sessions().await;
    assert_eq!(listed.len(), 2, "{listed:?}");
    for u in &listed {
        let ctx = u["contextKey"].as_str().unwrap();
        assert!(ctx.starts_with("tok:GITHUB_TOKEN:"), "{ctx}");
        assert!(
            !ctx.contains("ghp_"),
            "the context key names no token value"
        );
    }
    // what the upstream saw: each request's session, user and token
    let captured = c.captured();
    let header = |r: &Value, name: &str| {
        r["headers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|h| h[0] == name)
            .map(|h| h[1].as_str().unwrap().to_string())
    };
    let seen: Vec<(String, String, String)> = captured
        .iter()
        .filter(|r| r["kind"] == "head" && r["method"] == "POST")
        .filter_map(|r| {
            Some((
                header(r, "mcp-session-id")?,
                header(r, "x-mcphub-user-id")?,
                header(r, "x-mcphub-github-token")?,
            ))
        })
        .collect();
    let upstream_of = |user: &str| -> BTreeSet<String> {
        seen.iter()
            .filter(|(_, u, _)| u == user)
            .map(|(s, _, _)| s.clone())
            .collect()
    };
    let (a, b, k) = (
        upstream_of("alice"),
        upstream_of("bob"),
        upstream_of("carol"),
    );
    assert_eq!(a.len(), 1, "{a:?}");
    assert_eq!(a, k, "same token values share a session");
    assert_eq!(b.len(), 1);
    assert_ne!(a, b, "different token values never share one");
    // each request carried its own user's token, on its context's session
    for (sid, user, token) in &seen {
        let expected = if user == "bob" {
            "ghp_team_two"
        } else {
            "ghp_team_one"
        };
        assert_eq!(token, expected, "{user} on {sid}");
        assert!(if user == "bob" { &b } else { &a }.contains(sid));
    }
    assert!(seen.len() >= 54, "{}", seen.len());
}

/// A paused client resumed: all its calls answered, none failed.
async fn finishes_all_ten_calls(client: PausedClient) {
    let out = tokio::task::spawn_blocking(move || client.resume())
        .await
        .unwrap()
        .expect("the client continues with no error");
    assert_eq!(out["add_results"], json!((1..=10).collect::<Vec<i64>>()));
}

/// The id of the only shared upstream session the admin API lists.
async fn the_one_upstream_session(c: &SharedPods) -> String {
    let listed = c.upstream_sessions().await;
    assert_eq!(listed.len(), 1, "{listed:?}");
    listed[0]["sessionId"].as_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn the_shared_session_is_re_established_after_an_admin_delete_and_an_upstream_restart() {
    let mut c = SharedPods::start("shared-reestablish", 2, "", false);
    let url = c.entry.url("/mcp");
    let first = PausedClient::start(&c.dir, &url, 10, 5);
    let old = the_one_upstream_session(&c).await;

    // deleted through the admin API: the next request re-establishes it
    let deleted = admin_api(
        &c.pods[1].1,
        reqwest::Method::DELETE,
        "/api/admin/upstream-sessions/demo/shared",
    )
    .await;
    assert_eq!(deleted["contextKey"], "shared");
    assert!(c.upstream_sessions().await.is_empty());
    // pods re-read the key at most once a second
    tokio::time::sleep(Duration::from_millis(1200)).await;
    finishes_all_ten_calls(first).await;
    let new = the_one_upstream_session(&c).await;
    assert_ne!(new, old);
    assert!(
        c.logs().contains(&format!(
            "upstream session re-established for demo context shared: (deleted or expired) -> {new}"
        )),
        "{}",
        c.logs()
    );

    // the MCP server holding it restarts and forgets it: re-established on the next request
    let second = PausedClient::start(&c.dir, &url, 10, 5);
    let owner = admin_sessions(&c.pods[0].1)
        .await
        .into_iter()
        .find(|s| s["sessionId"] == new.as_str())
        .map(|s| s["owner"].as_str().unwrap().to_string())
        .expect("the shared session has a record");
    let i = c
        .pods
        .iter()
        .position(|(_, s, _)| s.peer_address() == owner)
        .unwrap();
    let (ip, port) = (c.pods[i].0.ip.clone(), c.pods[i].0.port);
    c.pods[i].0.proc.kill();
    let capture = c.pods[i].2.clone();
    c.pods[i].0 = FastMcp::start_args(
        &c.dir,
        &ip,
        port,
        Transport::StreamableHttp,
        &["--capture", capture.to_str().unwrap()],
    );
    finishes_all_ten_calls(second).await;
    let newest = the_one_upstream_session(&c).await;
    assert_ne!(newest, new);
    assert!(
        c.logs().contains(&format!(
            "upstream session re-established for demo context shared: {new} -> {newest}"
        )),
        "{}",
        c.logs()
    );
}

#[test]
fn a_sampling_request_reaches_only_the_client_that_caused_it() {
    let dir = test_dir("shared-sampling");
    let redis = Redis::start(&dir);
    let pods = everything_pods(&dir, &redis, 2, &|up| shared_route(up, "everything", false));
    let entry = RoundRobin::start(&dir, &backends(pods.iter().map(|(_, s)| s)));
    let url = entry.url("/mcp");
    for run in 0..3 {
        // a bystander on the same shared session, listening for sampling requests
        let watcher = std::thread::spawn({
            let url = url.clone();
            move || ts_scenario(&url, Transport::StreamableHttp, "watch", None)
        });
        std::thread::sleep(Duration::from_millis(1500));
        let out = ts_scenario(&url, Transport::StreamableHttp, "sampling", None);
        assert_eq!(out["sampled"], 1, "run {run}: {out}");
        assert!(
            out["result"].as_str().unwrap().contains("sampled: "),
            "run {run}: {out}"
        );
        let watched = watcher.join().unwrap();
        assert_eq!(watched["sampled"], 0, "run {run}: {watched}");
        assert_ne!(watched["session_id"], out["session_id"]);
    }
    // one upstream session served them all
    let logs: String = pods.iter().map(|(_, s)| s.log()).collect();
    assert_eq!(
        logs.matches(" established for everything context shared")
            .count(),
        1,
        "{logs}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn the_upstream_get_stream_fans_out_to_every_client_holding_one() {
    let c = SharedPods::start("shared-fanout", 2, "", false);
    let http = reqwest::Client::new();
    let (url_a, url_b) = (c.pods[0].1.url("/mcp"), c.pods[1].1.url("/mcp"));
    // two clients, on different pods; one of their GET streams is forwarded to the owner
    let a = open_session(&http, &url_a).await;
    let b = open_session(&http, &url_b).await;
    assert_ne!(a, b);
    let get = |url: String, sid: String| {
        let http = http.clone();
        async move {
            let resp = http
                .get(&url)
                .header("accept", "text/event-stream")
                .header("mcp-session-id", &sid)
                .header("mcp-protocol-version", "2025-06-18")
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), 200);
            assert_eq!(resp.headers()["mcp-session-id"], sid.as_str());
            SseReader::new(resp)
        }
    };
    let mut stream_a = get(url_a.clone(), a.clone()).await;
    let mut stream_b = get(url_b.clone(), b.clone()).await;
    // a notification that belongs to no request travels on the upstream's GET stream
    let sent = call_tool(&http, &url_a, &a, "notify_resources_changed", json!({})).await;
    assert_eq!(sent, "sent");
    for (name, stream) in [("a", &mut stream_a), ("b", &mut stream_b)] {
        let (msg, _) = tokio::time::timeout(Duration::from_secs(10), stream.next_json())
            .await
            .unwrap_or_else(|_| panic!("client {name} got no event"))
            .unwrap();
        assert_eq!(
            msg["method"], "notifications/resources/list_changed",
            "{name}"
        );
    }
    // the upstream saw one GET stream, on the shared session
    let captured = c.captured();
    let gets = captured
        .iter()
        .filter(|r| r["kind"] == "head" && r["method"] == "GET")
        .count();
    assert_eq!(gets, 1);
    let (sessions, inits) = upstream_view(&captured);
    assert_eq!((sessions.len(), inits), (1, 1));

    // a client's DELETE, on whichever pod, ends its session everywhere (not the shared one)
    let resp = http
        .delete(&url_b)
        .header("mcp-session-id", &a)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    for url in [&url_a, &url_b] {
        let resp = session_post(
            &http,
            url,
            &a,
            r#"{"jsonrpc":"2.0","id":9,"method":"ping"}"#,
        )
        .await;
        assert_eq!(resp.status(), 404, "{url}");
    }
    assert_eq!(
        call_tool(&http, &url_a, &b, "echo", json!({"text": "still here"})).await,
        "still here"
    );
    assert_eq!(c.upstream_sessions().await.len(), 1);
}
