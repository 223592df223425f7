//! Where a request with a session id goes. This file answers "what happens to a request that
//! arrives with session X on the wrong pod?":
//!
//! 1. X is in this pod's local table: it is owned here. Proxy to the local MCP server under the
//!    upstream id X maps to. No store round trip; the store's TTL is refreshed at most once per
//!    `refresh_interval`, in the background.
//! 2. Otherwise the store is asked. No record: nobody knows X; answer 404 so the client
//!    re-initializes (the spec's rule). A record owned by this pod (this sidecar restarted):
//!    adopt it. A record owned by another pod whose registration stands: forward to that pod's
//!    sidecar over the signed peer hop (`peer.rs`). The owner serves it as its own.
//! 3. The owner is gone (no registration, or its peer port refuses): recover. Replay the
//!    stored `initialize` and `notifications/initialized` to the local MCP server, map X to the
//!    new upstream id, take ownership in the store, and send the request on. The client keeps X.
//!    A lock in the store makes concurrent requests of one session recover it once.
//! 4. The local MCP server answers that it does not know the session (it restarted): the
//!    sidecar probes with a `ping` to be sure, recovers as in 3, and retries the request.
//!
//! The proxy's side of each case is one file of `proxy/plan/`: `local.rs` (1), `forward.rs`
//! (2), `recover.rs` (3 and 4: when to recover, the probe, the one retry; `recover` below is
//! the store's half).
//!
//! Draining (SIGTERM, or `POST /api/admin/drain` from a Kubernetes `preStop` hook): the pod
//! deregisters at once, so peers recover its sessions on their next request instead of waiting
//! for `pod_ttl`. Requests that still reach the draining pod are handed to a live peer over the
//! hop: its own sessions (the peer recovers them, since their owner is gone) and new sessions
//! alike. With no live peer left it serves them itself rather than fail.
//!
//! When the store is down, sessions in the local table keep working, new sessions open and are
//! kept locally, and the heartbeat registers them again once the store is back (also when it
//! comes back empty).
//!
//! One owner per session: a record carries an ownership epoch, and taking a session over
//! (recovery, adoption, re-registration) succeeds only from the owner and epoch the pod read
//! (`SessionStore::claim_session`). A pod whose registration lapsed (it stalled, or was cut off
//! longer than `pod_ttl`) may have lost sessions to peers that recovered them: until it has
//! claimed its sessions again it confirms each with the store before serving it (`lease.rs`),
//! and drops and forwards those it lost.

pub mod heartbeat;
mod lease;
mod local;
mod streams;
pub mod upstream_call;

use crate::metrics::METRICS;
use crate::protocol::headers::{is_valid_session_id, MCP_PROTOCOL_VERSION, MCP_SESSION_ID};
use crate::route::Route;
use crate::store::{unix_now, SessionRecord, SessionStore, Standing, StoreError};
use crate::telemetry::trace::{self, KeyValue, SpanKind};
use lease::Lease;
use local::LocalTable;
use log::{info, warn};
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use streams::StreamTable;
use tokio::sync::Notify;

/// A header the hub injects into the sidecar's own upstream calls (the user's tokens: a
/// replayed initialize needs them as much as the client's did).
pub type Injected = (http::HeaderName, String);

/// How the session layer behaves; from the `session` section of the configuration.
#[derive(Debug, Clone)]
pub struct Settings {
    pub ttl: Duration,
    pub refresh_interval: Duration,
    pub heartbeat_interval: Duration,
    pub pod_ttl: Duration,
    pub recovery_timeout: Duration,
    /// An idle legacy SSE stream gets a comment line this often (zero: never).
    pub sse_keepalive: Duration,
    /// This pod's advertised peer address: the `owner` of the sessions it holds.
    pub me: String,
}

/// Where a request for a session goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Owned here; the local MCP server knows the session under `upstream_sid`.
    Local { upstream_sid: String },
    /// Owned by another live pod; forward to its peer address.
    Forward { owner: String },
    /// The owner is gone: replay the session here.
    Recover(Box<SessionRecord>),
    /// No pod knows the session.
    Unknown,
    /// Not owned here, and the store cannot say where it is.
    StoreUnavailable,
}

/// The local table's answer for a session.
enum Owned {
    Here(Decision),
    /// A peer took it over: the store's record.
    Lost(Box<SessionRecord>),
    NotHere,
}

/// What the store says of a session in the local table.
enum Confirmed {
    /// Still this pod's (or the store cannot say): served under this upstream id.
    Held(String),
    /// Taken over (the store's record), or gone from the local table meanwhile (`None`).
    Lost(Option<Box<SessionRecord>>),
    Deleted,
}

/// Where a legacy SSE message post goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamDecision {
    /// The stream is open on this pod.
    Local,
    /// The stream is open on another live pod; forward to its peer address.
    Forward { owner: String },
    /// The stream is gone; the reason is a metrics label.
    Gone(&'static str),
    /// The stream is open here, but the post names it in a query parameter other than the
    /// one its `endpoint` event announced.
    WrongForm,
    /// Not open here, and the store cannot say where it is.
    StoreUnavailable,
}

/// Why a session could not be recovered.
#[derive(Debug)]
pub enum RecoveryError {
    /// The record has no initialize params to replay (written by an older sidecar).
    NothingToReplay,
    /// The MCP server did not take the replayed initialize.
    Refused(u16),
    Unreachable(std::io::Error),
    /// Another request was recovering the session and did not finish in time.
    Timeout,
}

impl fmt::Display for RecoveryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RecoveryError::NothingToReplay => {
                f.write_str("the session has no stored initialize to replay")
            }
            RecoveryError::Refused(s) => write!(
                f,
                "the MCP server answered the replayed initialize with {s}"
            ),
            RecoveryError::Unreachable(e) => write!(f, "the MCP server could not be reached: {e}"),
            RecoveryError::Timeout => {
                f.write_str("the session is being recovered by another request; timed out waiting")
            }
        }
    }
}

/// Ids the sidecar uses for its own JSON-RPC requests, so they never collide with a client's.
const RECOVERY_ID: &str = "\"mcp-sidecar-recovery\"";

/// The session layer, shared by all requests and the heartbeat.
pub struct Sessions {
    store: Arc<dyn SessionStore>,
    local: LocalTable,
    streams: StreamTable,
    pub settings: Settings,
    /// The store missed writes (it was down, or lost its data): re-register local sessions.
    needs_resync: AtomicBool,
    /// Whether peers may have taken sessions of the local table.
    lease: Lease,
    /// A housekeeping round (resync, stream refresh, idle expiry) is running.
    housekeeping: AtomicBool,
    /// This pod is leaving: deregistered, handing requests to `drain_peers`.
    draining: AtomicBool,
    /// Live peers when the drain began.
    drain_peers: std::sync::Mutex<Vec<String>>,
}

/// What a drain did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DrainReport {
    /// `false` when the pod was already draining.
    pub started: bool,
    /// Where requests for this pod's sessions go now.
    pub peers: Vec<String>,
    /// Sessions this pod owned, now handed over.
    pub sessions: usize,
    /// Legacy SSE streams still open here (they end with the pod).
    pub streams: usize,
}

impl Sessions {
    pub fn new(store: Arc<dyn SessionStore>, settings: Settings) -> Arc<Sessions> {
        Arc::new(Sessions {
            store,
            local: LocalTable::default(),
            streams: StreamTable::default(),
            needs_resync: AtomicBool::new(false),
            lease: Lease::new(settings.pod_ttl),
            housekeeping: AtomicBool::new(false),
            draining: AtomicBool::new(false),
            drain_peers: std::sync::Mutex::new(Vec::new()),
            settings,
        })
    }

    pub fn store(&self) -> &Arc<dyn SessionStore> {
        &self.store
    }

    fn store_failed(&self, what: &str, sid: &str, e: &StoreError) {
        warn!("session {sid}: {what}: {e}; kept locally, will re-register when the store is back");
        self.needs_resync.store(true, Ordering::Relaxed);
    }

    /// Where a client's request for `sid` on route `server` goes. `user` is the hub user
    /// presenting it: a session answers only to the user who created it (anyone else gets
    /// `Unknown`, exactly as for a session that does not exist).
    pub async fn resolve(
        self: &Arc<Self>,
        sid: &str,
        server: &str,
        user: Option<&str>,
    ) -> Decision {
        if self.is_draining() {
            return self.resolve_draining(sid, server, user).await;
        }
        self.resolve_stored(sid, server, user, false).await
    }

    /// Where a request forwarded by a peer goes: only ever here (a hop is never forwarded
    /// again). Served if this pod owns the session, recovered here if its owner is gone (a
    /// draining pod hands its sessions over this way). A peer forwards per the store, which
    /// names a pod that lost the session only while that pod's standing is in doubt, when the
    /// local table is checked against the store anyway (`owned_here`).
    pub async fn resolve_forwarded(
        self: &Arc<Self>,
        sid: &str,
        server: &str,
        user: Option<&str>,
    ) -> Decision {
        self.resolve_stored(sid, server, user, true).await
    }

    /// Whether `record` answers to `user`; a refusal is logged with user ids only.
    fn bound_to(&self, record: &SessionRecord, user: Option<&str>) -> bool {
        if record.user.as_deref() == user {
            return true;
        }
        METRICS
            .hub_refusals
            .with_label_values(&[record.server_name.as_str(), "session_user"])
            .inc();
        info!(
            "session {} refused: presented by {}, but it belongs to {}",
            record.session_id,
            user.map_or("an anonymous caller".to_string(), |u| format!("user {u}")),
            record
                .user
                .as_deref()
                .map_or("no user".to_string(), |u| format!("user {u}")),
        );
        false
    }

    /// The local table, else the store's record and its owner's registration.
    async fn resolve_stored(
        self: &Arc<Self>,
        sid: &str,
        server: &str,
        user: Option<&str>,
        forwarded: bool,
    ) -> Decision {
        let stored = match self.owned_here(sid, server, user).await {
            Owned::Here(d) => return d,
            Owned::Lost(now) => Ok(Some(*now)),
            Owned::NotHere => self.store.load_session(sid).await,
        };
        let record = match stored {
            Ok(Some(r)) if r.server_name == server && self.bound_to(&r, user) => r,
            Ok(_) => return Decision::Unknown,
            Err(_) => return Decision::StoreUnavailable,
        };
        if record.owner == self.settings.me {
            return self.adopt(record).await;
        }
        match self.store.pod_alive(&record.owner).await {
            // a peer sent it here, yet another live pod owns it: the record moved meanwhile
            Ok(true) if forwarded => Decision::Unknown,
            Ok(true) => Decision::Forward {
                owner: record.owner,
            },
            Ok(false) => Decision::Recover(Box::new(record)),
            Err(_) => Decision::StoreUnavailable,
        }
    }

    /// While draining: this pod's sessions go to a peer, which recovers them; the local table
    /// is used only when no peer is left.
    async fn resolve_draining(
        self: &Arc<Self>,
        sid: &str,
        server: &str,
        user: Option<&str>,
    ) -> Decision {
        let record = match self.local.record(sid) {
            Some(r) => Some(r),
            None => match self.store.load_session(sid).await {
                Ok(r) => r,
                Err(_) => {
                    return self
                        .resolve_local(sid, server, user)
                        .unwrap_or(Decision::StoreUnavailable)
                }
            },
        };
        let Some(record) = record.filter(|r| r.server_name == server && self.bound_to(r, user))
        else {
            return Decision::Unknown;
        };
        if record.owner != self.settings.me {
            if let Ok(true) = self.store.pod_alive(&record.owner).await {
                return Decision::Forward {
                    owner: record.owner,
                };
            }
        }
        match self.handoff_peer(sid) {
            Some(peer) => Decision::Forward { owner: peer },
            None if record.owner == self.settings.me => match self.resolve_local(sid, server, user)
            {
                Some(d) => d,
                None => self.adopt(record).await,
            },
            None => Decision::Recover(Box::new(record)),
        }
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// The live peer that takes requests for `key` while this pod drains (the same peer for
    /// the same key, spread over all of them). `None` when not draining or no peer is left.
    pub fn handoff_peer(&self, key: &str) -> Option<String> {
        if !self.is_draining() {
            return None;
        }
        let peers = self.drain_peers.lock().unwrap_or_else(|p| p.into_inner());
        if peers.is_empty() {
            return None;
        }
        let hash = key.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
        });
        Some(peers[(hash % peers.len() as u64) as usize].clone())
    }

    /// Starts draining: readiness fails, the pod deregisters at once, and requests that still
    /// arrive are handed to live peers. One way: a drained pod is on its way out.
    pub async fn drain(&self) -> DrainReport {
        let started = !self.draining.swap(true, Ordering::SeqCst);
        if started {
            METRICS.draining.set(1);
            self.deregister().await;
            let peers: Vec<String> = match self.store.list_pods().await {
                Ok(pods) => pods
                    .into_iter()
                    .map(|p| p.address)
                    .filter(|a| *a != self.settings.me)
                    .collect(),
                Err(e) => {
                    warn!("draining without peers to hand over to: {e}");
                    Vec::new()
                }
            };
            *self.drain_peers.lock().unwrap_or_else(|p| p.into_inner()) = peers;
        }
        let report = DrainReport {
            started,
            peers: self
                .drain_peers
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone(),
            sessions: self.local.len(),
            streams: self.streams.len(),
        };
        if started {
            info!(
                "draining: pod {} deregistered; {} sessions hand over to peers {:?}; {} SSE streams stay until they end",
                self.settings.me, report.sessions, report.peers, report.streams
            );
        }
        report
    }

    fn resolve_local(
        self: &Arc<Self>,
        sid: &str,
        server: &str,
        user: Option<&str>,
    ) -> Option<Decision> {
        let hit = self
            .local
            .get(sid, server, user, self.settings.refresh_interval)?;
        if hit.refresh_due {
            self.refresh_later(sid.to_string());
        }
        Some(Decision::Local {
            upstream_sid: hit.upstream_sid,
        })
    }

    /// The local table's answer for `sid`. While this pod's standing is in doubt (see
    /// `lease.rs`), only after the store confirmed that this pod still holds the session.
    async fn owned_here(self: &Arc<Self>, sid: &str, server: &str, user: Option<&str>) -> Owned {
        if !self.lease.in_doubt() {
            return self
                .resolve_local(sid, server, user)
                .map_or(Owned::NotHere, Owned::Here);
        }
        if self
            .local
            .get(sid, server, user, self.settings.refresh_interval)
            .is_none()
        {
            return Owned::NotHere;
        }
        match self.confirm(sid).await {
            Confirmed::Held(upstream_sid) => Owned::Here(Decision::Local { upstream_sid }),
            Confirmed::Deleted => Owned::Here(Decision::Unknown),
            Confirmed::Lost(Some(now)) => Owned::Lost(now),
            Confirmed::Lost(None) => Owned::NotHere,
        }
    }

    /// A record the store says this pod owns, missing from the local table (the sidecar
    /// restarted). Claimed with the next epoch, so that a peer recovering the session from
    /// the same record at the same time loses.
    async fn adopt(&self, record: SessionRecord) -> Decision {
        let claimed = SessionRecord {
            epoch: record.epoch + 1,
            ..record.clone()
        };
        let sid = record.session_id.clone();
        let held = match self
            .store
            .claim_session(&claimed, &record, false, self.settings.ttl)
            .await
        {
            Ok(Standing::Held) => claimed,
            Ok(Standing::Lost(now)) if now.owner != self.settings.me => {
                return Decision::Forward { owner: now.owner }
            }
            Ok(Standing::Lost(now)) => *now,
            Ok(Standing::Missing) => return Decision::Unknown,
            Err(e) => {
                self.store_failed("adopting failed", &sid, &e);
                record
            }
        };
        info!(
            "session {sid} adopted from the store (owned by this pod, epoch {})",
            held.epoch
        );
        let upstream_sid = held.upstream_session_id.clone();
        self.local.insert(held);
        Decision::Local { upstream_sid }
    }

    /// Slides the store's TTL off the request path.
    fn refresh_later(self: &Arc<Self>, sid: String) {
        let this = Arc::clone(self);
        tokio::spawn(async move {
            this.confirm(&sid).await;
        });
    }

    /// Asks the store whether this pod still holds `sid`, sliding its TTL if so; drops it from
    /// the local table when a peer took it over or it was deleted.
    async fn confirm(&self, sid: &str) -> Confirmed {
        let Some(mine) = self.local.record(sid) else {
            return Confirmed::Lost(None);
        };
        match self
            .store
            .touch_owned(&mine, unix_now(), self.settings.ttl)
            .await
        {
            Ok(Standing::Held) => Confirmed::Held(mine.upstream_session_id),
            Ok(Standing::Lost(now)) => {
                self.lost(&mine, &now);
                Confirmed::Lost(Some(now))
            }
            // deleted on purpose, unless the store lost its data: then this pod's registration
            // is gone too, or was found gone (its standing is in doubt) and the resync writes
            // the session again
            Ok(Standing::Missing) => {
                if !self.lease.in_doubt()
                    && matches!(self.store.pod_alive(&self.settings.me).await, Ok(true))
                {
                    if self.local.remove_held(&mine, "deleted") {
                        info!("session {sid} was deleted from the store; dropped locally");
                        METRICS.sessions.with_label_values(&["deleted"]).inc();
                    }
                    return Confirmed::Deleted;
                }
                self.needs_resync.store(true, Ordering::Relaxed);
                Confirmed::Held(mine.upstream_session_id)
            }
            Err(e) => {
                self.store_failed("TTL refresh failed", sid, &e);
                Confirmed::Held(mine.upstream_session_id)
            }
        }
    }

    /// The store has `mine`'s session at another holder (`now`): this pod stops serving it.
    fn lost(&self, mine: &SessionRecord, now: &SessionRecord) {
        // this pod's own newer claim (a resync or another request) is no loss
        if now.owner == self.settings.me || !self.local.remove_held(mine, "lost") {
            return;
        }
        info!(
            "session {} lost to pod {} (epoch {})",
            mine.session_id, now.owner, now.epoch
        );
        METRICS.sessions.with_label_values(&["lost"]).inc();
    }

    /// Records a session an upstream just created (a 2xx initialize response).
    pub async fn capture(&self, record: SessionRecord) {
        let sid = record.session_id.clone();
        info!(
            "session {sid} confirmed from initialize response (server {}, protocol {})",
            record.server_name,
            record.protocol_version.as_deref().unwrap_or("-")
        );
        self.local.insert(record.clone());
        METRICS.sessions.with_label_values(&["created"]).inc();
        match self.store.save_session(&record, self.settings.ttl).await {
            Ok(()) => info!(
                "session {sid} saved to {} store (owner {}, ttl {}s)",
                self.store.backend().as_str(),
                record.owner,
                self.settings.ttl.as_secs()
            ),
            Err(e) => self.store_failed("saving failed", &sid, &e),
        }
    }

    /// Ends a session everywhere (DELETE, admin API).
    pub async fn forget(&self, sid: &str) -> Result<bool, StoreError> {
        let local = self.local.remove(sid) | self.streams.close(sid);
        let stored = self.store.delete_session(sid).await?;
        if local || stored {
            info!("session {sid} deleted");
            METRICS.sessions.with_label_values(&["deleted"]).inc();
        }
        Ok(local || stored)
    }

    /// A client session of a shared route, for `server` and hub `user`: from the local table
    /// (it was opened here) or the store. `Ok(None)` when unknown or someone else's.
    pub async fn shared_client(
        self: &Arc<Self>,
        sid: &str,
        server: &str,
        user: Option<&str>,
    ) -> Result<Option<SessionRecord>, StoreError> {
        if let Some(hit) = self
            .local
            .get(sid, server, user, self.settings.refresh_interval)
        {
            if hit.refresh_due {
                self.refresh_later(sid.to_string());
            }
            return Ok(self.local.record(sid).filter(|r| r.context.is_some()));
        }
        Ok(self
            .store
            .load_session(sid)
            .await?
            .filter(|r| r.server_name == server && r.context.is_some() && self.bound_to(r, user)))
    }

    /// Records a session without the capture log lines (a shared route's client session, or
    /// a shared upstream session: the shared layer logs them).
    pub async fn record_quietly(&self, record: SessionRecord) {
        let sid = record.session_id.clone();
        self.local.insert(record.clone());
        METRICS.sessions.with_label_values(&["created"]).inc();
        if let Err(e) = self.store.save_session(&record, self.settings.ttl).await {
            self.store_failed("saving failed", &sid, &e);
        }
    }

    /// Removes a session from the local table only (a replaced shared upstream session).
    pub fn drop_local(&self, sid: &str) {
        self.local.remove(sid);
    }

    /// The record of a session owned here, if any.
    pub fn local_record(&self, sid: &str) -> Option<SessionRecord> {
        self.local.record(sid)
    }

    pub fn local_count(&self) -> usize {
        self.local.len()
    }

    /// How long a legacy stream's record outlives its last refresh: three heartbeat refreshes,
    /// so a crashed pod's streams leave the store within minutes.
    pub fn stream_ttl(&self) -> Duration {
        self.settings.refresh_interval * 3
    }

    /// Registers a legacy SSE stream this pod relays. Returns what ends it early (an admin
    /// delete). The store write is awaited: a post for the session may reach another pod as
    /// soon as the client reads the `endpoint` event.
    pub async fn open_stream(&self, record: SessionRecord, param: &'static str) -> Arc<Notify> {
        let sid = record.session_id.clone();
        let close = self.streams.insert(record.clone(), param);
        METRICS.sessions.with_label_values(&["created"]).inc();
        match self.store.save_session(&record, self.stream_ttl()).await {
            Ok(()) => info!(
                "sse session {sid} opened (server {}, owner {})",
                record.server_name, record.owner
            ),
            Err(e) => {
                METRICS
                    .sse_failures
                    .with_label_values(&["register_failed"])
                    .inc();
                self.store_failed("saving the SSE stream failed", &sid, &e);
            }
        }
        close
    }

    /// The stream of `sid` closed: its session ends everywhere.
    pub async fn close_stream(&self, sid: &str) {
        if !self.streams.remove(sid) {
            return;
        }
        METRICS.sessions.with_label_values(&["deleted"]).inc();
        match self.store.delete_session(sid).await {
            Ok(_) => info!("sse session {sid} closed"),
            Err(e) => warn!("sse session {sid} closed, but its record stays until its TTL: {e}"),
        }
    }

    /// Where a legacy message post for `sid` on route `server` goes. A post forwarded by a
    /// peer is served only if the stream is open here.
    pub async fn resolve_stream(
        &self,
        sid: &str,
        param: &str,
        server: &str,
        user: Option<&str>,
        forwarded: bool,
    ) -> StreamDecision {
        match self.streams.user_of(sid, server) {
            Some((owner, _)) if owner.as_deref() != user => {
                return StreamDecision::Gone("wrong_user")
            }
            Some((_, announced)) if announced != param => return StreamDecision::WrongForm,
            Some(_) => return StreamDecision::Local,
            None => {}
        }
        if forwarded {
            return StreamDecision::Gone("not_owned");
        }
        let record = match self.store.load_session(sid).await {
            Ok(Some(r)) if r.server_name == server && self.bound_to(&r, user) => r,
            Ok(_) => return StreamDecision::Gone("unknown_session"),
            Err(_) => return StreamDecision::StoreUnavailable,
        };
        if record.owner == self.settings.me {
            // this pod's stream is closed (the sidecar restarted): the record is stale
            self.drop_stream_record(sid, "its stream is no longer open on this pod");
            return StreamDecision::Gone("stream_closed");
        }
        match self.store.pod_alive(&record.owner).await {
            Ok(true) => StreamDecision::Forward {
                owner: record.owner,
            },
            Ok(false) => {
                self.drop_stream_record(sid, "its owner pod is gone");
                StreamDecision::Gone("owner_gone")
            }
            Err(_) => StreamDecision::StoreUnavailable,
        }
    }

    /// Removes a legacy session record whose stream cannot exist any more, off the request
    /// path.
    pub fn drop_stream_record(&self, sid: &str, why: &'static str) {
        let store = self.store.clone();
        let sid = sid.to_string();
        tokio::spawn(async move {
            if let Ok(true) = store.delete_session(&sid).await {
                info!("sse session {sid} removed: {why}");
            }
        });
    }

    /// Slides the store TTL of the streams open here; ends those deleted through the admin
    /// API.
    async fn refresh_streams(&self) {
        let ttl = self.stream_ttl();
        for sid in self.streams.due(self.settings.refresh_interval) {
            match self.store.touch_session(&sid, unix_now(), ttl).await {
                Ok(true) => {}
                Ok(false) => match self.store.pod_alive(&self.settings.me).await {
                    Ok(true) => {
                        info!("sse session {sid} was deleted from the store; closing its stream");
                        self.streams.close(&sid);
                    }
                    _ => self.needs_resync.store(true, Ordering::Relaxed),
                },
                Err(e) => {
                    self.store_failed("SSE stream TTL refresh failed", &sid, &e);
                    break;
                }
            }
        }
    }

    /// One JSON-RPC message from the sidecar itself to the local MCP server, on a session when
    /// `upstream_sid` is given.
    pub async fn call_upstream(
        &self,
        route: &Route,
        path: &str,
        upstream_sid: Option<&str>,
        protocol_version: Option<&str>,
        extra: &[Injected],
        body: &str,
    ) -> std::io::Result<upstream_call::Answer> {
        let headers: Vec<(&str, &str)> = [
            upstream_sid.map(|s| (MCP_SESSION_ID, s)),
            protocol_version.map(|v| (MCP_PROTOCOL_VERSION, v)),
        ]
        .into_iter()
        .flatten()
        .chain(extra.iter().map(|(n, v)| (n.as_str(), v.as_str())))
        .collect();
        upstream_call::post(
            route.upstream_addr,
            &route.upstream_authority,
            path,
            &headers,
            body.as_bytes(),
            self.settings.recovery_timeout,
        )
        .await
    }

    /// Recovers `record` on this pod, or waits for the request that already does. Returns
    /// where the session now lives.
    pub async fn recover(
        &self,
        record: SessionRecord,
        route: &Route,
        path: &str,
        reason: &str,
        extra: &[Injected],
    ) -> Result<Decision, RecoveryError> {
        let span = trace::current_child("mcp_sidecar.recover", SpanKind::Internal);
        span.set(|| {
            vec![KeyValue::new(
                "mcp_sidecar.recover.reason",
                reason.to_string(),
            )]
        });
        let result = span
            .scope()
            .run(self.recover_once(record, route, path, reason, extra))
            .await;
        span.end(result.as_ref().err().map(|_| "recovery_failed"));
        result
    }

    async fn recover_once(
        &self,
        record: SessionRecord,
        route: &Route,
        path: &str,
        reason: &str,
        extra: &[Injected],
    ) -> Result<Decision, RecoveryError> {
        let sid = record.session_id.clone();
        let lock = format!("recover:{sid}");
        let token = format!("{}/{}", self.settings.me, uuid::Uuid::new_v4());
        let deadline = Instant::now() + self.settings.recovery_timeout;
        loop {
            match self
                .store
                .try_lock(&lock, &token, self.settings.recovery_timeout * 2)
                .await
            {
                Ok(true) => {
                    let result = self
                        .recover_locked(record, route, path, reason, extra)
                        .await;
                    let _ = self.store.unlock(&lock, &token).await;
                    return result;
                }
                // without the store there is no one to coordinate with
                Err(_) => return self.replay(record, route, path, reason, extra).await,
                Ok(false) => {}
            }
            // someone else is recovering it: wait until the record moves
            tokio::time::sleep(Duration::from_millis(25)).await;
            if let Ok(Some(now)) = self.store.load_session(&sid).await {
                if moved(&record, &now) {
                    return Ok(self.placed(now).await);
                }
            }
            if Instant::now() >= deadline {
                return Err(RecoveryError::Timeout);
            }
        }
    }

    /// Recovers `record` holding the lock, unless another pod (or request) recovered it
    /// between the read that led here and the lock.
    async fn recover_locked(
        &self,
        record: SessionRecord,
        route: &Route,
        path: &str,
        reason: &str,
        extra: &[Injected],
    ) -> Result<Decision, RecoveryError> {
        match self.store.load_session(&record.session_id).await {
            Ok(Some(now)) if moved(&record, &now) => Ok(self.placed(now).await),
            // unchanged, or the store cannot say: the claim after the replay decides
            _ => self.replay(record, route, path, reason, extra).await,
        }
    }

    /// Where a session lives that a recovery other than ours placed.
    async fn placed(&self, now: SessionRecord) -> Decision {
        if now.owner != self.settings.me {
            return Decision::Forward { owner: now.owner };
        }
        match self.local.record(&now.session_id) {
            Some(mine) if mine.same_holder(&now) => Decision::Local {
                upstream_sid: mine.upstream_session_id,
            },
            _ => self.adopt(now).await,
        }
    }

    async fn replay(
        &self,
        record: SessionRecord,
        route: &Route,
        path: &str,
        reason: &str,
        extra: &[Injected],
    ) -> Result<Decision, RecoveryError> {
        let started = Instant::now();
        let params = record
            .init_params
            .as_deref()
            .ok_or(RecoveryError::NothingToReplay)?;
        let init = format!(
            r#"{{"jsonrpc":"2.0","id":{RECOVERY_ID},"method":"initialize","params":{params}}}"#
        );
        let version = record.protocol_version.as_deref();
        let answer = self
            .call_upstream(route, path, None, None, extra, &init)
            .await
            .map_err(RecoveryError::Unreachable)?;
        let new_sid = answer
            .header(MCP_SESSION_ID)
            .filter(|s| (200..300).contains(&answer.status) && is_valid_session_id(s.as_bytes()))
            .ok_or(RecoveryError::Refused(answer.status))?
            .to_string();
        let initialized = r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#;
        let answer = self
            .call_upstream(route, path, Some(&new_sid), version, extra, initialized)
            .await
            .map_err(RecoveryError::Unreachable)?;
        if !(200..300).contains(&answer.status) {
            return Err(RecoveryError::Refused(answer.status));
        }
        let sid = record.session_id.clone();
        let replayed = SessionRecord {
            upstream_session_id: new_sid.clone(),
            last_seen: unix_now(),
            ..record.clone()
        };
        let claimed = SessionRecord {
            owner: self.settings.me.clone(),
            epoch: record.epoch + 1,
            ..replayed.clone()
        };
        // a record of this pod's own that the store lost is written again, as the resync would
        let create = record.owner == self.settings.me;
        match self
            .store
            .claim_session(&claimed, &record, create, self.settings.ttl)
            .await
        {
            Ok(Standing::Held) => self.local.insert(claimed),
            Ok(Standing::Lost(now)) => {
                // the upstream session just made stays unused and idles out upstream
                info!(
                    "session {sid}: pod {} took it over first (epoch {}); upstream session {new_sid} not used",
                    now.owner, now.epoch
                );
                return Ok(self.placed(*now).await);
            }
            Ok(Standing::Missing) => {
                info!("session {sid} was deleted while it was being recovered");
                return Ok(Decision::Unknown);
            }
            Err(e) => {
                self.store_failed("saving the recovered session failed", &sid, &e);
                // until the claim reaches the store, the entry stands for the holder it takes
                // the session from, which is what the resync claims it from
                self.local.insert(replayed);
            }
        }
        METRICS.sessions.with_label_values(&["recovered"]).inc();
        info!(
            "session {sid} recovered ({reason}): initialize replayed to {}, upstream session {new_sid}, previous owner {}, epoch {}, took {} ms",
            route.server_name,
            record.owner,
            record.epoch + 1,
            started.elapsed().as_millis()
        );
        Ok(Decision::Local {
            upstream_sid: new_sid,
        })
    }

    /// One heartbeat: renews this pod's registration, then runs the housekeeping (re-register
    /// local sessions when the store lost them, refresh SSE streams, drop sessions idle past
    /// their TTL) in a task of its own. A long housekeeping round never delays the next
    /// renewal: a late one lets the registration lapse, and peers take this pod's sessions.
    pub async fn heartbeat(self: &Arc<Self>, info: &str) {
        if self.is_draining() {
            // registering again would draw the sessions back
            return;
        }
        let sent = Instant::now();
        let answered = match self
            .store
            .heartbeat_pod(&self.settings.me, info, self.settings.pod_ttl)
            .await
        {
            Ok(existed) => {
                self.lease.renewed(sent, existed);
                if !existed {
                    self.needs_resync.store(true, Ordering::Relaxed);
                }
                true
            }
            Err(_) => {
                self.lease.unreachable();
                self.needs_resync.store(true, Ordering::Relaxed);
                false
            }
        };
        if self.housekeeping.swap(true, Ordering::AcqRel) {
            return;
        }
        let resync = answered && self.needs_resync.swap(false, Ordering::Relaxed);
        let this = Arc::clone(self);
        let round = tokio::spawn(async move {
            let _done = Running(&this.housekeeping);
            this.housekeep(resync).await;
        });
        // a quick round is over when the heartbeat returns; a long one goes on in the background
        let _ = tokio::time::timeout(self.settings.heartbeat_interval / 2, round).await;
    }

    async fn housekeep(&self, resync: bool) {
        if resync {
            self.resync().await;
        }
        self.refresh_streams().await;
        let expired = self.local.expire_idle(self.settings.ttl);
        if expired > 0 {
            info!("{expired} idle sessions expired");
            METRICS
                .sessions
                .with_label_values(&["expired"])
                .inc_by(expired as u64);
        }
    }

    /// Writes the local sessions to the store again: each only where the store still has it as
    /// this pod holds it, or has nothing (a session a peer took over meanwhile is the peer's).
    /// Each is claimed with the next epoch, so a peer that read the old record before this
    /// pod registered again cannot take it over afterwards.
    async fn resync(&self) {
        let ticket = self.lease.resync_started();
        let sessions = self.local.all();
        let streams = self.streams.all();
        let total = sessions.len() + streams.len();
        let mut saved = 0;
        let mut complete = true;
        for held in &sessions {
            if self.is_draining() {
                return;
            }
            let claimed = SessionRecord {
                owner: self.settings.me.clone(),
                epoch: held.epoch + 1,
                ..held.clone()
            };
            match self
                .store
                .claim_session(&claimed, held, true, self.settings.ttl)
                .await
            {
                Ok(Standing::Lost(now)) => self.lost(held, &now),
                // `Missing` is never the answer when creating
                Ok(_) => {
                    self.local.advance(held, claimed);
                    saved += 1;
                }
                Err(_) => {
                    complete = false;
                    break;
                }
            }
        }
        // streams never change hands: their records are written as they are
        let stream_ttl = self.stream_ttl();
        for r in &streams {
            if !complete {
                break;
            }
            match self.store.save_session(r, stream_ttl).await {
                Ok(()) => saved += 1,
                Err(_) => complete = false,
            }
        }
        if complete {
            self.lease.resync_done(ticket);
        } else {
            self.needs_resync.store(true, Ordering::Relaxed);
        }
        if total > 0 {
            info!("re-registered {saved} of {total} local sessions with the store");
        }
    }

    /// Removes this pod's registration (shutdown), so peers recover its sessions at once.
    pub async fn deregister(&self) {
        match self.store.remove_pod(&self.settings.me).await {
            Ok(()) => info!(
                "pod {} deregistered; peers take over its sessions",
                self.settings.me
            ),
            Err(e) => warn!("pod {} could not deregister: {e}", self.settings.me),
        }
    }
}

/// Whether the store's `now` is no longer the holder a recovery read as `record`.
fn moved(record: &SessionRecord, now: &SessionRecord) -> bool {
    !now.same_holder(record) || now.upstream_session_id != record.upstream_session_id
}

/// Clears a flag when dropped (also when the task holding it panics).
struct Running<'a>(&'a AtomicBool);

impl Drop for Running<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

#[cfg(test)]
mod tests;
