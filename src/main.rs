//! Command line: `mcp-sidecar -c FILE` runs, `mcp-sidecar -t -c FILE` checks the file and exits.

use clap::Parser;
use log::{error, info, warn};
use mcp_sidecar::admin::AdminApp;
use mcp_sidecar::config::Config;
use mcp_sidecar::hub::cli::KeysCommand;
use mcp_sidecar::hub::Hub;
use mcp_sidecar::metrics::METRICS;
use mcp_sidecar::proxy::Sidecar;
use mcp_sidecar::session::heartbeat::Heartbeat;
use mcp_sidecar::session::{Sessions, Settings};
use mcp_sidecar::shutdown::DrainFirst;
use mcp_sidecar::store::{MemoryStore, RedisStore, SessionStore};
use mcp_sidecar::telemetry::TelemetryService;
use pingora::server::configuration::Opt;
use pingora::server::{RunArgs, Server};
use pingora::services::background::background_service;
use pingora::services::listening::Service;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

#[derive(Parser)]
#[command(
    name = "mcp-sidecar",
    version,
    about = "MCP session-aware sidecar proxy"
)]
struct Cli {
    #[command(flatten)]
    pingora: Opt,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(clap::Subcommand)]
enum Command {
    /// Manage MCPHub keys in the registry (`redis.url` of the configuration file).
    #[command(subcommand)]
    Keys(KeysCommand),
}

/// glibc malloc showed up at ~9% of CPU under load; mimalloc keeps per-thread heaps.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const DEFAULT_CONF: &str = "conf/sidecar.yaml";

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let cli = Cli::parse();
    let path = PathBuf::from(
        cli.pingora
            .conf
            .clone()
            .unwrap_or_else(|| DEFAULT_CONF.into()),
    );
    let config = match Config::load(&path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("mcp-sidecar: configuration error: {e}");
            return ExitCode::from(2);
        }
    };
    if let Some(Command::Keys(cmd)) = cli.command {
        return match mcp_sidecar::hub::cli::run(&config, cmd) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("mcp-sidecar keys: {e}");
                ExitCode::from(1)
            }
        };
    }
    let exporting = match mcp_sidecar::telemetry::Exporting::resolve(&config.tracing, |v| {
        std::env::var(v).ok()
    }) {
        Ok(e) => e,
        Err(e) => {
            eprintln!("mcp-sidecar: configuration error: {}: {e}", path.display());
            return ExitCode::from(2);
        }
    };
    if cli.pingora.test {
        for w in config.warnings() {
            eprintln!("mcp-sidecar: warning: {w}");
        }
        println!(
            "mcp-sidecar: configuration file {} is valid",
            path.display()
        );
        return ExitCode::SUCCESS;
    }
    for w in config.warnings() {
        warn!("{w}");
    }
    // (not in -t: the file is where the pod mounts it, not on the machine that checks)
    if let Err(e) = mcp_sidecar::telemetry::audit::install(config.audit.file.as_deref()) {
        eprintln!("mcp-sidecar: configuration error: {}: {e}", path.display());
        return ExitCode::from(2);
    }

    let store: Arc<dyn SessionStore> = match config.redis_url() {
        Some(url) => match RedisStore::new(&config.redis, url) {
            Ok(s) => {
                info!("session store: redis at {}", s.describe());
                Arc::new(s)
            }
            Err(e) => {
                error!("{e}");
                return ExitCode::from(2);
            }
        },
        None => {
            warn!("session store: in-process memory (single-pod mode): no redis.url configured, so sessions are not shared with other pods");
            Arc::new(MemoryStore::new())
        }
    };
    METRICS
        .store_backend
        .with_label_values(&[store.backend().as_str()])
        .set(1);
    mcp_sidecar::telemetry::install(config.advertise_address(), exporting);
    let s = &config.session;
    let sessions = Sessions::new(
        store,
        Settings {
            ttl: s.ttl,
            refresh_interval: s.refresh_interval,
            heartbeat_interval: s.heartbeat_interval,
            pod_ttl: s.pod_ttl,
            recovery_timeout: s.recovery_timeout,
            sse_keepalive: s.sse_keepalive,
            me: config.advertise_address(),
        },
    );
    let hub = match Hub::new(&config, sessions.store().clone()) {
        Ok(h) => Arc::new(h),
        Err(e) => {
            eprintln!("mcp-sidecar: configuration error: {}: {e}", path.display());
            return ExitCode::from(2);
        }
    };
    let proxy = match Sidecar::new(&config, sessions.clone(), hub.clone()) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("mcp-sidecar: configuration error: {}: {e}", path.display());
            return ExitCode::from(2);
        }
    };

    let mut opt = cli.pingora;
    opt.conf = None; // our file is not a Pingora ServerConf; its settings are passed below
    let mut server = Server::new_with_opt_and_conf(opt, config.pingora_conf());
    server.bootstrap();

    let mut proxy_service = pingora::proxy::http_proxy_service(&server.configuration, proxy);
    proxy_service.add_tcp(&config.server.listen);
    proxy_service.add_tcp(&config.server.peer_listen);
    let mut admin = Service::new(
        "admin".to_string(),
        AdminApp::new(sessions.clone(), config.admin_token())
            .with_warnings(config.warnings())
            .with_registry_check(config.registry_required()),
    );
    admin.add_tcp(&config.server.admin_listen);
    admin.threads = Some(1);
    let heartbeat = background_service("heartbeat", Heartbeat::new(sessions.clone(), hub));

    info!(
        "mcp-sidecar listening on {} (peers {}, admin {}), advertised as {}, {} routes, {} threads",
        config.server.listen,
        config.server.peer_listen,
        config.server.admin_listen,
        config.advertise_address(),
        config.routes.len(),
        config.threads()
    );
    for r in &config.routes {
        info!("route {} -> {} ({})", r.prefix, r.upstream, r.server_name);
    }
    server.add_service(proxy_service);
    server.add_service(admin);
    server.add_service(heartbeat);
    server.add_service(background_service("telemetry", TelemetryService));
    server.run(RunArgs {
        shutdown_signal: Box::new(DrainFirst {
            sessions,
            grace_period: config.server.grace_period,
        }),
    });
    // the spans of the last requests
    mcp_sidecar::telemetry::shutdown();
    ExitCode::SUCCESS
}
