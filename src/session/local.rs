//! Sessions this pod owns, in memory: the request path for an owned session never waits on
//! the store.

use crate::metrics::METRICS;
use crate::store::SessionRecord;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

struct Entry {
    record: SessionRecord,
    last_used: Instant,
    /// When the store's TTL was last refreshed.
    refreshed: Instant,
}

#[derive(Default)]
pub struct LocalTable {
    entries: Mutex<HashMap<String, Entry>>,
}

/// A hit in the local table.
pub struct Hit {
    pub upstream_sid: String,
    /// The store's TTL is due for a refresh (the caller does it off the request path).
    pub refresh_due: bool,
}

/// A session this pod owned ended (`end`: deleted, expired, lost): its lifetime, for the MCP
/// semantic conventions' `mcp.server.session.duration`.
fn ended(record: &SessionRecord, end: &'static str) {
    let lived = crate::store::unix_now().saturating_sub(record.created_at);
    METRICS
        .session_duration
        .with_label_values(&[record.server_name.as_str(), end])
        .observe(lived as f64);
}

impl LocalTable {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn publish(len: usize) {
        METRICS.active_sessions.set(len as i64);
    }

    /// Looks a session up for `server` and hub `user`, marking it used.
    pub fn get(
        &self,
        sid: &str,
        server: &str,
        user: Option<&str>,
        refresh_interval: Duration,
    ) -> Option<Hit> {
        let now = Instant::now();
        let mut map = self.lock();
        let e = map
            .get_mut(sid)
            .filter(|e| e.record.server_name == server && e.record.user.as_deref() == user)?;
        e.last_used = now;
        let refresh_due = now.duration_since(e.refreshed) >= refresh_interval;
        if refresh_due {
            e.refreshed = now;
        }
        Some(Hit {
            upstream_sid: e.record.upstream_session_id.clone(),
            refresh_due,
        })
    }

    pub fn record(&self, sid: &str) -> Option<SessionRecord> {
        self.lock().get(sid).map(|e| e.record.clone())
    }

    pub fn insert(&self, record: SessionRecord) {
        let now = Instant::now();
        let mut map = self.lock();
        map.insert(
            record.session_id.clone(),
            Entry {
                record,
                last_used: now,
                refreshed: now,
            },
        );
        Self::publish(map.len());
    }

    pub fn remove(&self, sid: &str) -> bool {
        let mut map = self.lock();
        let removed = map.remove(sid);
        Self::publish(map.len());
        if let Some(e) = &removed {
            ended(&e.record, "deleted");
        }
        removed.is_some()
    }

    /// Removes `held`'s session only while the table still has it at `held`'s owner and epoch
    /// (not a newer entry another request made meanwhile).
    pub fn remove_held(&self, held: &SessionRecord, end: &'static str) -> bool {
        let mut map = self.lock();
        if !map
            .get(&held.session_id)
            .is_some_and(|e| e.record.same_holder(held))
        {
            return false;
        }
        map.remove(&held.session_id);
        Self::publish(map.len());
        ended(held, end);
        true
    }

    /// Replaces the entry at `from`'s owner and epoch with `to` (a claim the store took),
    /// keeping its use and refresh times.
    pub fn advance(&self, from: &SessionRecord, to: SessionRecord) {
        if let Some(e) = self
            .lock()
            .get_mut(&from.session_id)
            .filter(|e| e.record.same_holder(from))
        {
            e.record = to;
        }
    }

    /// Every owned session, for re-registering them with the store.
    pub fn all(&self) -> Vec<SessionRecord> {
        self.lock().values().map(|e| e.record.clone()).collect()
    }

    /// Drops sessions unused for `ttl` (their store records have expired too); returns how many.
    pub fn expire_idle(&self, ttl: Duration) -> usize {
        let now = Instant::now();
        let mut map = self.lock();
        let before = map.len();
        map.retain(|_, e| {
            let keep = now.duration_since(e.last_used) < ttl;
            if !keep {
                ended(&e.record, "expired");
            }
            keep
        });
        Self::publish(map.len());
        before - map.len()
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }
}
