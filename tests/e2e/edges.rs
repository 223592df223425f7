//! Bad input and broken upstreams get a JSON-RPC error with the right status, never a hang.

use crate::harness::*;
use serde_json::Value;

async fn json_error(resp: reqwest::Response, status: u16) -> Value {
    assert_eq!(resp.status(), status);
    assert_eq!(resp.headers()["content-type"], "application/json");
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["jsonrpc"], "2.0");
    assert!(v["error"]["code"].is_i64(), "{v}");
    assert!(v["error"]["message"].is_string(), "{v}");
    v
}

/// A bare TCP upstream that records every byte it is sent and never answers.
fn recording_upstream() -> (u16, std::sync::Arc<std::sync::Mutex<Vec<u8>>>) {
    use std::io::Read;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let sink = seen.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { return };
            let sink = sink.clone();
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n) = conn.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    sink.lock().unwrap().extend_from_slice(&buf[..n]);
                }
            });
        }
    });
    (port, seen)
}

#[tokio::test(flavor = "multi_thread")]
async fn oversized_bodies_get_413_before_the_upstream_sees_them() {
    let dir = test_dir("limit");
    let (port, seen) = recording_upstream();
    let sidecar = Sidecar::start(
        &dir,
        &format!(
            "limits: {{max_body: 1KiB}}\nroutes:\n{}",
            Sidecar::route("/", &format!("http://127.0.0.1:{port}"), "recorder")
        ),
    );
    let client = reqwest::Client::new();
    let big = format!(
        r#"{{"jsonrpc":"2.0","id":11,"method":"tools/call","params":{{"name":"echo","arguments":{{"text":"{}"}}}}}}"#,
        "x".repeat(2000)
    );
    // with Content-Length: refused from the headers alone
    let resp = mcp_post(&client, &sidecar.url("/mcp"))
        .body(big.clone())
        .send()
        .await
        .unwrap();
    let v = json_error(resp, 413).await;
    assert_eq!(v["error"]["code"], -32600);
    // chunked, so the size is only known while reading
    let chunks: Vec<Result<String, std::io::Error>> = big
        .as_bytes()
        .chunks(300)
        .map(|c| Ok(String::from_utf8(c.to_vec()).unwrap()))
        .collect();
    let resp = mcp_post(&client, &sidecar.url("/mcp"))
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
            chunks,
        )))
        .send()
        .await
        .unwrap();
    json_error(resp, 413).await;
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let seen = String::from_utf8_lossy(&seen.lock().unwrap()).to_string();
    assert!(
        !seen.contains("xxxxxxxx"),
        "body bytes reached the upstream: {seen}"
    );
    wait_metric(
        &sidecar,
        "mcp_sidecar_requests_total",
        &[("status", "413")],
        2.0,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn unreachable_upstream_gets_502_with_the_request_id_echoed() {
    let dir = test_dir("502");
    let dead = free_port();
    let sidecar = Sidecar::start(
        &dir,
        &format!(
            "routes:\n{}",
            Sidecar::route("/mcp", &format!("http://127.0.0.1:{dead}/mcp"), "gone")
        ),
    );
    let client = reqwest::Client::new();
    let resp = mcp_post(&client, &sidecar.url("/mcp"))
        .body(r#"{"jsonrpc":"2.0","id":"call-7","method":"tools/list"}"#)
        .send()
        .await
        .unwrap();
    let v = json_error(resp, 502).await;
    assert_eq!(v["id"], "call-7");
    assert!(v["error"]["message"].as_str().unwrap().contains("gone"));
    wait_metric(
        &sidecar,
        "mcp_sidecar_upstream_errors_total",
        &[("route", "gone"), ("kind", "connect_refused")],
        1.0,
    )
    .await;
    // the connection is not reused after an error, but a new request works the same way
    let resp = client.get(sidecar.url("/mcp")).send().await.unwrap();
    json_error(resp, 502).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn unknown_routes_and_bad_session_ids_are_refused() {
    let pod = Pod::start(
        "refusals",
        Transport::StreamableHttp,
        "/mcp",
        "/mcp",
        "fastmcp",
        "",
    );
    let sidecar = &pod.sidecar;
    let client = reqwest::Client::new();
    let resp = mcp_post(&client, &sidecar.url("/other"))
        .body(INITIALIZE)
        .send()
        .await
        .unwrap();
    json_error(resp, 404).await;
    let resp = mcp_post(&client, &sidecar.url("/mcpx"))
        .body(INITIALIZE)
        .send()
        .await
        .unwrap();
    json_error(resp, 404).await;
    let resp = mcp_post(&client, &sidecar.url("/mcp"))
        .header("mcp-session-id", "has space")
        .body(r#"{"jsonrpc":"2.0","id":1,"method":"ping"}"#)
        .send()
        .await
        .unwrap();
    json_error(resp, 400).await;
    // malformed JSON is the upstream's to judge: it passes through and is counted as invalid
    let resp = mcp_post(&client, &sidecar.url("/mcp"))
        .body("{broken")
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_client_error());
    wait_metric(
        sidecar,
        "mcp_sidecar_requests_total",
        &[("method", "invalid")],
        1.0,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn cors_preflight_and_exposed_session_header() {
    let pod = Pod::start(
        "cors",
        Transport::StreamableHttp,
        "/mcp",
        "/mcp",
        "fastmcp",
        "cors: {allow_origins: ['http://app.test']}\n",
    );
    let sidecar = &pod.sidecar;
    let client = reqwest::Client::new();
    let pre = client
        .request(reqwest::Method::OPTIONS, sidecar.url("/mcp"))
        .header("origin", "http://app.test")
        .header("access-control-request-method", "POST")
        .header(
            "access-control-request-headers",
            "content-type, mcp-session-id",
        )
        .send()
        .await
        .unwrap();
    assert_eq!(pre.status(), 204);
    assert_eq!(
        pre.headers()["access-control-allow-origin"],
        "http://app.test"
    );
    let allowed = pre.headers()["access-control-allow-headers"]
        .to_str()
        .unwrap()
        .to_lowercase();
    assert!(allowed.contains("mcp-session-id"), "{allowed}");

    let resp = mcp_post(&client, &sidecar.url("/mcp"))
        .header("origin", "http://app.test")
        .body(INITIALIZE)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(resp.headers().contains_key("mcp-session-id"));
    let exposed = resp.headers()["access-control-expose-headers"]
        .to_str()
        .unwrap();
    assert!(exposed.contains("Mcp-Session-Id"), "{exposed}");

    // other origins are refused (the spec's Origin validation) and get no CORS grant
    let resp = mcp_post(&client, &sidecar.url("/mcp"))
        .header("origin", "http://evil.test")
        .body(INITIALIZE)
        .send()
        .await
        .unwrap();
    assert!(!resp.headers().contains_key("access-control-allow-origin"));
    json_error(resp, 403).await;
    // clients that send no Origin (IDEs, agents) are not affected
    let resp = mcp_post(&client, &sidecar.url("/mcp"))
        .body(INITIALIZE)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_and_access_log_name_route_method_and_status_but_no_query() {
    let pod = Pod::start(
        "observability",
        Transport::StreamableHttp,
        "/mcp",
        "/mcp",
        "demo",
        "",
    );
    let sidecar = &pod.sidecar;
    let client = reqwest::Client::new();
    let secret = format!("mcphub_{}", "ab".repeat(32));
    let url = sidecar.url(&format!("/mcp?key={secret}"));
    let sid = open_session(&client, &url).await;
    let sum = call_tool(
        &client,
        &url,
        &sid,
        "add",
        serde_json::json!({"a": 2, "b": 3}),
    )
    .await;
    assert_eq!(sum, "5");
    wait_metric(
        sidecar,
        "mcp_sidecar_requests_total",
        &[
            ("route", "demo"),
            ("method", "tools/call"),
            ("status", "200"),
        ],
        1.0,
    )
    .await;
    wait_metric(
        sidecar,
        "mcp_sidecar_request_duration_seconds_count",
        &[("method", "initialize")],
        1.0,
    )
    .await;
    let backend = metric(
        sidecar,
        "mcp_sidecar_store_backend",
        &[("backend", "memory")],
    )
    .await;
    assert_eq!(backend, 1.0);
    sidecar.wait_log("rpc=tools/call status=200");
    // an upstream failure makes Pingora write its own error line about the request
    let mut pod = pod;
    pod.upstream.proc.kill();
    let resp = session_post(
        &client,
        &url,
        &sid,
        r#"{"jsonrpc":"2.0","id":4,"method":"tools/list"}"#,
    )
    .await;
    assert_eq!(resp.status(), 502);
    let sidecar = &pod.sidecar;
    sidecar.wait_log("Fail to proxy");
    sidecar.wait_log("rpc=tools/list status=502");
    let log = sidecar.log();
    assert!(
        !log.contains(&secret),
        "the query string leaked into the log:\n{log}"
    );
    let health = reqwest::get(sidecar.admin("/healthz")).await.unwrap();
    assert_eq!(health.status(), 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_hanging_up_mid_body_is_not_an_error() {
    use std::io::Write;
    let pod = Pod::root("hang-up");
    let sidecar = &pod.sidecar;
    let mut conn = std::net::TcpStream::connect(("127.0.0.1", sidecar.port)).unwrap();
    conn.write_all(
        b"POST /mcp HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"jsonrpc\":",
    )
    .unwrap();
    drop(conn);
    sidecar.wait_log("method=POST path=/mcp route=fastmcp rpc=none status=0");
    let log = sidecar.log();
    assert!(
        !log.contains("ERROR"),
        "a client hang-up was logged as an error:\n{log}"
    );
}
