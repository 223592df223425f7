//! The key registry: which user a key belongs to. Two sources, the static key file (read at
//! startup, re-read when it changes) and the shared store (`mcp:hub:key:<sha256>` in Redis),
//! behind a local cache. A cached answer is trusted for `auth.cache_ttl`: that is the bound on
//! how long a revoked key keeps working. While the store does not answer, answers seen within
//! `cache_ttl + stale_if_error` are used rather than refusing every user.

use super::crypto::TokenCipher;
use super::key_file::KeyFile;
use super::user::HubUser;
use crate::metrics::METRICS;
use crate::store::SessionStore;
use log::{info, warn};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant, SystemTime};

/// Cache entries kept at most; a flood of random well-formed keys cannot grow memory past it.
const MAX_CACHED: usize = 100_000;

/// What the registry knows about a key digest.
#[derive(Debug, Clone)]
pub enum Lookup {
    Found(Arc<HubUser>),
    Unknown,
    /// Neither the cache nor the store could say.
    Unavailable(String),
}

struct Cached {
    user: Option<Arc<HubUser>>,
    fetched: Instant,
}

struct StaticKeys {
    path: PathBuf,
    modified: Option<SystemTime>,
    users: HashMap<String, Arc<HubUser>>,
}

pub struct Registry {
    store: Arc<dyn SessionStore>,
    file: Option<RwLock<StaticKeys>>,
    cache: Mutex<HashMap<String, Cached>>,
    cache_ttl: Duration,
    stale_if_error: Duration,
    cipher: Option<TokenCipher>,
}

fn modified(path: &PathBuf) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

fn read_key_file(
    path: &PathBuf,
    cipher: Option<&TokenCipher>,
) -> Result<HashMap<String, Arc<HubUser>>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read: {e}"))?;
    Ok(KeyFile::parse(&text, cipher)?
        .into_iter()
        .map(|(d, u)| (d, Arc::new(u)))
        .collect())
}

impl Registry {
    /// Reads the key file now; a broken file at startup is a configuration error.
    pub fn new(
        store: Arc<dyn SessionStore>,
        keys_file: Option<PathBuf>,
        cache_ttl: Duration,
        stale_if_error: Duration,
        cipher: Option<TokenCipher>,
    ) -> Result<Registry, String> {
        let file = match keys_file {
            Some(path) => {
                let users = read_key_file(&path, cipher.as_ref())
                    .map_err(|e| format!("{}: {e}", path.display()))?;
                info!("hub keys: {} keys from {}", users.len(), path.display());
                Some(RwLock::new(StaticKeys {
                    modified: modified(&path),
                    path,
                    users,
                }))
            }
            None => None,
        };
        Ok(Registry {
            store,
            file,
            cache: Mutex::new(HashMap::new()),
            cache_ttl,
            stale_if_error,
            cipher,
        })
    }

    pub fn cipher(&self) -> Option<&TokenCipher> {
        self.cipher.as_ref()
    }

    /// The user of the key with this digest.
    pub async fn lookup(&self, digest: &str) -> Lookup {
        if let Some(file) = &self.file {
            let keys = file.read().unwrap_or_else(|p| p.into_inner());
            if let Some(u) = keys.users.get(digest) {
                return Lookup::Found(u.clone());
            }
        }
        let now = Instant::now();
        let stale = {
            let cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
            match cache.get(digest) {
                Some(c) if now.duration_since(c.fetched) < self.cache_ttl => {
                    METRICS.auth_cache.with_label_values(&["hit"]).inc();
                    return match &c.user {
                        Some(u) => Lookup::Found(u.clone()),
                        None => Lookup::Unknown,
                    };
                }
                Some(c) if now.duration_since(c.fetched) < self.cache_ttl + self.stale_if_error => {
                    Some(c.user.clone())
                }
                _ => None,
            }
        };
        METRICS.auth_cache.with_label_values(&["miss"]).inc();
        let fetched = match self.store.hub_key(digest).await {
            Ok(None) => None,
            Ok(Some(map)) => match HubUser::from_hash(map, self.cipher.as_ref(), digest) {
                Ok(u) => Some(Arc::new(u)),
                Err(e) => {
                    // a broken record refuses its key; the reason names no value
                    warn!("hub key record {}…: {e}", &digest[..12.min(digest.len())]);
                    None
                }
            },
            Err(e) => {
                return match stale {
                    Some(user) => {
                        METRICS.auth_cache.with_label_values(&["stale"]).inc();
                        match user {
                            Some(u) => Lookup::Found(u),
                            None => Lookup::Unknown,
                        }
                    }
                    None => Lookup::Unavailable(e.to_string()),
                }
            }
        };
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() >= MAX_CACHED {
            let ttl = self.cache_ttl + self.stale_if_error;
            cache.retain(|_, c| now.duration_since(c.fetched) < ttl);
            if cache.len() >= MAX_CACHED {
                cache.retain(|_, c| c.user.is_some());
            }
            if cache.len() >= MAX_CACHED {
                cache.clear();
            }
        }
        cache.insert(
            digest.to_string(),
            Cached {
                user: fetched.clone(),
                fetched: now,
            },
        );
        match fetched {
            Some(u) => Lookup::Found(u),
            None => Lookup::Unknown,
        }
    }

    /// Re-reads the key file if it changed (run from the heartbeat, off the request path). A
    /// broken file keeps the previous keys and says why.
    pub fn refresh_file(&self) {
        let Some(file) = &self.file else { return };
        let (path, seen) = {
            let f = file.read().unwrap_or_else(|p| p.into_inner());
            (f.path.clone(), f.modified)
        };
        let now = modified(&path);
        if now == seen {
            return;
        }
        match read_key_file(&path, self.cipher.as_ref()) {
            Ok(users) => {
                info!(
                    "hub keys: {} keys re-read from {}",
                    users.len(),
                    path.display()
                );
                let mut f = file.write().unwrap_or_else(|p| p.into_inner());
                f.users = users;
                f.modified = now;
            }
            Err(e) => {
                warn!(
                    "hub keys: {} not re-read, keeping the previous keys: {e}",
                    path.display()
                );
                file.write().unwrap_or_else(|p| p.into_inner()).modified = now;
            }
        }
    }
}
