//! The peer hop's guarantees, end to end: two pods sharing Redis. Requests pod B forwards to the
//! session's owner A work, small and large bodies alike; hops sent to A's peer port are refused
//! when replayed (crafted, or captured on the wire between B and A), when their body is not the
//! one signed, or when signed outside the window.

use crate::harness::*;
use mcp_sidecar::peer::{body_claim, nonce, HopClaims, BODY_TRAILER, TRAILER_LEN};
use serde_json::json;
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The headers of a hop to `owner` for `sid`, signed with `secret` over `body` (or announcing a
/// trailer when `None`), timed `offset` seconds from now.
pub fn hop_headers(
    owner: &Sidecar,
    sid: &str,
    body: Option<&str>,
    secret: &str,
    offset: i64,
) -> Vec<(&'static str, String)> {
    let claim = body.map(|b| body_claim(b.as_bytes()));
    let nonce = nonce();
    let to = owner.peer_address();
    let claims = HopClaims {
        hop: 1,
        time: (unix_time() as i64 + offset) as u64,
        nonce: &nonce,
        method: "POST",
        path_and_query: "/mcp",
        session_id: sid,
        from: "127.0.0.9:1",
        to: &to,
        user: "",
        body: claim.as_deref().unwrap_or(BODY_TRAILER),
    };
    claims.headers(claims.sign(secret.as_bytes()))
}

/// Sends a request with these hop headers to `owner`'s peer port.
pub async fn send_hop(
    client: &reqwest::Client,
    owner: &Sidecar,
    sid: &str,
    headers: &[(&'static str, String)],
    body: impl Into<reqwest::Body>,
) -> reqwest::Response {
    let mut req = mcp_post(client, &format!("http://{}/mcp", owner.peer_address()))
        .header("mcp-session-id", sid)
        .header("mcp-protocol-version", "2025-06-18");
    for (name, value) in headers {
        req = req.header(*name, value);
    }
    req.body(body).send().await.unwrap()
}

/// A hop signed over `signed` that carries `sent`.
pub async fn signed_hop(
    client: &reqwest::Client,
    owner: &Sidecar,
    sid: &str,
    signed: &str,
    sent: &str,
    secret: &str,
    offset: i64,
) -> reqwest::Response {
    let headers = hop_headers(owner, sid, Some(signed), secret, offset);
    send_hop(client, owner, sid, &headers, sent.to_string()).await
}

fn tool_call(name: &str, args: serde_json::Value) -> String {
    json!({"jsonrpc":"2.0","id":5,"method":"tools/call","params":{"name":name,"arguments":args}})
        .to_string()
}

async fn refused(resp: reqwest::Response, status: u16, says: &str) {
    assert_eq!(resp.status(), status);
    let body: serde_json::Value = resp.json().await.unwrap();
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains(says), "{body}");
}

async fn refusals(sidecar: &Sidecar, reason: &str, expected: f64) {
    wait_metric(
        sidecar,
        "mcp_sidecar_hop_refusals_total",
        &[("reason", reason)],
        expected,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn forwarded_requests_work_and_replayed_or_altered_hops_do_not() {
    let dir = test_dir("hop-guarantees");
    let redis = Redis::start(&dir);
    let a = Pod::on(&dir, "127.0.0.1", &redis, "");
    let b = Pod::on(&dir, "127.0.0.2", &redis, "");
    let (a, b) = (&a.sidecar, &b.sidecar);
    let client = reqwest::Client::new();
    let sid = open_session(&client, &a.url("/mcp")).await;

    // through B, forwarded to the owner A: a small body (its digest in the signed headers)...
    assert_eq!(
        call_tool(&client, &b.url("/mcp"), &sid, "count", json!({})).await,
        "1"
    );
    b.wait_log("via=forwarded");
    // ...and one past Pingora's retry buffer (a trailer after the body)
    let text = "x".repeat(200 * 1024);
    let echoed = call_tool(&client, &b.url("/mcp"), &sid, "echo", json!({"text": text})).await;
    assert_eq!(echoed.len(), text.len());

    // a signed hop is served once; the same hop again is refused and never reaches the server
    let count = tool_call("count", json!({}));
    let headers = hop_headers(a, &sid, Some(&count), PEER_SECRET, 0);
    let resp = send_hop(&client, a, &sid, &headers, count.clone()).await;
    assert_eq!(resp.status(), 200);
    let first = resp.text().await.unwrap();
    assert!(first.contains("\"text\":\"2\""), "{first}");
    let replay = send_hop(&client, a, &sid, &headers, count.clone()).await;
    refused(replay, 403, "already used").await;
    refusals(a, "replayed", 1.0).await;
    assert_eq!(
        call_tool(&client, &b.url("/mcp"), &sid, "count", json!({})).await,
        "3"
    );

    // a body other than the signed one
    let echo = tool_call("echo", json!({"text": "not what was signed"}));
    let resp = signed_hop(&client, a, &sid, &count, &echo, PEER_SECRET, 0).await;
    refused(resp, 403, "not the one that was signed").await;
    refusals(a, "body_digest", 1.0).await;
    // a large body whose trailer does not match it
    let mut sealed = tool_call("echo", json!({"text": "y".repeat(100 * 1024)})).into_bytes();
    sealed.extend_from_slice(&[0u8; TRAILER_LEN]);
    let parts: Vec<Result<Vec<u8>, std::io::Error>> =
        sealed.chunks(16 * 1024).map(|c| Ok(c.to_vec())).collect();
    let headers = hop_headers(a, &sid, None, PEER_SECRET, 0);
    let resp = send_hop(
        &client,
        a,
        &sid,
        &headers,
        reqwest::Body::wrap_stream(futures_util::stream::iter(parts)),
    )
    .await;
    refused(resp, 403, "not the one that was signed").await;
    refusals(a, "body_digest", 2.0).await;

    // clocks may disagree by peer.max_clock_skew (5s by default), no more
    let resp = signed_hop(&client, a, &sid, &count, &count, PEER_SECRET, 3).await;
    assert_eq!(resp.status(), 200, "3s in the owner's future");
    let resp = signed_hop(&client, a, &sid, &count, &count, PEER_SECRET, 30).await;
    refused(resp, 403, "time window").await;
    let resp = signed_hop(&client, a, &sid, &count, &count, PEER_SECRET, -30).await;
    refused(resp, 403, "time window").await;
    refusals(a, "expired", 2.0).await;

    // one line per refusal, with the reason and without the signature
    let log = a.log();
    assert!(log.contains("peer hop refused: reason=replayed"), "{log}");
    let signature = &headers
        .iter()
        .find(|(n, _)| n.ends_with("signature"))
        .unwrap()
        .1;
    assert!(!log.contains(&signature[3..]), "the log shows a signature");
    assert!(!log.contains(PEER_SECRET));
}

/// A TCP relay in front of a pod's peer port that keeps every byte sent toward it.
struct Tap {
    addr: String,
    seen: Arc<Mutex<Vec<u8>>>,
    target: Arc<Mutex<Option<String>>>,
}

impl Tap {
    async fn start() -> Tap {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let tap = Tap {
            addr: listener.local_addr().unwrap().to_string(),
            seen: Arc::default(),
            target: Arc::default(),
        };
        let (seen, target) = (tap.seen.clone(), tap.target.clone());
        tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                let to = target.lock().unwrap().clone().expect("tap target set");
                let outbound = tokio::net::TcpStream::connect(to).await.unwrap();
                let (mut in_read, mut in_write) = inbound.into_split();
                let (mut out_read, mut out_write) = outbound.into_split();
                let seen = seen.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 64 * 1024];
                    while let Ok(n @ 1..) = in_read.read(&mut buf).await {
                        seen.lock().unwrap().extend_from_slice(&buf[..n]);
                        if out_write.write_all(&buf[..n]).await.is_err() {
                            break;
                        }
                    }
                });
                tokio::spawn(async move {
                    let _ = tokio::io::copy(&mut out_read, &mut in_write).await;
                });
            }
        });
        tap
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_hop_captured_on_the_wire_and_sent_again_is_refused() {
    let dir = test_dir("hop-captured");
    let redis = Redis::start(&dir);
    // pod A advertises the tap, so B's hops to A pass through it
    let tap = Tap::start().await;
    let a = Pod::on_full(
        &dir,
        "127.0.0.1",
        &redis,
        &[("advertise_address", tap.addr.as_str())],
        "",
        Transport::StreamableHttp,
    );
    *tap.target.lock().unwrap() = Some(format!("127.0.0.1:{}", a.sidecar.peer_port));
    let b = Pod::on(&dir, "127.0.0.2", &redis, "");
    let client = reqwest::Client::new();
    let sid = open_session(&client, &a.sidecar.url("/mcp")).await;
    assert_eq!(
        call_tool(&client, &b.sidecar.url("/mcp"), &sid, "count", json!({})).await,
        "1"
    );
    let captured = tap.seen.lock().unwrap().clone();
    let head = String::from_utf8_lossy(&captured);
    assert!(
        head.starts_with("POST /mcp") && head.contains("x-mcp-sidecar-hop-signature: v3:"),
        "{head}"
    );

    // the same bytes, straight to A's peer port
    let mut replay = tokio::net::TcpStream::connect(format!("127.0.0.1:{}", a.sidecar.peer_port))
        .await
        .unwrap();
    replay.write_all(&captured).await.unwrap();
    let mut answer = Vec::new();
    tokio::time::timeout(
        std::time::Duration::from_secs(5),
        replay.read_to_end(&mut answer),
    )
    .await
    .expect("the owner answers and closes")
    .unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 403"), "{answer}");
    assert!(answer.contains("already used"), "{answer}");
    refusals(&a.sidecar, "replayed", 1.0).await;
    // the tool ran once
    assert_eq!(
        call_tool(&client, &b.sidecar.url("/mcp"), &sid, "count", json!({})).await,
        "2"
    );
}
