//! One owner per session: a pod that stalls, or is cut off from Redis, long enough for its
//! registration to lapse loses its sessions to the peers that recover them, and must not serve
//! them again when it is back. Two pods (FastMCP recording every request it receives + sidecar)
//! share Redis; the stall is a SIGSTOP of one sidecar (as a long pause or a frozen VM looks), the
//! partition a relay between one sidecar and Redis that the test cuts.

use crate::harness::*;
use serde_json::{json, Value};
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Short heartbeats, so a stall of a few seconds makes a pod dead to its peers.
const SESSION: &str = "session: {heartbeat_interval: 200ms, pod_ttl: 2s}\n";

struct Pods {
    _dir: PathBuf,
    _redis: Redis,
    /// (MCP server, its capture file, sidecar)
    pods: Vec<(FastMcp, PathBuf, Sidecar)>,
}

impl Pods {
    /// `redis_url` gives each pod (0 or 1) the URL it reaches Redis at.
    fn start(name: &str, mut redis_url: impl FnMut(usize, &Redis) -> String) -> Pods {
        let dir = test_dir(name);
        let redis = Redis::start(&dir);
        let pods = (1..=2)
            .map(|i| {
                let (upstream, sidecar, capture) = capturing_pod(&dir, i, |upstream| {
                    format!(
                        "redis: {{url: '{}'}}\npeer: {{secret: {PEER_SECRET}}}\nadmin: {{token: {ADMIN_TOKEN}}}\n{SESSION}routes:\n{}",
                        redis_url(i - 1, &redis),
                        Sidecar::route("/mcp", &format!("{}/mcp", upstream.base()), "fastmcp")
                    )
                });
                (upstream, capture, sidecar)
            })
            .collect();
        Pods {
            _dir: dir,
            _redis: redis,
            pods,
        }
    }

    fn sidecar(&self, i: usize) -> &Sidecar {
        &self.pods[i].2
    }

    /// The upstream session ids the MCP server of pod `i` was sent requests on.
    fn upstream_sessions(&self, i: usize) -> Vec<String> {
        read_captures([&self.pods[i].1])
            .iter()
            .filter(|r| r["kind"] == "head" && r["method"] == "POST")
            .filter_map(|r| {
                r["headers"]
                    .as_array()?
                    .iter()
                    .find(|h| h[0] == "mcp-session-id")
                    .map(|h| h[1].as_str().unwrap().to_string())
            })
            .collect()
    }

    /// Waits until the other pod sees pod `i` registered (`true`) or not.
    async fn wait_registered(&self, i: usize, registered: bool) {
        let me = self.sidecar(i).peer_address();
        let deadline = Instant::now() + Duration::from_secs(10);
        while pods(self.sidecar(1 - i)).await.contains(&me) != registered {
            assert!(
                Instant::now() < deadline,
                "{me} registered: never {registered}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn stall(&self, i: usize) {
        signal(self.sidecar(i), "-STOP");
    }

    fn wake(&self, i: usize) {
        signal(self.sidecar(i), "-CONT");
    }

    /// The store's record of `sid`, as the admin API lists it.
    async fn record(&self, sid: &str) -> Value {
        admin_sessions(self.sidecar(1))
            .await
            .into_iter()
            .find(|s| s["sessionId"] == sid)
            .unwrap_or_else(|| panic!("session {sid} is not in the store"))
    }
}

fn signal(sidecar: &Sidecar, sig: &str) {
    let status = Command::new("kill")
        .args([sig, &sidecar.proc.pid().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

async fn pods(sidecar: &Sidecar) -> Vec<String> {
    admin_api(sidecar, reqwest::Method::GET, "/api/admin/pods")
        .await
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["address"].as_str().unwrap().to_string())
        .collect()
}

/// The port of the MCP server that answered a call on `sid` through `url`.
async fn served_by(client: &reqwest::Client, url: &str, sid: &str) -> u64 {
    let who = call_tool(client, url, sid, "whoami", json!({})).await;
    serde_json::from_str::<Value>(&who).unwrap()["port"]
        .as_u64()
        .unwrap()
}

async fn count(client: &reqwest::Client, url: &str, sid: &str) -> String {
    call_tool(client, url, sid, "count", json!({})).await
}

/// A relay between a pod and Redis that the test can cut, as a network partition cuts one node
/// off: open connections are dropped and new ones closed at once.
struct Link {
    port: u16,
    open: Arc<AtomicBool>,
    relays: Arc<Mutex<Vec<tokio::task::AbortHandle>>>,
}

impl Link {
    fn to(redis: &Redis) -> Link {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let listener = tokio::net::TcpListener::from_std(listener).unwrap();
        let open = Arc::new(AtomicBool::new(true));
        let relays = Arc::new(Mutex::new(Vec::new()));
        let redis = format!("127.0.0.1:{}", redis.port);
        tokio::spawn({
            let (open, relays) = (open.clone(), relays.clone());
            async move {
                loop {
                    let (mut pod, _) = listener.accept().await.unwrap();
                    if !open.load(Ordering::SeqCst) {
                        continue;
                    }
                    let redis = redis.clone();
                    let relay = tokio::spawn(async move {
                        if let Ok(mut server) = tokio::net::TcpStream::connect(&redis).await {
                            let _ = tokio::io::copy_bidirectional(&mut pod, &mut server).await;
                        }
                    });
                    relays.lock().unwrap().push(relay.abort_handle());
                }
            }
        });
        Link { port, open, relays }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    fn cut(&self) {
        self.open.store(false, Ordering::SeqCst);
        for relay in self.relays.lock().unwrap().drain(..) {
            relay.abort();
        }
    }

    fn heal(&self) {
        self.open.store(true, Ordering::SeqCst);
    }
}

/// Pod A owns a session and is cut off (`isolate`) until its registration lapses; B recovers the
/// session onto its own MCP server. Returns the session id and B's upstream session id.
async fn lose_a_session_to_b(
    p: &Pods,
    client: &reqwest::Client,
    isolate: impl FnOnce(),
) -> (String, String) {
    let (a, b) = (p.sidecar(0), p.sidecar(1));
    let sid = open_session(client, &a.url("/mcp")).await;
    assert_eq!(count(client, &a.url("/mcp"), &sid).await, "1");
    assert_eq!(count(client, &b.url("/mcp"), &sid).await, "2");
    let a_upstream = p.upstream_sessions(0).last().unwrap().clone();

    isolate();
    p.wait_registered(0, false).await;
    // the owner is gone for B: it replays the session on its own MCP server
    assert_eq!(count(client, &b.url("/mcp"), &sid).await, "1");
    b.wait_log(&format!("session {sid} recovered (owner pod gone)"));
    let b_upstream = p.upstream_sessions(1).last().unwrap().clone();
    assert_ne!(a_upstream, b_upstream);
    assert_eq!(p.record(&sid).await["owner"], b.peer_address());
    (sid, b_upstream)
}

/// After the heal, every call on the session is served by B's upstream session, whichever pod
/// it reaches; A's MCP server sees nothing more of it.
async fn assert_one_upstream_session(
    p: &Pods,
    client: &reqwest::Client,
    sid: &str,
    b_upstream: &str,
    a_requests_before: usize,
    from: u32,
) {
    let (a, b) = (p.sidecar(0), p.sidecar(1));
    for (i, url) in [a.url("/mcp"), b.url("/mcp"), a.url("/mcp"), b.url("/mcp")]
        .iter()
        .enumerate()
    {
        assert_eq!(
            count(client, url, sid).await,
            (from + i as u32).to_string(),
            "call {i} continued B's upstream session"
        );
    }
    assert_eq!(
        p.upstream_sessions(0).len(),
        a_requests_before,
        "A's MCP server was sent requests after A lost the session"
    );
    assert!(
        p.upstream_sessions(1).iter().all(|s| s == b_upstream),
        "B's MCP server saw one upstream session"
    );
    assert_eq!(p.record(sid).await["owner"], b.peer_address());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stalled_owner_forwards_the_session_it_lost_instead_of_serving_it() {
    let p = Pods::start("stall-request", |_, redis| redis.url());
    let client = reqwest::Client::new();
    let (a, b) = (p.sidecar(0), p.sidecar(1));
    let (sid, b_upstream) = lose_a_session_to_b(&p, &client, || p.stall(0)).await;
    let a_requests = p.upstream_sessions(0).len();

    // a request for the session waits in A's socket while A is still frozen: when A wakes up
    // with the session in its table, the request races A's first heartbeat
    let waiting = tokio::spawn({
        let (client, url, sid) = (client.clone(), a.url("/mcp"), sid.clone());
        async move { served_by(&client, &url, &sid).await }
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    p.wake(0);
    assert_eq!(
        waiting.await.unwrap(),
        u64::from(p.pods[1].0.port),
        "A served a session B owns"
    );
    a.wait_log(&format!(
        "session {sid} lost to pod {} (epoch 1)",
        b.peer_address()
    ));
    wait_metric(a, "mcp_sidecar_sessions_total", &[("event", "lost")], 1.0).await;
    assert_one_upstream_session(&p, &client, &sid, &b_upstream, a_requests, 2).await;
}

/// The owner is back (woken up, or reconnected to Redis) without any request reaching it: its
/// heartbeat finds the registration lapsed and re-registers its sessions, which must leave B's
/// record alone; after that every call is served by B's upstream session.
async fn owner_back_leaves_the_session_to_b(
    p: &Pods,
    client: &reqwest::Client,
    sid: &str,
    b_upstream: &str,
    a_requests: usize,
) {
    let (a, b) = (p.sidecar(0), p.sidecar(1));
    p.wait_registered(0, true).await;
    // a few more heartbeats of A
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(
        p.record(sid).await["owner"],
        b.peer_address(),
        "A's re-registration took the session back"
    );
    assert_eq!(p.record(sid).await["epoch"], 1);
    a.wait_log(&format!(
        "session {sid} lost to pod {} (epoch 1)",
        b.peer_address()
    ));
    assert_one_upstream_session(p, client, sid, b_upstream, a_requests, 2).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_stalled_owner_does_not_take_its_lost_session_back_when_it_re_registers() {
    let p = Pods::start("stall-resync", |_, redis| redis.url());
    let client = reqwest::Client::new();
    let (sid, b_upstream) = lose_a_session_to_b(&p, &client, || p.stall(0)).await;
    let a_requests = p.upstream_sessions(0).len();
    p.wake(0);
    owner_back_leaves_the_session_to_b(&p, &client, &sid, &b_upstream, a_requests).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_owner_cut_off_from_redis_gives_up_the_session_a_peer_recovered_when_it_reconnects() {
    let mut link = None;
    let p = Pods::start("partition", |i, redis| match i {
        0 => link.insert(Link::to(redis)).url(),
        _ => redis.url(),
    });
    let link = link.unwrap();
    let client = reqwest::Client::new();
    let (sid, b_upstream) = lose_a_session_to_b(&p, &client, || link.cut()).await;
    let a_requests = p.upstream_sessions(0).len();
    link.heal();
    owner_back_leaves_the_session_to_b(&p, &client, &sid, &b_upstream, a_requests).await;
}
