//! This pod's registration in the store: renewed every heartbeat interval, removed at shutdown
//! (the drain) so peers recover this pod's sessions at once instead of waiting for the
//! registration to expire. It also re-reads the static hub key file when it changed.

use super::Sessions;
use crate::hub::Hub;
use async_trait::async_trait;
use pingora::server::ShutdownWatch;
use pingora::services::background::BackgroundService;
use std::sync::Arc;

pub struct Heartbeat {
    sessions: Arc<Sessions>,
    hub: Arc<Hub>,
}

impl Heartbeat {
    pub fn new(sessions: Arc<Sessions>, hub: Arc<Hub>) -> Heartbeat {
        Heartbeat { sessions, hub }
    }
}

#[async_trait]
impl BackgroundService for Heartbeat {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let info = serde_json::json!({
            "version": env!("CARGO_PKG_VERSION"),
            "started_at": crate::store::unix_now(),
        })
        .to_string();
        let mut tick = tokio::time::interval(self.sessions.settings.heartbeat_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                // SIGTERM: Pingora stops accepting and gives in-flight work the grace period
                _ = shutdown.changed() => {
                    self.sessions.drain().await;
                    return;
                }
                _ = tick.tick() => {
                    self.sessions.heartbeat(&info).await;
                    self.hub.registry().refresh_file();
                }
            }
        }
    }
}
