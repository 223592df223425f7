//! Redis backend. One multiplexed connection handle (standalone, cluster or Sentinel, see
//! [`super::connect`]) that reconnects by itself; every operation is bounded by the command
//! timeout and counted when it fails, so a Redis outage degrades the sidecar instead of hanging
//! requests. Every operation touches one key, so each runs in one hash slot of a cluster.

use super::connect::{Conn, Target};
use super::keys::{self, session_field as f};
use super::{
    Backend, PodInfo, SessionRecord, SessionStore, Standing, StoreError, Transport, UpstreamSession,
};
use crate::config::RedisSection;
use crate::metrics::METRICS;
use crate::telemetry::trace::{current_child, KeyValue, SpanKind};
use async_trait::async_trait;
use futures_util::StreamExt;
use redis::AsyncCommands;
use std::collections::HashMap;
use std::future::Future;
use std::sync::LazyLock;
use std::time::Duration;
use tokio::sync::OnceCell;

/// Slides a session's TTL only if it still exists, so a touch racing an expiry cannot
/// resurrect a partial record without TTL.
static TOUCH: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"if redis.call('PEXPIRE', KEYS[1], ARGV[1]) == 1 then
            redis.call('HSET', KEYS[1], 'last_seen', ARGV[2])
            return 1
          end
          return 0",
    )
});

/// Lua: compares the session hash KEYS[1] with the owner ARGV[1] and epoch ARGV[2] a pod last
/// saw (a record without an epoch is at 0); `lost()` answers with the store's record.
const COMPARE_HOLDER: &str = r"local held = redis.call('HMGET', KEYS[1], 'owner', 'epoch')
local same = held[1] == ARGV[1] and (held[2] or '0') == ARGV[2]
local function lost() return {'lost', unpack(redis.call('HGETALL', KEYS[1]))} end
";

/// Takes a session over (`SessionStore::claim_session`): ARGV[3] is 1 to create a missing
/// record, ARGV[4] the TTL in ms, then the new record's fields and values.
static CLAIM: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(&format!(
        r"{COMPARE_HOLDER}
          if not held[1] then
            if ARGV[3] ~= '1' then return {{'missing'}} end
          elseif not same then
            return lost()
          end
          redis.call('DEL', KEYS[1])
          redis.call('HSET', KEYS[1], unpack(ARGV, 5))
          redis.call('PEXPIRE', KEYS[1], ARGV[4])
          return {{'held'}}"
    ))
});

/// Slides a session's TTL while the pod asking still holds it (`SessionStore::touch_owned`):
/// ARGV[3] is the TTL in ms, ARGV[4] the time for `last_seen`.
static TOUCH_OWNED: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(&format!(
        r"{COMPARE_HOLDER}
          if not held[1] then return {{'missing'}} end
          if not same then return lost() end
          redis.call('PEXPIRE', KEYS[1], ARGV[3])
          redis.call('HSET', KEYS[1], 'last_seen', ARGV[4])
          return {{'held'}}"
    ))
});

/// Releases a lock only for the holder that took it.
static UNLOCK: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"if redis.call('GET', KEYS[1]) == ARGV[1] then
            return redis.call('DEL', KEYS[1])
          end
          return 0",
    )
});

/// Deletes a key only while it holds the given value.
static DELETE_IF: LazyLock<redis::Script> = LazyLock::new(|| {
    redis::Script::new(
        r"if redis.call('GET', KEYS[1]) == ARGV[1] then
            return redis.call('DEL', KEYS[1])
          end
          return 0",
    )
});

/// Keys read per SCAN step in admin listings.
const SCAN_COUNT: usize = 200;

/// A listing may take this many command timeouts.
const LISTING_TIMEOUTS: u32 = 20;

pub struct RedisStore {
    target: Target,
    command_timeout: Duration,
    // created on first use: connections must be made inside a Tokio runtime
    conn: OnceCell<Conn>,
}

impl RedisStore {
    /// Reads the credentials and certificates; connects lazily, so the sidecar starts even while
    /// Redis is down.
    pub fn new(section: &RedisSection, url: &str) -> Result<Self, StoreError> {
        let target = Target::from_config(section, url).map_err(|message| StoreError::Backend {
            op: "open",
            message,
        })?;
        Ok(RedisStore {
            target,
            command_timeout: section.command_timeout,
            conn: OnceCell::new(),
        })
    }

    /// `host:port` of the configured node and the mode, for the startup log.
    pub fn describe(&self) -> String {
        format!(
            "{} ({})",
            self.target.endpoint(),
            match self.target.mode() {
                crate::config::RedisMode::Standalone => "standalone",
                crate::config::RedisMode::Cluster => "cluster",
                crate::config::RedisMode::Sentinel => "sentinel",
            }
        )
    }

    async fn conn(&self) -> Result<Conn, StoreError> {
        self.conn
            .get_or_try_init(|| self.target.connect())
            .await
            .cloned()
            .map_err(|e| StoreError::Backend {
                op: "connect",
                message: e.to_string(),
            })
    }

    /// Runs one operation under the command timeout (connecting included), counting failures
    /// by `op`.
    async fn run<T, Fut>(
        &self,
        op: &'static str,
        f: impl FnOnce(Conn) -> Fut,
    ) -> Result<T, StoreError>
    where
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        self.run_within(self.command_timeout, op, f).await
    }

    /// A listing (admin API, `keys` CLI, the registry check): one SCAN step and a read per key,
    /// thousands of round trips for a large deployment. No client request waits on one, so it
    /// gets `LISTING_TIMEOUTS` command timeouts (at least 5 s), not one.
    async fn run_listing<T, Fut>(
        &self,
        op: &'static str,
        f: impl FnOnce(Conn) -> Fut,
    ) -> Result<T, StoreError>
    where
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        let bound = (self.command_timeout * LISTING_TIMEOUTS).max(Duration::from_secs(5));
        self.run_within(bound, op, f).await
    }

    async fn run_within<T, Fut>(
        &self,
        timeout: Duration,
        op: &'static str,
        f: impl FnOnce(Conn) -> Fut,
    ) -> Result<T, StoreError>
    where
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        let attempt = async {
            let conn = self.conn().await?;
            f(conn).await.map_err(|e| StoreError::Backend {
                op,
                message: e.to_string(),
            })
        };
        // a child of the request's span, when a request is being served
        let span = current_child("mcp_sidecar.store", SpanKind::Client);
        span.set(|| {
            vec![
                KeyValue::new("db.system.name", "redis"),
                KeyValue::new("db.operation.name", op),
            ]
        });
        let result = match tokio::time::timeout(timeout, attempt).await {
            Ok(r) => r,
            Err(_) => Err(StoreError::Timeout(op)),
        };
        if result.is_err() {
            METRICS.store_errors.with_label_values(&[op]).inc();
        }
        span.end(match &result {
            Err(StoreError::Timeout(_)) => Some("timeout"),
            Err(_) => Some("store_error"),
            Ok(_) => None,
        });
        result
    }
}

/// Remaining TTL from a PTTL answer (-2: no key, -1: no TTL).
fn pttl(ms: i64) -> Option<Duration> {
    (ms >= 0).then(|| Duration::from_millis(ms as u64))
}

/// Concurrent per-key reads for listings: `read` queues one key's commands on a pipeline. Keys
/// are read one pipeline each because a cluster refuses pipelines that span hash slots; the
/// multiplexed connection still sends them back to back.
async fn read_each<T: redis::FromRedisValue + Send + 'static>(
    c: &Conn,
    keys: Vec<String>,
    read: fn(&mut redis::Pipeline, &str),
) -> redis::RedisResult<Vec<(String, T)>> {
    futures_util::stream::iter(keys)
        .map(|k| {
            let mut c = c.clone();
            async move {
                let mut pipe = redis::pipe();
                read(&mut pipe, &k);
                let v: T = pipe.query_async(&mut c).await?;
                Ok((k, v))
            }
        })
        .buffered(SCAN_COUNT)
        .collect::<Vec<redis::RedisResult<(String, T)>>>()
        .await
        .into_iter()
        .collect()
}

fn ttl_millis(ttl: Duration) -> u64 {
    ttl.as_millis().clamp(1, u64::MAX as u128) as u64
}

#[async_trait]
impl SessionStore for RedisStore {
    fn backend(&self) -> Backend {
        Backend::Redis
    }

    async fn ping(&self) -> Result<(), StoreError> {
        self.run("ping", |mut c| async move {
            redis::cmd("PING").query_async::<String>(&mut c).await
        })
        .await
        .map(drop)
    }

    async fn save_session(&self, r: &SessionRecord, ttl: Duration) -> Result<(), StoreError> {
        let key = keys::session(&r.session_id);
        let fields = hash_of(r);
        let mut pipe = redis::pipe();
        pipe.atomic()
            .del(&key)
            .ignore()
            .hset_multiple(&key, &fields)
            .ignore()
            .pexpire(&key, ttl_millis(ttl) as i64)
            .ignore();
        self.run("save_session", |mut c| async move {
            pipe.query_async::<()>(&mut c).await
        })
        .await
    }

    async fn load_session(&self, session_id: &str) -> Result<Option<SessionRecord>, StoreError> {
        let key = keys::session(session_id);
        let map: HashMap<String, String> = self
            .run("load_session", |mut c| {
                let key = key.clone();
                async move { c.hgetall(key).await }
            })
            .await?;
        if map.is_empty() {
            return Ok(None);
        }
        record_from_hash(session_id, map)
            .map(Some)
            .map_err(|message| StoreError::Corrupt { key, message })
    }

    async fn hub_key(&self, digest: &str) -> Result<Option<HashMap<String, String>>, StoreError> {
        let key = keys::hub_key(digest);
        let map: HashMap<String, String> = self
            .run("hub_key", |mut c| async move { c.hgetall(key).await })
            .await?;
        Ok((!map.is_empty()).then_some(map))
    }

    async fn has_hub_keys(&self) -> Result<bool, StoreError> {
        self.run_listing("has_hub_keys", |mut c| async move {
            c.scan_any(keys::HUB_KEY_PATTERN, SCAN_COUNT * 5).await
        })
        .await
    }

    async fn claim_session(
        &self,
        record: &SessionRecord,
        seen: &SessionRecord,
        create: bool,
        ttl: Duration,
    ) -> Result<Standing, StoreError> {
        let key = keys::session(&record.session_id);
        let mut invocation = CLAIM.key(&key);
        invocation
            .arg(&seen.owner)
            .arg(seen.epoch)
            .arg(u8::from(create))
            .arg(ttl_millis(ttl));
        for (name, value) in hash_of(record) {
            invocation.arg(name).arg(value);
        }
        let answer: Vec<String> = self
            .run("claim_session", |mut c| async move {
                invocation.invoke_async(&mut c).await
            })
            .await?;
        standing(&record.session_id, key, answer)
    }

    async fn touch_owned(
        &self,
        held: &SessionRecord,
        now: u64,
        ttl: Duration,
    ) -> Result<Standing, StoreError> {
        let key = keys::session(&held.session_id);
        let mut invocation = TOUCH_OWNED.key(&key);
        invocation
            .arg(&held.owner)
            .arg(held.epoch)
            .arg(ttl_millis(ttl))
            .arg(now);
        let answer: Vec<String> = self
            .run("touch_owned", |mut c| async move {
                invocation.invoke_async(&mut c).await
            })
            .await?;
        standing(&held.session_id, key, answer)
    }

    async fn touch_session(
        &self,
        session_id: &str,
        now: u64,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        let key = keys::session(session_id);
        let touched: i64 = self
            .run("touch_session", |mut c| async move {
                TOUCH
                    .key(key)
                    .arg(ttl_millis(ttl))
                    .arg(now)
                    .invoke_async(&mut c)
                    .await
            })
            .await?;
        Ok(touched == 1)
    }

    async fn delete_session(&self, session_id: &str) -> Result<bool, StoreError> {
        let key = keys::session(session_id);
        let n: i64 = self
            .run("delete_session", |mut c| async move { c.del(key).await })
            .await?;
        Ok(n > 0)
    }

    async fn session_ttl(&self, session_id: &str) -> Result<Option<Duration>, StoreError> {
        let key = keys::session(session_id);
        let ms: i64 = self
            .run("session_ttl", |mut c| {
                let key = key.clone();
                async move { c.pttl(key).await }
            })
            .await?;
        match ms {
            -2 => Ok(None),
            -1 => Err(StoreError::Corrupt {
                key,
                message: "has no TTL".into(),
            }),
            ms => Ok(pttl(ms)),
        }
    }

    async fn list_sessions(&self) -> Result<Vec<(SessionRecord, Option<Duration>)>, StoreError> {
        let rows: Vec<(String, (HashMap<String, String>, i64))> = self
            .run_listing("list_sessions", |mut c| async move {
                let keys = c.scan_match(keys::SESSION_PATTERN, SCAN_COUNT).await?;
                read_each(&c, keys, |p, k| {
                    p.hgetall(k).pttl(k);
                })
                .await
            })
            .await?;
        let prefix_len = keys::session("").len();
        Ok(rows
            .into_iter()
            .filter(|(_, (hash, _))| !hash.is_empty())
            .filter_map(|(key, (hash, ms))| {
                // a record written by something else is skipped in listings, not fatal
                record_from_hash(&key[prefix_len..], hash)
                    .ok()
                    .map(|r| (r, pttl(ms)))
            })
            .collect())
    }

    async fn heartbeat_pod(
        &self,
        address: &str,
        info: &str,
        ttl: Duration,
    ) -> Result<bool, StoreError> {
        let key = keys::pod(address);
        let info = info.to_string();
        let old: Option<String> = self
            .run("heartbeat_pod", |mut c| async move {
                redis::cmd("SET")
                    .arg(key)
                    .arg(info)
                    .arg("PX")
                    .arg(ttl_millis(ttl))
                    .arg("GET")
                    .query_async(&mut c)
                    .await
            })
            .await?;
        Ok(old.is_some())
    }

    async fn pod_alive(&self, address: &str) -> Result<bool, StoreError> {
        let key = keys::pod(address);
        self.run("pod_alive", |mut c| async move { c.exists(key).await })
            .await
    }

    async fn list_pods(&self) -> Result<Vec<PodInfo>, StoreError> {
        let rows: Vec<(String, (Option<String>, i64))> = self
            .run_listing("list_pods", |mut c| async move {
                let keys = c.scan_match(keys::POD_PATTERN, SCAN_COUNT).await?;
                read_each(&c, keys, |p, k| {
                    p.get(k).pttl(k);
                })
                .await
            })
            .await?;
        let prefix_len = keys::pod("").len();
        Ok(rows
            .into_iter()
            .filter_map(|(key, (info, ms))| {
                Some(PodInfo {
                    address: key[prefix_len..].to_string(),
                    info: info?,
                    ttl: pttl(ms),
                })
            })
            .collect())
    }

    async fn remove_pod(&self, address: &str) -> Result<(), StoreError> {
        let key = keys::pod(address);
        self.run(
            "remove_pod",
            |mut c| async move { c.del::<_, ()>(key).await },
        )
        .await
    }

    async fn get_upstream_session(
        &self,
        server: &str,
        context: &str,
        ttl: Duration,
    ) -> Result<Option<String>, StoreError> {
        let key = keys::upstream_session(server, context);
        self.run("get_upstream_session", |mut c| async move {
            redis::cmd("GETEX")
                .arg(key)
                .arg("PX")
                .arg(ttl_millis(ttl))
                .query_async(&mut c)
                .await
        })
        .await
    }

    async fn set_upstream_session(
        &self,
        server: &str,
        context: &str,
        session_id: &str,
        ttl: Duration,
    ) -> Result<(), StoreError> {
        let key = keys::upstream_session(server, context);
        let sid = session_id.to_string();
        self.run("set_upstream_session", |mut c| async move {
            c.pset_ex::<_, _, ()>(key, sid, ttl_millis(ttl)).await
        })
        .await
    }

    async fn delete_upstream_session(
        &self,
        server: &str,
        context: &str,
        only_if: Option<&str>,
    ) -> Result<bool, StoreError> {
        let key = keys::upstream_session(server, context);
        let only_if = only_if.map(str::to_string);
        let n: i64 = self
            .run("delete_upstream_session", |mut c| async move {
                match only_if {
                    Some(sid) => DELETE_IF.key(key).arg(sid).invoke_async(&mut c).await,
                    None => c.del(key).await,
                }
            })
            .await?;
        Ok(n > 0)
    }

    async fn list_upstream_sessions(&self) -> Result<Vec<UpstreamSession>, StoreError> {
        let rows: Vec<(String, (Option<String>, i64))> = self
            .run_listing("list_upstream_sessions", |mut c| async move {
                let keys = c
                    .scan_match(keys::UPSTREAM_SESSION_PATTERN, SCAN_COUNT)
                    .await?;
                read_each(&c, keys, |p, k| {
                    p.get(k).pttl(k);
                })
                .await
            })
            .await?;
        Ok(rows
            .into_iter()
            .filter_map(|(key, (sid, ms))| {
                let (server, context) = keys::parse_upstream_session(&key)?;
                Some(UpstreamSession {
                    server_name: server.to_string(),
                    context_key: context.to_string(),
                    session_id: sid?,
                    ttl: pttl(ms),
                })
            })
            .collect())
    }

    async fn try_lock(&self, name: &str, token: &str, ttl: Duration) -> Result<bool, StoreError> {
        let key = keys::lock(name);
        let token = token.to_string();
        let set: Option<String> = self
            .run("try_lock", |mut c| async move {
                redis::cmd("SET")
                    .arg(key)
                    .arg(token)
                    .arg("NX")
                    .arg("PX")
                    .arg(ttl_millis(ttl))
                    .query_async(&mut c)
                    .await
            })
            .await?;
        Ok(set.is_some())
    }

    async fn unlock(&self, name: &str, token: &str) -> Result<(), StoreError> {
        let key = keys::lock(name);
        let token = token.to_string();
        self.run("unlock", |mut c| async move {
            UNLOCK.key(key).arg(token).invoke_async::<i64>(&mut c).await
        })
        .await
        .map(drop)
    }
}

/// The hash fields of a record.
fn hash_of(r: &SessionRecord) -> Vec<(&'static str, String)> {
    let mut fields: Vec<(&str, String)> = vec![
        (f::UPSTREAM_SESSION_ID, r.upstream_session_id.clone()),
        (f::OWNER, r.owner.clone()),
        (f::SERVER, r.server_name.clone()),
        (f::TRANSPORT, r.transport.as_str().to_string()),
        (f::CREATED_AT, r.created_at.to_string()),
        (f::LAST_SEEN, r.last_seen.to_string()),
        (f::EPOCH, r.epoch.to_string()),
    ];
    for (name, value) in [
        (f::USER, &r.user),
        (f::PROTOCOL_VERSION, &r.protocol_version),
        (f::INIT_PARAMS, &r.init_params),
        (f::CONTEXT, &r.context),
        (f::INIT_RESULT, &r.init_result),
    ] {
        if let Some(v) = value {
            fields.push((name, v.clone()));
        }
    }
    fields
}

/// Reads a `COMPARE_HOLDER` script's answer: `held`, `missing`, or `lost` and the record's hash.
fn standing(session_id: &str, key: String, answer: Vec<String>) -> Result<Standing, StoreError> {
    let mut answer = answer.into_iter();
    match answer.next().as_deref() {
        Some("held") => Ok(Standing::Held),
        Some("missing") => Ok(Standing::Missing),
        Some("lost") => {
            let mut hash = HashMap::new();
            while let (Some(k), Some(v)) = (answer.next(), answer.next()) {
                hash.insert(k, v);
            }
            record_from_hash(session_id, hash)
                .map(|r| Standing::Lost(Box::new(r)))
                .map_err(|message| StoreError::Corrupt { key, message })
        }
        other => Err(StoreError::Corrupt {
            key,
            message: format!("unexpected script answer {other:?}"),
        }),
    }
}

fn record_from_hash(
    session_id: &str,
    mut map: HashMap<String, String>,
) -> Result<SessionRecord, String> {
    let mut required = |name: &str| {
        map.remove(name)
            .ok_or_else(|| format!("field {name} is missing"))
    };
    let upstream_session_id = required(f::UPSTREAM_SESSION_ID)?;
    let owner = required(f::OWNER)?;
    let server_name = required(f::SERVER)?;
    let number = |v: String, name: &str| {
        v.parse::<u64>()
            .map_err(|_| format!("field {name} is not a number"))
    };
    let created_at = number(required(f::CREATED_AT)?, f::CREATED_AT)?;
    let last_seen = number(required(f::LAST_SEEN)?, f::LAST_SEEN)?;
    let epoch = match map.remove(f::EPOCH) {
        Some(v) => number(v, f::EPOCH)?,
        None => 0,
    };
    Ok(SessionRecord {
        session_id: session_id.to_string(),
        upstream_session_id,
        owner,
        server_name,
        transport: Transport::parse(map.remove(f::TRANSPORT).as_deref()),
        user: map.remove(f::USER),
        protocol_version: map.remove(f::PROTOCOL_VERSION),
        init_params: map.remove(f::INIT_PARAMS),
        context: map.remove(f::CONTEXT),
        init_result: map.remove(f::INIT_RESULT),
        created_at,
        last_seen,
        epoch,
    })
}
