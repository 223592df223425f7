//! Legacy SSE streams this pod relays (see `crate::legacy`). A stream's session lives exactly
//! as long as the stream: registered when its `endpoint` event passes, refreshed by the
//! heartbeat while it is open, removed when it closes.

use crate::metrics::METRICS;
use crate::store::SessionRecord;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Notify;

struct Entry {
    record: SessionRecord,
    /// The query parameter the stream's `endpoint` event announced: posts must use it.
    param: &'static str,
    refreshed: Instant,
    /// Ends the stream (its session was deleted through the admin API).
    close: Arc<Notify>,
}

#[derive(Default)]
pub struct StreamTable {
    entries: Mutex<HashMap<String, Entry>>,
}

impl StreamTable {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn publish(len: usize) {
        METRICS.sse_streams.set(len as i64);
    }

    pub fn insert(&self, record: SessionRecord, param: &'static str) -> Arc<Notify> {
        let close = Arc::new(Notify::new());
        let mut map = self.lock();
        map.insert(
            record.session_id.clone(),
            Entry {
                record,
                param,
                refreshed: Instant::now(),
                close: close.clone(),
            },
        );
        Self::publish(map.len());
        close
    }

    pub fn remove(&self, sid: &str) -> bool {
        let mut map = self.lock();
        let removed = map.remove(sid).is_some();
        Self::publish(map.len());
        removed
    }

    /// When the stream of `sid` for route `server` is open here: the hub user it belongs to,
    /// and the query parameter its posts must use.
    pub fn user_of(&self, sid: &str, server: &str) -> Option<(Option<String>, &'static str)> {
        self.lock()
            .get(sid)
            .filter(|e| e.record.server_name == server)
            .map(|e| (e.record.user.clone(), e.param))
    }

    /// Asks the stream of `sid` to end; `false` when it is not open here.
    pub fn close(&self, sid: &str) -> bool {
        match self.lock().get(sid) {
            Some(e) => {
                e.close.notify_one();
                true
            }
            None => false,
        }
    }

    /// Streams whose store TTL is due for a refresh (marked refreshed).
    pub fn due(&self, every: Duration) -> Vec<String> {
        let now = Instant::now();
        let mut map = self.lock();
        map.values_mut()
            .filter(|e| now.duration_since(e.refreshed) >= every)
            .map(|e| {
                e.refreshed = now;
                e.record.session_id.clone()
            })
            .collect()
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn all(&self) -> Vec<SessionRecord> {
        self.lock().values().map(|e| e.record.clone()).collect()
    }
}
