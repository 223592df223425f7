//! Graceful scale-in: a pod that drains (SIGTERM, or the admin API from a `preStop` hook) hands
//! its sessions to the pods that stay at once, and no client notices.

use crate::harness::*;
use std::time::{Duration, Instant};

async fn pod_addresses(sidecar: &Sidecar) -> Vec<String> {
    admin_api(sidecar, reqwest::Method::GET, "/api/admin/pods")
        .await
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["address"].as_str().unwrap().to_string())
        .collect()
}

/// Owners of all sessions in the store.
async fn owners(sidecar: &Sidecar) -> Vec<String> {
    admin_sessions(sidecar)
        .await
        .into_iter()
        .map(|s| s["owner"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_under_load_moves_sessions_at_once_and_fails_no_request() {
    // a pod's registration would outlive the whole test: sessions can only move this fast
    // because the draining pod deregisters
    let mut c = Cluster::start_full(
        "drain-sigterm",
        &[("grace_period", "5s"), ("shutdown_timeout", "5s")],
        "session: {pod_ttl: 120s, heartbeat_interval: 1s}\n",
        Transport::StreamableHttp,
    );
    let backends = |pods: &[Pod]| backends(pods.iter().map(|p| &p.sidecar));
    // the Service: it drops pod 0's endpoint once its readiness fails, as Kubernetes does
    c.entry = RoundRobin::start_reloadable(&c.dir, &backends(&c.pods));
    let url = c.entry.url("/mcp");
    let clients: Vec<_> = (0..6)
        .map(|_| {
            let url = url.clone();
            std::thread::spawn(move || {
                python_client_outcome(&url, &["--calls", "60", "--call-interval", "0.05"])
            })
        })
        .collect();
    // every client has a session and is mid-way through its calls
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let sessions = admin_sessions(&c.pods[1].sidecar).await;
        if sessions.len() == 6 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "clients did not start: {sessions:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let leaving = c.pods[0].sidecar.peer_address();
    let owned_before = owners(&c.pods[1].sidecar)
        .await
        .iter()
        .filter(|o| **o == leaving)
        .count();
    assert!(owned_before > 0, "round robin gave pod 0 no session");

    let terminated = Instant::now();
    c.pods[0].sidecar.proc.terminate();
    // deregistered at once, not after pod_ttl
    while pod_addresses(&c.pods[1].sidecar).await.contains(&leaving) {
        assert!(
            terminated.elapsed() < Duration::from_secs(10),
            "the terminated pod stayed registered"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let ready = reqwest::get(c.pods[0].sidecar.admin("/readyz"))
        .await
        .unwrap();
    assert_eq!(ready.status(), 503);
    c.entry.set_backends(&backends(&c.pods[1..]));
    // a load balancer slower to notice still reaches pod 0: it keeps accepting through its
    // grace period (Pingora alone closes its listeners on SIGTERM) and hands the new session
    // to a pod that stays
    let http = reqwest::Client::new();
    let late = open_session(&http, &c.pods[0].sidecar.url("/mcp")).await;
    let late_owner = admin_sessions(&c.pods[1].sidecar)
        .await
        .into_iter()
        .find(|s| s["sessionId"] == late)
        .map(|s| s["owner"].clone());
    assert!(
        late_owner.is_some() && late_owner != Some(serde_json::json!(leaving)),
        "{late_owner:?}"
    );

    for (i, client) in clients.into_iter().enumerate() {
        let out = client
            .join()
            .unwrap()
            .unwrap_or_else(|e| panic!("client {i} failed: {e}"));
        let expected: Vec<i64> = (1..=60).collect();
        assert_eq!(
            out["add_results"],
            serde_json::json!(expected),
            "client {i}"
        );
    }
    // the sessions pod 0 held now live on the pods that stay, moved well inside pod_ttl
    assert!(terminated.elapsed() < Duration::from_secs(100));
    let after = owners(&c.pods[1].sidecar).await;
    assert!(!after.contains(&leaving), "{after:?}");
    // (by deregistration, or by its closed peer port in the instant before it)
    let moved = format!("previous owner {leaving},");
    let recovered: usize = c.pods[1..]
        .iter()
        .map(|p| {
            p.sidecar
                .log()
                .lines()
                .filter(|l| l.contains(&moved))
                .count()
        })
        .sum();
    assert!(recovered >= owned_before, "{recovered} < {owned_before}");
    // and the sidecar exits within its grace period and shutdown timeout
    let status = c.pods[0].sidecar.proc.wait_exit(Duration::from_secs(15));
    assert!(status.is_some(), "the sidecar did not exit after SIGTERM");
    let log = c.pods[0].sidecar.log();
    assert!(log.contains("draining: pod"), "{log}");
}

#[tokio::test(flavor = "multi_thread")]
async fn admin_drain_hands_sessions_and_new_sessions_to_peers() {
    let c = Cluster::start("drain-admin", "session: {pod_ttl: 120s}\n");
    let http = reqwest::Client::new();
    let pod0 = &c.pods[0].sidecar;
    let sid = open_session(&http, &pod0.url("/mcp")).await;
    assert_eq!(c.owner_of(&sid).await, 0);

    // the drain needs the admin token
    let resp = http
        .post(pod0.admin("/api/admin/drain"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    assert_eq!(
        reqwest::get(pod0.admin("/readyz")).await.unwrap().status(),
        200
    );

    let v = admin_api(pod0, reqwest::Method::POST, "/api/admin/drain").await;
    assert_eq!(v["draining"], true);
    assert_eq!(v["started"], true);
    assert_eq!(v["sessions"], 1);
    assert_eq!(v["peers"].as_array().unwrap().len(), 2, "{v}");

    // readiness fails, the pod is deregistered, and says so in its metrics
    let ready = reqwest::get(pod0.admin("/readyz")).await.unwrap();
    assert_eq!(ready.status(), 503);
    assert_eq!(
        ready.json::<serde_json::Value>().await.unwrap()["status"],
        "draining"
    );
    assert!(!pod_addresses(&c.pods[1].sidecar)
        .await
        .contains(&pod0.peer_address()));
    assert_eq!(metric(pod0, "mcp_sidecar_draining", &[]).await, 1.0);
    // it stays deregistered (the heartbeat does not bring it back)
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(!pod_addresses(&c.pods[1].sidecar)
        .await
        .contains(&pod0.peer_address()));

    // a request that still reaches the draining pod is served, and its session moves to a peer
    let text = call_tool(
        &http,
        &pod0.url("/mcp"),
        &sid,
        "add",
        serde_json::json!({"a": 40, "b": 2}),
    )
    .await;
    assert_eq!(text, "42");
    let owner = c.owner_of(&sid).await;
    assert_ne!(owner, 0);
    // from there on any pod serves it, without the draining pod
    for p in &c.pods[1..] {
        let text = call_tool(
            &http,
            &p.sidecar.url("/mcp"),
            &sid,
            "add",
            serde_json::json!({"a": 1, "b": 2}),
        )
        .await;
        assert_eq!(text, "3");
    }

    // a new session asked of the draining pod opens on a peer
    let sid2 = open_session(&http, &pod0.url("/mcp")).await;
    assert_ne!(c.owner_of(&sid2).await, 0);
    let text = call_tool(
        &http,
        &c.entry.url("/mcp"),
        &sid2,
        "echo",
        serde_json::json!({"text": "hi"}),
    )
    .await;
    assert_eq!(text, "hi");
    // a legacy stream cannot move later, so it is not opened on a draining pod
    let resp = http
        .get(pod0.url("/mcp"))
        .header("accept", "text/event-stream")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 503);

    // draining twice is harmless
    let v = admin_api(pod0, reqwest::Method::POST, "/api/admin/drain").await;
    assert_eq!(v["started"], false);
    assert!(
        pod0.log().contains("handoff="),
        "access lines name the peer taking over"
    );
}
