//! In-process store for single-pod mode: a map with deadlines. Expired entries vanish on read
//! and are swept on write, so the map cannot grow with dead sessions.

use super::{Backend, SessionRecord, SessionStore, StoreError};
use async_trait::async_trait;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Sweep the whole map at most this often.
const SWEEP_EVERY: Duration = Duration::from_secs(30);

pub struct MemoryStore {
    inner: Mutex<Inner>,
}

struct Inner {
    sessions: HashMap<String, (SessionRecord, Instant)>,
    last_sweep: Instant,
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
                sessions: HashMap::new(),
                last_sweep: Instant::now(),
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        // a panic elsewhere while holding the lock leaves plain data behind; keep serving
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Inner {
    fn live(&mut self, id: &str, now: Instant) -> Option<&mut (SessionRecord, Instant)> {
        if self.sessions.get(id).is_some_and(|(_, exp)| *exp <= now) {
            self.sessions.remove(id);
        }
        self.sessions.get_mut(id)
    }

    fn maybe_sweep(&mut self, now: Instant) {
        if now.duration_since(self.last_sweep) >= SWEEP_EVERY {
            self.sessions.retain(|_, (_, exp)| *exp > now);
            self.last_sweep = now;
        }
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
        let mut inner = self.lock();
        inner.maybe_sweep(now);
        inner
            .sessions
            .insert(record.session_id.clone(), (record.clone(), now + ttl));
        Ok(())
    }

    async fn load_session(&self, session_id: &str) -> Result<Option<SessionRecord>, StoreError> {
        Ok(self
            .lock()
            .live(session_id, Instant::now())
            .map(|(r, _)| r.clone()))
    }

    async fn touch_session(
        &self,
        session_id: &str,
        now_unix: u64,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        let now = Instant::now();
        Ok(match self.lock().live(session_id, now) {
            Some((record, exp)) => {
                record.last_seen = now_unix;
                *exp = now + ttl;
                true
            }
            None => false,
        })
    }

    async fn delete_session(&self, session_id: &str) -> Result<bool, StoreError> {
        Ok(self.lock().sessions.remove(session_id).is_some())
    }

    async fn session_ttl(&self, session_id: &str) -> Result<Option<Duration>, StoreError> {
        let now = Instant::now();
        Ok(self
            .lock()
            .live(session_id, now)
            .map(|(_, exp)| exp.duration_since(now)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(id: &str) -> SessionRecord {
        SessionRecord {
            session_id: id.into(),
            upstream_session_id: id.into(),
            owner: "10.0.0.1:8080".into(),
            server_name: "demo".into(),
            user: None,
            protocol_version: Some("2025-06-18".into()),
            init_params: Some("{}".into()),
            created_at: 1,
            last_seen: 1,
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
        assert!(s.delete_session("a").await.unwrap());
        assert!(!s.delete_session("a").await.unwrap());
        assert_eq!(s.load_session("a").await.unwrap(), None);
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
    }
}
