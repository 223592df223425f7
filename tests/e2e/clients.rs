//! The official Python and TypeScript clients complete initialize → tools/list → tools/call
//! through the sidecar, on both MCP HTTP transports.

use crate::harness::*;

#[test]
fn python_client_over_streamable_http_with_a_rewritten_prefix() {
    let pod = Pod::start(
        "py-streamable",
        Transport::StreamableHttp,
        "/team/tools",
        "/mcp",
        "fastmcp",
        "",
    );
    let sidecar = &pod.sidecar;
    let out = python_client(
        &sidecar.url("/team/tools"),
        Transport::StreamableHttp,
        &["--calls", "5"],
    );
    assert_eq!(out["add_results"], serde_json::json!([1, 2, 3, 4, 5]));
    assert_eq!(out["echo"], "héllo ✓");
    assert!(out["tools"].as_array().unwrap().contains(&"add".into()));
    assert!(!out["session_id"].as_str().unwrap().is_empty());
    sidecar.wait_log("rpc=initialize status=200");
    sidecar.wait_log("rpc=tools/list status=200");
    sidecar.wait_log("rpc=tools/call status=200");
    sidecar.wait_log("rpc=notifications/initialized status=202");
}

#[test]
fn python_client_over_legacy_sse() {
    let pod = Pod::start("py-sse", Transport::Sse, "/", "", "legacy", "");
    let sidecar = &pod.sidecar;
    let out = python_client(&sidecar.url("/sse"), Transport::Sse, &["--calls", "3"]);
    assert_eq!(out["add_results"], serde_json::json!([1, 2, 3]));
    assert_eq!(out["echo"], "héllo ✓");
    sidecar.wait_log("method=GET path=/sse");
    sidecar.wait_log("method=POST path=/messages/ route=legacy rpc=tools/call status=202");
}

#[test]
fn typescript_client_over_streamable_http_against_server_everything() {
    let dir = test_dir("ts-streamable");
    let upstream = Everything::start(&dir, Transport::StreamableHttp);
    let sidecar = Sidecar::start(
        &dir,
        &format!(
            "routes:\n{}",
            Sidecar::route("/mcp", &format!("{}/mcp", upstream.base()), "everything")
        ),
    );
    let out = ts_client(&sidecar.url("/mcp"), Transport::StreamableHttp);
    assert_eq!(out["echo"], "Echo: héllo ✓");
    assert_eq!(out["sum"], "The sum of 2 and 40 is 42.");
    assert!(out["tools"].as_array().unwrap().contains(&"get-sum".into()));
    // the client ends its session with DELETE, which must reach the server
    sidecar.wait_log("method=DELETE path=/mcp route=everything rpc=none status=200");
}

#[test]
fn typescript_client_over_legacy_sse_against_server_everything() {
    let dir = test_dir("ts-sse");
    let upstream = Everything::start(&dir, Transport::Sse);
    let sidecar = Sidecar::start(
        &dir,
        &format!(
            "routes:\n{}",
            Sidecar::route("/", &upstream.base(), "everything-sse")
        ),
    );
    let out = ts_client(&sidecar.url("/sse"), Transport::Sse);
    assert_eq!(out["echo"], "Echo: héllo ✓");
    assert_eq!(out["sum"], "The sum of 2 and 40 is 42.");
    sidecar.wait_log("method=POST path=/message route=everything-sse rpc=tools/call status=202");
}
