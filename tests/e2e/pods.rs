//! Sessions survive autoscaling: three pods (FastMCP + sidecar on 127.0.0.1-3) sharing Redis,
//! behind nginx balancing round robin per request.

use crate::harness::*;
use crate::hop::signed_hop;
use serde_json::json;
use std::time::Duration;

#[test]
fn python_client_succeeds_through_round_robin_only_with_sidecars() {
    let cluster = Cluster::start("rr-python", "");
    let out = python_client(
        &cluster.entry.url("/mcp"),
        Transport::StreamableHttp,
        &["--calls", "50"],
    );
    let expected: Vec<i64> = (1..=50).collect();
    assert_eq!(out["add_results"], json!(expected));
    // the calls really were spread: every pod served some, and non-owners forwarded
    for pod in &cluster.pods {
        pod.sidecar.wait_log("rpc=tools/call status=200");
    }
    let forwarded = cluster
        .pods
        .iter()
        .filter(|p| p.sidecar.log().contains("via=forwarded"))
        .count();
    assert_eq!(forwarded, 2, "two pods forward to the owner");

    // the same round robin straight over the MCP servers: the problem the sidecar solves
    let bare = RoundRobin::start(
        &cluster.dir,
        &cluster
            .pods
            .iter()
            .map(|p| format!("{}:{}", p.upstream.ip, p.upstream.port))
            .collect::<Vec<_>>(),
    );
    let err = python_client_outcome(&bare.url("/mcp"), &["--calls", "50"])
        .expect_err("without sidecars a session cannot survive round robin");
    assert!(
        err.contains("Session not found") || err.contains("404") || err.contains("400"),
        "{err}"
    );
}

#[test]
fn server_side_state_survives_forwarding() {
    let cluster = Cluster::start("state", "");
    let out = python_client(
        &cluster.entry.url("/mcp"),
        Transport::StreamableHttp,
        &["--calls", "0", "--counts", "12"],
    );
    let expected: Vec<i64> = (1..=12).collect();
    assert_eq!(
        out["counts"],
        json!(expected),
        "one upstream session saw every call"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn typescript_client_resumes_its_session_through_another_pod() {
    let cluster = Cluster::start("ts-resume", "");
    let a = &cluster.pods[0].sidecar;
    let b = &cluster.pods[1].sidecar;
    let first = ts_scenario(&a.url("/mcp"), Transport::StreamableHttp, "fastmcp", None);
    let sid = first["session_id"].as_str().unwrap().to_string();
    assert_eq!(first["counts"], json!([1, 2, 3]));
    let resumed = ts_scenario(
        &b.url("/mcp"),
        Transport::StreamableHttp,
        "resume",
        Some(&sid),
    );
    assert_eq!(resumed["session_id"], sid.as_str());
    assert_eq!(resumed["sums"], json!([100, 101, 102, 103, 104]));
    assert_eq!(
        resumed["counts"],
        json!([4, 5, 6]),
        "the same upstream session continued"
    );
    b.wait_log("via=forwarded");
    a.wait_log("from_peer=true");
    assert_eq!(cluster.owner_of(&sid).await, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn killing_the_owner_pod_mid_session_recovers_on_another() {
    let mut cluster = Cluster::start("owner-killed", "");
    let client = PausedClient::start(&cluster.dir, &cluster.entry.url("/mcp"), 30, 10);
    let sids = admin_sessions(&cluster.pods[0].sidecar).await;
    assert_eq!(sids.len(), 1);
    let sid = sids[0]["sessionId"].as_str().unwrap().to_string();
    let owner = cluster.owner_of(&sid).await;
    // the whole pod goes: its MCP server and its sidecar (no goodbye: SIGKILL)
    cluster.pods[owner].sidecar.proc.kill();
    cluster.pods[owner].upstream.proc.kill();
    let out = client
        .resume()
        .expect("the client saw an error after the owner died");
    let expected: Vec<i64> = (1..=30).collect();
    assert_eq!(out["add_results"], json!(expected));
    // the client ended its session on exit; the logs tell who took it over
    let survivors: Vec<usize> = (0..3).filter(|i| *i != owner).collect();
    let needle = format!("session {sid} recovered (owner pod");
    let new_owner = *survivors
        .iter()
        .find(|i| cluster.pods[**i].sidecar.log().contains(&needle))
        .expect("a surviving pod recovered the session");
    let recovered = metric(
        &cluster.pods[new_owner].sidecar,
        "mcp_sidecar_sessions_total",
        &[("event", "recovered")],
    )
    .await;
    assert_eq!(recovered, 1.0, "recovered once, not once per request");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_restarted_mcp_server_gets_its_sessions_back() {
    let mut cluster = Cluster::start("upstream-restart", "");
    let client = PausedClient::start(&cluster.dir, &cluster.entry.url("/mcp"), 20, 5);
    let sid = admin_sessions(&cluster.pods[0].sidecar).await[0]["sessionId"]
        .as_str()
        .unwrap()
        .to_string();
    let owner = cluster.owner_of(&sid).await;
    let pod = &mut cluster.pods[owner];
    let (ip, port) = (pod.upstream.ip.clone(), pod.upstream.port);
    pod.upstream.proc.kill();
    pod.upstream = FastMcp::start_on(&cluster.dir, &ip, port, Transport::StreamableHttp);
    let out = client
        .resume()
        .expect("the client saw an error after its server restarted");
    let expected: Vec<i64> = (1..=20).collect();
    assert_eq!(out["add_results"], json!(expected));
    let sidecar = &cluster.pods[owner].sidecar;
    // the owner recovered it in place (the client has since ended the session)
    sidecar.wait_log(&format!(
        "session {sid} recovered (MCP server forgot the session)"
    ));
}

#[tokio::test(flavor = "multi_thread")]
async fn delete_ends_the_session_on_every_pod_and_orphans_are_never_recorded() {
    let cluster = Cluster::start("delete-everywhere", "");
    let client = reqwest::Client::new();
    let a = &cluster.pods[0].sidecar;
    let c = &cluster.pods[2].sidecar;
    let sid = open_session(&client, &a.url("/mcp")).await;
    // the Python SDK answers a request without session with a 400 carrying a fresh id
    let orphan = mcp_post(&client, &c.url("/mcp"))
        .body(r#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(orphan.status(), 400);
    assert_eq!(
        admin_sessions(a).await.len(),
        1,
        "only the initialized session is recorded"
    );

    let resp = client
        .delete(c.url("/mcp"))
        .header("mcp-session-id", &sid)
        .header("mcp-protocol-version", "2025-06-18")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    a.wait_log(&format!("session {sid} deleted"));
    assert!(admin_sessions(a).await.is_empty());
    for pod in &cluster.pods {
        let resp = session_post(
            &client,
            &pod.sidecar.url("/mcp"),
            &sid,
            r#"{"jsonrpc":"2.0","id":2,"method":"tools/list"}"#,
        )
        .await;
        assert_eq!(
            resp.status(),
            404,
            "pod {} still knows the session",
            pod.sidecar.ip
        );
        let v: serde_json::Value = resp.json().await.unwrap();
        assert_eq!(v["error"]["message"], "Session not found");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn forged_hops_are_refused() {
    let cluster = Cluster::start("forged-hop", "");
    let client = reqwest::Client::new();
    let a = &cluster.pods[0].sidecar;
    let sid = open_session(&client, &a.url("/mcp")).await;
    let call = r#"{"jsonrpc":"2.0","id":3,"method":"tools/list"}"#;
    // hop headers on the public port
    let resp = mcp_post(&client, &a.url("/mcp"))
        .header("mcp-session-id", &sid)
        .header("x-mcp-sidecar-hop", "1")
        .header("x-mcp-sidecar-hop-time", "0")
        .header("x-mcp-sidecar-hop-signature", "00")
        .body(call)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 403);
    // the peer port without a hop, and with a signature made with another secret
    let peer_url = format!("http://{}/mcp", a.peer_address());
    let resp = session_post(&client, &peer_url, &sid, call).await;
    assert_eq!(resp.status(), 403);
    for (secret, expected) in [("not-the-peer-secret-at-all", 403), (PEER_SECRET, 200)] {
        let resp = signed_hop(&client, a, &sid, call, call, secret, 0).await;
        assert_eq!(resp.status(), expected, "secret {secret}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn redis_outage_and_an_empty_restart() {
    // one standalone Redis whatever MCP_TEST_REDIS says: this test stops and restarts it
    let mut cluster = Cluster::start_redis(
        "redis-trouble",
        &[],
        "",
        Transport::StreamableHttp,
        Redis::start,
    );
    let client = reqwest::Client::new();
    let a = &cluster.pods[0].sidecar;
    let sid = open_session(&client, &a.url("/mcp")).await;
    let redis_port = cluster.redis.port;
    cluster.redis.proc.kill();

    let (a, b) = (&cluster.pods[0].sidecar, &cluster.pods[1].sidecar);
    // the owner keeps serving its session; a new session opens in local mode
    let sum = call_tool(
        &client,
        &a.url("/mcp"),
        &sid,
        "add",
        json!({"a": 1, "b": 2}),
    )
    .await;
    assert_eq!(sum, "3");
    let local_sid = open_session(&client, &a.url("/mcp")).await;
    assert_eq!(
        call_tool(
            &client,
            &a.url("/mcp"),
            &local_sid,
            "echo",
            json!({"text": "x"})
        )
        .await,
        "x"
    );
    // another pod cannot locate the session: a quick, retryable 503, not a hang
    let resp = tokio::time::timeout(
        Duration::from_secs(5),
        mcp_post(&client, &b.url("/mcp"))
            .header("mcp-session-id", &sid)
            .body(r#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#)
            .send(),
    )
    .await
    .expect("a request hung while Redis was down")
    .unwrap();
    assert_eq!(resp.status(), 503);
    let ready: serde_json::Value = reqwest::get(a.admin("/readyz"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(ready["status"], "degraded");
    assert!(metric(a, "mcp_sidecar_redis_errors_total", &[]).await >= 1.0);

    // Redis comes back empty: the owner registers its sessions again, including the one
    // opened during the outage, and cross-pod routing works again
    cluster.redis = Redis::start_on(&cluster.dir, redis_port);
    let (a, b) = (&cluster.pods[0].sidecar, &cluster.pods[1].sidecar);
    a.wait_log("re-registered 2 of 2 local sessions");
    // b reconnects by itself; readiness shows when
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let ready: serde_json::Value = reqwest::get(b.admin("/readyz"))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if ready["status"] == "ready" {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "b never reconnected: {ready}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for s in [&sid, &local_sid] {
        let sum = call_tool(&client, &b.url("/mcp"), s, "add", json!({"a": 20, "b": 22})).await;
        assert_eq!(sum, "42");
    }
    assert_eq!(cluster.owner_of(&local_sid).await, 0);
}

#[test]
fn sampling_round_trip_when_the_answer_lands_on_another_pod() {
    let dir = test_dir("sampling");
    let redis = Redis::start(&dir);
    let pods = everything_pods(&dir, &redis, 3, &|up| {
        Sidecar::route("/mcp", up, "everything")
    });
    let entry = RoundRobin::start(&dir, &backends(pods.iter().map(|(_, s)| s)));
    // the server's sampling request travels on the tools/call stream; the client's answer is
    // a new POST that round robin sends wherever it likes. Every run must succeed; across runs
    // the answer must at least once have reached a pod other than the owner.
    let crossed = |pods: &[(Everything, Sidecar)]| {
        pods.iter().any(|(_, s)| {
            s.log()
                .lines()
                .any(|l| l.contains("rpc=response status=202") && l.contains("via=forwarded"))
        })
    };
    for run in 0..8 {
        let out = ts_scenario(
            &entry.url("/mcp"),
            Transport::StreamableHttp,
            "sampling",
            None,
        );
        assert_eq!(out["sampled"], 1, "run {run}: {out}");
        let result = out["result"].as_str().unwrap();
        assert!(result.contains("sampled: "), "run {run}: {result}");
        if run >= 2 && crossed(&pods) {
            return;
        }
    }
    panic!("in 8 runs no sampling answer was forwarded to its owner");
}

/// Opens the session's GET stream at `url` (optionally resuming after `last_event_id`).
async fn get_stream(
    client: &reqwest::Client,
    url: &str,
    sid: &str,
    last_event_id: Option<&str>,
) -> SseReader {
    let mut req = client
        .get(url)
        .header("accept", "text/event-stream")
        .header("mcp-session-id", sid)
        .header("mcp-protocol-version", "2025-06-18");
    if let Some(id) = last_event_id {
        req = req.header("last-event-id", id);
    }
    let resp = req.send().await.unwrap();
    assert_eq!(resp.status(), 200);
    SseReader::new(resp)
}

async fn next_notification(stream: &mut SseReader) -> (serde_json::Value, Event) {
    tokio::time::timeout(Duration::from_secs(10), stream.next_json_event())
        .await
        .expect("no event on the GET stream")
        .expect("the GET stream closed")
}

#[tokio::test(flavor = "multi_thread")]
async fn get_streams_and_last_event_id_resumption_work_through_the_hop() {
    let cluster = Cluster::start("get-stream-hop", "");
    let client = reqwest::Client::new();
    let [a, b, c] = [0, 1, 2].map(|i| &cluster.pods[i].sidecar);
    let sid = open_session(&client, &a.url("/mcp")).await;

    // the GET stream opened through B is the owner's stream
    let mut stream = get_stream(&client, &b.url("/mcp"), &sid, None).await;
    let sent = call_tool(
        &client,
        &c.url("/mcp"),
        &sid,
        "notify_resources_changed",
        json!({}),
    )
    .await;
    assert_eq!(sent, "sent");
    let (msg, ev) = next_notification(&mut stream).await;
    assert_eq!(msg["method"], "notifications/resources/list_changed");
    let first_id = ev
        .id
        .expect("events carry ids (the server keeps an event store)");
    drop(stream);
    b.wait_log("method=GET path=/mcp route=fastmcp rpc=none status=200");

    // missed while disconnected, replayed on resumption through yet another pod
    tokio::time::sleep(Duration::from_millis(300)).await;
    call_tool(
        &client,
        &c.url("/mcp"),
        &sid,
        "notify_resources_changed",
        json!({}),
    )
    .await;
    let mut resumed = get_stream(&client, &c.url("/mcp"), &sid, Some(&first_id)).await;
    let (msg, ev) = next_notification(&mut resumed).await;
    assert_eq!(msg["method"], "notifications/resources/list_changed");
    assert_ne!(
        ev.id.as_deref(),
        Some(first_id.as_str()),
        "a new event, not the old one"
    );
    c.wait_log("via=forwarded");
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_requests_recover_a_session_once() {
    let mut cluster = Cluster::start("recover-once", "");
    let client = reqwest::Client::new();
    let sid = open_session(&client, &cluster.pods[0].sidecar.url("/mcp")).await;
    cluster.pods[0].sidecar.proc.kill();
    cluster.pods[0].upstream.proc.kill();
    let calls = (0..16).map(|i| {
        let url = cluster.pods[1 + i % 2].sidecar.url("/mcp");
        let (client, sid) = (client.clone(), sid.clone());
        tokio::spawn(
            async move { call_tool(&client, &url, &sid, "add", json!({"a": i, "b": 1})).await },
        )
    });
    for (i, call) in calls.enumerate() {
        assert_eq!(call.await.unwrap(), (i + 1).to_string());
    }
    let mut recovered = 0.0;
    for pod in &cluster.pods[1..] {
        recovered += metric(
            &pod.sidecar,
            "mcp_sidecar_sessions_total",
            &[("event", "recovered")],
        )
        .await;
    }
    assert_eq!(recovered, 1.0, "one replay for sixteen concurrent requests");
}

#[tokio::test(flavor = "multi_thread")]
async fn bodies_beyond_the_retry_buffer_recover_too() {
    let mut cluster = Cluster::start("big-recovery", "");
    let client = reqwest::Client::new();
    let url = cluster.pods[0].sidecar.url("/mcp");
    let sid = open_session(&client, &url).await;
    // the MCP server restarts and forgets the session; the next request is 200 KiB, more than
    // Pingora can buffer for a retry, and chunked so its size is not known up front
    let pod = &mut cluster.pods[0];
    let (ip, port) = (pod.upstream.ip.clone(), pod.upstream.port);
    pod.upstream.proc.kill();
    pod.upstream = FastMcp::start_on(&cluster.dir, &ip, port, Transport::StreamableHttp);
    let text = "x".repeat(200 * 1024);
    let body = json!({"jsonrpc":"2.0","id":7,"method":"tools/call",
        "params":{"name":"echo","arguments":{"text":text}}})
    .to_string();
    let parts: Vec<Result<Vec<u8>, std::io::Error>> = body
        .as_bytes()
        .chunks(16 * 1024)
        .map(|c| Ok(c.to_vec()))
        .collect();
    let resp = session_post(
        &client,
        &url,
        &sid,
        reqwest::Body::wrap_stream(futures_util::stream::iter(parts)),
    )
    .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.headers()["mcp-session-id"],
        sid.as_str(),
        "the client keeps its id"
    );
    let msgs = messages(&resp.text().await.unwrap());
    let result = msgs
        .iter()
        .find(|m| m["id"] == 7)
        .expect("the call's result");
    assert_eq!(
        result["result"]["content"][0]["text"]
            .as_str()
            .unwrap()
            .len(),
        text.len()
    );
    cluster.pods[0].sidecar.wait_log(&format!(
        "session {sid} recovered (MCP server forgot the session)"
    ));
}

#[tokio::test(flavor = "multi_thread")]
async fn admin_api_lists_and_deletes_behind_its_token() {
    let cluster = Cluster::start("admin-api", "");
    let client = reqwest::Client::new();
    let a = &cluster.pods[0].sidecar;
    let sid = open_session(&client, &a.url("/mcp")).await;
    for token in [None, Some("wrong-token-wrong-token")] {
        let mut req = client.get(a.admin("/api/admin/sessions"));
        if let Some(t) = token {
            req = req.header("x-auth-token", t);
        }
        assert_eq!(req.send().await.unwrap().status(), 401);
    }
    let listed = admin_sessions(&cluster.pods[2].sidecar).await;
    assert_eq!(listed.len(), 1);
    let s = &listed[0];
    assert_eq!(s["sessionId"], sid.as_str());
    assert_eq!(s["owner"], a.peer_address());
    assert_eq!(s["serverName"], "fastmcp");
    assert_eq!(s["protocolVersion"], "2025-06-18");
    assert!(s["ttl"].as_u64().unwrap() > 3500);

    let pods: serde_json::Value = client
        .get(a.admin("/api/admin/pods"))
        .header("authorization", format!("Bearer {ADMIN_TOKEN}"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let addresses: Vec<&str> = pods["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["address"].as_str().unwrap())
        .collect();
    for pod in &cluster.pods {
        assert!(
            addresses.contains(&pod.sidecar.peer_address().as_str()),
            "{pods}"
        );
    }

    let resp = client
        .delete(
            cluster.pods[1]
                .sidecar
                .admin(&format!("/api/admin/sessions/{sid}")),
        )
        .header("x-auth-token", ADMIN_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(admin_sessions(a).await.is_empty());
    // another pod no longer finds it
    let resp = session_post(
        &client,
        &cluster.pods[2].sidecar.url("/mcp"),
        &sid,
        r#"{"jsonrpc":"2.0","id":1,"method":"tools/list"}"#,
    )
    .await;
    assert_eq!(resp.status(), 404);
}
