//! Legacy HTTP+SSE sessions across pods: the seeds' `Could not find session for ID`, fixed.
//! Three FastMCP `transport="sse"` pods (or server-everything in `sse` mode) behind a
//! round-robin entry point, so a session's message posts land on pods other than the one
//! holding its stream.

use crate::harness::*;
use std::time::Duration;

const PING: &str = r#"{"jsonrpc":"2.0","id":7,"method":"ping"}"#;

async fn sse_sessions(sidecar: &Sidecar) -> Vec<serde_json::Value> {
    admin_sessions(sidecar)
        .await
        .into_iter()
        .filter(|s| s["transport"] == "sse")
        .collect()
}

async fn sum_metric(sidecars: &[&Sidecar], name: &str, labels: &[(&str, &str)]) -> f64 {
    let mut total = 0.0;
    for s in sidecars {
        total += metric(s, name, labels).await;
    }
    total
}

#[tokio::test(flavor = "multi_thread")]
async fn python_sse_client_makes_100_calls_across_three_pods() {
    let c = Cluster::start_with("legacy-py-3pods", "", Transport::Sse);
    let url = c.entry.url("/py/sse");
    let out = tokio::task::spawn_blocking(move || {
        python_client(
            &url,
            Transport::Sse,
            &["--calls", "100", "--request-timeout", "10"],
        )
    })
    .await
    .unwrap();
    let expected: Vec<i64> = (1..=100).collect();
    assert_eq!(out["add_results"], serde_json::json!(expected));
    assert_eq!(out["echo"], "héllo ✓");
    assert_eq!(out["reconnects"], 0);

    let sidecars: Vec<&Sidecar> = c.pods.iter().map(|p| &p.sidecar).collect();
    // initialize, initialized, tools/list, 100 calls, echo: round robin sends two thirds of
    // them to pods that do not hold the stream. A post is counted once its answer went out,
    // which may be just after the client has what it waited for: wait for the count to settle
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let (forwarded, local) = loop {
        let forwarded = sum_metric(
            &sidecars,
            "mcp_sidecar_sse_posts_total",
            &[("via", "forwarded")],
        )
        .await;
        let local = sum_metric(
            &sidecars,
            "mcp_sidecar_sse_posts_total",
            &[("via", "local")],
        )
        .await;
        if forwarded + local >= 104.0 || std::time::Instant::now() > deadline {
            break (forwarded, local);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(
        forwarded + local,
        104.0,
        "every post is counted once, on the pod it arrived at (forwarded {forwarded}, local {local})"
    );
    assert!(forwarded >= 50.0, "only {forwarded} posts were forwarded");
    let served_for_peers = sum_metric(
        &sidecars,
        "mcp_sidecar_sse_posts_total",
        &[("via", "from_peer")],
    )
    .await;
    assert_eq!(
        served_for_peers, forwarded,
        "every forwarded post reached the owner"
    );
    assert_eq!(
        sum_metric(&sidecars, "mcp_sidecar_sse_failures_total", &[]).await,
        0.0
    );
    // the endpoint was rewritten for the /py mount: the server never saw a post it could not
    // place
    for p in &c.pods {
        assert!(!p
            .upstream
            .proc
            .log_text()
            .contains("Could not find session"));
    }
    // the client closed its stream: the session is gone from every pod and from the store
    for s in &sidecars {
        wait_metric(s, "mcp_sidecar_sse_streams", &[], 0.0).await;
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !sse_sessions(&c.pods[0].sidecar).await.is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "the closed stream's session stayed in the store"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn without_sidecars_the_same_scenario_loses_the_session() {
    let dir = test_dir("legacy-no-sidecars");
    let servers: Vec<FastMcp> = (1..=3)
        .map(|i| FastMcp::start_on(&dir, &format!("127.0.0.{i}"), free_port(), Transport::Sse))
        .collect();
    let entry = RoundRobin::start(
        &dir,
        &servers
            .iter()
            .map(|s| format!("{}:{}", s.ip, s.port))
            .collect::<Vec<_>>(),
    );
    let url = entry.url("/sse");
    let outcome = tokio::task::spawn_blocking(move || {
        python_client_outcome_via(
            &url,
            Transport::Sse,
            &["--calls", "100", "--request-timeout", "5"],
        )
    })
    .await
    .unwrap();
    assert!(
        outcome.is_err(),
        "the client succeeded without sidecars: {outcome:?}"
    );
    assert!(
        servers
            .iter()
            .any(|s| s.proc.log_text().contains("Could not find session for ID")),
        "no server logged the seeds' warning"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn typescript_sse_client_against_server_everything_across_pods() {
    let dir = test_dir("legacy-ts-3pods");
    let redis = Redis::deployment(&dir);
    let servers: Vec<Everything> = (0..3)
        .map(|_| Everything::start(&dir, Transport::Sse))
        .collect();
    let sidecars: Vec<Sidecar> = servers
        .iter()
        .enumerate()
        .map(|(i, s)| {
            Sidecar::start_on(
                &dir,
                &format!("127.0.0.{}", i + 1),
                &format!(
                    "redis: {}\npeer: {{secret: {PEER_SECRET}}}\nadmin: {{token: {ADMIN_TOKEN}}}\nroutes:\n{}",
                    redis.section(),
                    Sidecar::route("/", &s.base(), "everything-sse")
                ),
            )
        })
        .collect();
    let entry = RoundRobin::start(&dir, &backends(&sidecars));
    let url = entry.url("/sse");
    let out = tokio::task::spawn_blocking(move || ts_client(&url, Transport::Sse))
        .await
        .unwrap();
    assert_eq!(out["echo"], "Echo: héllo ✓");
    assert_eq!(out["sum"], "The sum of 2 and 40 is 42.");
    let refs: Vec<&Sidecar> = sidecars.iter().collect();
    let forwarded = sum_metric(
        &refs,
        "mcp_sidecar_sse_posts_total",
        &[("via", "forwarded")],
    )
    .await;
    assert!(forwarded >= 1.0, "no post was forwarded");
    assert_eq!(
        sum_metric(&refs, "mcp_sidecar_sse_failures_total", &[]).await,
        0.0
    );
}

/// Reads a raw stream until `done` holds for what arrived (or 20 s pass).
pub(crate) async fn read_until(
    resp: &mut reqwest::Response,
    text: &mut String,
    done: impl Fn(&str) -> bool,
) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !done(text) {
        let chunk = tokio::time::timeout_at(deadline, resp.chunk())
            .await
            .unwrap_or_else(|_| panic!("stream stalled; got so far:\n{text}"))
            .unwrap()
            .unwrap_or_else(|| panic!("stream ended; got:\n{text}"));
        text.push_str(std::str::from_utf8(&chunk).unwrap());
    }
}

pub(crate) async fn open_stream(url: &str) -> reqwest::Response {
    let resp = reqwest::Client::new()
        .get(url)
        .header("accept", "text/event-stream")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    resp
}

#[tokio::test(flavor = "multi_thread")]
async fn an_idle_stream_gets_keepalive_comments() {
    // server-everything sends no pings of its own
    let dir = test_dir("legacy-keepalive");
    let upstream = Everything::start(&dir, Transport::Sse);
    let sidecar = Sidecar::start(
        &dir,
        &format!(
            "session: {{sse_keepalive: 200ms}}\nroutes:\n{}",
            Sidecar::route("/", &upstream.base(), "everything-sse")
        ),
    );
    let mut resp = open_stream(&sidecar.url("/sse")).await;
    let mut text = String::new();
    read_until(&mut resp, &mut text, |t| {
        t.matches(": keep-alive\n\n").count() >= 3
    })
    .await;
    let endpoint = text
        .find("event: endpoint")
        .expect("the endpoint event came first");
    assert!(endpoint < text.find(": keep-alive").unwrap());
    assert!(text.contains("data: /message?sessionId="), "{text}");
    wait_metric(&sidecar, "mcp_sidecar_sse_streams", &[], 1.0).await;
    drop(resp);
    // the client hung up: the stream and its session end
    wait_metric(&sidecar, "mcp_sidecar_sse_streams", &[], 0.0).await;
}

/// Every keep-alive comment in `raw` starts where an event ended.
fn comments_between_events(raw: &str) -> usize {
    let mut n = 0;
    for (at, _) in raw.match_indices(": keep-alive\n\n") {
        let before = &raw[..at];
        assert!(
            before.is_empty()
                || before.ends_with("\n\n")
                || before.ends_with("\r\n\r\n")
                || before.ends_with("\r\r"),
            "a keep-alive comment was inserted inside an event at byte {at}: {:?}",
            &before[before.len().saturating_sub(80)..]
        );
        n += 1;
    }
    n
}

/// The data of every event in `raw`, comments dropped.
pub(crate) fn event_data(raw: &str) -> Vec<String> {
    let normalized = raw.replace("\r\n", "\n");
    normalized
        .split("\n\n")
        .filter_map(|block| {
            let data: Vec<&str> = block
                .lines()
                .filter_map(|l| l.strip_prefix("data:"))
                .map(|d| d.strip_prefix(' ').unwrap_or(d))
                .collect();
            (!data.is_empty()).then(|| data.join("\n"))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn events_stay_whole_while_comments_are_inserted() {
    let pod = Pod::start(
        "legacy-keepalive-events",
        Transport::Sse,
        "/",
        "",
        "fastmcp",
        "session: {sse_keepalive: 1ms}\n",
    );
    let sidecar = &pod.sidecar;
    let mut resp = open_stream(&sidecar.url("/sse")).await;
    let mut raw = String::new();
    read_until(&mut resp, &mut raw, |t| {
        t.contains("session_id=") && t.contains("\r\n\r\n")
    })
    .await;
    let endpoint = event_data(&raw)[0].clone();
    assert!(endpoint.starts_with("/messages/?session_id="), "{endpoint}");
    let client = reqwest::Client::new();
    let post = |body: String| {
        client
            .post(sidecar.url(&endpoint))
            .header("content-type", "application/json")
            .body(body)
    };
    let init = INITIALIZE.replace("2025-06-18", "2024-11-05");
    assert_eq!(post(init).send().await.unwrap().status(), 202);
    assert_eq!(post(INITIALIZED.into()).send().await.unwrap().status(), 202);
    // big answers arrive in many reads, slow ones leave gaps
    let big: String = (0..200_000)
        .map(|i| char::from(b'a' + (i % 26) as u8))
        .collect();
    for id in 1..=3 {
        let body = serde_json::json!({"jsonrpc":"2.0","id":id,"method":"tools/call","params":{"name":"echo","arguments":{"text":big}}});
        assert_eq!(post(body.to_string()).send().await.unwrap().status(), 202);
    }
    let body = serde_json::json!({"jsonrpc":"2.0","id":4,"method":"tools/call","params":{"name":"timed_events","arguments":{"count":5,"interval":0.05}}});
    assert_eq!(post(body.to_string()).send().await.unwrap().status(), 202);
    read_until(&mut resp, &mut raw, |t| t.contains(r#""id":4,"result""#)).await;

    let comments = comments_between_events(&raw);
    assert!(comments > 0, "no keep-alive comment was written");
    let mut echoed = 0;
    for data in event_data(&raw).iter().skip(1) {
        let msg: serde_json::Value = serde_json::from_str(data)
            .unwrap_or_else(|e| panic!("an event's data is not whole JSON ({e}): {data:.120}"));
        if let Some(text) = msg["result"]["content"][0]["text"].as_str() {
            if msg["id"].as_i64().is_some_and(|id| (1..=3).contains(&id)) {
                assert_eq!(text, big, "echo {} came back altered", msg["id"]);
                echoed += 1;
            }
        }
    }
    assert_eq!(echoed, 3);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_comment_never_splits_an_event_that_arrives_in_pieces() {
    // the server pauses inside each event (mid-line, and between a data line and the blank
    // line that ends the event) for longer than the keep-alive interval
    let pod = Pod::start(
        "legacy-keepalive-stall",
        Transport::Sse,
        "/",
        "",
        "fastmcp",
        "session: {sse_keepalive: 50ms}\n",
    );
    let mut resp = open_stream(&pod.sidecar.url("/stalling?events=3&pause=0.2")).await;
    let mut raw = String::new();
    read_until(&mut resp, &mut raw, |t| {
        t.matches("\"whole\": true}\n\n").count() == 3
    })
    .await;
    // comments came during the pauses between events, none inside one
    assert!(comments_between_events(&raw) > 0, "{raw:?}");
    let data = event_data(&raw);
    assert_eq!(data.len(), 3, "{raw:?}");
    for (i, d) in data.iter().enumerate() {
        let v: serde_json::Value = serde_json::from_str(d).unwrap();
        assert_eq!(v, serde_json::json!({"part": i, "whole": true}));
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn owner_pod_killed_posts_get_404_and_the_client_reconnects() {
    let mut c = Cluster::start_with("legacy-owner-killed", "", Transport::Sse);
    let url = c.entry.url("/py/sse");
    let client = PausedClient::start_with(
        &c.dir,
        &url,
        Transport::Sse,
        20,
        10,
        &["--request-timeout", "5", "--reconnects", "3"],
    );
    let sessions = sse_sessions(&c.pods[0].sidecar).await;
    assert_eq!(sessions.len(), 1, "{sessions:?}");
    let sid = sessions[0]["sessionId"].as_str().unwrap().to_string();
    let owner = c.owner_of(&sid).await;
    c.pods[owner].sidecar.proc.kill();
    c.pods[owner].upstream.proc.kill();

    // a post for the dead stream, on each surviving pod: a clean 404, at once
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    for (i, p) in c.pods.iter().enumerate().filter(|(i, _)| *i != owner) {
        let resp = http
            .post(p.sidecar.url(&format!("/py/messages/?session_id={sid}")))
            .header("content-type", "application/json")
            .body(PING)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 404, "pod {i}");
        let body: serde_json::Value = resp.json().await.unwrap();
        assert_eq!(body["error"]["message"], "Could not find session", "{body}");
        assert_eq!(body["id"], 7);
    }
    let survivors: Vec<&Sidecar> = c
        .pods
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != owner)
        .map(|(_, p)| &p.sidecar)
        .collect();
    let failures = sum_metric(&survivors, "mcp_sidecar_sse_failures_total", &[]).await;
    assert!(failures >= 2.0);

    // the application opens a new session on a live pod and finishes its work
    let out = tokio::task::spawn_blocking(move || client.resume())
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("the client did not recover: {e}"));
    let expected: Vec<i64> = (1..=20).collect();
    assert_eq!(out["add_results"], serde_json::json!(expected));
    assert!(out["reconnects"].as_i64().unwrap() >= 1, "{out}");
}
