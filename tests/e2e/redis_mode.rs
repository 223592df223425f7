//! Memory mode and Redis mode of the running sidecar: what it says at startup, what readiness
//! reports, and that proxying never depends on Redis being up.

use crate::harness::*;
use serde_json::Value;
use std::time::{Duration, Instant};

async fn readyz(sidecar: &Sidecar) -> Value {
    let resp = reqwest::get(sidecar.admin("/readyz")).await.unwrap();
    assert_eq!(resp.status(), 200);
    resp.json().await.unwrap()
}

async fn wait_ready_status(sidecar: &Sidecar, status: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let v = readyz(sidecar).await;
        if v["status"] == status {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "readiness never became {status}: {v}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn memory_mode_is_announced_and_serves_mcp() {
    let pod = Pod::start(
        "memory-mode",
        Transport::StreamableHttp,
        "/mcp",
        "/mcp",
        "demo",
        "",
    );
    let sidecar = &pod.sidecar;
    assert!(
        sidecar
            .log()
            .contains("in-process memory (single-pod mode)"),
        "{}",
        sidecar.log()
    );
    let v = readyz(sidecar).await;
    assert_eq!(v["status"], "ready");
    assert_eq!(v["store"], "memory");
    let out = python_client(&sidecar.url("/mcp"), Transport::StreamableHttp, &[]);
    assert_eq!(out["add_results"], serde_json::json!([1]));
}

#[tokio::test(flavor = "multi_thread")]
async fn redis_outage_degrades_readiness_but_not_traffic() {
    let dir = test_dir("redis-mode");
    let mut redis = Redis::start(&dir);
    let port = redis.port;
    let upstream = FastMcp::start(&dir, Transport::StreamableHttp);
    let sidecar = Sidecar::start(
        &dir,
        &format!(
            "redis: {{url: '{}'}}\npeer: {{secret: {PEER_SECRET}}}\nroutes:\n{}",
            redis.url(),
            Sidecar::route("/mcp", &format!("{}/mcp", upstream.base()), "demo")
        ),
    );
    assert!(sidecar
        .log()
        .contains(&format!("session store: redis at 127.0.0.1:{port}")));
    let v = wait_ready_status(&sidecar, "ready").await;
    assert_eq!(v["store"], "redis");

    redis.proc.kill();
    let v = wait_ready_status(&sidecar, "degraded").await;
    assert_eq!(v["store"], "redis");
    let client = reqwest::Client::new();
    let url = sidecar.url("/mcp");
    let sid = open_session(&client, &url).await;
    assert_eq!(
        call_tool(
            &client,
            &url,
            &sid,
            "echo",
            serde_json::json!({"text": "still here"})
        )
        .await,
        "still here"
    );
    let errors = metric(&sidecar, "mcp_sidecar_redis_errors_total", &[]).await;
    assert!(errors >= 1.0, "redis errors were not counted");

    let _redis = Redis::start_on(&dir, port);
    wait_ready_status(&sidecar, "ready").await;
}
