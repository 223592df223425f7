//! Sent to the sidecar of the pod that owns the session: the store names the owner and its
//! registration stands (`Sessions::resolve`). The request goes to the owner's peer listener
//! with the client's own path and session id, signed for that pod (`hop.rs`, `crate::peer`):
//! the owner authenticates the caller from the hop, injects the caller's headers, filters tools
//! and serves the session as its own (`local.rs` there). The answer streams back untouched.
//!
//! When the owner's sidecar does not take the connection, its pod is taken for gone: the
//! request is retried once through recovery on this pod (`recover.rs`). A request on the
//! peer listener is never forwarded again (`Sessions::resolve_forwarded`).

use super::SessionIds;
use crate::metrics::METRICS;
use crate::proxy::context::RequestCtx;
use std::time::Instant;

pub(crate) struct Forwarded {
    /// The client's id, which the owner knows the session by.
    pub session: SessionIds,
    /// The owner's peer address (`ip:port`).
    pub owner: String,
}

impl Forwarded {
    pub fn to(client: &str, owner: String) -> Forwarded {
        Forwarded {
            session: SessionIds {
                client: client.to_string(),
                upstream: client.to_string(),
                retried: false,
            },
            owner,
        }
    }
}

/// The owner's answer arrived.
pub(super) fn answered(ctx: &RequestCtx, now: Instant) {
    METRICS.sessions.with_label_values(&["forwarded"]).inc();
    METRICS
        .forward_latency
        .observe((now - ctx.started).as_secs_f64());
}
