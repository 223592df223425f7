//! Faithful proxying of streams and headers: SSE events arrive as the server sends them, idle
//! streams stay open, DELETE and the protocol's headers reach the upstream untouched.

use crate::harness::*;
use serde_json::json;
use std::time::Duration;

#[tokio::test(flavor = "multi_thread")]
async fn sse_events_reach_the_client_as_the_server_emits_them() {
    let pod = Pod::root("sse-timing");
    let sidecar = &pod.sidecar;
    let client = reqwest::Client::new();
    let url = sidecar.url("/mcp");
    let sid = open_session(&client, &url).await;

    let call = json!({"jsonrpc":"2.0","id":5,"method":"tools/call",
        "params":{"name":"timed_events","arguments":{"count":3,"interval":1.0}}});
    let resp = session_post(&client, &url, &sid, call.to_string()).await;
    assert_eq!(resp.status(), 200);
    assert!(resp.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    let mut sse = SseReader::new(resp);
    let mut sent = Vec::new();
    let mut arrived = Vec::new();
    while let Some((msg, at)) = sse.next_json().await {
        if msg["method"] == "notifications/message" {
            let stamp: serde_json::Value =
                serde_json::from_str(msg["params"]["data"].as_str().unwrap()).unwrap();
            sent.push(stamp["sent_at"].as_f64().unwrap());
            arrived.push(at);
        } else if msg["id"] == 5 {
            assert_eq!(msg["result"]["content"][0]["text"], "done");
            break;
        }
    }
    assert_eq!(sent.len(), 3, "expected 3 progress events");
    // a buffering proxy would deliver event i only after event i+1 (or the result) existed
    for i in 0..2 {
        assert!(
            arrived[i] < sent[i + 1],
            "event {i} arrived at {} but event {} was already sent at {}: events were held back",
            arrived[i],
            i + 1,
            sent[i + 1]
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn idle_streams_stay_open_past_sixty_seconds() {
    let pod = Pod::root("idle-stream");
    let sidecar = &pod.sidecar;
    let client = reqwest::Client::new();

    // a stream with no byte at all for 65 s
    let silent = async {
        let resp = client
            .get(sidecar.url("/silent?seconds=65"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let mut sse = SseReader::new(resp);
        let first = sse.next().await.expect("first event");
        assert_eq!(first.event, "first");
        let second = sse.next().await.expect("the stream was cut while idle");
        assert_eq!(second.event, "second");
        assert!(second.arrived - first.arrived >= 60.0);
    };

    // the MCP GET stream of a session, idle for 65 s, then used
    let mcp_get = async {
        let url = sidecar.url("/mcp");
        let sid = open_session(&client, &url).await;
        let resp = client
            .get(&url)
            .header("accept", "text/event-stream")
            .header("mcp-session-id", &sid)
            .header("mcp-protocol-version", "2025-06-18")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
        let mut sse = SseReader::new(resp);
        tokio::time::sleep(Duration::from_secs(65)).await;
        let text = call_tool(&client, &url, &sid, "notify_resources_changed", json!({})).await;
        assert_eq!(text, "sent");
        let (msg, _) = tokio::time::timeout(Duration::from_secs(10), sse.next_json())
            .await
            .expect("no notification on the GET stream")
            .expect("GET stream closed");
        assert_eq!(msg["method"], "notifications/resources/list_changed");
    };
    tokio::join!(silent, mcp_get);
}

#[tokio::test(flavor = "multi_thread")]
async fn delete_reaches_the_upstream() {
    let pod = Pod::root("delete");
    let sidecar = &pod.sidecar;
    let client = reqwest::Client::new();
    let url = sidecar.url("/mcp");
    let sid = open_session(&client, &url).await;
    let resp = client
        .delete(&url)
        .header("mcp-session-id", &sid)
        .header("mcp-protocol-version", "2025-06-18")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    // the upstream ended the session: it no longer knows it
    let resp = session_post(
        &client,
        &url,
        &sid,
        r#"{"jsonrpc":"2.0","id":9,"method":"tools/list"}"#,
    )
    .await;
    assert_eq!(resp.status(), 404);
}

#[tokio::test(flavor = "multi_thread")]
async fn protocol_headers_reach_the_upstream_untouched() {
    let pod = Pod::root("headers");
    let sidecar = &pod.sidecar;
    let client = reqwest::Client::new();
    let url = sidecar.url("/mcp");
    let sid = open_session(&client, &url).await;

    let body = json!({"jsonrpc":"2.0","id":3,"method":"tools/call",
        "params":{"name":"request_headers","arguments":{}}});
    let resp = mcp_post(&client, &url)
        .header("mcp-session-id", &sid)
        .header("mcp-protocol-version", "2025-06-18")
        .header("x-request-id", "req-from-client-1")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["x-request-id"], "req-from-client-1");
    let text = resp.text().await.unwrap();
    let msgs = messages(&text);
    let seen: serde_json::Value =
        serde_json::from_str(msgs[0]["result"]["content"][0]["text"].as_str().unwrap()).unwrap();
    assert_eq!(seen["accept"], "application/json, text/event-stream");
    assert_eq!(seen["mcp-protocol-version"], "2025-06-18");
    assert_eq!(seen["mcp-session-id"], sid.as_str());
    assert_eq!(seen["x-request-id"], "req-from-client-1");
    assert_eq!(seen["host"], format!("127.0.0.1:{}", pod.upstream.port));

    // Last-Event-ID on a GET, and a request id generated when the client sent none
    let resp = client
        .get(sidecar.url("/echo"))
        .header("accept", "text/event-stream")
        .header("last-event-id", "stream-1/event-42")
        .send()
        .await
        .unwrap();
    let generated = resp.headers()["x-request-id"].to_str().unwrap().to_string();
    assert_eq!(generated.len(), 36, "a UUID request id is generated");
    let echo: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(echo["headers"]["last-event-id"], "stream-1/event-42");
    assert_eq!(echo["headers"]["accept"], "text/event-stream");
    assert_eq!(echo["headers"]["x-request-id"], generated.as_str());
    sidecar.wait_log(&format!("request_id={generated}"));
}

#[tokio::test(flavor = "multi_thread")]
async fn foreign_host_is_rewritten_for_the_upstream() {
    let pod = Pod::start(
        "host",
        Transport::StreamableHttp,
        "/",
        "",
        "fastmcp",
        "clients: {allowed_hosts: [mcp.example.com]}\n",
    );
    let sidecar = &pod.sidecar;
    let client = reqwest::Client::new();
    // FastMCP refuses a Host it does not serve (DNS-rebinding protection)...
    let direct = mcp_post(&client, &format!("{}/mcp", pod.upstream.base()))
        .header("host", "mcp.example.com")
        .body(INITIALIZE)
        .send()
        .await
        .unwrap();
    assert_eq!(direct.status(), 421);
    // ...so the sidecar sends its upstream's own authority
    let via = mcp_post(&client, &sidecar.url("/mcp"))
        .header("host", "mcp.example.com")
        .body(INITIALIZE)
        .send()
        .await
        .unwrap();
    assert_eq!(via.status(), 200);
}

#[tokio::test(flavor = "multi_thread")]
async fn non_json_bodies_pass_through_byte_for_byte() {
    let pod = Pod::root("non-json");
    let sidecar = &pod.sidecar;
    let client = reqwest::Client::new();
    let body = "plain text, {not json} ünïcode\n\ttabs";
    let resp = client
        .post(sidecar.url("/echo?x=1"))
        .header("content-type", "text/plain")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let echo: serde_json::Value = resp.json().await.unwrap();
    let received: Vec<u8> = echo["body"]
        .as_str()
        .unwrap()
        .chars()
        .map(|c| c as u8)
        .collect();
    assert_eq!(received, body.as_bytes());
    assert_eq!(echo["query"], "x=1");
    assert_eq!(echo["headers"]["content-type"], "text/plain");
    sidecar.wait_log("path=/echo route=fastmcp rpc=non_json status=200");
}

#[tokio::test(flavor = "multi_thread")]
async fn bodies_of_every_size_and_framing_arrive_intact() {
    let pod = Pod::root("body-sizes");
    let sidecar = &pod.sidecar;
    let client = reqwest::Client::new();
    // under and over the 64 KiB read-ahead, with Content-Length and chunked
    for size in [10, 60 * 1024, 200 * 1024] {
        let text: String = (0..size).map(|i| (b'a' + (i % 26) as u8) as char).collect();
        let body = json!({"jsonrpc":"2.0","id":size,"method":"tools/call",
            "params":{"name":"echo","arguments":{"text":text}}})
        .to_string();
        for chunked in [false, true] {
            let req = mcp_post(&client, &sidecar.url("/echo"));
            let req = if chunked {
                let parts: Vec<Result<Vec<u8>, std::io::Error>> = body
                    .as_bytes()
                    .chunks(7000)
                    .map(|c| Ok(c.to_vec()))
                    .collect();
                req.body(reqwest::Body::wrap_stream(futures_util::stream::iter(
                    parts,
                )))
            } else {
                req.body(body.clone())
            };
            let resp = req.send().await.unwrap();
            assert_eq!(resp.status(), 200, "size {size} chunked {chunked}");
            let echo: serde_json::Value = resp.json().await.unwrap();
            assert_eq!(
                echo["body"].as_str().unwrap(),
                body,
                "size {size} chunked {chunked}"
            );
        }
    }
    sidecar.wait_log("path=/echo route=fastmcp rpc=tools/call status=200");
}
