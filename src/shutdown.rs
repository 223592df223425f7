//! SIGTERM handling. Pingora closes its listeners the instant it receives SIGTERM, while a
//! Kubernetes Service (or any load balancer) keeps sending new connections to the pod until it
//! sees readiness fail: those connections would be refused or reset. So the sidecar takes the
//! signal first: it drains (readiness 503, deregistered, sessions handed to peers), keeps its
//! listeners open for `server.grace_period` while the load balancer takes the pod out, and only
//! then hands Pingora the graceful terminate, which closes the listeners and gives in-flight
//! requests and streams `server.shutdown_timeout`.

use crate::session::Sessions;
use async_trait::async_trait;
use log::info;
use pingora::server::{ShutdownSignal, ShutdownSignalWatch};
use std::sync::Arc;
use std::time::Duration;
use tokio::signal::unix::{signal, SignalKind};

pub struct DrainFirst {
    pub sessions: Arc<Sessions>,
    pub grace_period: Duration,
}

#[async_trait]
impl ShutdownSignalWatch for DrainFirst {
    async fn recv(&self) -> ShutdownSignal {
        let mut upgrade = signal(SignalKind::quit()).expect("SIGQUIT handler");
        let mut terminate = signal(SignalKind::terminate()).expect("SIGTERM handler");
        let mut interrupt = signal(SignalKind::interrupt()).expect("SIGINT handler");
        tokio::select! {
            _ = upgrade.recv() => return ShutdownSignal::GracefulUpgrade,
            _ = interrupt.recv() => return ShutdownSignal::FastShutdown,
            _ = terminate.recv() => {}
        }
        info!(
            "SIGTERM: draining; listeners stay open for {:?} while the load balancer stops routing here",
            self.grace_period
        );
        self.sessions.drain().await;
        tokio::select! {
            _ = tokio::time::sleep(self.grace_period) => {}
            // a second SIGTERM or a SIGINT cuts the wait short
            _ = terminate.recv() => {}
            _ = interrupt.recv() => return ShutdownSignal::FastShutdown,
        }
        info!("grace period over: listeners close, in-flight work gets the shutdown timeout");
        ShutdownSignal::GracefulTerminate
    }
}
