//! The request path fails closed: what a security review found passing unjudged, refused.
//! Each test shows the MCP server's own behaviour first (FastMCP reads what the sidecar must
//! refuse), then that the sidecar refuses it and the server never sees it.

use crate::harness::*;
use crate::legacy::{event_data, open_stream, read_until};
use serde_json::Value;
use sha2::{Digest, Sha256};

const ADD_CALL: &str = r#"{"jsonrpc":"2.0","id":5,"method":"tools/call","params":{"name":"add","arguments":{"a":40,"b":2}}}"#;

/// The ways of writing a call of `add` that FastMCP runs and a strict reading refuses.
fn smuggled_add_calls() -> Vec<(&'static str, Vec<u8>, i64)> {
    let mut bom = b"\xEF\xBB\xBF".to_vec();
    bom.extend_from_slice(ADD_CALL.as_bytes());
    vec![
        ("byte order mark", bom, -32700),
        (
            "duplicated method",
            br#"{"jsonrpc":"2.0","id":5,"method":"ping","params":{"name":"add","arguments":{"a":40,"b":2}},"method":"tools/call"}"#.to_vec(),
            -32600,
        ),
        (
            "duplicated tool name",
            br#"{"jsonrpc":"2.0","id":5,"method":"tools/call","params":{"name":"echo","arguments":{"text":"x"},"name":"add","arguments":{"a":40,"b":2}}}"#.to_vec(),
            -32600,
        ),
    ]
}

async fn error_of(resp: reqwest::Response) -> (u16, Value) {
    let status = resp.status().as_u16();
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["jsonrpc"], "2.0", "{body}");
    (status, body)
}

fn key_file(dir: &std::path::Path, key: &str, groups: &str) -> std::path::PathBuf {
    let path = dir.join("keys.yaml");
    std::fs::write(
        &path,
        format!(
            "keys:\n  - {{key_sha256: {}, user_id: carol, groups: [{groups}]}}\n",
            hex::encode(Sha256::digest(key.as_bytes()))
        ),
    )
    .unwrap();
    path
}

const READER_KEY: &str = "mcphub_00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";

#[tokio::test(flavor = "multi_thread")]
async fn bodies_a_lenient_server_reads_differently_never_pass_the_tool_filter() {
    let dir = test_dir("harden-fail-closed");
    let client = reqwest::Client::new();
    // FastMCP itself runs every one of these as a call of `add`
    let direct = FastMcp::start_args(
        &dir,
        "127.0.0.1",
        free_port(),
        Transport::StreamableHttp,
        &["--json-response"],
    );
    let direct_url = format!("{}/mcp", direct.base());
    let sid = open_session(&client, &direct_url).await;
    for (what, body, _) in smuggled_add_calls() {
        let resp = session_post(&client, &direct_url, &sid, body).await;
        let text = resp.text().await.unwrap();
        assert!(
            text.contains(r#""text":"42""#),
            "FastMCP with a {what}: {text}"
        );
    }

    // behind the sidecar, carol's group may call echo only
    let capture = dir.join("capture.jsonl");
    let upstream = FastMcp::start_args(
        &dir,
        "127.0.0.1",
        free_port(),
        Transport::StreamableHttp,
        &["--json-response", "--capture", capture.to_str().unwrap()],
    );
    let keys = key_file(&dir, READER_KEY, "readers");
    let sidecar = Sidecar::start(
        &dir,
        &format!(
            "auth: {{keys_file: '{}'}}\nlimits: {{max_batch: 5}}\nroutes:\n  - prefix: /mcp\n    upstream: '{}/mcp'\n    server_name: filtered\n    auth: required\n    tool_groups: {{readers: [echo]}}\n",
            keys.display(),
            upstream.base()
        ),
    );
    let url = format!("{}?key={READER_KEY}", sidecar.url("/mcp"));
    let sid = open_session(&client, &url).await;
    for (what, body, code) in smuggled_add_calls() {
        let (status, err) = error_of(session_post(&client, &url, &sid, body).await).await;
        assert_eq!(status, 400, "{what}: {err}");
        assert_eq!(err["error"]["code"], code, "{what}: {err}");
    }
    // an unfiltered tool list is not to be had that way either
    let mut bom_list = b"\xEF\xBB\xBF".to_vec();
    bom_list.extend_from_slice(br#"{"jsonrpc":"2.0","id":6,"method":"tools/list"}"#);
    let (status, _) = error_of(session_post(&client, &url, &sid, bom_list).await).await;
    assert_eq!(status, 400);
    // batches are judged message by message, and bounded
    let ping = r#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#;
    let dup_in_batch = format!(
        r#"[{ping},{{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{{"name":"echo","name":"add","arguments":{{"a":1,"b":2}}}}}}]"#
    );
    let (status, err) = error_of(session_post(&client, &url, &sid, dup_in_batch).await).await;
    assert_eq!(
        (status, err["error"]["code"].as_i64()),
        (400, Some(-32600)),
        "{err}"
    );
    let six = format!("[{}]", [ping; 6].join(","));
    let (status, err) = error_of(session_post(&client, &url, &sid, six).await).await;
    assert_eq!(status, 400);
    assert!(
        err["error"]["message"]
            .as_str()
            .unwrap()
            .contains("limit of 5"),
        "{err}"
    );
    // what carol may do still works
    let echoed = call_tool(
        &client,
        &url,
        &sid,
        "echo",
        serde_json::json!({"text": "ok"}),
    )
    .await;
    assert_eq!(echoed, "ok");
    wait_metric(
        &sidecar,
        "mcp_sidecar_client_refusals_total",
        &[("reason", "body")],
        6.0,
    )
    .await;
    let captured = std::fs::read_to_string(&capture).unwrap();
    assert!(
        !captured.contains("\\\"add\\\""),
        "a call of add reached the upstream"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_crafted_initialize_is_refused_before_it_is_stored() {
    let dir = test_dir("harden-initialize");
    let client = reqwest::Client::new();
    // a version that would become header lines when a recovery replays it
    let crafted = INITIALIZE.replace(
        "2025-06-18",
        r"2025-06-18\r\nX-MCPHub-User-Id: admin\r\nContent-Length: 0\r\n\r\nGET /smuggled HTTP/1.1",
    );
    let direct = FastMcp::start(&dir, Transport::StreamableHttp);
    let resp = mcp_post(&client, &format!("{}/mcp", direct.base()))
        .body(crafted.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "FastMCP opens a session for it");

    let pod = Pod::start(
        "harden-initialize-pod",
        Transport::StreamableHttp,
        "/",
        "",
        "fastmcp",
        "limits: {max_init_params: 1KiB}\n",
    );
    let sidecar = &pod.sidecar;
    let (status, err) = error_of(
        mcp_post(&client, &sidecar.url("/mcp"))
            .body(crafted)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 400, "{err}");
    assert_eq!(err["error"]["code"], -32602);
    assert_eq!(err["id"], 0);
    let big = INITIALIZE.replace("raw-test", &"n".repeat(2000));
    let (status, err) = error_of(
        mcp_post(&client, &sidecar.url("/mcp"))
            .body(big)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(status, 400);
    assert!(
        err["error"]["message"]
            .as_str()
            .unwrap()
            .contains("limit of 1024"),
        "{err}"
    );
    // the crafted value is in no log line
    let log = sidecar.log();
    assert!(!log.contains("X-MCPHub-User-Id: admin"), "{log}");
    assert!(!log.contains("/smuggled"));
    assert_eq!(sessions_created(sidecar).await, 0);
    // a well-formed initialize still opens a session
    open_session(&client, &sidecar.url("/mcp")).await;
}

async fn sessions_created(sidecar: &Sidecar) -> usize {
    metric(
        sidecar,
        "mcp_sidecar_sessions_total",
        &[("event", "created")],
    )
    .await as usize
}

#[tokio::test(flavor = "multi_thread")]
async fn a_legacy_post_names_exactly_one_session_in_the_form_its_stream_announced() {
    let pod = Pod::start("harden-legacy", Transport::Sse, "/", "", "fastmcp", "");
    let sidecar = &pod.sidecar;
    let client = reqwest::Client::new();
    let mut streams = Vec::new();
    for _ in 0..2 {
        let mut resp = open_stream(&sidecar.url("/sse")).await;
        let mut raw = String::new();
        read_until(&mut resp, &mut raw, |t| {
            t.contains("session_id=") && t.contains("\r\n\r\n")
        })
        .await;
        let endpoint = event_data(&raw)[0].clone();
        let sid = endpoint.split("session_id=").nth(1).unwrap().to_string();
        streams.push((resp, raw, sid));
    }
    let (a, b) = (streams[0].2.clone(), streams[1].2.clone());
    let post = |url: String, body: &'static str| {
        client
            .post(url)
            .header("content-type", "application/json")
            .body(body)
    };
    const PING: &str = r#"{"jsonrpc":"2.0","id":77,"method":"ping"}"#;
    // the MCP server acts on the last of two session ids: a post the sidecar routed and bound
    // by b would land on a's stream
    let direct = format!(
        "{}/messages/?session_id={b}&session_id={a}",
        pod.upstream.base()
    );
    assert_eq!(post(direct, PING).send().await.unwrap().status(), 202);
    let (resp_a, raw_a, _) = &mut streams[0];
    read_until(resp_a, raw_a, |t| t.contains(r#""id":77"#)).await;

    for (query, why) in [
        (
            format!("session_id={b}&session_id={a}"),
            "exactly one session",
        ),
        (
            format!("session_id={b}&session%5Fid={a}"),
            "exactly one session",
        ),
        (
            format!("session_id={b}&sessionId={a}"),
            "exactly one session",
        ),
        (format!("sessionId={a}"), "form the stream announced"),
        (format!("session_id=%61{a}"), "form the stream announced"),
    ] {
        let (status, err) = error_of(
            post(sidecar.url(&format!("/messages/?{query}")), PING)
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert_eq!(status, 400, "{query}: {err}");
        assert!(
            err["error"]["message"].as_str().unwrap().contains(why),
            "{query}: {err}"
        );
    }
    // a session named twice, once per transport
    let both = client
        .post(sidecar.url(&format!("/messages/?session_id={a}")))
        .header("content-type", "application/json")
        .header("mcp-session-id", b.as_str())
        .body(PING)
        .send()
        .await
        .unwrap();
    assert_eq!(both.status(), 400);
    // the one form the stream announced works
    let ok = post(sidecar.url(&format!("/messages/?session_id={b}")), PING);
    assert_eq!(ok.send().await.unwrap().status(), 202);
    let (resp_b, raw_b, _) = &mut streams[1];
    read_until(resp_b, raw_b, |t| t.contains(r#""id":77"#)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn shared_routes_send_legacy_posts_to_their_streams_pod() {
    let dir = test_dir("harden-shared-legacy");
    let redis = Redis::start(&dir);
    let pods: Vec<(FastMcp, Sidecar)> = (1..=2)
        .map(|i| {
            let ip = format!("127.0.0.{i}");
            let up = FastMcp::start_on(&dir, &ip, free_port(), Transport::Sse);
            let sidecar = Sidecar::start_on(
                &dir,
                &ip,
                &format!(
                    "redis: {{url: '{}'}}\npeer: {{secret: {PEER_SECRET}}}\nroutes:\n  - {{prefix: /py, upstream: '{}', server_name: fastmcp, session_mode: shared}}\n",
                    redis.url(),
                    up.base()
                ),
            );
            (up, sidecar)
        })
        .collect();
    let mut resp = open_stream(&pods[0].1.url("/py/sse")).await;
    let mut raw = String::new();
    read_until(&mut resp, &mut raw, |t| {
        t.contains("session_id=") && t.contains("\r\n\r\n")
    })
    .await;
    let endpoint = event_data(&raw)[0].clone();
    let client = reqwest::Client::new();
    // posted to the other pod: forwarded to the stream's pod, answered on the stream
    let post = client
        .post(pods[1].1.url(&endpoint))
        .header("content-type", "application/json")
        .body(INITIALIZE.replace("2025-06-18", "2024-11-05"))
        .send()
        .await
        .unwrap();
    assert_eq!(post.status(), 202, "{:?}", post.text().await);
    read_until(&mut resp, &mut raw, |t| t.contains(r#""id":0,"result""#)).await;
    assert!(!pods[1].0.proc.log_text().contains("Could not find session"));
    wait_metric(
        &pods[1].1,
        "mcp_sidecar_sse_posts_total",
        &[("via", "forwarded")],
        1.0,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn dns_rebinding_is_refused_by_the_sidecar_since_the_server_cannot_see_the_host() {
    let pod = Pod::root("harden-rebinding");
    let sidecar = &pod.sidecar;
    let client = reqwest::Client::new();
    for (host, status) in [
        ("attacker.example", 421),
        ("attacker.example:8080", 421),
        ("mcp-server", 200),
        ("mcp-server.team.svc.cluster.local:8080", 200),
        ("localhost", 200),
    ] {
        let resp = mcp_post(&client, &sidecar.url("/mcp"))
            .header("host", host)
            .body(INITIALIZE)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), status, "Host {host}");
    }
    let resp = mcp_post(&client, &sidecar.url("/mcp"))
        .header("origin", "https://attacker.example")
        .body(INITIALIZE)
        .send()
        .await
        .unwrap();
    let (status, err) = error_of(resp).await;
    assert_eq!(status, 403, "{err}");
    let resp = mcp_post(&client, &sidecar.url("/mcp"))
        .header("origin", "http://localhost:6274")
        .body(INITIALIZE)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    wait_metric(
        sidecar,
        "mcp_sidecar_client_refusals_total",
        &[("reason", "host")],
        2.0,
    )
    .await;
    wait_metric(
        sidecar,
        "mcp_sidecar_client_refusals_total",
        &[("reason", "origin")],
        1.0,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn forwarding_headers_are_the_real_peers_unless_it_is_a_trusted_proxy() {
    let client = reqwest::Client::new();
    let seen = |pod: &Pod| {
        let url = pod.sidecar.url("/mcp");
        let client = client.clone();
        async move {
            let sid = open_session(&client, &url).await;
            let body = serde_json::json!({"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"request_headers","arguments":{}}});
            let resp = mcp_post(&client, &url)
                .header("mcp-session-id", sid)
                .header("mcp-protocol-version", "2025-06-18")
                .header("x-forwarded-for", "6.6.6.6")
                .header("x-forwarded-proto", "https")
                .header("forwarded", "for=6.6.6.6")
                .body(body.to_string())
                .send()
                .await
                .unwrap();
            let msgs = messages(&resp.text().await.unwrap());
            let text = msgs[0]["result"]["content"][0]["text"]
                .as_str()
                .unwrap()
                .to_string();
            serde_json::from_str::<Value>(&text).unwrap()
        }
    };
    let untrusted = Pod::root("harden-xff");
    let h = seen(&untrusted).await;
    assert_eq!(h["x-forwarded-for"], "127.0.0.1", "{h}");
    assert_eq!(h["x-forwarded-proto"], "http");
    assert!(h.get("forwarded").is_none(), "{h}");
    let trusted = Pod::start(
        "harden-xff-trusted",
        Transport::StreamableHttp,
        "/",
        "",
        "fastmcp",
        "clients: {trusted_proxies: ['127.0.0.0/8']}\n",
    );
    let h = seen(&trusted).await;
    assert_eq!(h["x-forwarded-for"], "6.6.6.6, 127.0.0.1", "{h}");
    assert_eq!(h["x-forwarded-proto"], "https");
    assert_eq!(h["forwarded"], "for=6.6.6.6");
}

#[tokio::test(flavor = "multi_thread")]
async fn sessions_beyond_the_pods_limit_get_503_with_retry_after() {
    let pod = Pod::start(
        "harden-session-limit",
        Transport::StreamableHttp,
        "/",
        "",
        "fastmcp",
        "limits: {max_sessions: 2}\n",
    );
    let client = reqwest::Client::new();
    let url = pod.sidecar.url("/mcp");
    let first = open_session(&client, &url).await;
    open_session(&client, &url).await;
    let resp = mcp_post(&client, &url)
        .body(INITIALIZE)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["retry-after"], "5");
    let (status, err) = error_of(resp).await;
    assert_eq!(status, 503, "{err}");
    // the sessions there keep working, and a freed place is taken again
    assert_eq!(
        call_tool(
            &client,
            &url,
            &first,
            "echo",
            serde_json::json!({"text": "still"})
        )
        .await,
        "still"
    );
    let ended = client
        .delete(&url)
        .header("mcp-session-id", first)
        .send()
        .await
        .unwrap();
    assert_eq!(ended.status(), 200);
    open_session(&client, &url).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tool_list_too_large_to_filter_is_an_error_never_an_unfiltered_list() {
    let dir = test_dir("harden-held");
    let upstreams = [
        FastMcp::start_args(
            &dir,
            "127.0.0.1",
            free_port(),
            Transport::StreamableHttp,
            &[],
        ),
        FastMcp::start_args(
            &dir,
            "127.0.0.1",
            free_port(),
            Transport::StreamableHttp,
            &["--json-response"],
        ),
    ];
    let keys = key_file(&dir, READER_KEY, "readers");
    let route = |prefix: &str, up: &FastMcp| {
        format!(
            "  - prefix: {prefix}\n    upstream: '{}/mcp'\n    server_name: {}\n    auth: required\n    tool_groups: {{readers: [echo]}}\n",
            up.base(),
            &prefix[1..]
        )
    };
    let sidecar = Sidecar::start(
        &dir,
        &format!(
            "auth: {{keys_file: '{}'}}\nlimits: {{max_held_message: 512}}\nroutes:\n{}{}",
            keys.display(),
            route("/sse", &upstreams[0]),
            route("/json", &upstreams[1]),
        ),
    );
    let client = reqwest::Client::new();
    for prefix in ["/sse", "/json"] {
        let url = format!("{}?key={READER_KEY}", sidecar.url(prefix));
        let sid = open_session(&client, &url).await;
        let resp = session_post(
            &client,
            &url,
            &sid,
            r#"{"jsonrpc":"2.0","id":9,"method":"tools/list"}"#,
        )
        .await;
        let text = resp.text().await.unwrap();
        assert!(
            !text.contains("\"add\""),
            "{prefix}: an unfiltered list went out: {text}"
        );
        let msgs = messages(&text);
        let answer = msgs
            .iter()
            .find(|m| m["id"] == 9)
            .unwrap_or_else(|| panic!("{text}"));
        assert_eq!(answer["error"]["code"], -32603, "{prefix}: {answer}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn healthy_traffic_logs_no_warnings_and_complete_answers_no_errors() {
    let dir = test_dir("harden-logs");
    let redis = Redis::start(&dir);
    let pod = Pod::on(&dir, "127.0.0.1", &redis, "");
    let url = pod.sidecar.url("/mcp");
    let out = tokio::task::spawn_blocking(move || {
        python_client(&url, Transport::StreamableHttp, &["--calls", "20"])
    })
    .await
    .unwrap();
    assert_eq!(out["add_results"].as_array().unwrap().len(), 20);
    pod.sidecar.wait_log("rpc=tools/call status=200");
    let log = pod.sidecar.log();
    let warnings: Vec<&str> = log.lines().filter(|l| l.contains(" WARN ")).collect();
    assert!(warnings.is_empty(), "{warnings:#?}");
    let posts_with_errors: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("method=POST") && l.contains("error="))
        .collect();
    assert!(posts_with_errors.is_empty(), "{posts_with_errors:#?}");
}
