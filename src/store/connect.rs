//! Reaching Redis the way `redis.*` says: one server, a cluster or a Sentinel-managed primary,
//! in plaintext or TLS (optionally mutual), with an ACL user and a password from a mounted file.
//! The store and the `keys` CLI both connect through here, so they speak to the same deployment
//! the same way. Nothing here logs or returns credentials.

use crate::config::{RedisMode, RedisSection};
use redis::aio::{
    ConnectionLike, ConnectionManager, ConnectionManagerConfig, MultiplexedConnection,
};
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{Route, RoutingInfo, SingleNodeRoutingInfo, SlotAddr};
use redis::sentinel::{SentinelClient, SentinelClientBuilder, SentinelServerType};
use redis::{
    AsyncConnectionConfig, ClientTlsConfig, Cmd, ConnectionAddr, ConnectionInfo,
    IntoConnectionInfo, Pipeline, RedisError, RedisFuture, RedisResult, TlsCertificates, TlsMode,
    Value,
};
use std::sync::{Arc, RwLock};
use std::time::Duration;

/// Where and how to connect, read once from the configuration (files included).
pub struct Target {
    mode: RedisMode,
    /// The URL's node first, then `redis.nodes`; credentials applied.
    nodes: Vec<ConnectionInfo>,
    service_name: Option<String>,
    /// Set for `rediss://`: the CA and client certificate, if configured.
    tls: Option<TlsCertificates>,
    connect_timeout: Duration,
    command_timeout: Duration,
}

impl Target {
    /// Reads the password and certificate files. Errors name the field, never a secret.
    pub fn from_config(r: &RedisSection, url: &str) -> Result<Target, String> {
        let read = |field: &str, path: &std::path::Path| {
            std::fs::read(path).map_err(|e| format!("{field}: cannot read {}: {e}", path.display()))
        };
        let password = match &r.password_file {
            Some(p) => {
                let bytes = read("redis.password_file", p)?;
                let text = String::from_utf8(bytes)
                    .map_err(|_| "redis.password_file: is not UTF-8".to_string())?;
                Some(
                    text.strip_suffix('\n')
                        .map(|t| t.strip_suffix('\r').unwrap_or(t))
                        .unwrap_or(&text)
                        .to_string(),
                )
            }
            None => None,
        };
        let first = url
            .into_connection_info()
            .map_err(|e| format!("redis.url: is not a valid Redis URL: {e}"))?;
        let mut settings = first.redis_settings().clone();
        if let Some(u) = &r.username {
            settings = settings.set_username(u);
        }
        if let Some(p) = &password {
            settings = settings.set_password(p);
        }
        let tls_on = matches!(first.addr(), ConnectionAddr::TcpTls { .. });
        let mut nodes = vec![first.clone().set_redis_settings(settings.clone())];
        for node in &r.nodes {
            let (host, port) = node
                .rsplit_once(':')
                .and_then(|(h, p)| Some((h.to_string(), p.parse::<u16>().ok()?)))
                .ok_or_else(|| format!("redis.nodes: {node:?} must be host:port"))?;
            let addr = if tls_on {
                ConnectionAddr::TcpTls {
                    host,
                    port,
                    insecure: false,
                    tls_params: None,
                }
            } else {
                ConnectionAddr::Tcp(host, port)
            };
            nodes.push(
                first
                    .clone()
                    .set_addr(addr)
                    .set_redis_settings(settings.clone()),
            );
        }
        let tls = if tls_on {
            let t = &r.tls;
            let client_tls = match (&t.cert_file, &t.key_file) {
                (Some(c), Some(k)) => Some(ClientTlsConfig {
                    client_cert: read("redis.tls.cert_file", c)?,
                    client_key: read("redis.tls.key_file", k)?,
                }),
                _ => None,
            };
            let root_cert = match &t.ca_file {
                Some(p) => Some(read("redis.tls.ca_file", p)?),
                None => None,
            };
            Some(TlsCertificates {
                client_tls,
                root_cert,
            })
        } else {
            None
        };
        Ok(Target {
            mode: r.mode,
            nodes,
            service_name: r.service_name.clone(),
            tls,
            connect_timeout: r.connect_timeout,
            command_timeout: r.command_timeout,
        })
    }

    pub fn mode(&self) -> RedisMode {
        self.mode
    }

    /// `host:port` of the configured node, without credentials, for logs.
    pub fn endpoint(&self) -> String {
        self.nodes[0].addr().to_string()
    }

    /// A client for one node, with the TLS material applied.
    fn client(&self, info: ConnectionInfo) -> RedisResult<redis::Client> {
        match &self.tls {
            Some(certs) => redis::Client::build_with_tls(info, certs.clone()),
            None => redis::Client::open(info),
        }
    }

    /// A connection handle. Standalone and Sentinel connect on first use (so the sidecar starts
    /// while Redis is down) and reconnect by themselves; a cluster connects here, learning the
    /// topology, and then follows `MOVED`/`ASK` and failovers itself.
    pub async fn connect(&self) -> RedisResult<Conn> {
        match self.mode {
            RedisMode::Standalone => {
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(self.connect_timeout))
                    .set_response_timeout(Some(self.command_timeout))
                    .set_number_of_retries(1)
                    .set_max_delay(Duration::from_millis(200));
                let client = self.client(self.nodes[0].clone())?;
                Ok(Conn::Single(ConnectionManager::new_lazy_with_config(
                    client, config,
                )?))
            }
            RedisMode::Cluster => {
                let mut builder = redis::cluster::ClusterClient::builder(self.nodes.clone())
                    .connection_timeout(self.connect_timeout)
                    .response_timeout(self.command_timeout)
                    // a few quick retries ride out a MOVED storm or a failover's first moments;
                    // the store's command timeout bounds them all
                    .retries(3)
                    .min_retry_wait(20)
                    .max_retry_wait(200);
                if let Some(certs) = &self.tls {
                    builder = builder.tls(TlsMode::Secure).certs(certs.clone());
                }
                let config = redis::cluster::ClusterConfig::new()
                    .set_connection_timeout(self.connect_timeout)
                    .set_response_timeout(self.command_timeout);
                let conn = builder
                    .build()?
                    .get_async_connection_with_config(config)
                    .await?;
                Ok(Conn::Cluster(conn))
            }
            RedisMode::Sentinel => Ok(Conn::Sentinel(SentinelConn::new(self)?)),
        }
    }
}

/// One handle whatever the mode; cheap to clone, usable concurrently.
#[derive(Clone)]
pub enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
    Sentinel(SentinelConn),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
            Conn::Sentinel(s) => Box::pin(async move {
                let (generation, mut c) = s.current().await?;
                match c.req_packed_command(cmd).await {
                    Err(e) if primary_gone(&e) => {
                        s.forget(generation);
                        s.current().await?.1.req_packed_command(cmd).await
                    }
                    other => other,
                }
            }),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Sentinel(s) => Box::pin(async move {
                let (generation, mut c) = s.current().await?;
                match c.req_packed_commands(pipeline, offset, count).await {
                    Err(e) if primary_gone(&e) => {
                        s.forget(generation);
                        s.current()
                            .await?
                            .1
                            .req_packed_commands(pipeline, offset, count)
                            .await
                    }
                    other => other,
                }
            }),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
            Conn::Sentinel(_) => 0,
        }
    }
}

impl Conn {
    /// Every key matching `pattern`, by SCAN (never KEYS, which blocks Redis and which managed
    /// services refuse). A cluster is scanned primary by primary.
    pub async fn scan_match(&mut self, pattern: &str, count: usize) -> RedisResult<Vec<String>> {
        self.scan(pattern, count, false).await
    }

    /// Whether any key matches `pattern`: the scan stops at the first.
    pub async fn scan_any(&mut self, pattern: &str, count: usize) -> RedisResult<bool> {
        Ok(!self.scan(pattern, count, true).await?.is_empty())
    }

    async fn scan(&mut self, pattern: &str, count: usize, first: bool) -> RedisResult<Vec<String>> {
        let mut keys = Vec::new();
        let routes: Vec<Option<u16>> = match self {
            Conn::Cluster(c) => primary_slots(c).await?.into_iter().map(Some).collect(),
            _ => vec![None],
        };
        for slot in routes {
            let mut cursor: u64 = 0;
            loop {
                let mut cmd = redis::cmd("SCAN");
                cmd.arg(cursor)
                    .arg("MATCH")
                    .arg(pattern)
                    .arg("COUNT")
                    .arg(count);
                let (next, batch): (u64, Vec<String>) = match (slot, &mut *self) {
                    (Some(slot), Conn::Cluster(c)) => {
                        let route = Route::new(slot, SlotAddr::Master);
                        let v = c
                            .route_command(
                                cmd,
                                RoutingInfo::SingleNode(SingleNodeRoutingInfo::SpecificNode(route)),
                            )
                            .await?;
                        redis::from_redis_value(v)?
                    }
                    (_, c) => cmd.query_async(c).await?,
                };
                keys.extend(batch);
                if next == 0 || (first && !keys.is_empty()) {
                    break;
                }
                cursor = next;
            }
            if first && !keys.is_empty() {
                break;
            }
        }
        Ok(keys)
    }
}

/// One slot served by each primary of the cluster (from `CLUSTER SLOTS`): routing a command to
/// that slot's primary reaches every primary exactly once.
async fn primary_slots(c: &mut ClusterConnection) -> RedisResult<Vec<u16>> {
    let ranges: Vec<Value> = redis::cmd("CLUSTER").arg("SLOTS").query_async(c).await?;
    let mut seen: Vec<(Value, u16)> = Vec::new();
    for range in ranges {
        let Value::Array(parts) = range else { continue };
        let (Some(start), Some(primary)) = (parts.first(), parts.get(2)) else {
            continue;
        };
        let start: u16 = redis::from_redis_value_ref(start)?;
        // the primary's [ip, port, …], compared by ip and port only
        let addr = match primary {
            Value::Array(a) if a.len() >= 2 => Value::Array(a[..2].to_vec()),
            _ => continue,
        };
        if !seen.iter().any(|(a, _)| *a == addr) {
            seen.push((addr, start));
        }
    }
    Ok(seen.into_iter().map(|(_, slot)| slot).collect())
}

/// Errors after which the connection no longer reaches the primary: the node went away, or it
/// was demoted to a replica by a failover. The primary is then looked up again.
fn primary_gone(e: &RedisError) -> bool {
    e.is_io_error()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_timeout()
        || e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::ReadOnly)
}

/// A connection to the primary the sentinels name, looked up again when the primary fails.
#[derive(Clone)]
pub struct SentinelConn {
    inner: Arc<SentinelInner>,
}

struct SentinelInner {
    /// Locked while the primary is looked up, so one lookup serves every waiting request.
    client: tokio::sync::Mutex<SentinelClient>,
    /// The connection to the current primary and its generation (raised on every lookup).
    current: RwLock<(u64, Option<MultiplexedConnection>)>,
    config: AsyncConnectionConfig,
}

impl SentinelConn {
    fn new(t: &Target) -> RedisResult<SentinelConn> {
        let service = t.service_name.as_deref().unwrap_or_default();
        let settings = t.nodes[0].redis_settings();
        let mut b = SentinelClientBuilder::new(
            t.nodes.iter().map(|n| n.addr().clone()),
            service,
            SentinelServerType::Master,
        )?;
        // the same credentials and TLS for the sentinels and the data nodes
        if let Some(u) = settings.username() {
            b = b
                .set_client_to_redis_username(u)
                .set_client_to_sentinel_username(u);
        }
        if let Some(p) = settings.password() {
            b = b
                .set_client_to_redis_password(p)
                .set_client_to_sentinel_password(p);
        }
        if let Some(certs) = &t.tls {
            b = b
                .set_client_to_redis_tls_mode(TlsMode::Secure)
                .set_client_to_sentinel_tls_mode(TlsMode::Secure)
                .set_client_to_redis_certificates(certs.clone())
                .set_client_to_sentinel_certificates(certs.clone());
        }
        Ok(SentinelConn {
            inner: Arc::new(SentinelInner {
                client: tokio::sync::Mutex::new(b.build()?),
                current: RwLock::new((0, None)),
                config: AsyncConnectionConfig::new()
                    .set_connection_timeout(Some(t.connect_timeout))
                    .set_response_timeout(Some(t.command_timeout)),
            }),
        })
    }

    fn cached(&self) -> Option<(u64, MultiplexedConnection)> {
        let g = self.inner.current.read().unwrap_or_else(|e| e.into_inner());
        g.1.clone().map(|c| (g.0, c))
    }

    /// The connection to the primary, asking the sentinels first if there is none.
    async fn current(&self) -> RedisResult<(u64, MultiplexedConnection)> {
        if let Some(c) = self.cached() {
            return Ok(c);
        }
        let mut client = self.inner.client.lock().await;
        if let Some(c) = self.cached() {
            return Ok(c);
        }
        let conn = client
            .async_get_client()
            .await?
            .get_multiplexed_async_connection_with_config(&self.inner.config)
            .await?;
        let mut g = self
            .inner
            .current
            .write()
            .unwrap_or_else(|e| e.into_inner());
        g.0 += 1;
        g.1 = Some(conn.clone());
        Ok((g.0, conn))
    }

    /// Drops the connection of `generation` (unless a newer one replaced it already).
    fn forget(&self, generation: u64) {
        let mut g = self
            .inner
            .current
            .write()
            .unwrap_or_else(|e| e.into_inner());
        if g.0 == generation {
            g.1 = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_come_from_the_file_and_stay_out_of_the_endpoint() {
        let dir = std::env::temp_dir().join(format!("mcp-sidecar-connect-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("password");
        std::fs::write(&file, "from-the-file-4711\n").unwrap();
        let section = RedisSection {
            mode: RedisMode::Cluster,
            nodes: vec!["cache-2.example:7000".into()],
            username: Some("mcp-sidecar".into()),
            password_file: Some(file.clone()),
            ..Default::default()
        };
        let t =
            Target::from_config(&section, "rediss://u:from-the-url@cache-1.example:6379").unwrap();
        assert_eq!(t.endpoint(), "cache-1.example:6379");
        assert_eq!(t.nodes.len(), 2);
        for node in &t.nodes {
            // the file wins over the URL, one trailing newline dropped; every node gets them
            assert_eq!(node.redis_settings().username(), Some("mcp-sidecar"));
            assert_eq!(node.redis_settings().password(), Some("from-the-file-4711"));
            assert!(matches!(
                node.addr(),
                ConnectionAddr::TcpTls {
                    insecure: false,
                    ..
                }
            ));
        }
        assert!(
            t.tls.as_ref().is_some_and(|c| c.root_cert.is_none()),
            "system roots"
        );

        let missing = RedisSection {
            password_file: Some(dir.join("absent")),
            ..Default::default()
        };
        let e = Target::from_config(&missing, "redis://h:1").err().unwrap();
        assert!(e.starts_with("redis.password_file: cannot read"), "{e}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
