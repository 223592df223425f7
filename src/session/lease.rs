//! Whether this pod can still be sure it owns the sessions in its local table. Peers take a
//! session over only once its owner's registration (`mcp:pod:{address}`) is gone. While the
//! registration has stood without a gap, no peer can have taken anything, and local sessions
//! are served without asking the store. After a gap (a stall, a partition, a store that lost
//! its data) that certainty is gone until the resync has claimed every local session again;
//! meanwhile each local session is confirmed with the store before it is served.

use std::sync::Mutex;
use std::time::{Duration, Instant};

pub struct Lease {
    pod_ttl: Duration,
    state: Mutex<State>,
}

struct State {
    /// Until when the registration is known to stand: the send time of the last renewal that
    /// found it still there, plus `pod_ttl` (the store's own expiry can only be later).
    until: Instant,
    /// A renewal found the registration gone; cleared by a complete resync.
    lapsed: bool,
    /// Counts lapses, so a resync clears only the lapse it started after.
    lapses: u64,
    /// The last renewal got no answer: the store cannot confirm anything now.
    unreachable: bool,
    /// Send time of the last renewal the store answered.
    registered: Option<Instant>,
}

/// What a resync needs to clear the lapse it started after.
pub struct ResyncTicket {
    lapses: u64,
    registered: Option<Instant>,
}

impl Lease {
    /// A starting pod registers on its first heartbeat, at once; until then it only has the
    /// sessions it creates itself.
    pub fn new(pod_ttl: Duration) -> Lease {
        Lease {
            pod_ttl,
            state: Mutex::new(State {
                until: Instant::now() + pod_ttl,
                lapsed: false,
                lapses: 0,
                unreachable: false,
                registered: None,
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A renewal sent at `sent` was answered; `existed`: the registration was still there.
    pub fn renewed(&self, sent: Instant, existed: bool) {
        let mut s = self.lock();
        s.unreachable = false;
        s.registered = Some(sent);
        if !existed {
            s.lapsed = true;
            s.lapses += 1;
        } else if !s.lapsed {
            s.until = sent + self.pod_ttl;
        }
    }

    pub fn unreachable(&self) {
        self.lock().unreachable = true;
    }

    /// Whether a local session must be confirmed with the store before it is served. Not when
    /// the store does not answer: a pod cut off from it keeps serving (it cannot learn
    /// otherwise) and confirms once the store answers again.
    pub fn in_doubt(&self) -> bool {
        let s = self.lock();
        !s.unreachable && (s.lapsed || Instant::now() >= s.until)
    }

    pub fn resync_started(&self) -> ResyncTicket {
        let s = self.lock();
        ResyncTicket {
            lapses: s.lapses,
            registered: s.registered,
        }
    }

    /// Every local session was claimed again after the registration the ticket saw: the
    /// registration has stood since.
    pub fn resync_done(&self, ticket: ResyncTicket) {
        let mut s = self.lock();
        if s.lapses != ticket.lapses {
            return;
        }
        if let Some(sent) = ticket.registered {
            s.lapsed = false;
            s.until = s.until.max(sent + self.pod_ttl);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_gap_in_the_registration_puts_local_sessions_in_doubt_until_a_resync() {
        let lease = Lease::new(Duration::from_secs(10));
        assert!(!lease.in_doubt());
        lease.renewed(Instant::now(), true);
        assert!(!lease.in_doubt());

        lease.renewed(Instant::now(), false);
        assert!(lease.in_doubt());
        let ticket = lease.resync_started();
        // another gap while the resync ran: that resync does not clear it
        lease.renewed(Instant::now(), false);
        lease.resync_done(ticket);
        assert!(lease.in_doubt());
        let ticket = lease.resync_started();
        lease.renewed(Instant::now(), true);
        assert!(lease.in_doubt(), "a renewal does not end a lapse");
        lease.resync_done(ticket);
        assert!(!lease.in_doubt());

        // the store stops answering: nothing to confirm with
        lease.unreachable();
        lease.renewed(Instant::now(), false);
        assert!(lease.in_doubt());
        lease.unreachable();
        assert!(!lease.in_doubt());
    }

    #[test]
    fn a_stall_longer_than_the_pod_ttl_puts_local_sessions_in_doubt() {
        let lease = Lease::new(Duration::from_millis(30));
        lease.renewed(Instant::now(), true);
        assert!(!lease.in_doubt());
        std::thread::sleep(Duration::from_millis(40));
        assert!(lease.in_doubt());
        lease.renewed(Instant::now(), true);
        assert!(!lease.in_doubt());
    }
}
