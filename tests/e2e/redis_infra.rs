//! The sidecar on the Redis deployments users run: TLS with a private CA (a wrong CA and a wrong
//! name refused, mutual TLS), an ACL user allowed exactly the commands the README lists with its
//! password in a file, the commands managed services refuse renamed away, and a cluster and a
//! Sentinel-managed primary failing mid-run.

use crate::harness::*;
use serde_json::json;
use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

const ACL_PASSWORD: &str = "acl-pw-4711-never-logged";

/// The commands the README says the sidecar and the `keys` CLI need ("Redis commands"), and
/// nothing else: an ACL user limited to them, on the `mcp:` keys only.
const NEEDED: &[&str] = &[
    "ping",
    "get",
    "set",
    "psetex",
    "getex",
    "del",
    "exists",
    "hgetall",
    "hmset",
    "hset",
    "hdel",
    "pexpire",
    "pexpireat",
    "expire",
    "expireat",
    "pttl",
    "ttl",
    "scan",
    "evalsha",
    "script|load",
    "multi",
    "exec",
];

/// redis-server arguments: the default user off, `sidecar` allowed `NEEDED` on `mcp:*`.
fn acl_args() -> Vec<String> {
    let mut user = vec![
        "--user".to_string(),
        "sidecar".into(),
        "on".into(),
        format!(">{ACL_PASSWORD}"),
        "~mcp:*".into(),
        "resetchannels".into(),
        "-@all".into(),
    ];
    user.extend(NEEDED.iter().map(|c| format!("+{c}")));
    let mut args = vec!["--user".to_string(), "default".into(), "off".into()];
    args.extend(user);
    args
}

fn password_file(dir: &Path) -> String {
    let path = dir.join("redis-password");
    // as a Secret mounted from `kubectl create secret --from-file` often has it: newline-ended
    fs::write(&path, format!("{ACL_PASSWORD}\n")).unwrap();
    path.display().to_string()
}

async fn readyz(sidecar: &Sidecar) -> serde_json::Value {
    reqwest::get(sidecar.admin("/readyz"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

async fn wait_ready(sidecar: &Sidecar, status: &str) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let v = readyz(sidecar).await;
        if v["status"] == status {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "readiness never became {status}: {v}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Sessions forwarded across three pods, an owner killed and its session recovered, the admin
/// listing and a hub key made by the CLI: what every deployment must carry. The index of the
/// pod that was killed.
async fn three_pod_scenario(cluster: &mut Cluster) -> usize {
    let out = python_client(
        &cluster.entry.url("/mcp"),
        Transport::StreamableHttp,
        &["--calls", "0", "--counts", "9"],
    );
    let expected: Vec<i64> = (1..=9).collect();
    assert_eq!(
        out["counts"],
        json!(expected),
        "one upstream session saw every call"
    );

    let client = PausedClient::start(&cluster.dir, &cluster.entry.url("/mcp"), 20, 5);
    let sessions = admin_sessions(&cluster.pods[1].sidecar).await;
    assert_eq!(sessions.len(), 1, "listing covers the store: {sessions:?}");
    let sid = sessions[0]["sessionId"].as_str().unwrap().to_string();
    let owner = cluster.owner_of(&sid).await;
    cluster.pods[owner].sidecar.proc.kill();
    cluster.pods[owner].upstream.proc.kill();
    let out = client
        .resume()
        .expect("the session was recovered on another pod");
    let expected: Vec<i64> = (1..=20).collect();
    assert_eq!(out["add_results"], json!(expected));
    let survivor = (0..3).find(|i| *i != owner).unwrap();
    let pods = admin_api(
        &cluster.pods[survivor].sidecar,
        reqwest::Method::GET,
        "/api/admin/pods",
    )
    .await;
    assert!(pods.as_array().is_some_and(|p| p.len() >= 2), "{pods}");

    let config = &cluster.pods[survivor].sidecar.config;
    let (ok, key, err) = keys_cli(config, &["create", "--user", "ada", "--expires", "1h"]);
    assert!(ok, "{err}");
    assert!(key.trim().starts_with("mcphub_"), "{key}");
    let (ok, list, err) = keys_cli(config, &["list", "--json"]);
    assert!(ok, "{err}");
    let list: serde_json::Value = serde_json::from_str(&list).unwrap();
    assert_eq!(list[0]["user"], "ada", "{list}");
    owner
}

#[tokio::test(flavor = "multi_thread")]
async fn tls_with_a_private_ca_and_an_acl_user_whose_password_is_in_a_file() {
    let dir = test_dir("redis-tls");
    let certs = Certs::generate(&dir);
    let extra = format!(
        ", username: sidecar, password_file: '{}', tls: {{ca_file: '{}'}}",
        password_file(&dir),
        certs.path("ca.crt").display()
    );
    let args = acl_args();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let mut cluster =
        Cluster::start_redis("redis-tls-pods", &[], "", Transport::StreamableHttp, |_| {
            Redis::start_tls(&dir, &certs, false, &args, &extra)
        });
    let v = wait_ready(&cluster.pods[0].sidecar, "ready").await;
    assert_eq!(v["store"], "redis");
    three_pod_scenario(&mut cluster).await;
    for pod in &cluster.pods {
        let log = pod.sidecar.log();
        assert!(log.contains("session store: redis at 127.0.0.1:"), "{log}");
        assert!(!log.contains(ACL_PASSWORD), "the password was logged");
    }
    // nothing else than TLS reaches this Redis: the plaintext port is off
    assert!(redis_cli(cluster.redis.port, &["ping"]).is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn a_wrong_ca_a_wrong_name_and_a_missing_client_certificate_are_refused_clearly() {
    let dir = test_dir("redis-tls-refused");
    let certs = Certs::generate(&dir);
    let redis = Redis::start_tls(&dir, &certs, false, &[], "");
    let config = |name: &str, redis_extra: &str| {
        let path = dir.join(format!("{name}.yaml"));
        fs::write(
            &path,
            format!(
                "redis: {{url: '{}'{redis_extra}}}\npeer: {{secret: {PEER_SECRET}}}\nserver: {{advertise_address: '127.0.0.1:1'}}\nroutes:\n{}",
                redis.url(),
                Sidecar::route("/mcp", "http://127.0.0.1:9/mcp", "demo")
            ),
        )
        .unwrap();
        path
    };
    let ca = |file: &str| format!(", tls: {{ca_file: '{}'}}", certs.path(file).display());

    let (ok, _, err) = keys_cli(&config("right", &ca("ca.crt")), &["list"]);
    assert!(ok, "{err}");
    // by host name: sent as SNI and matched against the certificate's DNS name
    let by_name = dir.join("by-name.yaml");
    fs::write(
        &by_name,
        fs::read_to_string(config("y", &ca("ca.crt")))
            .unwrap()
            .replace("rediss://127.0.0.1:", "rediss://localhost:"),
    )
    .unwrap();
    let (ok, _, err) = keys_cli(&by_name, &["list"]);
    assert!(ok, "{err}");

    // a CA that did not sign the server's certificate
    let (ok, _, err) = keys_cli(&config("wrong-ca", &ca("other-ca.crt")), &["list"]);
    assert!(!ok);
    assert!(
        err.contains("cannot reach Redis") && err.contains("UnknownIssuer"),
        "{err}"
    );

    // the system roots do not know the test CA either
    let (ok, _, err) = keys_cli(&config("system-roots", ""), &["list"]);
    assert!(!ok);
    assert!(err.contains("UnknownIssuer"), "{err}");

    // the right CA, but a certificate for another name: refused too (no way to skip the check)
    let dir2 = test_dir("redis-tls-elsewhere");
    let elsewhere = Redis::start_tls(
        &dir2,
        &certs,
        false,
        &[
            "--tls-cert-file",
            certs.path("elsewhere.crt").to_str().unwrap(),
            "--tls-key-file",
            certs.path("elsewhere.key").to_str().unwrap(),
        ],
        "",
    );
    let path = dir.join("elsewhere.yaml");
    fs::write(
        &path,
        fs::read_to_string(config("x", &ca("ca.crt")))
            .unwrap()
            .replace(&redis.url(), &elsewhere.url()),
    )
    .unwrap();
    let (ok, _, err) = keys_cli(&path, &["list"]);
    assert!(!ok);
    assert!(err.contains("certificate not valid for name"), "{err}");

    // a running sidecar with the wrong CA says why in readiness
    let sidecar = Sidecar::start(
        &dir,
        &format!(
            "redis: {{url: '{}'{}}}\npeer: {{secret: {PEER_SECRET}}}\nroutes:\n{}",
            redis.url(),
            ca("other-ca.crt"),
            Sidecar::route("/mcp", "http://127.0.0.1:9/mcp", "demo")
        ),
    );
    // (on a loaded machine a readiness ping may time out before the handshake has failed:
    // the reason settles on the certificate within the deadline)
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let v = wait_ready(&sidecar, "degraded").await;
        if v["reason"].as_str().unwrap().contains("UnknownIssuer") {
            break;
        }
        assert!(Instant::now() < deadline, "{v}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn mutual_tls_needs_the_client_certificate() {
    let dir = test_dir("redis-mtls");
    let certs = Certs::generate(&dir);
    let redis = Redis::start_tls(&dir, &certs, true, &[], "");
    let config = |name: &str, tls: &str| {
        let path = dir.join(format!("{name}.yaml"));
        fs::write(
            &path,
            format!(
                "redis: {{url: '{}', tls: {{{tls}}}}}\npeer: {{secret: {PEER_SECRET}}}\nserver: {{advertise_address: '127.0.0.1:1'}}\nroutes:\n{}",
                redis.url(),
                Sidecar::route("/mcp", "http://127.0.0.1:9/mcp", "demo")
            ),
        )
        .unwrap();
        path
    };
    let ca = format!("ca_file: '{}'", certs.path("ca.crt").display());
    let (ok, _, err) = keys_cli(&config("no-cert", &ca), &["list"]);
    assert!(!ok, "Redis accepted a client without a certificate");
    assert!(err.contains("cannot reach Redis"), "{err}");
    let mutual = format!(
        "{ca}, cert_file: '{}', key_file: '{}'",
        certs.path("client.crt").display(),
        certs.path("client.key").display()
    );
    let (ok, _, err) = keys_cli(&config("cert", &mutual), &["create", "--user", "bob"]);
    assert!(ok, "{err}");
    let (ok, out, err) = keys_cli(&config("cert", &mutual), &["list", "--json"]);
    assert!(ok && out.contains("\"bob\""), "{out}{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn commands_managed_services_refuse_are_never_needed() {
    // what ElastiCache and other managed services rename or refuse, renamed away
    let mut args = Vec::new();
    for c in [
        "KEYS",
        "CONFIG",
        "FLUSHALL",
        "FLUSHDB",
        "DEBUG",
        "MONITOR",
        "SAVE",
        "BGSAVE",
        "BGREWRITEAOF",
        "SHUTDOWN",
        "REPLICAOF",
        "SLAVEOF",
        "MIGRATE",
        "SWAPDB",
        "OBJECT",
    ] {
        args.extend(["--rename-command", c, ""]);
    }
    let mut cluster =
        Cluster::start_redis("redis-renamed", &[], "", Transport::StreamableHttp, |dir| {
            Redis::start_args(dir, free_port(), &args)
        });
    assert!(redis_cli(cluster.redis.port, &["config", "get", "save"]).contains("unknown command"));
    three_pod_scenario(&mut cluster).await;
}

/// Calls on one session through the round robin while `kill` takes the Redis primary holding
/// it down, until `promoted` says a replica took over and then some more. Every call succeeds,
/// or gets the documented 503 "retry" (the session is not on the pod that got it and the store
/// does not answer), and succeeds when retried; nothing else, nothing hangs. Pod `dead` is gone
/// already.
async fn primary_failover(
    cluster: &mut Cluster,
    dead: usize,
    kill: impl FnOnce(&mut Redis, &str) -> Box<dyn Fn() -> bool>,
) {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap();
    let url = cluster.entry.url("/mcp");
    let sid = open_session(&client, &url).await;
    let promoted = kill(&mut cluster.redis, &format!("mcp:session:{sid}"));
    let deadline = Instant::now() + Duration::from_secs(60);
    let (mut calls, mut retries, mut after) = (0, 0, 0);
    while after < 15 {
        assert!(
            Instant::now() < deadline,
            "{calls} calls, {retries} retries, no end"
        );
        let text = format!("call {calls}");
        let body = json!({"jsonrpc":"2.0","id":calls,"method":"tools/call","params":{"name":"echo","arguments":{"text":text}}});
        let resp = session_post(&client, &url, &sid, body.to_string()).await;
        match resp.status().as_u16() {
            200 => {
                let answer = resp.text().await.unwrap();
                assert!(answer.contains(&text), "{answer}");
                calls += 1;
                if promoted() {
                    after += 1;
                }
            }
            503 => {
                let answer = resp.text().await.unwrap();
                assert!(answer.contains("-32000"), "{answer}");
                retries += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            other => panic!(
                "call {calls} failed with {other} during the failover: {}",
                resp.text().await.unwrap_or_default()
            ),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!("failover: {calls} calls, {retries} retried after a 503");
    // afterwards every live pod is registered again and serves the session
    let live: Vec<&Pod> = (0..3)
        .filter(|i| *i != dead)
        .map(|i| &cluster.pods[i])
        .collect();
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let pods = admin_api(&live[0].sidecar, reqwest::Method::GET, "/api/admin/pods").await;
        if pods.as_array().is_some_and(|p| p.len() == live.len()) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "pods did not re-register: {pods}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for pod in live {
        wait_ready(&pod.sidecar, "ready").await;
        let url = pod.sidecar.url("/mcp");
        assert_eq!(
            call_tool(&client, &url, &sid, "echo", json!({"text": "after"})).await,
            "after"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cluster_carries_the_scenarios_and_a_primary_failover() {
    let mut cluster = Cluster::start_redis(
        "redis-cluster",
        &[],
        "",
        Transport::StreamableHttp,
        Redis::cluster,
    );
    let dead = three_pod_scenario(&mut cluster).await;
    primary_failover(&mut cluster, dead, |redis, key| {
        // the node that answers for the key itself (the others redirect with MOVED) is its primary
        let ports: Vec<u16> = std::iter::once(redis.port)
            .chain(redis.others.iter().map(|(p, _)| *p))
            .collect();
        let primary = *ports
            .iter()
            .find(|p| redis_cli(**p, &["exists", key]).trim() == "1")
            .expect("a primary holds the session");
        let replica = *ports
            .iter()
            .find(|p| {
                redis_cli(**p, &["info", "replication"]).contains(&format!("master_port:{primary}"))
            })
            .expect("the primary has a replica");
        redis.kill_port(primary);
        Box::new(move || redis_cli(replica, &["role"]).starts_with("master"))
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn sentinel_fails_over_and_the_sidecars_follow() {
    let mut cluster = Cluster::start_redis(
        "redis-sentinel",
        &[],
        "",
        Transport::StreamableHttp,
        Redis::sentinel,
    );
    let dead = three_pod_scenario(&mut cluster).await;
    primary_failover(&mut cluster, dead, |redis, _| {
        let sentinel = redis.port;
        let primary_port = move || {
            redis_cli(
                sentinel,
                &["sentinel", "get-master-addr-by-name", "mymaster"],
            )
            .lines()
            .nth(1)
            .and_then(|p| p.trim().parse::<u16>().ok())
        };
        let old = primary_port().expect("the sentinels name a primary");
        redis.kill_port(old);
        Box::new(move || primary_port().is_some_and(|p| p != old))
    })
    .await;
}

/// Status of an `initialize` with `key` (as `?key=`).
async fn initialize_with(client: &reqwest::Client, url: &str, key: &str) -> u16 {
    mcp_post(client, &format!("{url}?key={key}"))
        .body(INITIALIZE)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test(flavor = "multi_thread")]
async fn hub_keys_come_back_after_an_empty_restart_with_export_and_import() {
    let dir = test_dir("redis-keys-backup");
    let redis = Redis::start(&dir);
    let port = redis.port;
    let upstream = FastMcp::start(&dir, Transport::StreamableHttp);
    let sidecar = Sidecar::start(
        &dir,
        &format!(
            "redis: {}\npeer: {{secret: {PEER_SECRET}}}\nauth: {{cache_ttl: 1s, stale_if_error: 0s, token_encryption_key: '{}'}}\nroutes:\n  - {{prefix: /mcp, upstream: '{}/mcp', server_name: demo, auth: required}}\n",
            redis.section(),
            "ab".repeat(32),
            upstream.base()
        ),
    );
    let config = &sidecar.config;
    let (ok, ada, err) = keys_cli(
        config,
        &[
            "create",
            "--user",
            "ada",
            "--token",
            "GH=tok-ada-1",
            "--expires",
            "2h",
        ],
    );
    assert!(ok, "{err}");
    let (ok, bob, err) = keys_cli(config, &["create", "--user", "bob", "--expires", "never"]);
    assert!(ok, "{err}");
    let (ada, bob) = (ada.trim().to_string(), bob.trim().to_string());
    let client = reqwest::Client::new();
    let url = sidecar.url("/mcp");
    assert_eq!(initialize_with(&client, &url, &ada).await, 200);
    let v = wait_ready(&sidecar, "ready").await;
    assert!(v.get("warnings").is_none(), "{v}");

    let (ok, export, err) = keys_cli(config, &["export"]);
    assert!(ok, "{err}");
    assert_eq!(export.lines().count(), 2, "{export}");
    assert!(
        !export.contains("tok-ada-1"),
        "tokens are exported encrypted, as stored"
    );
    let backup = dir.join("keys-backup.jsonl");
    fs::write(&backup, &export).unwrap();

    // Redis restarts without persistence: every key is gone, every user refused, and readiness
    // says why
    drop(redis);
    let redis = Redis::start_on(&dir, port);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let v = readyz(&sidecar).await;
        if v["status"] == "ready"
            && v["warnings"]
                .to_string()
                .contains("registry in Redis is empty")
        {
            break;
        }
        assert!(Instant::now() < deadline, "no empty-registry warning: {v}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(sidecar.log().contains("hub key registry in Redis is empty"));
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(initialize_with(&client, &url, &ada).await, 401);

    let import = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_mcp-sidecar"))
            .arg("-c")
            .arg(config)
            .arg("keys")
            .arg("import")
            .args(args)
            .stdin(fs::File::open(&backup).unwrap())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stderr).to_string()
    };
    assert!(import(&[]).contains("imported 2 key record(s)"));
    assert!(import(&[]).contains("imported 0 key record(s); kept 2 already present"));
    assert!(import(&["--replace"]).contains("imported 2 key record(s)"));
    // the refusal above is cached for auth.cache_ttl
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(initialize_with(&client, &url, &ada).await, 200);
    assert_eq!(initialize_with(&client, &url, &bob).await, 200);
    // the expiry came along: bob's never, ada's in about two hours
    let mut c = redis.conn().await;
    let (ok, list, _) = keys_cli(config, &["list", "--json"]);
    assert!(ok);
    let list: serde_json::Value = serde_json::from_str(&list).unwrap();
    let by_user = |u: &str| {
        list.as_array()
            .unwrap()
            .iter()
            .find(|r| r["user"] == u)
            .unwrap()
            .clone()
    };
    assert_eq!(by_user("bob")["expiresAt"], serde_json::Value::Null);
    assert_eq!(by_user("ada")["tokens"], json!(["GH"]));
    let names: Vec<String> = c.scan_match("mcp:hub:key:*", 100).await.unwrap();
    let ttls: Vec<i64> = {
        let mut t = Vec::new();
        for n in &names {
            t.push(redis::cmd("TTL").arg(n).query_async(&mut c).await.unwrap());
        }
        t.sort();
        t
    };
    assert_eq!(ttls[0], -1, "bob's record never expires");
    assert!(ttls[1] > 2 * 3600, "ada's keeps expiry + 7 days: {ttls:?}");
    wait_until_async(Duration::from_secs(15), || async {
        readyz(&sidecar).await.get("warnings").is_none()
    })
    .await;
}

async fn wait_until_async<F: std::future::Future<Output = bool>>(
    limit: Duration,
    mut ok: impl FnMut() -> F,
) {
    let deadline = Instant::now() + limit;
    while !ok().await {
        assert!(
            Instant::now() < deadline,
            "condition not met within {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
