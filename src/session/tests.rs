//! Routing decisions against the in-process store, with a store wrapper that counts round trips
//! (the owned path must make none).

use super::*;
use crate::store::{MemoryStore, PodInfo, Standing};
use async_trait::async_trait;
use std::sync::atomic::AtomicUsize;

#[derive(Default)]
struct Counting {
    inner: MemoryStore,
    calls: AtomicUsize,
    /// Each claim takes this long (a slow store under a long resync).
    slow_claims: Option<Duration>,
}

impl Counting {
    fn hit(&self) {
        self.calls.fetch_add(1, Ordering::SeqCst);
    }
}

#[async_trait]
impl SessionStore for Counting {
    fn backend(&self) -> crate::store::Backend {
        self.inner.backend()
    }
    async fn ping(&self) -> Result<(), StoreError> {
        self.hit();
        self.inner.ping().await
    }
    async fn save_session(&self, r: &SessionRecord, ttl: Duration) -> Result<(), StoreError> {
        self.hit();
        self.inner.save_session(r, ttl).await
    }
    async fn load_session(&self, id: &str) -> Result<Option<SessionRecord>, StoreError> {
        self.hit();
        self.inner.load_session(id).await
    }
    async fn claim_session(
        &self,
        r: &SessionRecord,
        seen: &SessionRecord,
        create: bool,
        ttl: Duration,
    ) -> Result<Standing, StoreError> {
        self.hit();
        if let Some(pause) = self.slow_claims {
            tokio::time::sleep(pause).await;
        }
        self.inner.claim_session(r, seen, create, ttl).await
    }
    async fn touch_owned(
        &self,
        held: &SessionRecord,
        now: u64,
        ttl: Duration,
    ) -> Result<Standing, StoreError> {
        self.hit();
        self.inner.touch_owned(held, now, ttl).await
    }
    async fn touch_session(&self, id: &str, now: u64, ttl: Duration) -> Result<bool, StoreError> {
        self.hit();
        self.inner.touch_session(id, now, ttl).await
    }
    async fn delete_session(&self, id: &str) -> Result<bool, StoreError> {
        self.hit();
        self.inner.delete_session(id).await
    }
    async fn session_ttl(&self, id: &str) -> Result<Option<Duration>, StoreError> {
        self.hit();
        self.inner.session_ttl(id).await
    }
    async fn list_sessions(&self) -> Result<Vec<(SessionRecord, Option<Duration>)>, StoreError> {
        self.hit();
        self.inner.list_sessions().await
    }
    async fn heartbeat_pod(&self, a: &str, i: &str, ttl: Duration) -> Result<bool, StoreError> {
        self.hit();
        self.inner.heartbeat_pod(a, i, ttl).await
    }
    async fn get_upstream_session(
        &self,
        s: &str,
        c: &str,
        ttl: Duration,
    ) -> Result<Option<String>, StoreError> {
        self.hit();
        self.inner.get_upstream_session(s, c, ttl).await
    }
    async fn set_upstream_session(
        &self,
        s: &str,
        c: &str,
        sid: &str,
        ttl: Duration,
    ) -> Result<(), StoreError> {
        self.hit();
        self.inner.set_upstream_session(s, c, sid, ttl).await
    }
    async fn delete_upstream_session(
        &self,
        s: &str,
        c: &str,
        only_if: Option<&str>,
    ) -> Result<bool, StoreError> {
        self.hit();
        self.inner.delete_upstream_session(s, c, only_if).await
    }
    async fn list_upstream_sessions(
        &self,
    ) -> Result<Vec<crate::store::UpstreamSession>, StoreError> {
        self.hit();
        self.inner.list_upstream_sessions().await
    }
    async fn pod_alive(&self, a: &str) -> Result<bool, StoreError> {
        self.hit();
        self.inner.pod_alive(a).await
    }
    async fn list_pods(&self) -> Result<Vec<PodInfo>, StoreError> {
        self.hit();
        self.inner.list_pods().await
    }
    async fn remove_pod(&self, a: &str) -> Result<(), StoreError> {
        self.hit();
        self.inner.remove_pod(a).await
    }
    async fn try_lock(&self, n: &str, t: &str, ttl: Duration) -> Result<bool, StoreError> {
        self.hit();
        self.inner.try_lock(n, t, ttl).await
    }
    async fn unlock(&self, n: &str, t: &str) -> Result<(), StoreError> {
        self.hit();
        self.inner.unlock(n, t).await
    }
    async fn hub_key(
        &self,
        d: &str,
    ) -> Result<Option<std::collections::HashMap<String, String>>, StoreError> {
        self.hit();
        self.inner.hub_key(d).await
    }

    async fn has_hub_keys(&self) -> Result<bool, StoreError> {
        self.inner.has_hub_keys().await
    }
}

fn settings(me: &str) -> Settings {
    Settings {
        ttl: Duration::from_secs(3600),
        refresh_interval: Duration::from_secs(60),
        heartbeat_interval: Duration::from_secs(2),
        pod_ttl: Duration::from_secs(10),
        recovery_timeout: Duration::from_secs(1),
        sse_keepalive: Duration::from_secs(15),
        me: me.to_string(),
    }
}

fn record(id: &str, owner: &str) -> SessionRecord {
    SessionRecord {
        session_id: id.into(),
        upstream_session_id: format!("up-{id}"),
        owner: owner.into(),
        server_name: "demo".into(),
        transport: Default::default(),
        user: None,
        protocol_version: Some("2025-06-18".into()),
        init_params: Some("{}".into()),
        created_at: 1,
        last_seen: 1,
        ..Default::default()
    }
}

fn pod(store: &Arc<Counting>, me: &str) -> Arc<Sessions> {
    Sessions::new(store.clone(), settings(me))
}

#[tokio::test]
async fn owned_sessions_are_routed_without_a_store_round_trip() {
    let store = Arc::new(Counting::default());
    let a = pod(&store, "10.0.0.1:8081");
    a.capture(record("s1", "10.0.0.1:8081")).await;
    let before = store.calls.load(Ordering::SeqCst);
    for _ in 0..1000 {
        assert_eq!(
            a.resolve("s1", "demo", None).await,
            Decision::Local {
                upstream_sid: "up-s1".into()
            }
        );
    }
    assert_eq!(
        store.calls.load(Ordering::SeqCst),
        before,
        "no store call on the owned path"
    );
    // another route presenting the id does not get the session
    assert_eq!(a.resolve("s1", "other", None).await, Decision::Unknown);
}

#[tokio::test]
async fn a_session_answers_only_to_its_user_on_every_pod() {
    let store = Arc::new(Counting::default());
    let a = pod(&store, "10.0.0.1:8081");
    let b = pod(&store, "10.0.0.2:8081");
    store
        .heartbeat_pod("10.0.0.1:8081", "{}", Duration::from_secs(10))
        .await
        .unwrap();
    let mut r = record("s1", "10.0.0.1:8081");
    r.user = Some("alice".into());
    a.capture(r).await;
    let local = Decision::Local {
        upstream_sid: "up-s1".into(),
    };
    assert_eq!(a.resolve("s1", "demo", Some("alice")).await, local);
    assert_eq!(
        a.resolve("s1", "demo", Some("bob")).await,
        Decision::Unknown
    );
    assert_eq!(a.resolve("s1", "demo", None).await, Decision::Unknown);
    assert_eq!(
        a.resolve_forwarded("s1", "demo", Some("bob")).await,
        Decision::Unknown
    );
    // the wrong user is refused by the record before any forwarding
    assert_eq!(
        b.resolve("s1", "demo", Some("bob")).await,
        Decision::Unknown
    );
    assert_eq!(
        b.resolve("s1", "demo", Some("alice")).await,
        Decision::Forward {
            owner: "10.0.0.1:8081".into()
        }
    );
    // a dead owner's session is recovered only for its user
    store.remove_pod("10.0.0.1:8081").await.unwrap();
    assert_eq!(
        b.resolve("s1", "demo", Some("bob")).await,
        Decision::Unknown
    );
    assert!(matches!(
        b.resolve("s1", "demo", Some("alice")).await,
        Decision::Recover(_)
    ));
}

#[tokio::test]
async fn other_pods_forward_to_a_live_owner_and_recover_from_a_dead_one() {
    let store = Arc::new(Counting::default());
    let a = pod(&store, "10.0.0.1:8081");
    let b = pod(&store, "10.0.0.2:8081");
    a.capture(record("s1", "10.0.0.1:8081")).await;
    a.heartbeat("{}").await;
    assert_eq!(
        b.resolve("s1", "demo", None).await,
        Decision::Forward {
            owner: "10.0.0.1:8081".into()
        }
    );
    // a forwarded request is never forwarded again: only the owner serves it
    assert_eq!(
        b.resolve_forwarded("s1", "demo", None).await,
        Decision::Unknown
    );
    assert!(matches!(
        a.resolve_forwarded("s1", "demo", None).await,
        Decision::Local { .. }
    ));
    a.deregister().await;
    assert!(
        matches!(b.resolve("s1", "demo", None).await, Decision::Recover(r) if r.session_id == "s1")
    );
    assert_eq!(b.resolve("nope", "demo", None).await, Decision::Unknown);
}

#[tokio::test]
async fn a_restarted_sidecar_adopts_its_own_sessions() {
    let store = Arc::new(Counting::default());
    pod(&store, "10.0.0.1:8081")
        .capture(record("s1", "10.0.0.1:8081"))
        .await;
    let restarted = pod(&store, "10.0.0.1:8081");
    assert_eq!(
        restarted.resolve("s1", "demo", None).await,
        Decision::Local {
            upstream_sid: "up-s1".into()
        }
    );
    assert_eq!(restarted.local_count(), 1);
}

#[tokio::test]
async fn forget_ends_the_session_locally_and_in_the_store() {
    let store = Arc::new(Counting::default());
    let a = pod(&store, "10.0.0.1:8081");
    a.capture(record("s1", "10.0.0.1:8081")).await;
    assert!(a.forget("s1").await.unwrap());
    assert_eq!(a.resolve("s1", "demo", None).await, Decision::Unknown);
    assert!(!a.forget("s1").await.unwrap());
}

#[tokio::test]
async fn heartbeat_re_registers_sessions_a_store_lost() {
    let store = Arc::new(Counting::default());
    let a = pod(&store, "10.0.0.1:8081");
    a.capture(record("s1", "10.0.0.1:8081")).await;
    a.heartbeat("{}").await;
    // the store loses everything (a Redis restarted empty)
    store.inner.delete_session("s1").await.unwrap();
    store.inner.remove_pod("10.0.0.1:8081").await.unwrap();
    a.heartbeat("{}").await;
    assert!(store.inner.load_session("s1").await.unwrap().is_some());
    assert!(store.inner.pod_alive("10.0.0.1:8081").await.unwrap());
}

const A: &str = "10.0.0.1:8081";
const B: &str = "10.0.0.2:8081";
const C: &str = "10.0.0.3:8081";

/// `seen` taken over by `owner`, as its recovery writes it.
fn taken_by(owner: &str, seen: &SessionRecord) -> SessionRecord {
    SessionRecord {
        owner: owner.into(),
        upstream_session_id: format!("up-{owner}"),
        epoch: seen.epoch + 1,
        ..seen.clone()
    }
}

/// Another pod recovers a session: claims it from the record it read.
async fn take_over(store: &Counting, owner: &str, sid: &str) -> SessionRecord {
    let seen = store.inner.load_session(sid).await.unwrap().unwrap();
    let taken = taken_by(owner, &seen);
    let ttl = Duration::from_secs(60);
    assert_eq!(
        store.inner.claim_session(&taken, &seen, false, ttl).await,
        Ok(Standing::Held)
    );
    store.inner.heartbeat_pod(owner, "{}", ttl).await.unwrap();
    taken
}

fn route_to(upstream: std::net::SocketAddr) -> Route {
    Route {
        prefix: "/mcp".into(),
        server_name: "demo".into(),
        upstream_addr: upstream,
        upstream_authority: upstream.to_string(),
        upstream_path: "/mcp".into(),
        policy: Default::default(),
        shared: false,
        era: None,
    }
}

/// A minimal MCP server: every initialize gets a new session id (after `on_initialize` ran),
/// everything else 202.
async fn fake_mcp_server(on_initialize: impl Fn() + Send + Sync + 'static) -> Route {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let route = route_to(listener.local_addr().unwrap());
    let on_initialize = Arc::new(on_initialize);
    tokio::spawn(async move {
        for n in 0.. {
            let (mut conn, _) = listener.accept().await.unwrap();
            let mut request = Vec::new();
            let mut buf = [0u8; 4096];
            // the sidecar's own requests are small and end with their JSON body
            while !request.ends_with(b"}") {
                let read = conn.read(&mut buf).await.unwrap();
                assert!(read > 0, "request cut short");
                request.extend_from_slice(&buf[..read]);
            }
            let answer = if String::from_utf8_lossy(&request).contains(r#""method":"initialize""#) {
                on_initialize();
                let body = r#"{"jsonrpc":"2.0","id":"mcp-sidecar-recovery","result":{}}"#;
                format!(
                    "HTTP/1.1 200 OK\r\nmcp-session-id: fresh-{n}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                    body.len()
                )
            } else {
                "HTTP/1.1 202 Accepted\r\ncontent-length: 0\r\n\r\n".to_string()
            };
            conn.write_all(answer.as_bytes()).await.unwrap();
        }
    });
    route
}

#[tokio::test]
async fn a_pod_back_from_a_stall_forwards_the_sessions_peers_took_over() {
    let store = Arc::new(Counting::default());
    let a = Sessions::new(
        store.clone(),
        Settings {
            pod_ttl: Duration::from_millis(50),
            ..settings(A)
        },
    );
    a.capture(record("s1", A)).await;
    a.capture(record("s2", A)).await;
    a.heartbeat("{}").await;
    // A stalls past its pod TTL; B recovers s1 meanwhile
    tokio::time::sleep(Duration::from_millis(80)).await;
    take_over(&store, B, "s1").await;
    // A wakes up before its next heartbeat: it checks before serving
    assert_eq!(
        a.resolve("s1", "demo", None).await,
        Decision::Forward { owner: B.into() }
    );
    assert!(a.local_record("s1").is_none(), "A dropped the lost session");
    assert_eq!(
        a.resolve("s2", "demo", None).await,
        Decision::Local {
            upstream_sid: "up-s2".into()
        },
        "what A still holds it serves"
    );
}

#[tokio::test]
async fn the_resync_never_takes_back_a_session_a_peer_took_over() {
    let store = Arc::new(Counting::default());
    let a = pod(&store, A);
    a.capture(record("s1", A)).await;
    a.capture(record("s2", A)).await;
    a.heartbeat("{}").await;
    // A's registration lapsed (a stall), and B recovered s1
    store.inner.remove_pod(A).await.unwrap();
    let taken = take_over(&store, B, "s1").await;
    a.heartbeat("{}").await;
    assert_eq!(store.inner.load_session("s1").await.unwrap(), Some(taken));
    assert!(a.local_record("s1").is_none());
    // what A still held it claimed again, with a new epoch
    let s2 = store.inner.load_session("s2").await.unwrap().unwrap();
    assert_eq!((s2.owner.as_str(), s2.epoch), (A, 2));
    assert_eq!(a.local_record("s2").unwrap().epoch, 2);
    // a peer that read s2 before A registered again cannot take it over afterwards
    let stale = SessionRecord { epoch: 1, ..s2 };
    assert!(matches!(
        store
            .claim_session(&taken_by(C, &stale), &stale, false, Duration::from_secs(60))
            .await,
        Ok(Standing::Lost(r)) if r.owner == A
    ));
}

#[tokio::test]
async fn recovery_re_reads_the_record_after_taking_its_lock() {
    let store = Arc::new(Counting::default());
    store
        .save_session(&record("s1", A), Duration::from_secs(60))
        .await
        .unwrap();
    let c = pod(&store, C);
    let Decision::Recover(seen) = c.resolve("s1", "demo", None).await else {
        panic!("A is gone: C recovers");
    };
    // B recovers it first, between C's read and C's lock
    take_over(&store, B, "s1").await;
    // nothing listens there: a replay would fail
    let nowhere = route_to("127.0.0.1:9".parse().unwrap());
    let d = c
        .recover(*seen, &nowhere, "/mcp", "owner pod gone", &[])
        .await
        .expect("no replay");
    assert_eq!(d, Decision::Forward { owner: B.into() });
}

#[tokio::test]
async fn a_recovery_that_loses_the_race_forwards_to_the_winner() {
    let store = Arc::new(Counting::default());
    store
        .save_session(&record("s1", A), Duration::from_secs(60))
        .await
        .unwrap();
    let c = pod(&store, C);
    let Decision::Recover(seen) = c.resolve("s1", "demo", None).await else {
        panic!("A is gone: C recovers");
    };
    // while C replays the initialize, B takes the session over (it recovered it without the
    // lock: the store was unreachable for B when it tried)
    let winner = Arc::new(std::sync::Mutex::new(None));
    let route = fake_mcp_server({
        let (store, winner, seen) = (store.clone(), winner.clone(), seen.clone());
        move || {
            let taken = taken_by(B, &seen);
            let claim = store
                .inner
                .claim_session(&taken, &seen, false, Duration::from_secs(60));
            assert_eq!(
                futures_util::FutureExt::now_or_never(claim),
                Some(Ok(Standing::Held))
            );
            *winner.lock().unwrap() = Some(taken);
        }
    })
    .await;
    store
        .heartbeat_pod(B, "{}", Duration::from_secs(60))
        .await
        .unwrap();
    let d = c
        .recover(*seen, &route, "/mcp", "owner pod gone", &[])
        .await
        .unwrap();
    assert_eq!(d, Decision::Forward { owner: B.into() });
    assert_eq!(
        store.inner.load_session("s1").await.unwrap(),
        winner.lock().unwrap().clone(),
        "C did not overwrite B's claim"
    );
    assert!(c.local_record("s1").is_none());
}

#[tokio::test]
async fn a_slow_resync_does_not_hold_up_the_registration() {
    let store = Arc::new(Counting {
        slow_claims: Some(Duration::from_millis(300)),
        ..Default::default()
    });
    let a = Sessions::new(
        store.clone(),
        Settings {
            heartbeat_interval: Duration::from_millis(100),
            ..settings(A)
        },
    );
    for i in 0..4 {
        a.capture(record(&format!("s{i}"), A)).await;
    }
    // the first registration re-registers every session: 1.2 s of claims
    let started = Instant::now();
    a.heartbeat("{}").await;
    assert!(started.elapsed() < Duration::from_millis(500));
    assert!(store.inner.pod_alive(A).await.unwrap());
    // the registration lapses meanwhile; the next heartbeat renews it at once
    store.inner.remove_pod(A).await.unwrap();
    let started = Instant::now();
    a.heartbeat("{}").await;
    assert!(started.elapsed() < Duration::from_millis(100));
    assert!(store.inner.pod_alive(A).await.unwrap());
    // the resync finished in the background
    tokio::time::sleep(Duration::from_millis(1500)).await;
    for i in 0..4 {
        let r = store.inner.load_session(&format!("s{i}")).await.unwrap();
        assert_eq!(r.unwrap().epoch, 1);
    }
}
