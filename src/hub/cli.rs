//! `mcp-sidecar keys …`: managing MCPHub keys in the Redis registry from the command line (the
//! sidecar has no web UI). Keys are printed once, at creation; the registry keeps only their
//! SHA-256. Token values never appear in output.

use super::crypto::TokenCipher;
use super::key;
use super::policy::valid_token_name;
use super::user::{field, HubUser};
use crate::config::Config;
use crate::store::connect::{Conn, Target};
use crate::store::{keys, unix_now};
use clap::{Args, Subcommand};
use redis::AsyncCommands;
use std::collections::HashMap;
use std::time::Duration;

/// How long a revoked or expired key's record stays visible to `keys list`.
const KEEP_AFTER_END: Duration = Duration::from_secs(7 * 24 * 3600);

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Creates a key for a user and prints it (once).
    Create {
        /// User id (what logs and `X-MCPHub-User-Id` show).
        #[arg(long)]
        user: String,
        /// Display name (defaults to the user id).
        #[arg(long)]
        name: Option<String>,
        /// Group for tool filtering; repeatable.
        #[arg(long = "group")]
        groups: Vec<String>,
        /// `NAME=VALUE`, or `NAME` alone to read the value from the environment variable NAME
        /// (keeps it out of shell history); repeatable.
        #[arg(long = "token")]
        tokens: Vec<String>,
        /// `90d`, `12h`, an RFC 3339 time, or `never`.
        #[arg(long, default_value = "365d")]
        expires: String,
    },
    /// Lists keys: prefix, user, groups, state, expiry and token names (never values).
    List {
        #[arg(long)]
        json: bool,
    },
    /// Deactivates keys at once; sidecars stop accepting them within `auth.cache_ttl`.
    Revoke {
        #[command(flatten)]
        which: Which,
    },
    /// Sets (`NAME=VALUE` or `NAME` from the environment) or removes (`--remove NAME`) service
    /// tokens of keys.
    SetToken {
        #[command(flatten)]
        which: Which,
        tokens: Vec<String>,
        #[arg(long = "remove")]
        remove: Vec<String>,
    },
    /// Rewrites every service token in the registry that is plaintext or in the older enc:v1
    /// format as enc:v2 (bound to its key record and token name). Needs
    /// `auth.token_encryption_key`.
    Reencrypt,
    /// Writes every registry record to stdout, one JSON object a line, for backups and moving
    /// to another Redis: the key's SHA-256, its fields as stored (service tokens included,
    /// encrypted when `auth.token_encryption_key` is set) and its expiry. Keep the file as
    /// secret as the registry.
    Export,
    /// Reads `keys export` lines from stdin into the registry. A record already present is kept
    /// unless `--replace`; records past their expiry are skipped.
    Import {
        #[arg(long)]
        replace: bool,
    },
    /// Prints the stored (enc:v2) form of a token for an entry of `auth.keys_file`: `NAME=VALUE`
    /// or `NAME` to read the value from the environment variable NAME.
    EncryptToken {
        /// The entry's `key_sha256`.
        #[arg(long = "key-sha256")]
        key_sha256: String,
        token: String,
    },
}

/// Which keys a command acts on.
#[derive(Debug, Args)]
#[group(required = true, multiple = false)]
pub struct Which {
    /// The key itself.
    #[arg(long)]
    key: Option<String>,
    /// The prefix `keys list` shows (`mcphub_` and 8 hex characters).
    #[arg(long)]
    prefix: Option<String>,
    /// Every key of this user.
    #[arg(long)]
    user: Option<String>,
}

fn token_pair(spec: &str) -> Result<(String, String), String> {
    let (name, value) = match spec.split_once('=') {
        Some((n, v)) => (n.to_string(), v.to_string()),
        None => (
            spec.to_string(),
            std::env::var(spec).map_err(|_| {
                format!("--token {spec}: no '=VALUE' and no environment variable {spec}")
            })?,
        ),
    };
    if !valid_token_name(&name) {
        return Err(format!(
            "token name {name:?} must use only letters, digits and '_'"
        ));
    }
    if value.is_empty() || value.bytes().any(|b| b.is_ascii_control()) {
        return Err(format!(
            "token {name}: value must be non-empty and have no control characters"
        ));
    }
    Ok((name, value))
}

/// Unix seconds for `--expires`, `None` for never.
fn expiry(spec: &str) -> Result<Option<u64>, String> {
    let spec = spec.trim();
    if spec == "never" {
        return Ok(None);
    }
    if let Ok(d) = humantime::parse_duration(spec) {
        return Ok(Some(unix_now() + d.as_secs().max(1)));
    }
    humantime::parse_rfc3339_weak(spec)
        .map(|t| {
            Some(
                t.duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs()),
            )
        })
        .map_err(|_| format!("--expires {spec:?}: use a duration (90d), an RFC 3339 time or never"))
}

/// The stored form of token `name` of the key record `record` (the key's SHA-256).
fn stored_token(cipher: Option<&TokenCipher>, value: &str, record: &str, name: &str) -> String {
    cipher.map_or_else(|| value.to_string(), |c| c.encrypt(value, record, name))
}

/// The key's SHA-256 in a registry key name (`mcp:hub:key:<sha256>`).
fn record_of(redis_key: &str) -> &str {
    redis_key.rsplit(':').next().unwrap_or_default()
}

/// Runs a `keys` command; the `Err` is printed by the caller.
pub fn run(config: &Config, cmd: KeysCommand) -> Result<(), String> {
    let cipher = config
        .token_encryption_key()
        .map(TokenCipher::from_hex)
        .transpose()
        .map_err(|e| format!("auth.token_encryption_key {e}"))?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    match (config.redis_url(), cmd) {
        // a key-file entry's token: no Redis involved
        (_, KeysCommand::EncryptToken { key_sha256, token }) => {
            encrypt_token(cipher.as_ref(), &key_sha256, &token)
        }
        (None, KeysCommand::Create { user, name, groups, tokens, expires }) => {
            print_static_entry(cipher.as_ref(), &user, name, &groups, &tokens, &expires)
        }
        (None, _) => Err(
            "no redis.url configured: keys live in auth.keys_file; edit that file (keys create prints entries for it)"
                .into(),
        ),
        (Some(url), cmd) => rt.block_on(async {
            let target = Target::from_config(&config.redis, url)?;
            let mut c = tokio::time::timeout(
                config.redis.connect_timeout.max(Duration::from_secs(2)),
                async {
                    let mut c = target.connect().await?;
                    redis::cmd("PING").query_async::<()>(&mut c).await?;
                    Ok::<_, redis::RedisError>(c)
                },
            )
            .await
            .map_err(|_| "Redis did not answer in time".to_string())?
            .map_err(|e| format!("cannot reach Redis: {e}"))?;
            redis_command(&mut c, cipher.as_ref(), cmd).await
        }),
    }
}

fn encrypt_token(
    cipher: Option<&TokenCipher>,
    key_sha256: &str,
    token: &str,
) -> Result<(), String> {
    let cipher = cipher.ok_or("auth.token_encryption_key is not set")?;
    let digest = key_sha256.trim().to_ascii_lowercase();
    if digest.len() != 64 || !digest.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err("--key-sha256 must be 64 hex characters".into());
    }
    let (n, v) = token_pair(token)?;
    println!("{}", cipher.encrypt(&v, &digest, &n));
    Ok(())
}

fn print_static_entry(
    cipher: Option<&TokenCipher>,
    user: &str,
    name: Option<String>,
    groups: &[String],
    tokens: &[String],
    expires: &str,
) -> Result<(), String> {
    let expires_at = expiry(expires)?;
    let k = key::generate();
    let digest = key::digest(&k);
    let mut entry = format!("  - key_sha256: {digest}\n    user_id: {user:?}\n");
    if let Some(n) = name {
        entry.push_str(&format!("    user_name: {n:?}\n"));
    }
    if let Some(t) = expires_at {
        entry.push_str(&format!("    expires_at: {t}\n"));
    }
    entry.push_str(&format!("    groups: {groups:?}\n    tokens:\n"));
    for spec in tokens {
        let (n, v) = token_pair(spec)?;
        entry.push_str(&format!(
            "      {n}: {:?}\n",
            stored_token(cipher, &v, &digest, &n)
        ));
    }
    println!("{k}");
    eprintln!("no redis.url configured: add this entry under `keys:` in auth.keys_file (it holds the key's SHA-256, not the key):\n{entry}");
    Ok(())
}

async fn all_keys(c: &mut Conn) -> Result<Vec<(String, HashMap<String, String>)>, String> {
    let names = c
        .scan_match(keys::HUB_KEY_PATTERN, 500)
        .await
        .map_err(|e| e.to_string())?;
    let mut out = Vec::with_capacity(names.len());
    for n in names {
        let map: HashMap<String, String> = c.hgetall(&n).await.map_err(|e| e.to_string())?;
        if !map.is_empty() {
            out.push((n, map));
        }
    }
    out.sort_by(|a, b| {
        (a.1.get(field::USER_ID), a.1.get(field::KEY_PREFIX))
            .cmp(&(b.1.get(field::USER_ID), b.1.get(field::KEY_PREFIX)))
    });
    Ok(out)
}

/// The registry keys `which` names.
async fn select(c: &mut Conn, which: &Which) -> Result<Vec<String>, String> {
    if let Some(k) = &which.key {
        if !key::is_well_formed(k) {
            return Err("--key is not a well-formed MCPHub key".into());
        }
        let name = keys::hub_key(&key::digest(k));
        let exists: bool = c.exists(&name).await.map_err(|e| e.to_string())?;
        return if exists {
            Ok(vec![name])
        } else {
            Err("no such key in the registry".into())
        };
    }
    let all = all_keys(c).await?;
    let found: Vec<String> = all
        .into_iter()
        .filter(|(_, m)| match (&which.prefix, &which.user) {
            (Some(p), _) => m.get(field::KEY_PREFIX) == Some(p),
            (_, Some(u)) => m.get(field::USER_ID) == Some(u),
            _ => false,
        })
        .map(|(n, _)| n)
        .collect();
    match (found.len(), &which.prefix) {
        (0, _) => Err("no key matches".into()),
        (n, Some(_)) if n > 1 => Err(format!("{n} keys share that prefix; use --key")),
        _ => Ok(found),
    }
}

async fn redis_command(
    c: &mut Conn,
    cipher: Option<&TokenCipher>,
    cmd: KeysCommand,
) -> Result<(), String> {
    let err = |e: redis::RedisError| e.to_string();
    match cmd {
        KeysCommand::Create {
            user,
            name,
            groups,
            tokens,
            expires,
        } => {
            if user.is_empty() {
                return Err("--user must not be empty".into());
            }
            let expires_at = expiry(&expires)?;
            let k = key::generate();
            let digest = key::digest(&k);
            let rkey = keys::hub_key(&digest);
            let mut fields: Vec<(String, String)> = vec![
                (field::USER_ID.into(), user.clone()),
                (
                    field::USER_NAME.into(),
                    name.unwrap_or_else(|| user.clone()),
                ),
                (field::ACTIVE.into(), "true".into()),
                (field::GROUPS.into(), groups.join(",")),
                (field::KEY_PREFIX.into(), key::shown_prefix(&k).into()),
                (field::CREATED_AT.into(), unix_now().to_string()),
                (
                    field::EXPIRES_AT.into(),
                    expires_at.map(|t| t.to_string()).unwrap_or_default(),
                ),
            ];
            for spec in &tokens {
                let (n, v) = token_pair(spec)?;
                fields.push((
                    format!("{}{n}", field::TOKEN_PREFIX),
                    stored_token(cipher, &v, &digest, &n),
                ));
            }
            let mut pipe = redis::pipe();
            pipe.atomic().hset_multiple(&rkey, &fields).ignore();
            if let Some(t) = expires_at {
                pipe.expire_at(&rkey, (t + KEEP_AFTER_END.as_secs()) as i64)
                    .ignore();
            }
            pipe.query_async::<()>(c).await.map_err(err)?;
            println!("{k}");
            eprintln!(
                "created key {} for user {user} (groups: [{}], tokens: [{}], expires: {}). The key is shown only now.",
                key::shown_prefix(&k),
                groups.join(", "),
                fields.iter().filter_map(|(f, _)| f.strip_prefix(field::TOKEN_PREFIX)).collect::<Vec<_>>().join(", "),
                expires_at.map_or("never".to_string(), |t| format!("in {}", humantime::format_duration(Duration::from_secs(t.saturating_sub(unix_now())))))
            );
            Ok(())
        }
        KeysCommand::List { json } => {
            let now = unix_now();
            let rows: Vec<serde_json::Value> = all_keys(c)
                .await?
                .into_iter()
                .map(|(_, m)| {
                    let prefix = m.get(field::KEY_PREFIX).cloned().unwrap_or_default();
                    let token_names: Vec<String> = m
                        .keys()
                        .filter_map(|f| f.strip_prefix(field::TOKEN_PREFIX).map(str::to_string))
                        .collect::<std::collections::BTreeSet<_>>()
                        .into_iter()
                        .collect();
                    let u = HubUser::from_hash(
                        m.into_iter()
                            .filter(|(f, _)| !f.starts_with(field::TOKEN_PREFIX))
                            .collect(),
                        None,
                        "",
                    );
                    match u {
                        Ok(u) => serde_json::json!({
                            "keyPrefix": prefix,
                            "user": u.id,
                            "name": u.name,
                            "groups": u.groups,
                            "state": match u.usable(now) {
                                Ok(()) => "active",
                                Err(super::user::Refused::Inactive) => "revoked",
                                Err(super::user::Refused::Expired) => "expired",
                            },
                            "expiresAt": u.expires_at,
                            "tokens": token_names,
                        }),
                        Err(e) => serde_json::json!({"keyPrefix": prefix, "error": e}),
                    }
                })
                .collect();
            if json {
                println!("{}", serde_json::Value::Array(rows));
                return Ok(());
            }
            println!(
                "{:<17} {:<16} {:<8} {:<20} {:<22} TOKENS",
                "KEY", "USER", "STATE", "GROUPS", "EXPIRES"
            );
            for r in rows {
                let s = |k: &str| r[k].as_str().unwrap_or("-").to_string();
                let list = |k: &str| {
                    r[k].as_array()
                        .map(|a| {
                            a.iter()
                                .filter_map(|v| v.as_str())
                                .collect::<Vec<_>>()
                                .join(",")
                        })
                        .unwrap_or_default()
                };
                let expires = r["expiresAt"].as_u64().map_or("never".to_string(), |t| {
                    humantime::format_rfc3339_seconds(
                        std::time::UNIX_EPOCH + Duration::from_secs(t),
                    )
                    .to_string()
                });
                println!(
                    "{:<17} {:<16} {:<8} {:<20} {:<22} {}",
                    s("keyPrefix"),
                    s("user"),
                    s("state"),
                    list("groups"),
                    expires,
                    list("tokens")
                );
            }
            Ok(())
        }
        KeysCommand::Revoke { which } => {
            let names = select(c, &which).await?;
            for n in &names {
                let ttl: i64 = c.ttl(n).await.map_err(err)?;
                let mut pipe = redis::pipe();
                pipe.atomic()
                    .hset(n, field::ACTIVE, "false")
                    .ignore()
                    .hset(n, field::REVOKED_AT, unix_now().to_string())
                    .ignore();
                if ttl < 0 || ttl as u64 > KEEP_AFTER_END.as_secs() {
                    pipe.expire(n, KEEP_AFTER_END.as_secs() as i64).ignore();
                }
                pipe.query_async::<()>(c).await.map_err(err)?;
            }
            eprintln!(
                "revoked {} key(s); sidecars refuse them within auth.cache_ttl",
                names.len()
            );
            Ok(())
        }
        KeysCommand::SetToken {
            which,
            tokens,
            remove,
        } => {
            if tokens.is_empty() && remove.is_empty() {
                return Err("name tokens to set (NAME=VALUE or NAME) or --remove NAME".into());
            }
            let pairs = tokens
                .iter()
                .map(|t| token_pair(t))
                .collect::<Result<Vec<_>, _>>()?;
            let names = select(c, &which).await?;
            for n in &names {
                let mut pipe = redis::pipe();
                pipe.atomic();
                for (t, v) in &pairs {
                    pipe.hset(
                        n,
                        format!("{}{t}", field::TOKEN_PREFIX),
                        stored_token(cipher, v, record_of(n), t),
                    )
                    .ignore();
                }
                for t in &remove {
                    pipe.hdel(n, format!("{}{t}", field::TOKEN_PREFIX)).ignore();
                }
                pipe.query_async::<()>(c).await.map_err(err)?;
            }
            eprintln!(
                "updated {} key(s): set [{}], removed [{}]; sidecars use the new tokens within auth.cache_ttl",
                names.len(),
                pairs.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>().join(", "),
                remove.join(", ")
            );
            Ok(())
        }
        KeysCommand::Reencrypt => {
            let cipher = cipher.ok_or("auth.token_encryption_key is not set")?;
            let (mut rewritten, mut failed) = (0, 0);
            for (n, map) in all_keys(c).await? {
                let record = record_of(&n);
                for (f, stored) in &map {
                    let Some(t) = f.strip_prefix(field::TOKEN_PREFIX) else {
                        continue;
                    };
                    if !super::crypto::needs_reencryption(stored) {
                        continue;
                    }
                    match cipher.decrypt(stored, record, t) {
                        Ok(d) => {
                            let sealed = cipher.encrypt(&d.plain, record, t);
                            // only if nobody changed it meanwhile
                            let script = redis::Script::new(
                                "if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then return redis.call('HSET', KEYS[1], ARGV[1], ARGV[3]) end return -1",
                            );
                            let done: i64 = script
                                .key(&n)
                                .arg(f)
                                .arg(stored)
                                .arg(&sealed)
                                .invoke_async(c)
                                .await
                                .map_err(err)?;
                            if done >= 0 {
                                rewritten += 1;
                            }
                        }
                        Err(e) => {
                            failed += 1;
                            eprintln!(
                                "key record {}…: token {t}: {e}",
                                &record[..12.min(record.len())]
                            );
                        }
                    }
                }
            }
            eprintln!(
                "rewrote {rewritten} token(s) as enc:v2; sidecars read them within auth.cache_ttl"
            );
            match failed {
                0 => Ok(()),
                n => Err(format!(
                    "{n} token(s) could not be decrypted and were left as they are"
                )),
            }
        }
        KeysCommand::EncryptToken { key_sha256, token } => {
            encrypt_token(cipher, &key_sha256, &token)
        }
        KeysCommand::Export => export(c).await,
        KeysCommand::Import { replace } => {
            let mut lines = Vec::new();
            for line in std::io::stdin().lines() {
                lines.push(line.map_err(|e| format!("reading stdin: {e}"))?);
            }
            import(c, &lines, replace).await
        }
    }
}

/// One `keys export` line.
#[derive(serde::Serialize, serde::Deserialize)]
struct Exported {
    sha256: String,
    fields: HashMap<String, String>,
    /// Unix milliseconds; `None`: the record never expires.
    expires_at_ms: Option<u64>,
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

async fn export(c: &mut Conn) -> Result<(), String> {
    let records = all_keys(c).await?;
    let mut out = String::new();
    for (name, fields) in &records {
        let ttl: i64 = c.pttl(name).await.map_err(|e| e.to_string())?;
        let line = Exported {
            sha256: record_of(name).to_string(),
            fields: fields.clone(),
            expires_at_ms: (ttl >= 0).then(|| now_ms() + ttl as u64),
        };
        out.push_str(&serde_json::to_string(&line).map_err(|e| e.to_string())?);
        out.push('\n');
    }
    print!("{out}");
    eprintln!(
        "exported {} key record(s); the output holds their service tokens as stored: keep it as secret as the registry",
        records.len()
    );
    Ok(())
}

async fn import(c: &mut Conn, lines: &[String], replace: bool) -> Result<(), String> {
    let now = now_ms();
    let (mut written, mut kept, mut expired) = (0, 0, 0);
    for (i, line) in lines.iter().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        // the line may hold tokens: say where it is wrong, never what it holds
        let r: Exported = serde_json::from_str(line).map_err(|e| {
            format!(
                "line {}: not a keys export record ({})",
                i + 1,
                json_problem(&e)
            )
        })?;
        if r.sha256.len() != 64 || !r.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(format!("line {}: sha256 is not 64 hex characters", i + 1));
        }
        if r.fields.is_empty() {
            return Err(format!("line {}: no fields", i + 1));
        }
        if r.expires_at_ms.is_some_and(|t| t <= now) {
            expired += 1;
            continue;
        }
        let name = keys::hub_key(&r.sha256.to_ascii_lowercase());
        if !replace
            && c.exists::<_, bool>(&name)
                .await
                .map_err(|e| e.to_string())?
        {
            kept += 1;
            continue;
        }
        let fields: Vec<(&String, &String)> = r.fields.iter().collect();
        let mut pipe = redis::pipe();
        pipe.atomic()
            .del(&name)
            .ignore()
            .hset_multiple(&name, &fields)
            .ignore();
        if let Some(t) = r.expires_at_ms {
            pipe.pexpire_at(&name, t as i64).ignore();
        }
        pipe.query_async::<()>(c).await.map_err(|e| e.to_string())?;
        written += 1;
    }
    eprintln!(
        "imported {written} key record(s); kept {kept} already present{}; skipped {expired} expired",
        if replace { "" } else { " (--replace overwrites them)" }
    );
    Ok(())
}

/// What is wrong with an import line, without quoting it (it may hold tokens).
fn json_problem(e: &serde_json::Error) -> &'static str {
    match e.classify() {
        serde_json::error::Category::Io => "unreadable",
        serde_json::error::Category::Syntax => "not JSON",
        serde_json::error::Category::Data => "wrong fields",
        serde_json::error::Category::Eof => "cut short",
    }
}

#[cfg(test)]
mod tests {
    use super::super::user::split_groups;
    use super::*;

    #[test]
    fn token_specs_and_expiry() {
        assert_eq!(
            token_pair("GITHUB_TOKEN=ghp_x").unwrap(),
            ("GITHUB_TOKEN".into(), "ghp_x".into())
        );
        assert!(token_pair("BAD-NAME=x").is_err());
        assert!(token_pair("A=").is_err());
        assert!(token_pair("A=x\ny").is_err());
        std::env::set_var("MCP_SIDECAR_TEST_TOKEN", "from_env");
        assert_eq!(token_pair("MCP_SIDECAR_TEST_TOKEN").unwrap().1, "from_env");
        assert_eq!(expiry("never").unwrap(), None);
        let t = expiry("1h").unwrap().unwrap();
        assert!(t >= unix_now() + 3599);
        assert_eq!(expiry("2030-01-01T00:00:00Z").unwrap(), Some(1_893_456_000));
        assert!(expiry("soon").is_err());
        assert_eq!(split_groups("a,,b "), ["a", "b"]);
    }
}
