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
