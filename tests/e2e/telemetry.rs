//! Traces and the audit log, end to end: sidecars export to a real OTLP/HTTP receiver
//! (tests/peers/otlp_receiver.py, decoding with the official protobuf definitions), FastMCP
//! upstreams record the headers they receive (`--capture`). One trace runs client → pod B →
//! pod A → MCP server for a forwarded request and through a recovery; a trace continues from
//! `params._meta`; a dead or stuck collector costs requests nothing but dropped spans; tool
//! calls leave audit lines, allowed and refused; no key or token is exported or audited.

use crate::harness::*;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Export every 100 ms instead of every 5 s, so tests do not wait.
const FAST_EXPORT: &[(&str, &str)] = &[("OTEL_BSP_SCHEDULE_DELAY", "100")];

/// A pod: FastMCP recording what it receives, and a sidecar tracing to `otlp`.
struct TracedPod {
    upstream: FastMcp,
    sidecar: Sidecar,
    capture: PathBuf,
}

fn traced_pod(dir: &Path, i: usize, head: &str, route: &str) -> TracedPod {
    let ip = format!("127.0.0.{i}");
    let capture = dir.join(format!("capture-{i}.jsonl"));
    let upstream = FastMcp::start_args(
        dir,
        &ip,
        free_port(),
        Transport::StreamableHttp,
        &["--capture", capture.to_str().unwrap()],
    );
    let route = route.replace("UPSTREAM", &format!("{}/mcp", upstream.base()));
    let sidecar = Sidecar::start_env(
        dir,
        &ip,
        &[],
        &format!("{head}routes:\n{route}"),
        FAST_EXPORT,
    );
    TracedPod {
        upstream,
        sidecar,
        capture,
    }
}

fn tracing_section(otlp: &Otlp) -> String {
    format!(
        "tracing: {{endpoint: '{}', service_name: sidecar-under-test}}\n",
        otlp.endpoint()
    )
}

fn traceparent(trace: &str, span: &str) -> String {
    format!("00-{trace}-{span}-01")
}

fn random_hex(len: usize) -> String {
    let mut s = uuid::Uuid::new_v4().simple().to_string();
    s.push_str(&uuid::Uuid::new_v4().simple().to_string());
    s[..len].to_string()
}

fn attr<'a>(span: &'a Value, key: &str) -> &'a Value {
    &span["attributes"][key]
}

fn find(spans: &[Value], pred: impl Fn(&Value) -> bool) -> Option<&Value> {
    spans.iter().find(|s| pred(s))
}

/// The one span of `trace` on `pod` (its peer address) named `name`.
fn span_on<'a>(spans: &'a [Value], trace: &str, pod: &str, name: &str) -> Option<&'a Value> {
    find(spans, |s| {
        s["trace_id"] == trace && s["name"] == name && attr(s, "mcp_sidecar.pod") == pod
    })
}

fn children<'a>(spans: &'a [Value], parent: &Value, name: &str) -> Vec<&'a Value> {
    spans
        .iter()
        .filter(|s| s["parent_span_id"] == parent["span_id"] && s["name"] == name)
        .collect()
}

/// The `traceparent` each request with a body containing `needle` brought to an upstream.
fn upstream_traceparents(capture: &Path, needle: &str) -> Vec<String> {
    let records = read_captures([&capture.to_path_buf()]);
    let mut out = Vec::new();
    let mut head: Option<&Value> = None;
    for r in &records {
        if r["kind"] == "head" {
            head = Some(r);
        } else if r["body"].as_str().is_some_and(|b| b.contains(needle)) {
            let tp = head
                .and_then(|h| h["headers"].as_array())
                .and_then(|hs| hs.iter().find(|h| h[0] == "traceparent"))
                .map_or(String::new(), |h| h[1].as_str().unwrap().to_string());
            out.push(tp);
        }
    }
    out
}

async fn traced_call(
    client: &reqwest::Client,
    url: &str,
    sid: &str,
    traceparent: Option<&str>,
    body: Value,
) -> String {
    let mut req = mcp_post(client, url)
        .header("mcp-session-id", sid)
        .header("mcp-protocol-version", "2025-06-18");
    if let Some(tp) = traceparent {
        req = req
            .header("traceparent", tp)
            .header("tracestate", "client=1");
    }
    let resp = req.body(body.to_string()).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    resp.text().await.unwrap()
}

fn echo(id: u64, text: &str) -> Value {
    json!({"jsonrpc":"2.0","id":id,"method":"tools/call","params":{"name":"echo","arguments":{"text":text}}})
}

#[tokio::test(flavor = "multi_thread")]
async fn forwarded_and_recovered_requests_are_one_trace_across_pods() {
    let dir = test_dir("trace-pods");
    let redis = Redis::start(&dir);
    let otlp = Otlp::start(&dir);
    let head = format!(
        "redis: {}\npeer: {{secret: {PEER_SECRET}}}\nadmin: {{token: {ADMIN_TOKEN}}}\n{}",
        redis.section(),
        tracing_section(&otlp)
    );
    let route = Sidecar::route("/mcp", "UPSTREAM", "fastmcp");
    let mut pods: Vec<TracedPod> = (1..=3)
        .map(|i| traced_pod(&dir, i, &head, &route))
        .collect();
    let addr: Vec<String> = pods.iter().map(|p| p.sidecar.peer_address()).collect();
    let client = reqwest::Client::new();
    let sid = open_session(&client, &pods[0].sidecar.url("/mcp")).await;

    // forwarded: the client's trace enters pod B, which forwards to the owner A
    let (t1, p1) = (random_hex(32), random_hex(16));
    let answer = traced_call(
        &client,
        &pods[1].sidecar.url("/mcp"),
        &sid,
        Some(&traceparent(&t1, &p1)),
        echo(1, "forwarded-call"),
    )
    .await;
    assert!(answer.contains("forwarded-call"), "{answer}");
    let spans = otlp
        .wait("the forwarded request on both pods", |s| {
            span_on(s, &t1, &addr[1], "tools/call echo").is_some()
                && span_on(s, &t1, &addr[0], "tools/call echo").is_some()
                && s.iter().filter(|x| x["trace_id"] == t1.as_str()).count() >= 4
        })
        .await;
    let on_b = span_on(&spans, &t1, &addr[1], "tools/call echo").unwrap();
    assert_eq!(
        on_b["parent_span_id"],
        p1.as_str(),
        "continues the client's span"
    );
    assert_eq!(on_b["kind"], "server");
    assert_eq!(on_b["trace_state"], "client=1");
    for (k, v) in [
        ("mcp.method.name", json!("tools/call")),
        ("gen_ai.tool.name", json!("echo")),
        ("gen_ai.operation.name", json!("execute_tool")),
        ("jsonrpc.request.id", json!("1")),
        ("mcp.session.id", json!(sid)),
        ("mcp.protocol.version", json!("2025-06-18")),
        ("mcp_sidecar.via", json!("forwarded")),
        ("mcp_sidecar.route", json!("fastmcp")),
        ("http.response.status_code", json!(200)),
    ] {
        assert_eq!(attr(on_b, k), &v, "{k} of {on_b}");
    }
    assert_eq!(on_b["resource"]["service.name"], "sidecar-under-test");
    assert_eq!(on_b["content_type"], "application/x-protobuf");
    let hop = children(&spans, on_b, "mcp_sidecar.hop");
    assert_eq!(hop.len(), 1, "one hop from B");
    assert_eq!(hop[0]["kind"], "client");
    assert!(
        !children(&spans, on_b, "mcp_sidecar.store").is_empty(),
        "B's store look-up of the owner is a child of its span"
    );
    // on the owner, the request continues the hop's span
    let on_a = span_on(&spans, &t1, &addr[0], "tools/call echo").unwrap();
    assert_eq!(on_a["parent_span_id"], hop[0]["span_id"]);
    assert_eq!(attr(on_a, "mcp_sidecar.from_peer"), true);
    assert_eq!(attr(on_a, "mcp_sidecar.via"), "local");
    let upstream = children(&spans, on_a, "mcp_sidecar.upstream");
    assert_eq!(upstream.len(), 1);
    // ...and so does the MCP server: its traceparent names A's upstream span
    assert_eq!(
        upstream_traceparents(&pods[0].capture, "forwarded-call"),
        vec![traceparent(&t1, upstream[0]["span_id"].as_str().unwrap())]
    );

    // one audit line, from the pod the client reached
    let audited = |log: String, id: &str| {
        log.lines()
            .filter(|l| l.contains(" audit] {") && l.contains(&format!("\"jsonrpc_id\":\"{id}\"")))
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    let on_b = audited(pods[1].sidecar.log(), "1");
    assert_eq!(on_b.len(), 1, "{on_b:?}");
    assert!(
        on_b[0].contains(&format!("\"forwarded_to\":\"{}\"", addr[0])),
        "{on_b:?}"
    );
    assert!(on_b[0].contains(&t1), "{on_b:?}");
    assert!(audited(pods[0].sidecar.log(), "1").is_empty());

    // a trace carried in params._meta (no header) is continued too
    let (t2, p2) = (random_hex(32), random_hex(16));
    let mut call = echo(2, "meta-call");
    call["params"]["_meta"] = json!({"traceparent": traceparent(&t2, &p2)});
    traced_call(&client, &pods[0].sidecar.url("/mcp"), &sid, None, call).await;
    let spans = otlp
        .wait("the _meta request", |s| {
            span_on(s, &t2, &addr[0], "tools/call echo").is_some()
        })
        .await;
    let on_a = span_on(&spans, &t2, &addr[0], "tools/call echo").unwrap();
    assert_eq!(on_a["parent_span_id"], p2.as_str());
    let tp = upstream_traceparents(&pods[0].capture, "meta-call");
    assert_eq!(tp.len(), 1);
    assert!(tp[0].starts_with(&format!("00-{t2}-")), "{tp:?}");

    // recovered: the owner pod dies; C forwards, finds it unreachable, recovers the session
    pods[0].sidecar.proc.kill();
    pods[0].upstream.proc.kill();
    let (t3, p3) = (random_hex(32), random_hex(16));
    let answer = traced_call(
        &client,
        &pods[2].sidecar.url("/mcp"),
        &sid,
        Some(&traceparent(&t3, &p3)),
        echo(3, "recovered-call"),
    )
    .await;
    assert!(answer.contains("recovered-call"), "{answer}");
    let spans = otlp
        .wait("the recovered request", |s| {
            span_on(s, &t3, &addr[2], "tools/call echo").is_some()
                && s.iter()
                    .any(|x| x["trace_id"] == t3.as_str() && x["name"] == "mcp_sidecar.upstream")
        })
        .await;
    let on_c = span_on(&spans, &t3, &addr[2], "tools/call echo").unwrap();
    assert_eq!(on_c["parent_span_id"], p3.as_str());
    assert_eq!(attr(on_c, "mcp_sidecar.via"), "recovered");
    let hop = children(&spans, on_c, "mcp_sidecar.hop");
    assert_eq!(hop.len(), 1, "the attempt toward the dead owner");
    assert_eq!(attr(hop[0], "error.type"), "connect_failed");
    let recover = children(&spans, on_c, "mcp_sidecar.recover");
    assert_eq!(recover.len(), 1);
    let replays = children(&spans, recover[0], "mcp_sidecar.upstream_call");
    let methods: Vec<&Value> = replays.iter().map(|s| attr(s, "mcp.method.name")).collect();
    assert!(
        methods.contains(&&json!("initialize"))
            && methods.contains(&&json!("notifications/initialized")),
        "{methods:?}"
    );
    // the replayed initialize reached C's MCP server in the same trace, header and _meta
    let init = replays
        .iter()
        .find(|s| attr(s, "mcp.method.name") == "initialize")
        .unwrap();
    let expected = traceparent(&t3, init["span_id"].as_str().unwrap());
    assert_eq!(
        upstream_traceparents(&pods[2].capture, &expected),
        vec![expected.clone()],
        "the replayed initialize carries the context in its headers and its _meta"
    );
    let upstream = children(&spans, on_c, "mcp_sidecar.upstream");
    assert_eq!(upstream.len(), 1);
    assert_eq!(
        upstream_traceparents(&pods[2].capture, "recovered-call"),
        vec![traceparent(&t3, upstream[0]["span_id"].as_str().unwrap())]
    );

    // and the new owner serves B's forwards in one trace again
    let (t4, p4) = (random_hex(32), random_hex(16));
    traced_call(
        &client,
        &pods[1].sidecar.url("/mcp"),
        &sid,
        Some(&traceparent(&t4, &p4)),
        echo(4, "after-recovery"),
    )
    .await;
    let spans = otlp
        .wait("the forward to the new owner", |s| {
            span_on(s, &t4, &addr[1], "tools/call echo").is_some()
                && span_on(s, &t4, &addr[2], "tools/call echo").is_some()
        })
        .await;
    let on_b = span_on(&spans, &t4, &addr[1], "tools/call echo").unwrap();
    let on_c = span_on(&spans, &t4, &addr[2], "tools/call echo").unwrap();
    let hop = children(&spans, on_b, "mcp_sidecar.hop");
    assert_eq!(hop.len(), 1);
    assert_eq!(on_c["parent_span_id"], hop[0]["span_id"]);
    // operation histogram in Prometheus naming, beside the existing metrics
    assert!(
        metric(
            &pods[1].sidecar,
            "mcp_server_operation_duration_seconds_count",
            &[("mcp_method_name", "tools/call")]
        )
        .await
            >= 2.0
    );
    assert!(
        metric(
            &pods[1].sidecar,
            "mcp_sidecar_trace_spans_exported_total",
            &[]
        )
        .await
            >= 2.0
    );
}

/// Requests through a sidecar whose collector is `endpoint`: all answered, none slow.
async fn served_without_waiting(sidecar: &Sidecar, n: usize) {
    let client = reqwest::Client::new();
    let sid = open_session(&client, &sidecar.url("/mcp")).await;
    for i in 0..n {
        let started = Instant::now();
        let tp = traceparent(&random_hex(32), &random_hex(16));
        let answer = traced_call(
            &client,
            &sidecar.url("/mcp"),
            &sid,
            Some(&tp),
            echo(i as u64 + 10, "x"),
        )
        .await;
        assert!(answer.contains("result"), "{answer}");
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "request {i} took {:?}",
            started.elapsed()
        );
    }
}

async fn wait_at_least(sidecar: &Sidecar, name: &str, labels: &[(&str, &str)], min: f64) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let v = metric(sidecar, name, labels).await;
        if v >= min {
            return;
        }
        assert!(Instant::now() < deadline, "{name}{labels:?} stayed at {v}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_dead_or_stuck_collector_costs_only_dropped_spans() {
    let dir = test_dir("trace-collector-down");
    let route = Sidecar::route("/mcp", "UPSTREAM", "fastmcp");
    // nothing listens there: every export fails at once
    let dead = format!(
        "tracing: {{endpoint: 'http://127.0.0.1:{}'}}\n",
        free_port()
    );
    let pod = traced_pod(&dir, 1, &dead, &route);
    served_without_waiting(&pod.sidecar, 20).await;
    // a server span and an upstream span per call
    wait_at_least(
        &pod.sidecar,
        "mcp_sidecar_trace_spans_dropped_total",
        &[("reason", "export_failed")],
        40.0,
    )
    .await;
    assert_eq!(
        metric(&pod.sidecar, "mcp_sidecar_trace_spans_exported_total", &[]).await,
        0.0
    );

    // a collector that takes the connection and never answers: exports hang until their
    // timeout, the queue fills, and spans beyond it are dropped, not waited for
    let stuck = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = stuck.local_addr().unwrap().port();
    let held = std::thread::spawn(move || {
        let mut conns = Vec::new();
        for c in stuck.incoming().take(8) {
            conns.push(c);
        }
        std::thread::sleep(Duration::from_secs(30));
    });
    let head = format!(
        "tracing: {{endpoint: 'http://127.0.0.1:{port}', max_queue: 4, export_timeout: 10s}}\n"
    );
    let pod = traced_pod(&dir, 2, &head, &route);
    served_without_waiting(&pod.sidecar, 30).await;
    // at most 4 spans wait; of the 60 or so, most are turned away
    wait_at_least(
        &pod.sidecar,
        "mcp_sidecar_trace_spans_dropped_total",
        &[("reason", "queue_full")],
        40.0,
    )
    .await;
    drop(held);
}

fn sha256(s: &str) -> String {
    hex::encode(Sha256::digest(s.as_bytes()))
}

fn key() -> String {
    format!(
        "mcphub_{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    )
}

async fn authed(
    client: &reqwest::Client,
    url: &str,
    key: &str,
    sid: Option<&str>,
    body: &str,
) -> reqwest::Response {
    let mut req = mcp_post(client, url)
        .header("authorization", format!("Bearer {key}"))
        .header("mcp-protocol-version", "2025-06-18");
    if let Some(sid) = sid {
        req = req.header("mcp-session-id", sid);
    }
    req.body(body.to_string()).send().await.unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn tool_calls_are_audited_and_no_secret_is_exported() {
    let dir = test_dir("audit");
    let otlp = Otlp::start(&dir);
    let (alice, bob) = (key(), key());
    let (alice_token, bob_token) = ("ghp_alice_secret_token_1", "ghp_bob_secret_token_2");
    let keys = dir.join("keys.yaml");
    std::fs::write(
        &keys,
        format!(
            "keys:\n  - {{key_sha256: {}, user_id: alice, groups: [dev], tokens: {{GITHUB_TOKEN: {alice_token}}}}}\n  - {{key_sha256: {}, user_id: bob, groups: [readers], tokens: {{GITHUB_TOKEN: {bob_token}}}}}\n",
            sha256(&alice),
            sha256(&bob)
        ),
    )
    .unwrap();
    let audit_file = dir.join("audit.jsonl");
    let head = format!(
        "auth: {{keys_file: '{}'}}\naudit: {{file: '{}'}}\n{}",
        keys.display(),
        audit_file.display(),
        tracing_section(&otlp)
    );
    let route = r#"  - prefix: /mcp
    upstream: 'UPSTREAM'
    server_name: github
    auth: required
    inject_headers:
      Authorization: "Bearer {token.GITHUB_TOKEN}"
    tool_groups:
      dev: ["*"]
      readers: ["echo"]
"#;
    let pod = traced_pod(&dir, 1, &head, route);
    let url = pod.sidecar.url("/mcp");
    let client = reqwest::Client::new();
    let mut sids = Vec::new();
    for k in [&alice, &bob] {
        let resp = authed(&client, &url, k, None, INITIALIZE).await;
        assert_eq!(resp.status(), 200);
        let sid = resp.headers()["mcp-session-id"]
            .to_str()
            .unwrap()
            .to_string();
        let _ = resp.bytes().await;
        assert_eq!(
            authed(&client, &url, k, Some(&sid), INITIALIZED)
                .await
                .status(),
            202
        );
        sids.push(sid);
    }
    let add = json!({"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"add","arguments":{"a":2,"b":3,"password":"argument-secret"}}}).to_string();
    let resp = authed(&client, &url, &alice, Some(&sids[0]), &add).await;
    assert_eq!(resp.status(), 200);
    assert!(resp.text().await.unwrap().contains('5'));
    let resp = authed(&client, &url, &bob, Some(&sids[1]), &add).await;
    assert_eq!(resp.status(), 403, "bob's groups do not allow add");
    let read = json!({"jsonrpc":"2.0","id":8,"method":"resources/read","params":{"uri":"info://server?token=uri-secret"}}).to_string();
    let resp = authed(&client, &url, &alice, Some(&sids[0]), &read).await;
    assert_eq!(resp.status(), 200);

    // one line per use, in the file and on the log target
    let deadline = Instant::now() + Duration::from_secs(10);
    let lines: Vec<Value> = loop {
        let lines: Vec<Value> = std::fs::read_to_string(&audit_file)
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        if lines.len() >= 3 || Instant::now() > deadline {
            break lines;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(lines.len(), 3, "{lines:?}");
    let allowed = &lines[0];
    assert_eq!(allowed["user"], "alice");
    assert_eq!(allowed["method"], "tools/call");
    assert_eq!(allowed["target"], "add");
    assert_eq!(allowed["outcome"], "ok");
    assert_eq!(allowed["status"], 200);
    assert_eq!(allowed["route"], "github");
    assert_eq!(allowed["session_id"], sids[0].as_str());
    assert_eq!(allowed["jsonrpc_id"], "7");
    assert_eq!(allowed["pod"], pod.sidecar.peer_address());
    assert_eq!(allowed["via"], "local");
    assert!(allowed["time"].as_str().unwrap().ends_with('Z'));
    assert!(allowed["duration_ms"].as_f64().unwrap() > 0.0);
    assert!(allowed["request_id"]
        .as_str()
        .is_some_and(|r| !r.is_empty()));
    assert_eq!(allowed["trace_id"].as_str().map(str::len), Some(32));
    let refused = &lines[1];
    assert_eq!(refused["user"], "bob");
    assert_eq!(refused["target"], "add");
    assert_eq!(refused["outcome"], "refused_by_policy");
    assert_eq!(refused["status"], 403);
    assert_eq!(lines[2]["method"], "resources/read");
    assert_eq!(lines[2]["target"], "info://server", "the query is not kept");
    let log = pod.sidecar.log();
    assert_eq!(
        log.lines().filter(|l| l.contains(" audit] {")).count(),
        3,
        "the log target `audit` has the same lines"
    );

    // the spans say who and what, never a key, a token or an argument
    let spans = otlp
        .wait("the refused call's span", |s| {
            s.iter()
                .any(|x| attr(x, "http.response.status_code") == 403)
        })
        .await;
    let denied = find(&spans, |s| attr(s, "http.response.status_code") == 403).unwrap();
    assert_eq!(attr(denied, "enduser.id"), "bob");
    assert_eq!(attr(denied, "error.type"), "tool_denied");
    assert_eq!(attr(denied, "rpc.response.status_code"), "-32000");
    assert_eq!(denied["status"], 2, "an error status");
    let audit_text = std::fs::read_to_string(&audit_file).unwrap();
    let spans_text = std::fs::read_to_string(&otlp.out).unwrap();
    for secret in [
        alice.as_str(),
        bob.as_str(),
        alice_token,
        bob_token,
        "argument-secret",
        "uri-secret",
        &sha256(&alice),
    ] {
        assert!(!spans_text.contains(secret), "{secret} in an exported span");
        assert!(!audit_text.contains(secret), "{secret} in an audit line");
    }
    // the token did reach the MCP server (so the check above could have failed)
    let captured = std::fs::read_to_string(&pod.capture).unwrap();
    assert!(captured.contains(alice_token));
}

/// A modern (2026-07-28) client's request, with the headers the era requires.
async fn modern_call(
    client: &reqwest::Client,
    url: &str,
    traceparent: &str,
    params: Value,
) -> Value {
    let name = params["name"].as_str().unwrap().to_string();
    let body = json!({"jsonrpc":"2.0","id":1,"method":"tools/call","params":params});
    let resp = client
        .post(url)
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
        .header("mcp-protocol-version", "2026-07-28")
        .header("mcp-method", "tools/call")
        .header("mcp-name", name)
        .header("traceparent", traceparent)
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let text = resp.text().await.unwrap();
    messages(&text)
        .into_iter()
        .find(|m| m.get("result").is_some() || m.get("error").is_some())
        .unwrap_or_else(|| panic!("no answer in {text}"))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_bridged_mrtr_round_is_one_trace_across_pods() {
    let dir = test_dir("trace-mrtr");
    let redis = Redis::start(&dir);
    let otlp = Otlp::start(&dir);
    let head = format!(
        "redis: {}\npeer: {{secret: {PEER_SECRET}}}\n{}",
        redis.section(),
        tracing_section(&otlp)
    );
    let route = Sidecar::route("/mcp", "UPSTREAM", "fastmcp");
    let pods: Vec<TracedPod> = (1..=3)
        .map(|i| traced_pod(&dir, i, &head, &route))
        .collect();
    let addr: Vec<String> = pods.iter().map(|p| p.sidecar.peer_address()).collect();
    let client = reqwest::Client::new();
    let meta = json!({
        "io.modelcontextprotocol/protocolVersion": "2026-07-28",
        "io.modelcontextprotocol/clientCapabilities": {"elicitation": {}},
        "io.modelcontextprotocol/clientInfo": {"name": "trace-test", "version": "1"}
    });
    // the call asks the client for input: pod B holds it and answers input_required
    let trace = random_hex(32);
    let first = modern_call(
        &client,
        &pods[1].sidecar.url("/mcp"),
        &traceparent(&trace, &random_hex(16)),
        json!({"name": "ask_name", "arguments": {}, "_meta": meta}),
    )
    .await;
    let result = &first["result"];
    assert_eq!(result["resultType"], "input_required", "{first}");
    let key = result["inputRequests"]
        .as_object()
        .unwrap()
        .keys()
        .next()
        .unwrap()
        .clone();
    // the client's retry, in the same trace, lands on pod C, which carries it to B
    let retry_parent = random_hex(16);
    let second = modern_call(
        &client,
        &pods[2].sidecar.url("/mcp"),
        &traceparent(&trace, &retry_parent),
        json!({
            "name": "ask_name", "arguments": {}, "_meta": meta,
            "requestState": result["requestState"],
            "inputResponses": {key: {"action": "accept", "content": {"name": "Ada"}}}
        }),
    )
    .await;
    assert!(second.to_string().contains("Hello, Ada!"), "{second}");
    let spans = otlp
        .wait("the MRTR round on B", |s| {
            s.iter()
                .any(|x| x["trace_id"] == trace.as_str() && x["name"] == "mcp_sidecar.mrtr_round")
                && span_on(s, &trace, &addr[2], "tools/call ask_name").is_some()
        })
        .await;
    // B's first answer, with the bridge's call to the MCP server under it
    let asked = find(&spans, |s| {
        s["trace_id"] == trace.as_str()
            && attr(s, "mcp_sidecar.pod") == addr[1].as_str()
            && attr(s, "mcp_sidecar.from_peer") == false
    })
    .unwrap();
    assert_eq!(attr(asked, "mcp_sidecar.via"), "bridged");
    let call = children(&spans, asked, "mcp_sidecar.upstream_call");
    assert!(!call.is_empty(), "the bridged call upstream");
    let tp = upstream_traceparents(&pods[1].capture, "ask_name");
    assert!(
        tp.iter().any(|t| t.starts_with(&format!("00-{trace}-"))),
        "the MCP server got the trace: {tp:?}"
    );
    // C forwards the retry over the hop; B's span of it continues the hop's and holds the round
    let on_c = span_on(&spans, &trace, &addr[2], "tools/call ask_name").unwrap();
    assert_eq!(on_c["parent_span_id"], retry_parent.as_str());
    assert_eq!(attr(on_c, "mcp_sidecar.via"), "bridged_forwarded");
    let hop = children(&spans, on_c, "mcp_sidecar.hop");
    assert_eq!(hop.len(), 1);
    let resumed = find(&spans, |s| s["parent_span_id"] == hop[0]["span_id"]).unwrap();
    assert_eq!(attr(resumed, "mcp_sidecar.pod"), addr[1].as_str());
    assert_eq!(attr(resumed, "mcp_sidecar.from_peer"), true);
    assert_eq!(children(&spans, resumed, "mcp_sidecar.mrtr_round").len(), 1);
}
