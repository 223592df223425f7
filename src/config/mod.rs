//! The sidecar's configuration: one YAML file, `${VAR}` expansion, parsed and validated once at
//! startup into [`Config`]. Every error names the file, the field and what is wrong.

mod expand;

use crate::hub::key::KeySource;
use crate::hub::policy::{valid_token_name, AuthMode, RoutePolicy, Template, ToolAccess};
use serde::de::{self, Deserializer};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::fmt;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use expand::{expand_str, expand_tree, ExpandError};

/// A configuration problem: which file, which field, what is wrong.
#[derive(Debug)]
pub struct ConfigError {
    pub file: PathBuf,
    pub field: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.field.is_empty() {
            write!(f, "{}: {}", self.file.display(), self.message)
        } else {
            write!(
                f,
                "{}: {}: {}",
                self.file.display(),
                self.field,
                self.message
            )
        }
    }
}

impl std::error::Error for ConfigError {}

/// The whole configuration file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Listeners, this pod's identity and Pingora process settings.
    #[serde(default)]
    pub server: ServerSection,
    /// Shared session store. No URL means the in-process store (single-pod mode).
    #[serde(default)]
    pub redis: RedisSection,
    /// Session bookkeeping.
    #[serde(default)]
    pub session: SessionSection,
    /// The hop between sidecars.
    #[serde(default)]
    pub peer: PeerSection,
    /// The admin API (`/api/admin/...`).
    #[serde(default)]
    pub admin: AdminSection,
    /// Upstream timeouts.
    #[serde(default)]
    pub timeouts: TimeoutsSection,
    /// Request limits.
    #[serde(default)]
    pub limits: LimitsSection,
    /// The era bridge: modern (2026-07-28) clients of legacy MCP servers.
    #[serde(default)]
    pub bridge: BridgeSection,
    /// Which clients' `Host`, `Origin` and forwarding headers the sidecar accepts.
    #[serde(default)]
    pub clients: ClientsSection,
    /// Browser clients: answer preflights and expose `Mcp-Session-Id`. Absent: CORS headers are
    /// left to the upstream.
    #[serde(default)]
    pub cors: Option<CorsSection>,
    /// Hub keys: where requests carry them and where users are looked up. Routes opt in with
    /// `auth: required|optional`.
    #[serde(default)]
    pub auth: AuthSection,
    /// OpenTelemetry traces, exported over OTLP/HTTP. Off unless a collector is named here or
    /// in `OTEL_EXPORTER_OTLP_ENDPOINT`.
    #[serde(default)]
    pub tracing: TracingSection,
    /// The audit log of tool, resource and prompt use.
    #[serde(default)]
    pub audit: AuditSection,
    /// Path prefix → local MCP server. Longest prefix wins.
    pub routes: Vec<RouteSection>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthSection {
    /// Where a request's MCPHub key is looked for, in order: `query` (`?key=`), `bearer`
    /// (`Authorization: Bearer`), `header` (`key_header`).
    pub key_sources: Vec<KeySource>,
    /// The header of the `header` source.
    pub key_header: String,
    /// How long a key lookup is trusted. A revoked or changed key takes effect within this.
    #[serde(with = "human_duration")]
    pub cache_ttl: Duration,
    /// While the store does not answer, a lookup older than `cache_ttl` is still used for this
    /// much longer (instead of refusing every user during a Redis outage).
    #[serde(with = "human_duration")]
    pub stale_if_error: Duration,
    /// Static key file (YAML, `${VAR}` expanded), checked before the store; re-read when it
    /// changes.
    pub keys_file: Option<PathBuf>,
    /// 64 hex characters: service tokens in the registry are AES-256-GCM encrypted with it.
    #[serde(deserialize_with = "secret_string")]
    pub token_encryption_key: Option<String>,
    /// Named in `WWW-Authenticate`.
    pub realm: String,
}

impl Default for AuthSection {
    fn default() -> Self {
        Self {
            key_sources: vec![KeySource::Query, KeySource::Bearer, KeySource::Header],
            key_header: "X-MCPHub-Key".into(),
            cache_ttl: Duration::from_secs(10),
            stale_if_error: Duration::from_secs(60),
            keys_file: None,
            token_encryption_key: None,
            realm: "mcp-sidecar".into(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerSection {
    /// Where MCP clients connect.
    pub listen: String,
    /// Health, readiness and metrics; keep it off the public Service.
    pub admin_listen: String,
    /// Where other sidecars forward requests for sessions this pod owns.
    pub peer_listen: String,
    /// The address other sidecars reach this one's peer listener at (`${POD_IP}:8081` in
    /// Kubernetes). Defaults to `peer_listen` when that is a concrete address.
    pub advertise_address: Option<String>,
    /// Worker threads; 0 means one per core (Pingora's own default is 1).
    #[serde(deserialize_with = "number_or_string")]
    pub threads: usize,
    /// How long after SIGTERM the listeners stay open while the pod drains, so the load
    /// balancer stops routing here before connections are refused.
    #[serde(with = "human_duration")]
    pub grace_period: Duration,
    /// How long in-flight requests and streams may take to finish once the listeners closed.
    #[serde(with = "human_duration")]
    pub shutdown_timeout: Duration,
    /// Pingora's pid file and upgrade socket (graceful binary upgrade, `-u`).
    pub pid_file: String,
    pub upgrade_sock: String,
}

impl Default for ServerSection {
    fn default() -> Self {
        Self {
            listen: "0.0.0.0:8080".into(),
            admin_listen: "127.0.0.1:9090".into(),
            peer_listen: "0.0.0.0:8081".into(),
            advertise_address: None,
            threads: 0,
            grace_period: Duration::from_secs(5),
            shutdown_timeout: Duration::from_secs(20),
            pid_file: "/tmp/mcp-sidecar.pid".into(),
            upgrade_sock: "/tmp/mcp-sidecar-upgrade.sock".into(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RedisSection {
    /// `redis://[user:password@]host:port[/db]`, or `rediss://…` for TLS. Standalone: the
    /// server; cluster: a seed node (the configuration endpoint); sentinel: a sentinel. Empty or
    /// absent: in-process store.
    #[serde(deserialize_with = "secret_string")]
    pub url: Option<String>,
    /// How the Redis (or Valkey) deployment is organised.
    pub mode: RedisMode,
    /// More seed nodes (cluster) or sentinels (sentinel) as `host:port`, reached with the URL's
    /// scheme and credentials.
    pub nodes: Vec<String>,
    /// Sentinel: the name the sentinels know the primary by (`sentinel monitor <name> …`).
    pub service_name: Option<String>,
    /// ACL user; overrides the URL's.
    pub username: Option<String>,
    /// File holding the password (a mounted Secret; one trailing newline is ignored); overrides
    /// the URL's. Read at startup.
    pub password_file: Option<PathBuf>,
    /// TLS settings for a `rediss://` URL.
    pub tls: RedisTlsSection,
    /// Per-attempt connect timeout.
    #[serde(with = "human_duration")]
    pub connect_timeout: Duration,
    /// Upper bound for any single store operation, so Redis trouble never hangs a request.
    #[serde(with = "human_duration")]
    pub command_timeout: Duration,
}

impl Default for RedisSection {
    fn default() -> Self {
        Self {
            url: None,
            mode: RedisMode::Standalone,
            nodes: Vec::new(),
            service_name: None,
            username: None,
            password_file: None,
            tls: RedisTlsSection::default(),
            connect_timeout: Duration::from_millis(500),
            command_timeout: Duration::from_millis(500),
        }
    }
}

/// `redis.mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RedisMode {
    /// One server (or a managed primary endpoint that fails over behind one name).
    Standalone,
    /// Redis Cluster or Valkey cluster (ElastiCache cluster mode, ElastiCache Serverless).
    Cluster,
    /// A primary and replicas watched by Redis Sentinel: the primary is looked up by name.
    Sentinel,
}

/// `redis.tls`. Certificates are always verified against the server's name (the URL's host,
/// also sent as SNI); there is no switch to turn verification off.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RedisTlsSection {
    /// PEM file of the CA(s) that signed the server certificates. Absent: the system's roots.
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate (chain), for mutual TLS; needs `key_file`.
    pub cert_file: Option<PathBuf>,
    /// PEM private key of `cert_file`.
    pub key_file: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SessionSection {
    /// Sliding TTL of a session record.
    #[serde(with = "human_duration")]
    pub ttl: Duration,
    /// A session's TTL is refreshed in the store at most this often, off the request path.
    #[serde(with = "human_duration")]
    pub refresh_interval: Duration,
    /// How often this pod renews its registration.
    #[serde(with = "human_duration")]
    pub heartbeat_interval: Duration,
    /// A pod whose registration is older than this is dead: its sessions are recovered.
    #[serde(with = "human_duration")]
    pub pod_ttl: Duration,
    /// Upper bound for replaying a session's initialize, and for waiting on another request
    /// that is already doing it.
    #[serde(with = "human_duration")]
    pub recovery_timeout: Duration,
    /// An idle legacy SSE stream gets a comment line this often, so load balancers with idle
    /// timeouts keep it. `0s`: never.
    #[serde(with = "human_duration")]
    pub sse_keepalive: Duration,
    /// Sliding TTL of a shared upstream session's key (`session_mode: shared` routes).
    #[serde(with = "human_duration")]
    pub shared_ttl: Duration,
}

impl Default for SessionSection {
    fn default() -> Self {
        Self {
            ttl: Duration::from_secs(3600),
            refresh_interval: Duration::from_secs(60),
            heartbeat_interval: Duration::from_secs(2),
            pod_ttl: Duration::from_secs(10),
            recovery_timeout: Duration::from_secs(5),
            sse_keepalive: Duration::from_secs(15),
            shared_ttl: Duration::from_secs(3600),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PeerSection {
    /// Shared by every sidecar of a deployment; signs forwarded requests (HMAC-SHA256).
    /// Required with `redis.url`.
    #[serde(deserialize_with = "secret_string")]
    pub secret: Option<String>,
    /// How far apart two pods' clocks may be: a hop signed up to this far in the receiver's
    /// future, or this much longer ago than its transit allowance, is accepted.
    #[serde(with = "human_duration")]
    pub max_clock_skew: Duration,
    /// Hop signatures remembered (to refuse a second use) at most. Each is kept until its hop
    /// expires; when this many are live, further hops are refused with 503.
    #[serde(deserialize_with = "number_or_string")]
    pub replay_cache_size: usize,
}

impl Default for PeerSection {
    fn default() -> Self {
        Self {
            secret: None,
            max_clock_skew: Duration::from_secs(5),
            replay_cache_size: 200_000,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TracingSection {
    /// Base URL of an OTLP/HTTP collector (`http://otel-collector:4318`); spans go to
    /// `/v1/traces` under it. Empty: no traces, unless `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` or
    /// `OTEL_EXPORTER_OTLP_ENDPOINT` names one (they win over this field).
    pub endpoint: Option<String>,
    /// Share of new traces recorded, 0 to 1. Parent-based: a request whose caller's trace is
    /// sampled (or not) follows that decision. `OTEL_TRACES_SAMPLER(_ARG)` win over it.
    #[serde(deserialize_with = "ratio")]
    pub sampling_ratio: f64,
    /// `service.name` of the spans; `OTEL_SERVICE_NAME` wins over it.
    pub service_name: String,
    /// Spans waiting for export at most; more are dropped and counted.
    #[serde(deserialize_with = "number_or_string")]
    pub max_queue: usize,
    /// Bound of one export (a batch the collector does not take in time is dropped).
    #[serde(with = "human_duration")]
    pub export_timeout: Duration,
}

impl Default for TracingSection {
    fn default() -> Self {
        Self {
            endpoint: None,
            sampling_ratio: 1.0,
            service_name: "mcp-sidecar".into(),
            max_queue: 2048,
            export_timeout: Duration::from_secs(5),
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuditSection {
    /// Also append every audit line to this file (bare JSON lines). Lines always go to the log
    /// target `audit` (`RUST_LOG=info,audit=off` silences it there).
    pub file: Option<PathBuf>,
}

/// Largest accepted `peer.max_clock_skew`: a wider window keeps signatures (and replay memory)
/// alive for longer than clock trouble justifies.
const MAX_CLOCK_SKEW: Duration = Duration::from_secs(300);

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminSection {
    /// Token for `/api/admin/...` (header `X-Auth-Token` or `Authorization: Bearer`). Empty
    /// disables the admin API; health, readiness and metrics need no token.
    #[serde(deserialize_with = "secret_string")]
    pub token: Option<String>,
}

/// Shortest accepted peer secret or admin token.
const MIN_SECRET_LEN: usize = 16;

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TimeoutsSection {
    /// TCP connect to the upstream.
    #[serde(with = "human_duration")]
    pub connect: Duration,
    /// Pooled upstream connections are dropped after this long idle. Keep it below the
    /// upstream's keep-alive (uvicorn and Node: 5 s) or a POST may hit a closed socket.
    #[serde(with = "human_duration")]
    pub upstream_idle: Duration,
    /// Gap allowed between two reads from the upstream. Unset by default: an idle SSE stream
    /// is healthy, and a read timeout would cut it.
    #[serde(default, with = "human_duration_opt")]
    pub upstream_read: Option<Duration>,
    /// Gap allowed between two writes to the upstream.
    #[serde(with = "human_duration")]
    pub upstream_write: Duration,
}

impl Default for TimeoutsSection {
    fn default() -> Self {
        Self {
            connect: Duration::from_secs(2),
            upstream_idle: Duration::from_secs(4),
            upstream_read: None,
            upstream_write: Duration::from_secs(30),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsSection {
    /// Largest request body accepted; larger ones get 413 before the upstream sees them.
    /// Accepts `4MiB`, `512KiB`, `1000000`.
    #[serde(deserialize_with = "byte_size")]
    pub max_body: usize,
    /// Most messages one JSON-RPC batch may hold.
    #[serde(deserialize_with = "number_or_string")]
    pub max_batch: usize,
    /// Largest `initialize` params kept with a session (what a recovery replays); a larger
    /// initialize is refused.
    #[serde(deserialize_with = "byte_size")]
    pub max_init_params: usize,
    /// Sessions one pod holds at most; a new session beyond it gets 503 with `Retry-After`.
    #[serde(deserialize_with = "number_or_string")]
    pub max_sessions: usize,
    /// Largest answer (a JSON body or one SSE event) held to be edited: tool lists being
    /// filtered, ids restored on shared sessions. A larger one is replaced by an error.
    #[serde(deserialize_with = "byte_size")]
    pub max_held_message: usize,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BridgeSection {
    /// A call waiting for a modern client's input (an MRTR round) is cancelled upstream when
    /// the client's retry does not come within this; its `requestState` expires with it.
    #[serde(with = "human_duration")]
    pub input_timeout: Duration,
    /// Calls waiting for input one pod holds at most; beyond it the server's request is
    /// refused and the call goes on without the input.
    #[serde(deserialize_with = "number_or_string")]
    pub max_pending: usize,
    /// `ttlMs` on `server/discover`, list results and `resources/read` answered through the
    /// bridge.
    #[serde(with = "human_duration")]
    pub cache_ttl: Duration,
    /// How long the probed era of an `era: auto` route's server is trusted.
    #[serde(with = "human_duration")]
    pub era_ttl: Duration,
}

impl Default for BridgeSection {
    fn default() -> Self {
        Self {
            input_timeout: Duration::from_secs(120),
            max_pending: 1000,
            cache_ttl: Duration::from_secs(30),
            era_ttl: Duration::from_secs(300),
        }
    }
}

impl Default for LimitsSection {
    fn default() -> Self {
        Self {
            max_body: 4 * 1024 * 1024,
            max_batch: 100,
            max_init_params: 16 * 1024,
            max_sessions: 20_000,
            max_held_message: 8 * 1024 * 1024,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClientsSection {
    /// `Host` values accepted (the port is ignored): exact names, `*.suffix`, or `*` for any.
    /// The sidecar rewrites `Host` for its MCP server, which can then no longer refuse a DNS
    /// rebinding attack itself, so the sidecar does.
    pub allowed_hosts: Vec<String>,
    /// Also accept any IP literal as `Host` (pod and Service IPs; a rebinding needs a name).
    pub allow_ip_hosts: bool,
    /// Also accept names without a dot (a Service name within its namespace).
    pub allow_single_label_hosts: bool,
    /// `Origin` values accepted when a request carries one (`scheme://host[:port]`, or `*`).
    /// Empty: an origin whose host is an accepted `Host`. With a `cors` section, its
    /// `allow_origins` decide instead.
    pub allowed_origins: Vec<String>,
    /// Peers (IPs or CIDRs) whose `X-Forwarded-For`, `X-Forwarded-Proto` and `Forwarded` are
    /// kept; anyone else's are replaced by what the sidecar sees.
    pub trusted_proxies: Vec<String>,
}

impl Default for ClientsSection {
    fn default() -> Self {
        Self {
            allowed_hosts: [
                "localhost",
                "*.svc",
                "*.svc.cluster.local",
                "*.cluster.local",
            ]
            .map(String::from)
            .to_vec(),
            allow_ip_hosts: true,
            allow_single_label_hosts: true,
            allowed_origins: Vec::new(),
            trusted_proxies: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CorsSection {
    /// Allowed origins; `*` allows any.
    pub allow_origins: Vec<String>,
    /// Request headers a browser may send.
    pub allow_headers: Vec<String>,
    /// Response headers a browser may read; `Mcp-Session-Id` is what MCP clients need.
    pub expose_headers: Vec<String>,
    /// How long a browser may cache a preflight.
    #[serde(with = "human_duration")]
    pub max_age: Duration,
}

impl Default for CorsSection {
    fn default() -> Self {
        Self {
            allow_origins: vec!["*".into()],
            allow_headers: [
                "Content-Type",
                "Accept",
                "Authorization",
                "Mcp-Session-Id",
                "MCP-Protocol-Version",
                "Last-Event-ID",
                "X-Request-Id",
            ]
            .map(String::from)
            .to_vec(),
            expose_headers: ["Mcp-Session-Id", "MCP-Protocol-Version", "X-Request-Id"]
                .map(String::from)
                .to_vec(),
            max_age: Duration::from_secs(600),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteSection {
    /// Path prefix, matched on segment boundaries (`/mcp` matches `/mcp` and `/mcp/x`, not `/mcpx`).
    pub prefix: String,
    /// The local MCP server, `http://host:port[/path]`. The prefix is replaced by the path.
    pub upstream: String,
    /// Name used in metrics, logs and Redis keys.
    pub server_name: String,
    /// `none` (default), `optional` or `required`: whether requests need an MCPHub key.
    #[serde(default)]
    pub auth: AuthMode,
    /// Service tokens a user must hold to use this route (403 otherwise).
    #[serde(default)]
    pub required_tokens: Vec<String>,
    /// Upstream header → template, e.g. `X-MCPHub-GitHub-Token: "{token.GITHUB_TOKEN}"`.
    #[serde(default)]
    pub inject_headers: BTreeMap<String, String>,
    /// Group → tool name globs the group may see and call. `*` as a group applies to every
    /// caller. Absent: no filtering.
    #[serde(default)]
    pub tool_groups: Option<BTreeMap<String, Vec<String>>>,
    /// `per_client` (default): each client initializes its own upstream session. `shared`:
    /// the clients of one context share one upstream session, multiplexed by the sidecar.
    #[serde(default)]
    pub session_mode: SessionMode,
    /// The era of the MCP server: `auto` (default: probed with `server/discover`),
    /// `legacy` (modern clients are bridged), or `modern` (passed through).
    #[serde(default)]
    pub era: EraMode,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EraMode {
    #[default]
    Auto,
    Legacy,
    Modern,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SessionMode {
    #[default]
    PerClient,
    Shared,
}

impl RouteSection {
    /// The route's hub policy (templates parsed; the configuration was validated).
    pub fn policy(&self) -> Result<RoutePolicy, String> {
        let mut templates = Vec::with_capacity(self.inject_headers.len());
        for (header, value) in &self.inject_headers {
            templates.push(Template::parse(header, value)?);
        }
        Ok(RoutePolicy {
            mode: self.auth,
            required_tokens: self.required_tokens.clone(),
            templates,
            tools: self.tool_groups.clone().map(ToolAccess::new),
        })
    }
}

impl Config {
    /// Reads, expands and validates a configuration file with the process environment.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            file: path.to_path_buf(),
            field: String::new(),
            message: format!("cannot read file: {e}"),
        })?;
        Self::from_yaml(path, &text, &|name| std::env::var(name).ok())
    }

    /// Parses configuration text; `path` is only used in error messages.
    pub fn from_yaml(
        path: &Path,
        text: &str,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let err = |field: String, message: String| ConfigError {
            file: path.to_path_buf(),
            field,
            message,
        };
        let mut tree: serde_yaml::Value =
            serde_yaml::from_str(text).map_err(|e| err(String::new(), unquoted(&e.to_string())))?;
        expand::expand_tree(&mut tree, env).map_err(|e| err(e.path, e.reason))?;
        let config: Config = serde_path_to_error::deserialize(tree).map_err(|e| {
            let field = e.path().to_string();
            let field = if field == "." { String::new() } else { field };
            err(field, e.into_inner().to_string())
        })?;
        config
            .validate()
            .map_err(|(field, message)| err(field, message))?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), (String, String)> {
        let socket = |field: &str, value: &str| -> Result<SocketAddr, (String, String)> {
            value.parse::<SocketAddr>().map_err(|_| {
                (
                    field.to_string(),
                    format!("{value:?} is not an address of the form ip:port"),
                )
            })
        };
        let listen = socket("server.listen", &self.server.listen)?;
        let admin = socket("server.admin_listen", &self.server.admin_listen)?;
        let peer = socket("server.peer_listen", &self.server.peer_listen)?;
        if listen == admin {
            return Err((
                "server.admin_listen".into(),
                "must differ from server.listen".into(),
            ));
        }
        if peer == listen || peer == admin {
            return Err((
                "server.peer_listen".into(),
                "must differ from server.listen and server.admin_listen".into(),
            ));
        }
        for (field, value) in [
            ("peer.secret", self.peer_secret()),
            ("admin.token", self.admin_token()),
        ] {
            if value.is_some_and(|v| v.len() < MIN_SECRET_LEN) {
                return Err((
                    field.into(),
                    format!("must be at least {MIN_SECRET_LEN} characters"),
                ));
            }
        }
        let s = &self.session;
        if s.heartbeat_interval.is_zero() || s.pod_ttl <= s.heartbeat_interval {
            return Err((
                "session.pod_ttl".into(),
                "must be longer than session.heartbeat_interval (which must be > 0)".into(),
            ));
        }
        if let Some(adv) = &self.server.advertise_address {
            // it is what other sidecars connect to, and they take only an address
            let usable = adv
                .parse::<SocketAddr>()
                .is_ok_and(|a| !a.ip().is_unspecified() && a.port() != 0);
            if !usable {
                return Err((
                    "server.advertise_address".into(),
                    format!("{adv:?} is not an address of the form ip:port that other sidecars can connect to (in Kubernetes: \"${{POD_IP}}:8081\")"),
                ));
            }
        }
        if self.peer.max_clock_skew > MAX_CLOCK_SKEW {
            return Err((
                "peer.max_clock_skew".into(),
                format!(
                    "must be at most {}",
                    humantime::format_duration(MAX_CLOCK_SKEW)
                ),
            ));
        }
        if self.tracing.max_queue == 0 {
            return Err(("tracing.max_queue".into(), "must be greater than 0".into()));
        }
        if let Some(e) = self.tracing.endpoint.as_deref().filter(|e| !e.is_empty()) {
            if !e.starts_with("http://") || e.parse::<http::Uri>().is_err() {
                return Err((
                    "tracing.endpoint".into(),
                    format!("{e:?} is not an http:// URL of an OTLP/HTTP collector (https is not supported)"),
                ));
            }
        }
        if self.peer.replay_cache_size == 0 {
            return Err((
                "peer.replay_cache_size".into(),
                "must be greater than 0".into(),
            ));
        }
        if let Some(url) = self.redis_url() {
            self.validate_redis(url)?;
        }
        if self.redis_url().is_some() && self.peer_secret().is_none() {
            return Err((
                "peer.secret".into(),
                "is required with redis.url: sidecars sign the requests they forward to each other"
                    .into(),
            ));
        }
        if self.redis_url().is_some()
            && self.server.advertise_address.is_none()
            && peer.ip().is_unspecified()
        {
            return Err((
                "server.advertise_address".into(),
                format!(
                    "is required with redis.url while server.peer_listen ({peer}) names no address: other sidecars forward to it (in Kubernetes: \"${{POD_IP}}:{}\")",
                    peer.port()
                ),
            ));
        }
        if self.session.ttl < Duration::from_secs(1) {
            return Err(("session.ttl".into(), "must be at least 1s".into()));
        }
        for (field, value) in [
            ("limits.max_body", self.limits.max_body),
            ("limits.max_batch", self.limits.max_batch),
            ("limits.max_init_params", self.limits.max_init_params),
            ("limits.max_sessions", self.limits.max_sessions),
            ("limits.max_held_message", self.limits.max_held_message),
        ] {
            if value == 0 {
                return Err((field.into(), "must be greater than 0".into()));
            }
        }
        crate::clients::Clients::new(&self.clients).map_err(|(field, m)| (field.to_string(), m))?;
        if self.routes.is_empty() {
            return Err(("routes".into(), "at least one route is required".into()));
        }
        if let Some(k) = self.token_encryption_key() {
            crate::hub::crypto::TokenCipher::from_hex(k)
                .map_err(|m| ("auth.token_encryption_key".to_string(), m.to_string()))?;
        }
        if self.auth.key_sources.is_empty() {
            return Err((
                "auth.key_sources".into(),
                "must name at least one of query, bearer, header".into(),
            ));
        }
        http::HeaderName::from_bytes(self.auth.key_header.as_bytes()).map_err(|_| {
            (
                "auth.key_header".to_string(),
                "is not a valid header name".to_string(),
            )
        })?;
        if self.auth.cache_ttl.is_zero() {
            return Err((
                "auth.cache_ttl".into(),
                "must be > 0 (every request would ask the store)".into(),
            ));
        }
        let mut seen = std::collections::HashSet::new();
        let mut names = std::collections::HashSet::new();
        for (i, r) in self.routes.iter().enumerate() {
            let field = |name: &str| format!("routes[{i}].{name}");
            if !r.prefix.starts_with('/') {
                return Err((
                    field("prefix"),
                    format!("{:?} must start with '/'", r.prefix),
                ));
            }
            if r.prefix.contains(['?', '#']) {
                return Err((
                    field("prefix"),
                    "must be a path without query or fragment".into(),
                ));
            }
            if !seen.insert(normalize_prefix(&r.prefix)) {
                return Err((
                    field("prefix"),
                    format!("{:?} is used by another route", r.prefix),
                ));
            }
            UpstreamUrl::parse(&r.upstream).map_err(|m| (field("upstream"), m))?;
            if r.server_name.is_empty()
                || !r
                    .server_name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
            {
                return Err((
                    field("server_name"),
                    format!(
                        "{:?} must be non-empty and use only letters, digits, '-', '_' and '.' (it becomes part of Redis keys)",
                        r.server_name
                    ),
                ));
            }
            if !names.insert(r.server_name.as_str()) {
                // sessions, metrics and shared upstream sessions are keyed by it
                return Err((
                    field("server_name"),
                    format!("{:?} is used by another route", r.server_name),
                ));
            }
            if r.auth != AuthMode::None
                && self.redis_url().is_none()
                && self.auth.keys_file.is_none()
            {
                return Err((
                    field("auth"),
                    "needs a key registry: set redis.url or auth.keys_file".into(),
                ));
            }
            for t in &r.required_tokens {
                if !valid_token_name(t) {
                    return Err((
                        field("required_tokens"),
                        format!("{t:?} must use only letters, digits and '_'"),
                    ));
                }
            }
            if !r.required_tokens.is_empty() && r.auth == AuthMode::None {
                return Err((
                    field("required_tokens"),
                    "needs auth: required or optional".into(),
                ));
            }
            let policy = r.policy().map_err(|m| (field("inject_headers"), m))?;
            if r.auth == AuthMode::None && policy.templates.iter().any(|t| t.needs_user()) {
                return Err((
                    field("inject_headers"),
                    "templates naming user or token need auth: required or optional".into(),
                ));
            }
        }
        Ok(())
    }

    /// The `redis` section beyond the URL's presence; never quotes the URL (it may hold a
    /// password).
    fn validate_redis(&self, url: &str) -> Result<(), (String, String)> {
        let r = &self.redis;
        let tls = url.starts_with("rediss://");
        if !(tls || url.starts_with("redis://") || url.starts_with("redis+unix://")) {
            return Err((
                "redis.url".into(),
                "must start with redis:// or rediss:// (TLS); leave empty for the in-process store"
                    .into(),
            ));
        }
        if url.contains('#') {
            return Err((
                "redis.url".into(),
                "must not have a #fragment: certificate verification cannot be switched off (give the server's CA in redis.tls.ca_file)".into(),
            ));
        }
        redis::Client::open(url).map_err(|e| {
            (
                "redis.url".to_string(),
                format!("is not a valid Redis URL: {e}"),
            )
        })?;
        let t = &r.tls;
        if !tls && (t.ca_file.is_some() || t.cert_file.is_some() || t.key_file.is_some()) {
            return Err((
                "redis.tls".into(),
                "needs a rediss:// URL (redis:// is plaintext)".into(),
            ));
        }
        if t.cert_file.is_some() != t.key_file.is_some() {
            return Err((
                "redis.tls".into(),
                "cert_file and key_file go together (mutual TLS)".into(),
            ));
        }
        for (field, file) in [
            ("redis.tls.ca_file", &t.ca_file),
            ("redis.tls.cert_file", &t.cert_file),
            ("redis.tls.key_file", &t.key_file),
            ("redis.password_file", &r.password_file),
        ] {
            if let Some(path) = file {
                std::fs::metadata(path).map_err(|e| {
                    (
                        field.to_string(),
                        format!("cannot read {}: {e}", path.display()),
                    )
                })?;
            }
        }
        for (i, node) in r.nodes.iter().enumerate() {
            validate_host_port(node).map_err(|m| (format!("redis.nodes[{i}]"), m))?;
        }
        match (r.mode, &r.service_name) {
            (RedisMode::Sentinel, None) => Err((
                "redis.service_name".into(),
                "is required with mode: sentinel (the name the sentinels monitor the primary by)"
                    .into(),
            )),
            (RedisMode::Sentinel, Some(_)) => Ok(()),
            (_, Some(_)) => Err((
                "redis.service_name".into(),
                "is only used with mode: sentinel".into(),
            )),
            (RedisMode::Standalone, None) if !r.nodes.is_empty() => Err((
                "redis.nodes".into(),
                "is only used with mode: cluster or sentinel".into(),
            )),
            _ => Ok(()),
        }
    }

    /// The Redis URL, or `None` for the in-process store.
    pub fn redis_url(&self) -> Option<&str> {
        self.redis
            .url
            .as_deref()
            .map(str::trim)
            .filter(|u| !u.is_empty())
    }

    /// Whether every key comes from the Redis registry while routes require keys: an empty
    /// registry then refuses every user (readiness warns about it).
    pub fn registry_required(&self) -> bool {
        self.redis_url().is_some()
            && self.auth.keys_file.is_none()
            && self.routes.iter().any(|r| r.auth == AuthMode::Required)
    }

    /// The peer secret, if set and non-empty.
    pub fn peer_secret(&self) -> Option<&str> {
        self.peer.secret.as_deref().filter(|s| !s.is_empty())
    }

    /// The token encryption key, if set and non-empty.
    pub fn token_encryption_key(&self) -> Option<&str> {
        self.auth
            .token_encryption_key
            .as_deref()
            .map(str::trim)
            .filter(|s| !s.is_empty())
    }

    /// What works but is weaker than it should be: said at startup and in readiness details.
    pub fn warnings(&self) -> Vec<String> {
        let mut out = Vec::new();
        let hub = self.routes.iter().any(|r| r.auth != AuthMode::None);
        if hub && self.redis_url().is_some() && self.token_encryption_key().is_none() {
            out.push("auth.token_encryption_key is not set: service tokens in Redis are written and read as plaintext (set it, then run `mcp-sidecar keys reencrypt`)".to_string());
        }
        out
    }

    /// The admin token, if set and non-empty.
    pub fn admin_token(&self) -> Option<&str> {
        self.admin.token.as_deref().filter(|s| !s.is_empty())
    }

    /// Worker threads per service, with 0 resolved to the number of cores.
    pub fn threads(&self) -> usize {
        if self.server.threads > 0 {
            self.server.threads
        } else {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        }
    }

    /// This pod's peer listener as other sidecars reach it.
    pub fn advertise_address(&self) -> String {
        if let Some(adv) = &self.server.advertise_address {
            return adv.clone();
        }
        let peer: SocketAddr = self.server.peer_listen.parse().expect("validated");
        if peer.ip().is_unspecified() {
            format!("127.0.0.1:{}", peer.port())
        } else {
            peer.to_string()
        }
    }

    /// The Pingora process settings this configuration implies.
    pub fn pingora_conf(&self) -> pingora::server::configuration::ServerConf {
        let mut conf = pingora::server::configuration::ServerConf {
            threads: self.threads(),
            // our grace period runs before Pingora hears of the SIGTERM (crate::shutdown); Pingora's
            // own grace period is the time in-flight work gets after its listeners closed, and
            // its runtime shutdown then only drops what is left
            grace_period_seconds: Some(self.server.shutdown_timeout.as_secs()),
            graceful_shutdown_timeout_seconds: Some(1),
            pid_file: self.server.pid_file.clone(),
            upgrade_sock: self.server.upgrade_sock.clone(),
            ..Default::default()
        };
        conf.work_stealing = true;
        conf
    }
}

/// A route prefix without its trailing slash; the root route is the empty string.
pub fn normalize_prefix(prefix: &str) -> String {
    prefix.trim_end_matches('/').to_string()
}

/// An `http://host:port[/path]` upstream, resolved once at startup.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamUrl {
    /// What the upstream expects in `Host` (FastMCP answers 421 to a foreign one).
    pub authority: String,
    pub addr: SocketAddr,
    /// Path the route prefix maps to, without trailing slash.
    pub path: String,
}

impl UpstreamUrl {
    pub fn parse(url: &str) -> Result<UpstreamUrl, String> {
        let rest = url.strip_prefix("http://").ok_or_else(|| {
            format!("{url:?} must start with http:// (the sidecar talks to its MCP server over plain HTTP on the pod's loopback)")
        })?;
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        if path.contains(['?', '#']) {
            return Err(format!("{url:?} must not carry a query or fragment"));
        }
        validate_host_port(authority)?;
        let addr = authority
            .to_socket_addrs()
            .map_err(|e| format!("cannot resolve {authority:?}: {e}"))?
            .next()
            .ok_or_else(|| format!("{authority:?} resolves to no address"))?;
        Ok(UpstreamUrl {
            authority: authority.to_string(),
            addr,
            path: path.trim_end_matches('/').to_string(),
        })
    }
}

fn validate_host_port(value: &str) -> Result<(), String> {
    let (host, port) = value
        .rsplit_once(':')
        .ok_or_else(|| format!("{value:?} must be host:port"))?;
    if host.is_empty() || port.parse::<u16>().map_or(true, |p| p == 0) {
        return Err(format!(
            "{value:?} must be host:port with a port from 1 to 65535"
        ));
    }
    Ok(())
}

/// A YAML syntax error without the scalars it quotes between backticks (the parser does not
/// say which field they belong to; it may be a secret).
pub(crate) fn unquoted(message: &str) -> String {
    message
        .split('`')
        .enumerate()
        .map(|(i, part)| if i % 2 == 1 { "(value)" } else { part })
        .collect()
}

/// A secret (or a URL that may hold one) as a string. Serde's own message for another type
/// would quote the value.
fn secret_string<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    match serde_yaml::Value::deserialize(d)? {
        serde_yaml::Value::Null => Ok(None),
        serde_yaml::Value::String(s) => Ok(Some(s)),
        _ => Err(de::Error::custom(
            "must be a string (quote the value in the file)",
        )),
    }
}

fn number_or_string<'de, D: Deserializer<'de>>(d: D) -> Result<usize, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        N(usize),
        S(String),
    }
    match Raw::deserialize(d)? {
        Raw::N(n) => Ok(n),
        Raw::S(s) => s
            .trim()
            .parse()
            .map_err(|_| de::Error::custom(format!("{s:?} is not a whole number"))),
    }
}

fn ratio<'de, D: Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        N(f64),
        S(String),
    }
    let r = match Raw::deserialize(d)? {
        Raw::N(n) => n,
        Raw::S(s) => s
            .trim()
            .parse()
            .map_err(|_| de::Error::custom(format!("{s:?} is not a number")))?,
    };
    if !(0.0..=1.0).contains(&r) {
        return Err(de::Error::custom(format!("{r} is not between 0 and 1")));
    }
    Ok(r)
}

fn byte_size<'de, D: Deserializer<'de>>(d: D) -> Result<usize, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        N(usize),
        S(String),
    }
    match Raw::deserialize(d)? {
        Raw::N(n) => Ok(n),
        Raw::S(s) => parse_byte_size(&s).map_err(de::Error::custom),
    }
}

/// `4MiB`, `512KiB`, `1GiB`, `1000`, also `kB`/`MB` (decimal).
pub fn parse_byte_size(s: &str) -> Result<usize, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: usize = num
        .parse()
        .map_err(|_| format!("{s:?} is not a size like 4MiB or 65536"))?;
    let mult: usize = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "kB" | "KB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        other => {
            return Err(format!(
                "unknown size unit {other:?} in {s:?} (use B, KiB, MiB, GiB)"
            ))
        }
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("{s:?} is too large"))
}

/// Durations as humans write them: `500ms`, `5s`, `1h`.
mod human_duration {
    use serde::{Deserialize, Deserializer};
    use std::time::Duration;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(s.trim()).map_err(|e| {
            serde::de::Error::custom(format!("{s:?} is not a duration like 5s or 500ms: {e}"))
        })
    }
}

mod human_duration_opt {
    use serde::{Deserialize, Deserializer};
    use std::time::Duration;

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        match Option::<String>::deserialize(d)? {
            None => Ok(None),
            Some(s) if s.trim().is_empty() || s.trim() == "0" || s.trim() == "none" => Ok(None),
            Some(s) => humantime::parse_duration(s.trim()).map(Some).map_err(|e| {
                serde::de::Error::custom(format!("{s:?} is not a duration like 5s or 500ms: {e}"))
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(yaml: &str) -> Result<Config, ConfigError> {
        Config::from_yaml(Path::new("test.yaml"), yaml, &|n| match n {
            "PORT" => Some("18000".into()),
            _ => None,
        })
    }

    const MINIMAL: &str = "routes:\n  - {prefix: /mcp, upstream: 'http://127.0.0.1:${PORT}/mcp', server_name: demo}\n";

    #[test]
    fn minimal_file_gets_sidecar_friendly_defaults() {
        let c = parse(MINIMAL).unwrap();
        assert_eq!(c.routes[0].upstream, "http://127.0.0.1:18000/mcp");
        assert!(c.redis_url().is_none());
        assert!(c.threads() >= 1);
        assert_eq!(c.timeouts.upstream_read, None);
        assert!(c.timeouts.upstream_idle < Duration::from_secs(5));
        let pc = c.pingora_conf();
        assert_eq!(pc.threads, c.threads());
        // the grace period runs before Pingora hears of SIGTERM; Pingora's is the in-flight time
        assert_eq!(c.server.grace_period, Duration::from_secs(5));
        assert_eq!(pc.grace_period_seconds, Some(20));
        assert_eq!(c.advertise_address(), "127.0.0.1:8081");
    }

    #[test]
    fn errors_name_file_and_field() {
        let e =
            parse("routes:\n  - {prefix: mcp, upstream: 'http://127.0.0.1:1', server_name: a}\n")
                .unwrap_err();
        assert_eq!(e.field, "routes[0].prefix");
        assert!(
            e.to_string().starts_with("test.yaml: routes[0].prefix:"),
            "{e}"
        );

        let e = parse(&format!("server: {{threads: many}}\n{MINIMAL}")).unwrap_err();
        assert_eq!(e.field, "server.threads");

        let e = parse(&format!("timeouts: {{connect: soon}}\n{MINIMAL}")).unwrap_err();
        assert_eq!(e.field, "timeouts.connect");

        let e = parse(&format!("limits: {{max_body: 3 parsecs}}\n{MINIMAL}")).unwrap_err();
        assert_eq!(e.field, "limits.max_body");

        let e = parse(&format!("redis: {{url: 'http://x'}}\n{MINIMAL}")).unwrap_err();
        assert_eq!(e.field, "redis.url");

        let e = parse(&format!(
            "redis: {{url: 'redis://127.0.0.1:6379'}}\n{MINIMAL}"
        ))
        .unwrap_err();
        assert_eq!(e.field, "peer.secret");
        let e = parse(&format!("peer: {{secret: short}}\n{MINIMAL}")).unwrap_err();
        assert_eq!(e.field, "peer.secret");
        assert!(parse(&format!(
            "redis: {{url: 'redis://127.0.0.1:6379'}}\npeer: {{secret: 0123456789abcdef}}\nserver: {{advertise_address: '10.0.0.7:8081'}}\n{MINIMAL}"
        ))
        .is_ok());
        let e = parse(&format!(
            "session: {{heartbeat_interval: 5s, pod_ttl: 5s}}\n{MINIMAL}"
        ))
        .unwrap_err();
        assert_eq!(e.field, "session.pod_ttl");

        let e = parse(&format!("bogus: 1\n{MINIMAL}")).unwrap_err();
        assert!(e.message.contains("bogus"), "{e}");

        let e = parse("routes:\n  - {prefix: /a, upstream: 'https://x:1', server_name: a}\n")
            .unwrap_err();
        assert_eq!(e.field, "routes[0].upstream");

        let e =
            parse("routes:\n  - {prefix: /a, upstream: '${NOPE}', server_name: a}\n").unwrap_err();
        assert_eq!(e.field, "routes[0].upstream");
        assert!(e.message.contains("NOPE"));

        let e = parse(
            "routes:\n  - {prefix: /a, upstream: 'http://127.0.0.1:1', server_name: 'a b'}\n",
        )
        .unwrap_err();
        assert_eq!(e.field, "routes[0].server_name");

        let e = parse("routes: []\n").unwrap_err();
        assert_eq!(e.field, "routes");

        let e = parse(&format!(
            "server: {{listen: '127.0.0.1:1', admin_listen: '127.0.0.1:1'}}\n{MINIMAL}"
        ))
        .unwrap_err();
        assert_eq!(e.field, "server.admin_listen");
    }

    #[test]
    fn hub_policy_is_checked_at_startup() {
        let route = |extra: &str| {
            format!("routes:\n  - {{prefix: /a, upstream: 'http://127.0.0.1:1', server_name: a, {extra}}}\n")
        };
        let e = parse(&route("auth: required")).unwrap_err();
        assert_eq!(e.field, "routes[0].auth");
        let ok = format!("auth: {{keys_file: /k.yaml}}\n{}", route("auth: optional, required_tokens: [GITHUB_TOKEN], inject_headers: {X-MCPHub-GitHub-Token: '{token.GITHUB_TOKEN}'}, tool_groups: {dev: ['*']}"));
        let c = parse(&ok).unwrap();
        let p = c.routes[0].policy().unwrap();
        assert_eq!(p.templates.len(), 1);
        assert!(p.tools.is_some());
        let e = parse(&route("inject_headers: {X-User: '{user.id}'}")).unwrap_err();
        assert_eq!(e.field, "routes[0].inject_headers");
        let e = parse(&format!(
            "auth: {{keys_file: /k}}\n{}",
            route("auth: required, inject_headers: {X-A: '{nope}'}")
        ))
        .unwrap_err();
        assert!(e.message.contains("nope"), "{e}");
        let e = parse(&format!(
            "auth: {{keys_file: /k}}\n{}",
            route("auth: required, required_tokens: [a-b]")
        ))
        .unwrap_err();
        assert_eq!(e.field, "routes[0].required_tokens");
        let e = parse(&format!("auth: {{token_encryption_key: short}}\n{MINIMAL}")).unwrap_err();
        assert_eq!(e.field, "auth.token_encryption_key");
        let e = parse(&format!("auth: {{key_sources: [cookie]}}\n{MINIMAL}")).unwrap_err();
        assert!(e.field.starts_with("auth.key_sources"), "{e}");
    }

    #[test]
    fn configurations_that_cannot_work_are_refused() {
        let redis = "redis: {url: 'redis://127.0.0.1:6379'}\npeer: {secret: 0123456789abcdef}\n";
        for adv in [
            "sidecar-0.mcp:8081",
            "10.0.0.7",
            "0.0.0.0:8081",
            "10.0.0.7:0",
        ] {
            let e = parse(&format!(
                "server: {{advertise_address: '{adv}'}}\n{MINIMAL}"
            ))
            .unwrap_err();
            assert_eq!(e.field, "server.advertise_address", "{adv}: {e}");
        }
        assert!(parse(&format!(
            "server: {{advertise_address: '[fd00::7]:8081'}}\n{MINIMAL}"
        ))
        .is_ok());
        // with Redis, other pods must be able to reach this one
        let e = parse(&format!("{redis}{MINIMAL}")).unwrap_err();
        assert_eq!(e.field, "server.advertise_address", "{e}");
        assert!(e.message.contains("redis.url"), "{e}");
        let c = parse(&format!(
            "{redis}server: {{advertise_address: '10.0.0.7:8081'}}\n{MINIMAL}"
        ))
        .unwrap();
        assert_eq!(c.advertise_address(), "10.0.0.7:8081");
        assert!(parse(&format!(
            "{redis}server: {{peer_listen: '10.0.0.7:8081'}}\n{MINIMAL}"
        ))
        .is_ok());
        // without Redis there are no other pods
        assert!(parse(MINIMAL).is_ok());

        let e = parse(
            "routes:\n  - {prefix: /a, upstream: 'http://127.0.0.1:1', server_name: a}\n  - {prefix: /b, upstream: 'http://127.0.0.1:2', server_name: a}\n",
        )
        .unwrap_err();
        assert_eq!(e.field, "routes[1].server_name");
    }

    #[test]
    fn plaintext_tokens_in_redis_are_warned_about() {
        let hub = "redis: {url: 'redis://127.0.0.1:6379'}\npeer: {secret: 0123456789abcdef}\nserver: {advertise_address: '10.0.0.7:8081'}\nroutes:\n  - {prefix: /a, upstream: 'http://127.0.0.1:1', server_name: a, auth: required}\n";
        let w = parse(hub).unwrap().warnings();
        assert_eq!(w.len(), 1);
        assert!(w[0].contains("auth.token_encryption_key"), "{w:?}");
        let key = format!(
            "auth: {{token_encryption_key: '{}'}}\n{hub}",
            "ab".repeat(32)
        );
        assert!(parse(&key).unwrap().warnings().is_empty());
        // no hub routes, or no Redis: no tokens stored there
        assert!(parse(MINIMAL).unwrap().warnings().is_empty());
    }

    #[test]
    fn hop_settings() {
        let c = parse(MINIMAL).unwrap();
        assert_eq!(c.peer.max_clock_skew, Duration::from_secs(5));
        assert_eq!(c.peer.replay_cache_size, 200_000);
        let c = parse(&format!(
            "peer: {{max_clock_skew: 2s, replay_cache_size: '1000'}}\n{MINIMAL}"
        ))
        .unwrap();
        assert_eq!(c.peer.max_clock_skew, Duration::from_secs(2));
        assert_eq!(c.peer.replay_cache_size, 1000);
        let e = parse(&format!("peer: {{max_clock_skew: 1h}}\n{MINIMAL}")).unwrap_err();
        assert_eq!(e.field, "peer.max_clock_skew");
        let e = parse(&format!("peer: {{replay_cache_size: 0}}\n{MINIMAL}")).unwrap_err();
        assert_eq!(e.field, "peer.replay_cache_size");
    }

    #[test]
    fn errors_never_quote_secret_values() {
        // too large for any number type: refused while parsing, before fields are known
        let e = parse(&format!(
            "peer: {{secret: 98765432109876543210}}\n{MINIMAL}"
        ))
        .unwrap_err();
        assert!(!e.to_string().contains("98765"), "{e}");
        let cases = [
            ("peer: {secret: 9876543210987654321}", "peer.secret"),
            ("peer: {secret: 'short9876'}", "peer.secret"),
            ("admin: {token: 9876543210987654321}", "admin.token"),
            ("admin: {token: [9876543210987654321]}", "admin.token"),
            (
                "auth: {token_encryption_key: 9876543210987654321}",
                "auth.token_encryption_key",
            ),
            (
                "auth: {token_encryption_key: 'zz98765432109876543210'}",
                "auth.token_encryption_key",
            ),
            (
                "redis: {url: 'redis://u:98765432109876543210@'}",
                "redis.url",
            ),
            (
                "redis: {url: 'rediss://u:98765432109876543210@h:1#insecure'}",
                "redis.url",
            ),
            ("redis: {url: 9876543210987654321}", "redis.url"),
            ("peer: {secret: '98765432109876543210${x'}", "peer.secret"),
            (
                "admin: {token: '98765432109876543210${a-b}'}",
                "admin.token",
            ),
        ];
        for (section, field) in cases {
            let e = parse(&format!("{section}\n{MINIMAL}")).unwrap_err();
            assert_eq!(e.field, field, "{section}: {e}");
            for part in ["98765432109876543", "short9876", "zz987"] {
                assert!(
                    !e.to_string().contains(part),
                    "{section} quotes the secret: {e}"
                );
            }
        }
    }

    #[test]
    fn redis_modes_tls_and_credentials() {
        let base =
            "peer: {secret: 0123456789abcdef}\nserver: {advertise_address: '10.0.0.7:8081'}\n";
        let ok = |redis: &str| parse(&format!("redis: {redis}\n{base}{MINIMAL}"));
        let c = ok("{url: 'rediss://cache.example:6379', mode: cluster, nodes: ['cache-2.example:6379'], username: sidecar}").unwrap();
        assert_eq!(c.redis.mode, RedisMode::Cluster);
        assert_eq!(c.redis.nodes, ["cache-2.example:6379"]);
        let c = ok("{url: 'redis://s-0:26379', mode: sentinel, service_name: mymaster}").unwrap();
        assert_eq!(c.redis.service_name.as_deref(), Some("mymaster"));
        for (redis, field) in [
            // verification cannot be switched off by the URL
            ("{url: 'rediss://h:1/#insecure'}", "redis.url"),
            ("{url: 'http://h:1'}", "redis.url"),
            // TLS material needs TLS
            (
                "{url: 'redis://h:1', tls: {ca_file: /etc/hostname}}",
                "redis.tls",
            ),
            (
                "{url: 'rediss://h:1', tls: {cert_file: /etc/hostname}}",
                "redis.tls",
            ),
            (
                "{url: 'rediss://h:1', tls: {ca_file: /nonexistent/ca.pem}}",
                "redis.tls.ca_file",
            ),
            (
                "{url: 'redis://h:1', password_file: /nonexistent/pw}",
                "redis.password_file",
            ),
            ("{url: 'redis://h:1', mode: sentinel}", "redis.service_name"),
            (
                "{url: 'redis://h:1', service_name: m}",
                "redis.service_name",
            ),
            ("{url: 'redis://h:1', nodes: ['h2:1']}", "redis.nodes"),
            (
                "{url: 'redis://h:1', mode: cluster, nodes: ['h2']}",
                "redis.nodes[0]",
            ),
            ("{url: 'redis://h:1', mode: replicated}", "redis.mode"),
        ] {
            let e = ok(redis).unwrap_err();
            assert_eq!(e.field, field, "{redis}: {e}");
        }
    }

    #[test]
    fn duplicate_prefixes_are_refused() {
        let e = parse(
            "routes:\n  - {prefix: /a, upstream: 'http://127.0.0.1:1', server_name: a}\n  - {prefix: /a/, upstream: 'http://127.0.0.1:2', server_name: b}\n",
        )
        .unwrap_err();
        assert_eq!(e.field, "routes[1].prefix");
    }

    #[test]
    fn sizes_and_empty_redis_url() {
        assert_eq!(parse_byte_size("4MiB").unwrap(), 4 << 20);
        assert_eq!(parse_byte_size("65536").unwrap(), 65536);
        assert_eq!(parse_byte_size("2kB").unwrap(), 2000);
        assert!(parse_byte_size("-1").is_err());
        let c = parse(&format!(
            "redis: {{url: ''}}\nlimits: {{max_body: 64KiB}}\n{MINIMAL}"
        ))
        .unwrap();
        assert!(c.redis_url().is_none());
        assert_eq!(c.limits.max_body, 65536);
    }

    #[test]
    fn upstream_url_parts() {
        let u = UpstreamUrl::parse("http://127.0.0.1:8000/mcp/").unwrap();
        assert_eq!(u.authority, "127.0.0.1:8000");
        assert_eq!(u.path, "/mcp");
        assert_eq!(UpstreamUrl::parse("http://localhost:9").unwrap().path, "");
        assert!(UpstreamUrl::parse("http://127.0.0.1").is_err());
        assert!(UpstreamUrl::parse("http://127.0.0.1:1/x?y").is_err());
    }
}
