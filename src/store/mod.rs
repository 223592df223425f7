//! Where sessions live between requests and across pods. One trait, two backends: Redis (shared
//! by every sidecar of a deployment) and in-process (single-pod mode, the embedded default).
//! The key schema is in [`keys`].

pub mod connect;
pub mod keys;
mod memory;
mod redis;

pub use self::memory::MemoryStore;
pub use self::redis::RedisStore;

use async_trait::async_trait;
use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Which backend a store is, as shown at startup, in `/readyz` and in metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Memory,
    Redis,
}

impl Backend {
    pub fn as_str(self) -> &'static str {
        match self {
            Backend::Memory => "memory",
            Backend::Redis => "redis",
        }
    }
}

/// How a session's client talks to the MCP server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Transport {
    /// Streamable HTTP (2025-03-26 and later): `Mcp-Session-Id`, recoverable by replay.
    #[default]
    StreamableHttp,
    /// Legacy HTTP+SSE (2024-11-05): a `GET /sse` stream that lives on its owner pod; the
    /// session ends with the stream and is never replayed.
    Sse,
}

impl Transport {
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::StreamableHttp => "streamable_http",
            Transport::Sse => "sse",
        }
    }

    /// Reads the stored form; records written before the field existed are Streamable HTTP.
    pub fn parse(s: Option<&str>) -> Transport {
        match s {
            Some("sse") => Transport::Sse,
            _ => Transport::StreamableHttp,
        }
    }
}

/// One MCP session as the sidecars share it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SessionRecord {
    /// The id the client holds (what it sends in `Mcp-Session-Id`).
    pub session_id: String,
    /// The id the upstream currently knows; differs from `session_id` after a recovery.
    pub upstream_session_id: String,
    /// Advertised address of the pod whose upstream holds the session.
    pub owner: String,
    pub server_name: String,
    pub transport: Transport,
    /// Hub user that created the session, when auth is on.
    pub user: Option<String>,
    pub protocol_version: Option<String>,
    /// The client's `initialize` params as raw JSON, replayed on recovery.
    pub init_params: Option<String>,
    /// A client session of a `session_mode: shared` route: the context whose shared upstream
    /// session serves it (`upstream_session_id` is then unused).
    pub context: Option<String>,
    /// A shared upstream session's InitializeResult, which the sidecar answers later clients'
    /// `initialize` with.
    pub init_result: Option<String>,
    /// Unix seconds.
    pub created_at: u64,
    pub last_seen: u64,
    /// Ownership epoch: raised by one whenever the session changes hands (recovery, adoption,
    /// re-registration after a lapse), so a pod can tell that the record it holds is still
    /// current. Records of older sidecars have none: 0.
    pub epoch: u64,
}

/// What the store has of a session, compared with the `owner` and `epoch` a pod last saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Standing {
    /// Unchanged: the write or touch was done.
    Held,
    /// Another pod took the session over (or the epoch moved on): the store's record.
    Lost(Box<SessionRecord>),
    /// No record (deleted, expired, or the store lost its data).
    Missing,
}

impl SessionRecord {
    /// Whether `other` is the same ownership of the session (same owner, same epoch).
    pub fn same_holder(&self, other: &SessionRecord) -> bool {
        self.owner == other.owner && self.epoch == other.epoch
    }
}

/// A live sidecar as registered by its heartbeat.
/// One shared upstream session: `mcp:upstream:session:{server_name}:{context_key}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamSession {
    pub server_name: String,
    pub context_key: String,
    pub session_id: String,
    pub ttl: Option<Duration>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodInfo {
    /// Advertised (peer) address.
    pub address: String,
    /// What the pod said about itself (JSON: version, start time).
    pub info: String,
    /// Remaining heartbeat TTL.
    pub ttl: Option<Duration>,
}

/// A store operation that failed. Never carries key contents or credentials.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreError {
    /// The backend did not answer within the configured command timeout.
    Timeout(&'static str),
    /// The backend answered with an error or the connection failed.
    Backend { op: &'static str, message: String },
    /// A record in the store could not be read back (written by something else).
    Corrupt { key: String, message: String },
}

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreError::Timeout(op) => write!(f, "session store: {op} timed out"),
            StoreError::Backend { op, message } => {
                write!(f, "session store: {op} failed: {message}")
            }
            StoreError::Corrupt { key, message } => {
                write!(f, "session store: record {key} is unreadable: {message}")
            }
        }
    }
}

impl std::error::Error for StoreError {}

/// The session store. Every key it writes carries a TTL.
#[async_trait]
pub trait SessionStore: Send + Sync + 'static {
    fn backend(&self) -> Backend;

    /// Whether the backend answers (readiness).
    async fn ping(&self) -> Result<(), StoreError>;

    /// Creates or replaces a session record, with `ttl`.
    async fn save_session(&self, record: &SessionRecord, ttl: Duration) -> Result<(), StoreError>;

    async fn load_session(&self, session_id: &str) -> Result<Option<SessionRecord>, StoreError>;

    /// Takes a session over: writes `record` (whose epoch is one past `seen`'s) only while the
    /// store still has the session at `seen`'s owner and epoch, or, with `create`, has no record
    /// of it. Atomic: of two pods taking over from the same epoch, one gets `Held`, the other
    /// `Lost` with the winner's record.
    async fn claim_session(
        &self,
        record: &SessionRecord,
        seen: &SessionRecord,
        create: bool,
        ttl: Duration,
    ) -> Result<Standing, StoreError>;

    /// Slides the TTL of `held`'s session and stamps `last_seen`, only while the store still has
    /// it at `held`'s owner and epoch: how a pod keeps a session it may have lost.
    async fn touch_owned(
        &self,
        held: &SessionRecord,
        now: u64,
        ttl: Duration,
    ) -> Result<Standing, StoreError>;

    /// Slides the TTL and stamps `last_seen` whoever holds the session (legacy SSE streams,
    /// which never change hands). `false` when the session is unknown.
    async fn touch_session(
        &self,
        session_id: &str,
        now: u64,
        ttl: Duration,
    ) -> Result<bool, StoreError>;

    /// `false` when there was nothing to delete.
    async fn delete_session(&self, session_id: &str) -> Result<bool, StoreError>;

    /// Remaining TTL of a session record, `None` when it does not exist.
    async fn session_ttl(&self, session_id: &str) -> Result<Option<Duration>, StoreError>;

    /// Every session record with its remaining TTL (admin API; scans, so not for the request
    /// path).
    async fn list_sessions(&self) -> Result<Vec<(SessionRecord, Option<Duration>)>, StoreError>;

    /// Registers (or re-registers) a pod for `ttl`. `false` when the key did not exist before:
    /// a new pod, an expired heartbeat, or a Redis that lost its data.
    async fn heartbeat_pod(
        &self,
        address: &str,
        info: &str,
        ttl: Duration,
    ) -> Result<bool, StoreError>;

    async fn pod_alive(&self, address: &str) -> Result<bool, StoreError>;

    async fn list_pods(&self) -> Result<Vec<PodInfo>, StoreError>;

    /// Deregisters a pod at once (drain), so peers stop forwarding to it.
    async fn remove_pod(&self, address: &str) -> Result<(), StoreError>;

    /// Takes the lock `name` for `ttl` if nobody holds it. `token` identifies the holder.
    async fn try_lock(&self, name: &str, token: &str, ttl: Duration) -> Result<bool, StoreError>;

    /// Releases `name` if `token` still holds it.
    async fn unlock(&self, name: &str, token: &str) -> Result<(), StoreError>;
    /// The key registry hash `mcp:hub:key:<digest>` (fields in `crate::hub::user::field`).
    /// The in-process store has no registry: hub keys then come from the static key file.
    /// The shared upstream session of a context, sliding its TTL.
    async fn get_upstream_session(
        &self,
        server: &str,
        context: &str,
        ttl: Duration,
    ) -> Result<Option<String>, StoreError>;

    async fn set_upstream_session(
        &self,
        server: &str,
        context: &str,
        session_id: &str,
        ttl: Duration,
    ) -> Result<(), StoreError>;

    /// Deletes a context's upstream session; with `only_if`, only while it still names that
    /// session (a re-establish must not delete the one another pod just made). Whether a key
    /// was deleted.
    async fn delete_upstream_session(
        &self,
        server: &str,
        context: &str,
        only_if: Option<&str>,
    ) -> Result<bool, StoreError>;

    async fn list_upstream_sessions(&self) -> Result<Vec<UpstreamSession>, StoreError>;

    async fn hub_key(
        &self,
        digest: &str,
    ) -> Result<Option<std::collections::HashMap<String, String>>, StoreError>;

    /// Whether the key registry holds any key (readiness: a registry emptied by a Redis restart
    /// without persistence refuses every user). Scans, so callers cache the answer.
    async fn has_hub_keys(&self) -> Result<bool, StoreError>;
}

/// Current Unix time in seconds.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
