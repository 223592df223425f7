//! In-process store for single-pod mode: maps with deadlines. Expired entries vanish on read
//! and are swept on write, so the maps cannot grow with dead entries.

use super::{
    keys, Backend, PodInfo, SessionRecord, SessionStore, Standing, StoreError, UpstreamSession,
};
use async_trait::async_trait;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Sweep a map at most this often.
const SWEEP_EVERY: Duration = Duration::from_secs(30);

/// A map whose entries expire, like Redis keys with a TTL.
struct TtlMap<V> {
    entries: HashMap<String, (V, Instant)>,
    last_sweep: Instant,
}

impl<V: Clone> TtlMap<V> {
    fn new() -> Self {
        TtlMap {
            entries: HashMap::new(),
            last_sweep: Instant::now(),
        }
    }

    fn live(&mut self, key: &str, now: Instant) -> Option<&mut (V, Instant)> {
        if self.entries.get(key).is_some_and(|(_, exp)| *exp <= now) {
            self.entries.remove(key);
        }
        self.entries.get_mut(key)
    }

    /// Inserts and returns the live value it replaced.
    fn insert(&mut self, key: &str, value: V, ttl: Duration, now: Instant) -> Option<V> {
        if now.duration_since(self.last_sweep) >= SWEEP_EVERY {
            self.entries.retain(|_, (_, exp)| *exp > now);
            self.last_sweep = now;
        }
        let old = self.live(key, now).map(|(v, _)| v.clone());
        self.entries.insert(key.to_string(), (value, now + ttl));
        old
    }

    fn remove(&mut self, key: &str, now: Instant) -> Option<V> {
        let live = self.live(key, now).is_some();
        self.entries.remove(key).filter(|_| live).map(|(v, _)| v)
    }

    fn all(&self, now: Instant) -> impl Iterator<Item = (&String, &V, Duration)> {
        self.entries
            .iter()
            .filter(move |(_, (_, exp))| *exp > now)
            .map(move |(k, (v, exp))| (k, v, exp.duration_since(now)))
    }
}

pub struct MemoryStore {
    inner: Mutex<Inner>,
}

struct Inner {
    sessions: TtlMap<SessionRecord>,
    pods: TtlMap<String>,
    locks: TtlMap<String>,
    upstream: TtlMap<String>,
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryStore {
    pub fn new() -> Self {
        MemoryStore {
            inner: Mutex::new(Inner {
                sessions: TtlMap::new(),
                pods: TtlMap::new(),
                locks: TtlMap::new(),
                upstream: TtlMap::new(),
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // a panic elsewhere while holding the lock leaves plain data behind; keep serving
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[async_trait]
impl SessionStore for MemoryStore {
    fn backend(&self) -> Backend {
        Backend::Memory
    }

    async fn ping(&self) -> Result<(), StoreError> {
        Ok(())
    }

    async fn save_session(&self, record: &SessionRecord, ttl: Duration) -> Result<(), StoreError> {
        let now = Instant::now();
        self.lock()
            .sessions
            .insert(&record.session_id, record.clone(), ttl, now);
        Ok(())
    }

    async fn load_session(&self, session_id: &str) -> Result<Option<SessionRecord>, StoreError> {
        Ok(self
            .lock()
            .sessions
            .live(session_id, Instant::now())
            .map(|(r, _)| r.clone()))
    }

    async fn claim_session(
        &self,
        record: &SessionRecord,
        seen: &SessionRecord,
        create: bool,
        ttl: Duration,
    ) -> Result<Standing, StoreError> {
        let now = Instant::now();
        let mut inner = self.lock();
        match inner.sessions.live(&record.session_id, now) {
            Some((current, _)) if current.same_holder(seen) => {}
            Some((current, _)) => return Ok(Standing::Lost(Box::new(current.clone()))),
            None if create => {}
            None => return Ok(Standing::Missing),
        }
        inner
            .sessions
            .insert(&record.session_id, record.clone(), ttl, now);
        Ok(Standing::Held)
    }

    async fn touch_owned(
        &self,
        held: &SessionRecord,
        now_unix: u64,
        ttl: Duration,
    ) -> Result<Standing, StoreError> {
        let now = Instant::now();
        Ok(match self.lock().sessions.live(&held.session_id, now) {
            Some((current, exp)) if current.same_holder(held) => {
                current.last_seen = now_unix;
                *exp = now + ttl;
                Standing::Held
            }
            Some((current, _)) => Standing::Lost(Box::new(current.clone())),
            None => Standing::Missing,
        })
    }

    async fn touch_session(
        &self,
        session_id: &str,
        now_unix: u64,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        let now = Instant::now();
        Ok(match self.lock().sessions.live(session_id, now) {
            Some((record, exp)) => {
                record.last_seen = now_unix;
                *exp = now + ttl;
                true
            }
            None => false,
        })
    }

    async fn delete_session(&self, session_id: &str) -> Result<bool, StoreError> {
        Ok(self
            .lock()
            .sessions
            .remove(session_id, Instant::now())
            .is_some())
    }

    async fn session_ttl(&self, session_id: &str) -> Result<Option<Duration>, StoreError> {
        let now = Instant::now();
        Ok(self
            .lock()
            .sessions
            .live(session_id, now)
            .map(|(_, exp)| exp.duration_since(now)))
    }

    async fn list_sessions(&self) -> Result<Vec<(SessionRecord, Option<Duration>)>, StoreError> {
        let now = Instant::now();
        Ok(self
            .lock()
            .sessions
            .all(now)
            .map(|(_, r, ttl)| (r.clone(), Some(ttl)))
            .collect())
    }

    async fn heartbeat_pod(
        &self,
        address: &str,
        info: &str,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        let now = Instant::now();
        Ok(self
            .lock()
            .pods
            .insert(address, info.to_string(), ttl, now)
            .is_some())
    }

    async fn pod_alive(&self, address: &str) -> Result<bool, StoreError> {
        Ok(self.lock().pods.live(address, Instant::now()).is_some())
    }

    async fn list_pods(&self) -> Result<Vec<PodInfo>, StoreError> {
        let now = Instant::now();
        Ok(self
            .lock()
            .pods
            .all(now)
            .map(|(address, info, ttl)| PodInfo {
                address: address.clone(),
                info: info.clone(),
                ttl: Some(ttl),
            })
            .collect())
    }

    async fn remove_pod(&self, address: &str) -> Result<(), StoreError> {
        self.lock().pods.remove(address, Instant::now());
        Ok(())
    }

    async fn try_lock(&self, name: &str, token: &str, ttl: Duration) -> Result<bool, StoreError> {
        let now = Instant::now();
        let mut inner = self.lock();
        if inner.locks.live(name, now).is_some() {
            return Ok(false);
        }
        inner.locks.insert(name, token.to_string(), ttl, now);
        Ok(true)
    }

    async fn unlock(&self, name: &str, token: &str) -> Result<(), StoreError> {
        let now = Instant::now();
        let mut inner = self.lock();
        if inner.locks.live(name, now).is_some_and(|(t, _)| t == token) {
            inner.locks.remove(name, now);
        }
        Ok(())
    }
    async fn get_upstream_session(
        &self,
        server: &str,
        context: &str,
        ttl: Duration,
    ) -> Result<Option<String>, StoreError> {
        let now = Instant::now();
        let key = keys::upstream_session(server, context);
        let mut inner = self.lock();
        Ok(inner.upstream.live(&key, now).map(|(sid, expires)| {
            *expires = now + ttl;
            sid.clone()
        }))
    }

    async fn set_upstream_session(
        &self,
        server: &str,
        context: &str,
        session_id: &str,
        ttl: Duration,
    ) -> Result<(), StoreError> {
        let now = Instant::now();
        let key = keys::upstream_session(server, context);
        self.lock()
            .upstream
            .insert(&key, session_id.to_string(), ttl, now);
        Ok(())
    }

    async fn delete_upstream_session(
        &self,
        server: &str,
        context: &str,
        only_if: Option<&str>,
    ) -> Result<bool, StoreError> {
        let now = Instant::now();
        let key = keys::upstream_session(server, context);
        let mut inner = self.lock();
        let holds = match inner.upstream.live(&key, now) {
            Some((sid, _)) => only_if.is_none_or(|want| want == sid),
            None => false,
        };
        if holds {
            inner.upstream.remove(&key, now);
        }
        Ok(holds)
    }

    async fn list_upstream_sessions(&self) -> Result<Vec<UpstreamSession>, StoreError> {
        let now = Instant::now();
        let inner = self.lock();
        Ok(inner
            .upstream
            .all(now)
            .filter_map(|(key, sid, ttl)| {
                let (server, context) = keys::parse_upstream_session(key)?;
                Some(UpstreamSession {
                    server_name: server.to_string(),
                    context_key: context.to_string(),
                    session_id: sid.clone(),
                    ttl: Some(ttl),
                })
            })
            .collect())
    }

    async fn hub_key(
        &self,
        _digest: &str,
    ) -> Result<Option<std::collections::HashMap<String, String>>, StoreError> {
        Ok(None)
    }

    async fn has_hub_keys(&self) -> Result<bool, StoreError> {
        Ok(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: &str) -> SessionRecord {
        SessionRecord {
            session_id: id.into(),
            upstream_session_id: id.into(),
            owner: "10.0.0.1:8081".into(),
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

    #[tokio::test]
    async fn save_load_touch_delete() {
        let s = MemoryStore::new();
        s.save_session(&record("a"), Duration::from_secs(60))
            .await
            .unwrap();
        assert_eq!(s.load_session("a").await.unwrap(), Some(record("a")));
        assert!(s
            .touch_session("a", 99, Duration::from_secs(60))
            .await
            .unwrap());
        assert_eq!(s.load_session("a").await.unwrap().unwrap().last_seen, 99);
        assert!(!s
            .touch_session("b", 99, Duration::from_secs(60))
            .await
            .unwrap());
        assert_eq!(s.list_sessions().await.unwrap().len(), 1);
        assert!(s.delete_session("a").await.unwrap());
        assert!(!s.delete_session("a").await.unwrap());
        assert_eq!(s.load_session("a").await.unwrap(), None);
    }

    #[tokio::test]
    async fn sessions_change_hands_only_from_the_holder_the_claimant_saw() {
        let s = MemoryStore::new();
        let ttl = Duration::from_secs(60);
        let seen = record("a");
        s.save_session(&seen, ttl).await.unwrap();
        let by = |owner: &str, from: &SessionRecord| SessionRecord {
            owner: owner.into(),
            epoch: from.epoch + 1,
            ..from.clone()
        };
        // two pods take over from the same record: the first wins, the second learns who
        let b = by("10.0.0.2:8081", &seen);
        assert_eq!(
            s.claim_session(&b, &seen, false, ttl).await,
            Ok(Standing::Held)
        );
        let c = by("10.0.0.3:8081", &seen);
        assert_eq!(
            s.claim_session(&c, &seen, true, ttl).await,
            Ok(Standing::Lost(Box::new(b.clone())))
        );
        assert_eq!(s.load_session("a").await.unwrap(), Some(b.clone()));
        // only the holder slides the TTL
        assert_eq!(
            s.touch_owned(&seen, 7, ttl).await,
            Ok(Standing::Lost(Box::new(b.clone())))
        );
        assert_eq!(s.touch_owned(&b, 7, ttl).await, Ok(Standing::Held));
        assert_eq!(s.load_session("a").await.unwrap().unwrap().last_seen, 7);
        // a missing record is created only when asked to
        s.delete_session("a").await.unwrap();
        assert_eq!(s.touch_owned(&b, 8, ttl).await, Ok(Standing::Missing));
        assert_eq!(
            s.claim_session(&c, &seen, false, ttl).await,
            Ok(Standing::Missing)
        );
        assert_eq!(s.load_session("a").await.unwrap(), None);
        assert_eq!(
            s.claim_session(&c, &seen, true, ttl).await,
            Ok(Standing::Held)
        );
        assert_eq!(s.load_session("a").await.unwrap(), Some(c));
    }

    #[tokio::test]
    async fn entries_expire() {
        let s = MemoryStore::new();
        s.save_session(&record("a"), Duration::from_millis(20))
            .await
            .unwrap();
        assert!(s.session_ttl("a").await.unwrap().is_some());
        tokio::time::sleep(Duration::from_millis(40)).await;
        assert_eq!(s.load_session("a").await.unwrap(), None);
        assert_eq!(s.session_ttl("a").await.unwrap(), None);
        assert!(!s
            .touch_session("a", 1, Duration::from_secs(1))
            .await
            .unwrap());
        assert!(!s.delete_session("a").await.unwrap());
        assert!(s.list_sessions().await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn pods_and_locks() {
        let s = MemoryStore::new();
        let ttl = Duration::from_secs(10);
        assert!(!s.heartbeat_pod("p1", "{}", ttl).await.unwrap());
        assert!(s.heartbeat_pod("p1", "{}", ttl).await.unwrap());
        assert!(s.pod_alive("p1").await.unwrap());
        assert_eq!(s.list_pods().await.unwrap()[0].address, "p1");
        s.remove_pod("p1").await.unwrap();
        assert!(!s.pod_alive("p1").await.unwrap());

        assert!(s.try_lock("l", "me", ttl).await.unwrap());
        assert!(!s.try_lock("l", "you", ttl).await.unwrap());
        s.unlock("l", "you").await.unwrap();
        assert!(!s.try_lock("l", "you", ttl).await.unwrap());
        s.unlock("l", "me").await.unwrap();
        assert!(s.try_lock("l", "you", ttl).await.unwrap());
        assert!(s
            .try_lock("short", "a", Duration::from_millis(10))
            .await
            .unwrap());
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(s.try_lock("short", "b", ttl).await.unwrap());
    }
}
