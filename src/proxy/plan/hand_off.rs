//! Handed to a live peer while this pod drains (`Sessions::drain`): a request without a
//! session (a new session's `initialize` among them) should open on a pod that stays. The
//! request goes to the peer over the signed hop, which serves it as its own, so this pod
//! captures nothing. Requests on this pod's sessions are handed over by the session layer
//! instead (`resolve` forwards them to a peer, which recovers them: `forward.rs`).
//!
//! When the peer does not take the connection, the request is served here after all.

use super::local::Local;
use super::Plan;

pub(crate) struct HandedOff {
    /// The live peer's address (`ip:port`).
    pub peer: String,
}

/// The peer taking over is gone too: the plan becomes serving it here.
pub(super) fn peer_unreachable(plan: &mut Plan) {
    plan.turn_into(|_| Plan::Local(Local { session: None }));
}
