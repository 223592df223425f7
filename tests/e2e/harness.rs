//! Real processes on loopback for the end-to-end tests: redis-server, FastMCP and
//! server-everything upstreams, the sidecar binary, and the official Python and TypeScript
//! clients. Every process gets free ports, logs to a file under the test's own directory
//! (kept in target/tmp for post-mortems), and is killed when its handle drops.

#![allow(dead_code)] // each test module uses a different part of the harness

use std::fs;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn peers() -> PathBuf {
    repo().join("tests/peers")
}

/// A fresh directory for one test's configs and logs.
pub fn test_dir(name: &str) -> PathBuf {
    static N: AtomicU32 = AtomicU32::new(0);
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!(
        "e2e-{name}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    dir
}

fn require(path: PathBuf, what: &str) -> PathBuf {
    assert!(
        path.exists(),
        "{what} not found at {}; run scripts/test.sh, which installs the test peers",
        path.display()
    );
    path
}

pub fn python() -> PathBuf {
    require(peers().join(".venv/bin/python"), "the test Python venv")
}

pub fn node() -> PathBuf {
    // scripts/test.sh puts a suitable node first on PATH (or sets NODE)
    std::env::var_os("NODE").map_or_else(|| PathBuf::from("node"), PathBuf::from)
}

/// A port nobody listens on right now, never handed out twice in this test process. Ports come
/// from below Linux's ephemeral range so client connections cannot take them meanwhile.
pub fn free_port() -> u16 {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let base = 20_000 + (std::process::id() * 97) % 10_000;
    loop {
        let port = (base + NEXT.fetch_add(1, Ordering::Relaxed) % 12_000) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// A child process that is killed when dropped.
pub struct Proc {
    child: Option<Child>,
    pub name: String,
    pub log: PathBuf,
}

impl Proc {
    pub fn spawn(dir: &Path, name: &str, mut cmd: Command) -> Proc {
        let log = dir.join(format!("{name}.log"));
        let out = fs::File::create(&log).unwrap();
        let err = out.try_clone().unwrap();
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name} ({cmd:?}): {e}"));
        Proc {
            child: Some(child),
            name: name.to_string(),
            log,
        }
    }

    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, |c| c.id())
    }

    /// Sends SIGTERM (what Kubernetes sends a container it stops).
    pub fn terminate(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Waits up to `limit` for the process to exit; its exit status, `None` if it did not.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + limit;
        let child = self.child.as_mut()?;
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Panics with the log when the process has exited.
    fn assert_running(&mut self) {
        if let Some(c) = self.child.as_mut() {
            if let Ok(Some(status)) = c.try_wait() {
                panic!("{} exited with {status}:\n{}", self.name, self.log_text());
            }
        }
    }

    /// Waits until `port` accepts connections on 127.0.0.1.
    pub fn wait_port(&mut self, port: u16) {
        self.wait_addr("127.0.0.1", port)
    }

    /// Waits until `ip:port` accepts connections.
    pub fn wait_addr(&mut self, ip: &str, port: u16) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            self.assert_running();
            if TcpStream::connect((ip, port)).is_ok() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{} did not listen on {port} within 30s:\n{}",
                self.name,
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until the log contains `needle` (lines are written after the response is sent,
    /// so a client can finish before its access line exists).
    pub fn wait_log(&self, needle: &str) {
        let deadline = Instant::now() + Duration::from_secs(15);
        while !self.log_text().contains(needle) {
            assert!(
                Instant::now() < deadline,
                "{} never logged {needle:?}:\n{}",
                self.name,
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A Redis deployment for the sidecars: one redis-server on its own port with no persistence
/// (so tests can kill it), or, when `MCP_TEST_REDIS` says so, a cluster or a Sentinel-managed
/// primary (`Redis::start` is what the scenario tests use, so they run unchanged on each).
pub struct Redis {
    /// The server; a cluster's seed node; Sentinel's first sentinel.
    pub proc: Proc,
    pub port: u16,
    /// Every other process of the deployment: (port, process).
    pub others: Vec<(u16, Proc)>,
    url: String,
    /// The rest of the sidecar's `redis:` mapping after the URL.
    extra: String,
}

/// `redis-cli -p PORT ARGS…` on loopback: its stdout (empty when it failed).
pub fn redis_cli(port: u16, args: &[&str]) -> String {
    let out = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", &port.to_string()])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("redis-cli (redis-tools) is installed by scripts/test.sh");
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// Polls `ok` every 100 ms for up to `limit`; panics with `what` if it never holds.
pub fn wait_until(limit: Duration, what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !ok() {
        assert!(Instant::now() < deadline, "{what} within {limit:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

impl Redis {
    /// One standalone redis-server.
    pub fn start(dir: &Path) -> Redis {
        Self::start_on(dir, free_port())
    }

    /// The deployment `MCP_TEST_REDIS` names (`standalone`, the default, `cluster` or
    /// `sentinel`), for the scenarios that only talk to Redis through sidecars and the `keys`
    /// CLI (configured with [`Redis::section`]).
    pub fn deployment(dir: &Path) -> Redis {
        match std::env::var("MCP_TEST_REDIS").as_deref() {
            Ok("cluster") => Self::cluster(dir),
            Ok("sentinel") => Self::sentinel(dir),
            Ok("standalone") | Err(_) => Self::start(dir),
            Ok(other) => panic!("MCP_TEST_REDIS={other}: use standalone, cluster or sentinel"),
        }
    }

    pub fn start_on(dir: &Path, port: u16) -> Redis {
        Self::start_args(dir, port, &[])
    }

    /// One redis-server on `port` with more arguments (`--rename-command`, ACL users, TLS).
    pub fn start_args(dir: &Path, port: u16, args: &[&str]) -> Redis {
        let mut proc = Self::server(dir, port, args);
        proc.wait_port(port);
        Redis {
            proc,
            port,
            others: Vec::new(),
            url: format!("redis://127.0.0.1:{port}"),
            extra: String::new(),
        }
    }

    fn server(dir: &Path, port: u16, args: &[&str]) -> Proc {
        let mut cmd = Command::new("redis-server");
        cmd.args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(dir)
            .args(args);
        Proc::spawn(dir, &format!("redis-{port}"), cmd)
    }

    /// TLS only (no plaintext port), the server certificate of `certs`; with `mutual`, clients
    /// must present a certificate signed by the test CA. `extra` goes into the sidecar's
    /// `redis:` mapping (credentials, `tls:` files).
    pub fn start_tls(dir: &Path, certs: &Certs, mutual: bool, args: &[&str], extra: &str) -> Redis {
        let port = free_port();
        let mut cmd = Command::new("redis-server");
        cmd.args(["--port", "0", "--tls-port", &port.to_string()])
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .arg("--tls-cert-file")
            .arg(certs.path("server.crt"))
            .arg("--tls-key-file")
            .arg(certs.path("server.key"))
            .arg("--tls-ca-cert-file")
            .arg(certs.path("ca.crt"))
            .args(["--tls-auth-clients", if mutual { "yes" } else { "no" }])
            .arg("--dir")
            .arg(dir)
            .args(args);
        let mut proc = Proc::spawn(dir, &format!("redis-tls-{port}"), cmd);
        proc.wait_port(port);
        Redis {
            proc,
            port,
            others: Vec::new(),
            url: format!("rediss://127.0.0.1:{port}"),
            extra: extra.to_string(),
        }
    }

    /// Three primaries with a replica each, made by `redis-cli --cluster create`; a node that
    /// stops answering is failed over after 1s.
    pub fn cluster(dir: &Path) -> Redis {
        let ports: Vec<u16> = (0..6).map(|_| free_port()).collect();
        let mut procs: Vec<(u16, Proc)> = ports
            .iter()
            .map(|&p| {
                let conf = dir.join(format!("nodes-{p}.conf"));
                // the bus port would be port + 10000, which free_port may hand out
                let bus = free_port().to_string();
                let proc = Self::server(
                    dir,
                    p,
                    &[
                        "--cluster-enabled",
                        "yes",
                        "--cluster-port",
                        &bus,
                        "--cluster-config-file",
                        conf.to_str().unwrap(),
                        "--cluster-node-timeout",
                        "1000",
                    ],
                );
                (p, proc)
            })
            .collect();
        for (p, proc) in &mut procs {
            proc.wait_port(*p);
        }
        let nodes: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
        let mut args = vec!["--cluster", "create"];
        args.extend(nodes.iter().map(String::as_str));
        args.extend(["--cluster-replicas", "1", "--cluster-yes"]);
        let out = Command::new("redis-cli")
            .args(&args)
            .stdin(Stdio::null())
            .output()
            .expect("redis-cli (redis-tools) is installed by scripts/test.sh");
        assert!(
            out.status.success(),
            "redis-cli --cluster create failed: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        // every node must agree before a client learns the topology from any of them
        wait_until(Duration::from_secs(30), "the cluster became ok", || {
            ports.iter().all(|p| {
                redis_cli(*p, &["cluster", "info"]).contains("cluster_state:ok")
                    && !redis_cli(*p, &["cluster", "nodes"]).contains("handshake")
            })
        });
        let (port, proc) = procs.remove(0);
        Redis {
            proc,
            port,
            others: procs,
            url: format!("redis://127.0.0.1:{port}"),
            extra: format!(", mode: cluster, nodes: [{}]", nodes[1..].join(", ")),
        }
    }

    /// A primary, a replica and three sentinels watching them as `mymaster` (down after 1s).
    pub fn sentinel(dir: &Path) -> Redis {
        let primary = free_port();
        let replica = free_port();
        let mut procs = vec![
            (primary, Self::server(dir, primary, &[])),
            (
                replica,
                Self::server(
                    dir,
                    replica,
                    &["--replicaof", "127.0.0.1", &primary.to_string()],
                ),
            ),
        ];
        let sentinels: Vec<u16> = (0..3).map(|_| free_port()).collect();
        for &p in &sentinels {
            let conf = dir.join(format!("sentinel-{p}.conf"));
            fs::write(
                &conf,
                format!(
                    "port {p}\nbind 127.0.0.1\ndir {}\nsentinel monitor mymaster 127.0.0.1 {primary} 2\nsentinel down-after-milliseconds mymaster 1000\nsentinel failover-timeout mymaster 5000\nsentinel parallel-syncs mymaster 1\n",
                    dir.display()
                ),
            )
            .unwrap();
            let mut cmd = Command::new("redis-server");
            cmd.arg(&conf).arg("--sentinel");
            procs.push((p, Proc::spawn(dir, &format!("sentinel-{p}"), cmd)));
        }
        for (p, proc) in &mut procs {
            proc.wait_port(*p);
        }
        wait_until(Duration::from_secs(30), "the replica synced", || {
            redis_cli(replica, &["info", "replication"]).contains("master_link_status:up")
        });
        wait_until(
            Duration::from_secs(30),
            "every sentinel knows the replica and the others",
            || {
                sentinels.iter().all(|p| {
                    let m = redis_cli(*p, &["sentinel", "master", "mymaster"]);
                    let n = |field: &str| {
                        m.lines()
                            .skip_while(|l| *l != field)
                            .nth(1)
                            .and_then(|v| v.trim().parse::<u32>().ok())
                            .unwrap_or(0)
                    };
                    n("num-slaves") >= 1 && n("num-other-sentinels") >= 2
                })
            },
        );
        let first = procs.iter().position(|(p, _)| *p == sentinels[0]).unwrap();
        let (port, proc) = procs.remove(first);
        Redis {
            proc,
            port,
            others: procs,
            url: format!("redis://127.0.0.1:{port}"),
            extra: format!(
                ", mode: sentinel, service_name: mymaster, nodes: ['127.0.0.1:{}', '127.0.0.1:{}']",
                sentinels[1], sentinels[2]
            ),
        }
    }

    pub fn url(&self) -> String {
        self.url.clone()
    }

    /// The sidecar's `redis:` mapping for this deployment (flow style).
    pub fn section(&self) -> String {
        format!("{{url: '{}'{}}}", self.url, self.extra)
    }

    /// A connection to the deployment the way the sidecar makes it (cluster and Sentinel
    /// included), for tests that read or write keys themselves.
    pub async fn conn(&self) -> mcp_sidecar::store::connect::Conn {
        let section: mcp_sidecar::config::RedisSection =
            serde_yaml::from_str(&self.section()).unwrap();
        mcp_sidecar::store::connect::Target::from_config(&section, &self.url)
            .unwrap()
            .connect()
            .await
            .unwrap()
    }

    /// Stops a process of the deployment (by port) at once, as a crashed node.
    pub fn kill_port(&mut self, port: u16) {
        if port == self.port {
            self.proc.kill();
        }
        for (p, proc) in &mut self.others {
            if *p == port {
                proc.kill();
            }
        }
    }
}

/// TLS material made with openssl in a test's directory: a CA (`ca.crt`), a server certificate
/// for 127.0.0.1 and localhost (`server.crt`, `server.key`), a client certificate
/// (`client.crt`, `client.key`), another CA that signed nothing here (`other-ca.crt`), and a
/// server certificate of the test CA for another name (`elsewhere.crt`, `elsewhere.key`).
pub struct Certs {
    dir: PathBuf,
}

impl Certs {
    pub fn generate(dir: &Path) -> Certs {
        let dir = dir.join("tls");
        fs::create_dir_all(&dir).unwrap();
        let openssl = |args: &[&str]| {
            let out = Command::new("openssl")
                .args(args)
                .current_dir(&dir)
                .stdin(Stdio::null())
                .output()
                .expect("openssl is installed by scripts/test.sh");
            assert!(
                out.status.success(),
                "openssl {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        let key = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ];
        for ca in ["ca", "other-ca"] {
            let mut args = vec!["req", "-x509"];
            args.extend(key);
            let (k, c, subj) = (
                format!("{ca}.key"),
                format!("{ca}.crt"),
                format!("/CN=test {ca}"),
            );
            args.extend(["-keyout", &k, "-out", &c, "-days", "2", "-subj", &subj]);
            args.extend(["-addext", "basicConstraints=critical,CA:TRUE"]);
            args.extend(["-addext", "keyUsage=critical,keyCertSign,cRLSign"]);
            openssl(&args);
        }
        for (name, san, usage) in [
            ("server", "DNS:localhost,IP:127.0.0.1", "serverAuth"),
            ("elsewhere", "DNS:redis.elsewhere.example", "serverAuth"),
            ("client", "DNS:sidecar", "clientAuth"),
        ] {
            let ext = format!("{name}.ext");
            fs::write(
                dir.join(&ext),
                format!(
                    "subjectAltName={san}\nextendedKeyUsage={usage}\nbasicConstraints=CA:FALSE\n"
                ),
            )
            .unwrap();
            let (k, csr, crt) = (
                format!("{name}.key"),
                format!("{name}.csr"),
                format!("{name}.crt"),
            );
            let mut args = vec!["req"];
            args.extend(key);
            let subj = format!("/CN={name}");
            args.extend(["-keyout", &k, "-out", &csr, "-subj", &subj]);
            openssl(&args);
            openssl(&[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.crt",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                &crt,
                "-days",
                "2",
                "-extfile",
                &ext,
            ]);
        }
        Certs { dir }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    StreamableHttp,
    Sse,
}

/// A FastMCP server (tests/peers/fastmcp_server.py).
pub struct FastMcp {
    pub proc: Proc,
    pub ip: String,
    pub port: u16,
}

impl FastMcp {
    pub fn start(dir: &Path, transport: Transport) -> FastMcp {
        Self::start_on(dir, "127.0.0.1", free_port(), transport)
    }

    /// On a given loopback address and port (a restart reuses the port).
    pub fn start_on(dir: &Path, ip: &str, port: u16, transport: Transport) -> FastMcp {
        Self::start_args(dir, ip, port, transport, &[])
    }

    /// With extra arguments (`--capture FILE`, `--json-response`).
    pub fn start_args(
        dir: &Path,
        ip: &str,
        port: u16,
        transport: Transport,
        extra: &[&str],
    ) -> FastMcp {
        let mut cmd = Command::new(python());
        cmd.arg(peers().join("fastmcp_server.py"))
            .args(extra)
            .args(["--host", ip])
            .args(["--port", &port.to_string()])
            .args(["--name", &format!("fastmcp-{port}")])
            .args([
                "--transport",
                match transport {
                    Transport::StreamableHttp => "streamable-http",
                    Transport::Sse => "sse",
                },
            ]);
        let mut proc = Proc::spawn(dir, &format!("fastmcp-{port}"), cmd);
        proc.wait_addr(ip, port);
        FastMcp {
            proc,
            ip: ip.to_string(),
            port,
        }
    }

    pub fn base(&self) -> String {
        format!("http://{}:{}", self.ip, self.port)
    }
}

/// `@modelcontextprotocol/server-everything` from npm.
pub struct Everything {
    pub proc: Proc,
    pub port: u16,
}

impl Everything {
    pub fn start(dir: &Path, transport: Transport) -> Everything {
        let port = free_port();
        Self::start_on_port(dir, port, transport)
    }

    pub fn start_on_port(dir: &Path, port: u16, transport: Transport) -> Everything {
        let script = require(
            peers().join("node_modules/@modelcontextprotocol/server-everything/dist/index.js"),
            "server-everything",
        );
        let mut cmd = Command::new(node());
        cmd.arg(script)
            .arg(match transport {
                Transport::StreamableHttp => "streamableHttp",
                Transport::Sse => "sse",
            })
            .env("PORT", port.to_string());
        let mut proc = Proc::spawn(dir, &format!("everything-{port}"), cmd);
        proc.wait_port(port);
        Everything { proc, port }
    }

    pub fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

/// The sidecar binary under test.
pub struct Sidecar {
    pub proc: Proc,
    pub ip: String,
    pub port: u16,
    pub admin_port: u16,
    pub peer_port: u16,
    pub config: PathBuf,
}

/// The peer secret every multi-pod test shares.
pub const PEER_SECRET: &str = "test-peer-secret-0123456789";
pub const ADMIN_TOKEN: &str = "test-admin-token-0123456789";

impl Sidecar {
    /// Starts the sidecar on 127.0.0.1 with `body` (routes and any other sections) below a
    /// generated `server:` section on free ports.
    pub fn start(dir: &Path, body: &str) -> Sidecar {
        Self::start_on(dir, "127.0.0.1", body)
    }

    /// The same on another loopback address (one "pod" each).
    pub fn start_on(dir: &Path, ip: &str, body: &str) -> Sidecar {
        Self::start_on_with(dir, ip, &[], body)
    }

    /// With `server` settings overridden (`("grace_period", "3s")`).
    pub fn start_on_with(dir: &Path, ip: &str, server: &[(&str, &str)], body: &str) -> Sidecar {
        Self::start_env(dir, ip, server, body, &[])
    }

    /// The same with environment variables set for the process (`OTEL_*`).
    pub fn start_env(
        dir: &Path,
        ip: &str,
        server: &[(&str, &str)],
        body: &str,
        env: &[(&str, &str)],
    ) -> Sidecar {
        let (port, admin_port, peer_port) = (free_port(), free_port(), free_port());
        let config = dir.join(format!("sidecar-{port}.yaml"));
        let mut settings: Vec<(&str, String)> = vec![
            ("listen", format!("{ip}:{port}")),
            ("admin_listen", format!("{ip}:{admin_port}")),
            ("peer_listen", format!("{ip}:{peer_port}")),
            ("threads", "2".into()),
            ("grace_period", "0s".into()),
            ("shutdown_timeout", "1s".into()),
            ("pid_file", format!("{}/sidecar-{port}.pid", dir.display())),
            (
                "upgrade_sock",
                format!("{}/sidecar-{port}.sock", dir.display()),
            ),
        ];
        for (k, v) in server {
            match settings.iter_mut().find(|(name, _)| name == k) {
                Some(entry) => entry.1 = v.to_string(),
                None => settings.push((k, v.to_string())),
            }
        }
        let server: String = settings
            .iter()
            .map(|(k, v)| format!("  {k}: {v}\n"))
            .collect();
        fs::write(&config, format!("server:\n{server}{body}")).unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_mcp-sidecar"));
        cmd.arg("-c")
            .arg(&config)
            .env("RUST_LOG", "info")
            .envs(env.iter().copied());
        let mut proc = Proc::spawn(dir, &format!("sidecar-{port}"), cmd);
        proc.wait_addr(ip, admin_port);
        proc.wait_addr(ip, port);
        Sidecar {
            proc,
            ip: ip.to_string(),
            port,
            admin_port,
            peer_port,
            config,
        }
    }

    /// One route in YAML, for `start`'s body.
    pub fn route(prefix: &str, upstream: &str, server_name: &str) -> String {
        format!("  - {{prefix: '{prefix}', upstream: '{upstream}', server_name: {server_name}}}\n")
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}:{}{path}", self.ip, self.port)
    }

    pub fn admin(&self, path: &str) -> String {
        format!("http://{}:{}{path}", self.ip, self.admin_port)
    }

    /// This pod's identity in the store (its advertised peer address).
    pub fn peer_address(&self) -> String {
        format!("{}:{}", self.ip, self.peer_port)
    }

    pub fn log(&self) -> String {
        self.proc.log_text()
    }

    pub fn wait_log(&self, needle: &str) {
        self.proc.wait_log(needle)
    }
}

/// Runs a client script to completion and returns the JSON it printed.
fn run_client(mut cmd: Command, what: &str) -> serde_json::Value {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {what}: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let last = stdout.lines().last().unwrap_or_default();
    let v: serde_json::Value = serde_json::from_str(last).unwrap_or_else(|_| {
        panic!(
            "{what} printed no JSON (status {}):\nstdout: {stdout}\nstderr: {stderr}",
            out.status
        )
    });
    assert!(
        out.status.success() && v.get("error").is_none(),
        "{what} failed (status {}): {v}\nstderr: {stderr}",
        out.status
    );
    v
}

/// The test OTLP/HTTP collector (tests/peers/otlp_receiver.py): what sidecars export,
/// decoded with the official protobuf definitions, one JSON object per span.
pub struct Otlp {
    pub proc: Proc,
    pub port: u16,
    pub out: PathBuf,
}

impl Otlp {
    pub fn start(dir: &Path) -> Otlp {
        Self::start_args(dir, &[])
    }

    /// With extra arguments (`--status 503`: a collector that refuses every export).
    pub fn start_args(dir: &Path, extra: &[&str]) -> Otlp {
        let port = free_port();
        let out = dir.join(format!("spans-{port}.jsonl"));
        let mut cmd = Command::new(python());
        cmd.arg(peers().join("otlp_receiver.py"))
            .args(["--port", &port.to_string()])
            .arg("--out")
            .arg(&out)
            .args(extra);
        let mut proc = Proc::spawn(dir, &format!("otlp-{port}"), cmd);
        proc.wait_port(port);
        Otlp { proc, port, out }
    }

    /// The base URL a sidecar's `tracing.endpoint` names.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Every span received so far (a line still being written is left for the next read).
    pub fn spans(&self) -> Vec<serde_json::Value> {
        fs::read_to_string(&self.out)
            .unwrap_or_default()
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// Waits until the spans received so far satisfy `done`; returns them.
    pub async fn wait(
        &self,
        what: &str,
        done: impl Fn(&[serde_json::Value]) -> bool,
    ) -> Vec<serde_json::Value> {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let spans = self.spans();
            if done(&spans) {
                return spans;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: not among the spans received:\n{}",
                spans
                    .iter()
                    .map(|s| format!(
                        "{} {} {} <- {}",
                        s["trace_id"], s["name"], s["span_id"], s["parent_span_id"]
                    ))
                    .collect::<Vec<_>>()
                    .join("\n")
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// The official Python client (tests/peers/py_client.py).
pub fn python_client(url: &str, transport: Transport, extra: &[&str]) -> serde_json::Value {
    run_client(python_command(url, transport, extra), "python MCP client")
}

/// The Python client's outcome, success or failure: `Err` holds what it printed.
pub fn python_client_outcome(url: &str, extra: &[&str]) -> Result<serde_json::Value, String> {
    python_client_outcome_via(url, Transport::StreamableHttp, extra)
}

/// The same, on a given transport.
pub fn python_client_outcome_via(
    url: &str,
    transport: Transport,
    extra: &[&str],
) -> Result<serde_json::Value, String> {
    let out = python_command(url, transport, extra)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    match serde_json::from_str::<serde_json::Value>(stdout.lines().last().unwrap_or_default()) {
        Ok(v) if out.status.success() && v.get("error").is_none() => Ok(v),
        _ => Err(format!("{stdout}{}", String::from_utf8_lossy(&out.stderr))),
    }
}

/// N concurrent official Python clients in one process (tests/peers/mux_client.py), each with
/// its own session and colliding request ids; what they got, as JSON.
pub fn mux_client(url: &str, args: &[&str]) -> serde_json::Value {
    let mut cmd = Command::new(python());
    cmd.arg(peers().join("mux_client.py")).arg(url).args(args);
    run_client(cmd, "python mux client")
}

/// A Python client that stops after `pause_after` calls until `resume()` is called, so a test
/// can break things in the middle of a live session.
pub struct PausedClient {
    child: Child,
    resume_file: PathBuf,
}

impl PausedClient {
    pub fn start(dir: &Path, url: &str, calls: usize, pause_after: usize) -> PausedClient {
        Self::start_with(dir, url, Transport::StreamableHttp, calls, pause_after, &[])
    }

    /// On a given transport, with more client arguments.
    pub fn start_with(
        dir: &Path,
        url: &str,
        transport: Transport,
        calls: usize,
        pause_after: usize,
        extra: &[&str],
    ) -> PausedClient {
        use std::io::BufRead;
        let resume_file = dir.join(format!("resume-{}", free_port()));
        let (calls, pause_after) = (calls.to_string(), pause_after.to_string());
        let mut args = vec![
            "--calls",
            &calls,
            "--pause-after",
            &pause_after,
            "--resume-file",
            resume_file.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        let mut child = python_command(url, transport, &args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = child.stdout.as_mut().unwrap();
        let mut line = String::new();
        std::io::BufReader::new(stdout)
            .read_line(&mut line)
            .unwrap();
        assert_eq!(
            line.trim(),
            "PAUSED",
            "the client did not reach its pause: {line}"
        );
        PausedClient { child, resume_file }
    }

    /// Lets the client finish; returns what it printed.
    pub fn resume(self) -> Result<serde_json::Value, String> {
        fs::write(&self.resume_file, b"go").unwrap();
        let out = self.child.wait_with_output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).to_string();
        match serde_json::from_str::<serde_json::Value>(stdout.lines().last().unwrap_or_default()) {
            Ok(v) if out.status.success() && v.get("error").is_none() => Ok(v),
            _ => Err(format!("{stdout}{}", String::from_utf8_lossy(&out.stderr))),
        }
    }
}

fn python_command(url: &str, transport: Transport, extra: &[&str]) -> Command {
    let mut cmd = Command::new(python());
    cmd.arg(peers().join("py_client.py"))
        .args(["--url", url])
        .args([
            "--transport",
            match transport {
                Transport::StreamableHttp => "streamable-http",
                Transport::Sse => "sse",
            },
        ])
        .args(extra);
    cmd
}

/// The official TypeScript client (tests/peers/ts_client.mjs).
pub fn ts_client(url: &str, transport: Transport) -> serde_json::Value {
    ts_scenario(url, transport, "everything", None)
}

/// The TypeScript client running one of its scenarios (see the script's header).
pub fn ts_scenario(
    url: &str,
    transport: Transport,
    scenario: &str,
    session_id: Option<&str>,
) -> serde_json::Value {
    let mut cmd = Command::new(node());
    cmd.arg(peers().join("ts_client.mjs"))
        .arg(url)
        .arg(match transport {
            Transport::StreamableHttp => "streamable",
            Transport::Sse => "sse",
        })
        .arg(scenario)
        .args(session_id);
    run_client(cmd, "typescript MCP client")
}

/// The Python 2.x venv of the modern client driver and the dual-era server.
pub fn python_modern() -> PathBuf {
    require(
        peers().join(".venv-modern/bin/python"),
        "the modern Python venv (tests/peers/.venv-modern)",
    )
}

/// Runs a modern client driver and returns the one JSON line it printed, whatever the protocol
/// outcome (`ok`, `error`): the test asserts on it. Panics only when the driver crashed.
fn run_modern(mut cmd: Command, what: &str) -> serde_json::Value {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {what}: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let v: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap_or_default())
        .unwrap_or_else(|_| {
            panic!(
                "{what} printed no JSON (status {}):\nstdout: {stdout}\nstderr: {stderr}",
                out.status
            )
        });
    assert!(
        out.status.success() && v.get("crash").is_none(),
        "{what} crashed (status {}): {v}\nstderr: {stderr}",
        out.status
    );
    v
}

/// The official Python `mcp` 2.x client (tests/peers/modern_client.py): `mode` is `pin`,
/// `auto` or `legacy`; `args` the scenario's arguments (`LEVEL`, `TOOL`, `ARGS_JSON`).
pub fn modern_py(url: &str, mode: &str, scenario: &str, args: &[&str]) -> serde_json::Value {
    let mut cmd = Command::new(python_modern());
    cmd.arg(peers().join("modern_client.py"))
        .args([url, mode, scenario])
        .args(args);
    run_modern(cmd, &format!("python modern client ({mode} {scenario})"))
}

/// The official TypeScript client 2.x (tests/peers/modern_client.mjs), as `modern_py`.
pub fn modern_ts(url: &str, mode: &str, scenario: &str, args: &[&str]) -> serde_json::Value {
    require(
        peers().join("node_modules/@modelcontextprotocol/client"),
        "@modelcontextprotocol/client 2.x",
    );
    let mut cmd = Command::new(node());
    cmd.arg(peers().join("modern_client.mjs"))
        .args([url, mode, scenario])
        .args(args);
    run_modern(
        cmd,
        &format!("typescript modern client ({mode} {scenario})"),
    )
}

/// The dual-era Python 2.x server (tests/peers/modern_server.py).
pub struct ModernServer {
    pub proc: Proc,
    pub port: u16,
}

impl ModernServer {
    pub fn start(dir: &Path) -> ModernServer {
        Self::start_on_port(dir, free_port())
    }

    /// On a given port (a restart, or another server taking its place).
    pub fn start_on_port(dir: &Path, port: u16) -> ModernServer {
        let mut cmd = Command::new(python_modern());
        cmd.arg(peers().join("modern_server.py"))
            .args(["--port", &port.to_string()])
            .args(["--name", &format!("modern-{port}")]);
        let mut proc = Proc::spawn(dir, &format!("modern-server-{port}"), cmd);
        proc.wait_port(port);
        ModernServer { proc, port }
    }

    pub fn base(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

/// Headers every Streamable HTTP POST carries.
pub fn mcp_post(client: &reqwest::Client, url: &str) -> reqwest::RequestBuilder {
    client
        .post(url)
        .header("content-type", "application/json")
        .header("accept", "application/json, text/event-stream")
}

/// A POST on an open session, with the headers a client sends after initialize.
pub async fn session_post(
    client: &reqwest::Client,
    url: &str,
    sid: &str,
    body: impl Into<reqwest::Body>,
) -> reqwest::Response {
    mcp_post(client, url)
        .header("mcp-session-id", sid)
        .header("mcp-protocol-version", "2025-06-18")
        .body(body)
        .send()
        .await
        .unwrap()
}

pub const INITIALIZE: &str = r#"{"jsonrpc":"2.0","id":0,"method":"initialize","params":{"protocolVersion":"2025-06-18","capabilities":{},"clientInfo":{"name":"raw-test","version":"1"}}}"#;
pub const INITIALIZED: &str = r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#;

/// Opens a Streamable HTTP session with raw requests; returns its id.
pub async fn open_session(client: &reqwest::Client, url: &str) -> String {
    let resp = mcp_post(client, url).body(INITIALIZE).send().await.unwrap();
    assert_eq!(
        resp.status(),
        200,
        "initialize failed: {:?}",
        resp.text().await
    );
    let sid = resp
        .headers()
        .get("mcp-session-id")
        .expect("initialize response carries Mcp-Session-Id")
        .to_str()
        .unwrap()
        .to_string();
    let _ = resp.bytes().await.unwrap();
    let resp = session_post(client, url, &sid, INITIALIZED).await;
    assert_eq!(resp.status(), 202);
    sid
}

/// The JSON-RPC messages in an SSE or JSON response body.
pub fn messages(body: &str) -> Vec<serde_json::Value> {
    if body.trim_start().starts_with('{') {
        return vec![serde_json::from_str(body).unwrap()];
    }
    body.lines()
        .filter_map(|l| l.strip_prefix("data:"))
        .filter_map(|d| serde_json::from_str(d.trim()).ok())
        .collect()
}

/// Calls a tool over raw HTTP and returns the text of its first content item.
pub async fn call_tool(
    client: &reqwest::Client,
    url: &str,
    sid: &str,
    name: &str,
    args: serde_json::Value,
) -> String {
    let body = serde_json::json!({"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":name,"arguments":args}});
    let resp = session_post(client, url, sid, body.to_string()).await;
    assert_eq!(resp.status(), 200);
    let text = resp.text().await.unwrap();
    let msgs = messages(&text);
    let result = msgs
        .iter()
        .find(|m| m.get("result").is_some())
        .unwrap_or_else(|| panic!("no result in {text}"));
    result["result"]["content"][0]["text"]
        .as_str()
        .unwrap()
        .to_string()
}

/// Waits until a metric reaches `expected` (requests are counted after their response is sent).
pub async fn wait_metric(sidecar: &Sidecar, name: &str, labels: &[(&str, &str)], expected: f64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let v = metric(sidecar, name, labels).await;
        if v == expected {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{name}{labels:?} is {v}, expected {expected}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Scrapes one sample from the sidecar's metrics: the sum of all series of `name` whose labels
/// include every `label="value"` pair given.
pub async fn metric(sidecar: &Sidecar, name: &str, labels: &[(&str, &str)]) -> f64 {
    let text = reqwest::get(sidecar.admin("/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// One server-sent event, stamped with its arrival time (Unix seconds).
#[derive(Debug, Clone)]
pub struct Event {
    pub event: String,
    pub id: Option<String>,
    pub data: String,
    pub arrived: f64,
}

pub fn unix_time() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// Reads an SSE response event by event as the bytes arrive. Comments (`: ping`) are skipped.
pub struct SseReader {
    stream:
        std::pin::Pin<Box<dyn futures_util::Stream<Item = reqwest::Result<bytes::Bytes>> + Send>>,
    buf: String,
}

impl SseReader {
    pub fn new(resp: reqwest::Response) -> SseReader {
        SseReader {
            stream: Box::pin(resp.bytes_stream()),
            buf: String::new(),
        }
    }

    /// The next event, or `None` when the stream ends.
    pub async fn next(&mut self) -> Option<Event> {
        use futures_util::StreamExt;
        loop {
            while let Some(end) = self.buf.find("\n\n") {
                let block: String = self.buf.drain(..end + 2).collect();
                let mut ev = Event {
                    event: "message".into(),
                    id: None,
                    data: String::new(),
                    arrived: unix_time(),
                };
                let mut has_data = false;
                for line in block.lines() {
                    if let Some(v) = line.strip_prefix("event:") {
                        ev.event = v.trim().to_string();
                    } else if let Some(v) = line.strip_prefix("id:") {
                        ev.id = Some(v.trim().to_string());
                    } else if let Some(v) = line.strip_prefix("data:") {
                        if has_data {
                            ev.data.push('\n');
                        }
                        ev.data.push_str(v.strip_prefix(' ').unwrap_or(v));
                        has_data = true;
                    }
                }
                if has_data {
                    return Some(ev);
                }
            }
            let chunk = self.stream.next().await?.ok()?;
            // SSE allows CRLF line ends; data lines never carry a raw CR
            self.buf
                .push_str(&String::from_utf8_lossy(&chunk).replace('\r', ""));
        }
    }

    /// The next event whose data parses as JSON.
    pub async fn next_json(&mut self) -> Option<(serde_json::Value, f64)> {
        self.next_json_event().await.map(|(v, ev)| (v, ev.arrived))
    }

    /// The next event whose data parses as JSON, with the event itself (for its id).
    pub async fn next_json_event(&mut self) -> Option<(serde_json::Value, Event)> {
        loop {
            let ev = self.next().await?;
            if let Ok(v) = serde_json::from_str(&ev.data) {
                return Some((v, ev));
            }
        }
    }
}

/// One "pod": a FastMCP server and a sidecar in front of it, in the test's own directory.
pub struct Pod {
    pub dir: PathBuf,
    pub upstream: FastMcp,
    pub sidecar: Sidecar,
}

/// Pod `i` of a test: FastMCP on 127.0.0.`i` recording what it receives (`--capture`, the
/// returned file), and a sidecar beside it whose configuration `body` writes from the
/// upstream (its `routes:` and any section above them).
pub fn capturing_pod(
    dir: &Path,
    i: usize,
    body: impl FnOnce(&FastMcp) -> String,
) -> (FastMcp, Sidecar, PathBuf) {
    let ip = format!("127.0.0.{i}");
    let capture = dir.join(format!("capture-{i}.jsonl"));
    let up = FastMcp::start_args(
        dir,
        &ip,
        free_port(),
        Transport::StreamableHttp,
        &["--capture", capture.to_str().unwrap()],
    );
    let sidecar = Sidecar::start_on(dir, &ip, &body(&up));
    (up, sidecar, capture)
}

impl Pod {
    /// FastMCP behind a sidecar with one route, `prefix` → the server's `path`, named `server`.
    /// `extra` is YAML for the sidecar above its `routes:`.
    pub fn start(
        name: &str,
        transport: Transport,
        prefix: &str,
        path: &str,
        server: &str,
        extra: &str,
    ) -> Pod {
        let dir = test_dir(name);
        let upstream = FastMcp::start(&dir, transport);
        let route = Sidecar::route(prefix, &format!("{}{path}", upstream.base()), server);
        let sidecar = Sidecar::start(&dir, &format!("{extra}routes:\n{route}"));
        Pod {
            dir,
            upstream,
            sidecar,
        }
    }

    /// A pod of a cluster: FastMCP and a sidecar on `ip`, sharing `redis`, route `/mcp`
    /// named `fastmcp`.
    pub fn on(dir: &Path, ip: &str, redis: &Redis, extra: &str) -> Pod {
        Self::on_with(dir, ip, redis, extra, Transport::StreamableHttp)
    }

    /// The same for a transport. Legacy SSE servers are mounted under `/py` (their `/sse` and
    /// `/messages/` become `/py/sse` and `/py/messages/`).
    pub fn on_with(dir: &Path, ip: &str, redis: &Redis, extra: &str, transport: Transport) -> Pod {
        Self::on_full(dir, ip, redis, &[], extra, transport)
    }

    /// The same with the sidecar's `server` settings overridden.
    pub fn on_full(
        dir: &Path,
        ip: &str,
        redis: &Redis,
        server: &[(&str, &str)],
        extra: &str,
        transport: Transport,
    ) -> Pod {
        let upstream = FastMcp::start_on(dir, ip, free_port(), transport);
        let route = match transport {
            Transport::StreamableHttp => {
                Sidecar::route("/mcp", &format!("{}/mcp", upstream.base()), "fastmcp")
            }
            Transport::Sse => Sidecar::route("/py", &upstream.base(), "fastmcp"),
        };
        let sidecar = Sidecar::start_on_with(
            dir,
            ip,
            server,
            &format!(
                "redis: {}\npeer: {{secret: {PEER_SECRET}}}\nadmin: {{token: {ADMIN_TOKEN}}}\n{extra}routes:\n{route}",
                redis.section()
            ),
        );
        Pod {
            dir: dir.to_path_buf(),
            upstream,
            sidecar,
        }
    }

    /// A Streamable HTTP FastMCP mounted at the root (`/mcp`, `/echo`, `/silent` all reachable),
    /// route named `fastmcp`.
    pub fn root(name: &str) -> Pod {
        Self::start(name, Transport::StreamableHttp, "/", "", "fastmcp", "")
    }
}

/// The `ip:port` of each sidecar, for a load balancer in front of them.
pub fn backends<'a>(sidecars: impl IntoIterator<Item = &'a Sidecar>) -> Vec<String> {
    sidecars
        .into_iter()
        .map(|s| format!("{}:{}", s.ip, s.port))
        .collect()
}

/// Every record the capturing upstreams (`fastmcp_server.py --capture FILE`) wrote.
pub fn read_captures<'a>(files: impl IntoIterator<Item = &'a PathBuf>) -> Vec<serde_json::Value> {
    files
        .into_iter()
        .flat_map(|c| {
            fs::read_to_string(c)
                .unwrap_or_default()
                .lines()
                .map(|l| serde_json::from_str(l).unwrap())
                .collect::<Vec<_>>()
        })
        .collect()
}

/// `n` pods of server-everything, each behind a sidecar on its own loopback address, sharing
/// `redis`; `route` makes the sidecar's route entry from the server's `/mcp` URL.
pub fn everything_pods(
    dir: &Path,
    redis: &Redis,
    n: usize,
    route: &dyn Fn(&str) -> String,
) -> Vec<(Everything, Sidecar)> {
    (1..=n)
        .map(|i| {
            let upstream = Everything::start(dir, Transport::StreamableHttp);
            let sidecar = Sidecar::start_on(
                dir,
                &format!("127.0.0.{i}"),
                &format!(
                    "redis: {}\npeer: {{secret: {PEER_SECRET}}}\nroutes:\n{}",
                    redis.section(),
                    route(&format!("{}/mcp", upstream.base()))
                ),
            );
            (upstream, sidecar)
        })
        .collect()
}

/// nginx balancing request by request, round robin, over `backends` (`ip:port`): the
/// Kubernetes Service in front of the pods, at its most unfavourable for sticky sessions. A
/// backend that refuses connections is skipped, as a Service drops a dead pod's endpoint.
pub struct RoundRobin {
    pub proc: Proc,
    pub port: u16,
    root: PathBuf,
    /// A master process that re-reads its configuration on SIGHUP (`set_backends`).
    reloadable: bool,
}

impl RoundRobin {
    pub fn start(dir: &Path, backends: &[String]) -> RoundRobin {
        Self::launch(dir, backends, false)
    }

    /// One whose backends can change while it runs (`set_backends`), as a Service's endpoints
    /// do. Clients get a connection per request, so a reload never races an idle keep-alive.
    pub fn start_reloadable(dir: &Path, backends: &[String]) -> RoundRobin {
        Self::launch(dir, backends, true)
    }

    fn launch(dir: &Path, backends: &[String], reloadable: bool) -> RoundRobin {
        let port = free_port();
        let root = dir.join(format!("nginx-{port}"));
        fs::create_dir_all(root.join("tmp")).unwrap();
        let conf = Self::write_conf(&root, port, backends, reloadable);
        let nginx = ["/usr/sbin/nginx", "/usr/bin/nginx"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .expect("nginx not installed; run scripts/test.sh");
        // one process (`master_process off`), so killing the child leaves no orphaned workers;
        // a reloadable one needs a master, which `Drop` stops with its workers
        let mut cmd = Command::new(nginx);
        cmd.arg("-p").arg(&root).arg("-c").arg(&conf);
        let mut proc = Proc::spawn(dir, &format!("nginx-{port}"), cmd);
        proc.wait_port(port);
        RoundRobin {
            proc,
            port,
            root,
            reloadable,
        }
    }

    fn write_conf(root: &Path, port: u16, backends: &[String], reloadable: bool) -> PathBuf {
        let servers: String = backends
            .iter()
            .map(|b| format!("    server {b};\n"))
            .collect();
        let (process, level, keepalive) = if reloadable {
            // notice: worker starts are logged, which is how `set_backends` sees the reload
            (
                "master_process on;\nworker_processes 1;",
                " notice",
                "  keepalive_timeout 0;\n",
            )
        } else {
            ("master_process off;", "", "")
        };
        let conf = root.join("nginx.conf");
        fs::write(
            &conf,
            format!(
                "{process}\ndaemon off;\nerror_log {root}/error.log{level};\npid {root}/nginx.pid;\nevents {{ worker_connections 4096; }}\nhttp {{\n  access_log off;\n{keepalive}  client_body_temp_path {root}/tmp;\n  proxy_temp_path {root}/tmp;\n  upstream pods {{\n{servers}  }}\n  server {{\n    listen 127.0.0.1:{port};\n    location / {{\n      proxy_pass http://pods;\n      proxy_http_version 1.1;\n      proxy_set_header Connection \"\";\n      proxy_set_header Host 127.0.0.1:$server_port;\n      proxy_buffering off;\n      proxy_request_buffering off;\n      proxy_read_timeout 3600s;\n      proxy_next_upstream error;\n    }}\n  }}\n}}\n",
                root = root.display()
            ),
        )
        .unwrap();
        conf
    }

    /// Replaces the backends, as an endpoints controller removes a pod that failed readiness:
    /// requests in flight finish where they are, new ones go to the new set. Returns once the
    /// new configuration serves.
    pub fn set_backends(&self, backends: &[String]) {
        assert!(self.reloadable, "set_backends needs start_reloadable");
        Self::write_conf(&self.root, self.port, backends, true);
        let workers_started = || {
            fs::read_to_string(self.root.join("error.log"))
                .unwrap_or_default()
                .matches("start worker process")
                .count()
        };
        let before = workers_started();
        let status = Command::new("kill")
            .args(["-HUP", &self.proc.pid().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if workers_started() > before {
                return;
            }
            assert!(Instant::now() < deadline, "nginx did not reload");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }
}

impl Drop for RoundRobin {
    fn drop(&mut self) {
        if self.reloadable {
            // SIGTERM: the master stops its workers, then exits
            if self.proc.pid() != 0 {
                let _ = Command::new("kill")
                    .args(["-TERM", &self.proc.pid().to_string()])
                    .status();
                self.proc.wait_exit(Duration::from_secs(5));
            }
        }
    }
}

/// Three "pods" (FastMCP + sidecar, each on its own loopback address) sharing one Redis,
/// behind a round-robin entry point.
pub struct Cluster {
    pub dir: PathBuf,
    pub redis: Redis,
    pub pods: Vec<Pod>,
    pub entry: RoundRobin,
}

impl Cluster {
    pub fn start(name: &str, extra: &str) -> Cluster {
        Self::start_with(name, extra, Transport::StreamableHttp)
    }

    pub fn start_with(name: &str, extra: &str, transport: Transport) -> Cluster {
        Self::start_full(name, &[], extra, transport)
    }

    /// With the sidecars' `server` settings overridden.
    pub fn start_full(
        name: &str,
        server: &[(&str, &str)],
        extra: &str,
        transport: Transport,
    ) -> Cluster {
        Self::start_redis(name, server, extra, transport, Redis::deployment)
    }

    /// On the Redis deployment `redis` makes in the test's directory.
    pub fn start_redis(
        name: &str,
        server: &[(&str, &str)],
        extra: &str,
        transport: Transport,
        redis: impl FnOnce(&Path) -> Redis,
    ) -> Cluster {
        let dir = test_dir(name);
        let redis = redis(&dir);
        let pods: Vec<Pod> = (1..=3)
            .map(|i| {
                Pod::on_full(
                    &dir,
                    &format!("127.0.0.{i}"),
                    &redis,
                    server,
                    extra,
                    transport,
                )
            })
            .collect();
        let entry = RoundRobin::start(&dir, &backends(pods.iter().map(|p| &p.sidecar)));
        Cluster {
            dir,
            redis,
            pods,
            entry,
        }
    }

    /// The pod whose sidecar owns a session, by the store's record.
    pub async fn owner_of(&self, sid: &str) -> usize {
        let record = admin_sessions(&self.pods[0].sidecar)
            .await
            .into_iter()
            .find(|s| s["sessionId"] == sid)
            .unwrap_or_else(|| panic!("session {sid} is not in the store"));
        self.pods
            .iter()
            .position(|p| record["owner"] == p.sidecar.peer_address())
            .unwrap_or_else(|| panic!("owner {} is no pod of this cluster", record["owner"]))
    }
}

/// An admin API call with the token; the `data` of its `{"success":true,...}` answer.
pub async fn admin_api(
    sidecar: &Sidecar,
    method: reqwest::Method,
    path: &str,
) -> serde_json::Value {
    let v: serde_json::Value = reqwest::Client::new()
        .request(method, sidecar.admin(path))
        .header("x-auth-token", ADMIN_TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(v["success"], true, "{v}");
    v["data"].clone()
}

/// The sessions the admin API lists.
pub async fn admin_sessions(sidecar: &Sidecar) -> Vec<serde_json::Value> {
    admin_api(sidecar, reqwest::Method::GET, "/api/admin/sessions")
        .await
        .as_array()
        .unwrap()
        .clone()
}

/// `mcp-sidecar -c CONFIG keys ARGS…`: (success, stdout, stderr).
pub fn keys_cli(config: &Path, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_mcp-sidecar"))
        .arg("-c")
        .arg(config)
        .arg("keys")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}
