//! The plan transitions, without a socket: what a failed connection turns each plan into,
//! and what the access line says along the way.

use super::forward::Forwarded;
use super::hand_off::{self, HandedOff};
use super::legacy_post::LegacyPost;
use super::local::Local;
use super::recover::owner_unreachable;
use super::Plan;

const OWNER: &str = "10.0.0.7:8081";

fn forwarded() -> Plan {
    Plan::Forwarded(Forwarded::to("s1", OWNER.to_string()))
}

#[test]
fn an_unreachable_owner_turns_a_forward_into_one_retry() {
    let mut plan = forwarded();
    assert!(owner_unreachable(&mut plan), "the first failure retries");
    assert!(plan.is_retry());
    // until the retry is resolved, the request still reads as what it was
    assert_eq!(plan.via(), Some("forwarded"));
    assert_eq!(plan.next_sidecar(), Some(OWNER));
    assert_eq!(plan.client_sid(), Some("s1"));
    // the retry's own forward (recovered elsewhere) does not retry again
    let Plan::Retry(retry) = plan else {
        unreachable!()
    };
    let mut again = Plan::Recovered(Box::new(retry.previous));
    assert!(!owner_unreachable(&mut again));
    assert_eq!(again.via(), Some("recovered"));
}

#[test]
fn a_local_plan_never_retries_a_refused_connect() {
    let mut plan = Plan::Local(Local::owned("s1", "u1".to_string()));
    assert!(!owner_unreachable(&mut plan));
    assert!(!plan.is_retry());
    assert_eq!(plan.via(), Some("local"));
    assert!(plan.served_here());
    let mut new_session = Plan::Local(Local { session: None });
    assert!(!owner_unreachable(&mut new_session));
    assert_eq!(new_session.via(), None);
}

#[test]
fn a_hand_off_whose_peer_is_gone_is_served_here() {
    let mut plan = Plan::HandedOff(HandedOff {
        peer: OWNER.to_string(),
    });
    assert_eq!(plan.handoff(), Some(OWNER));
    assert!(!plan.served_here());
    hand_off::peer_unreachable(&mut plan);
    assert!(matches!(plan, Plan::Local(Local { session: None })));
    assert_eq!((plan.handoff(), plan.via()), (None, None));
    assert!(plan.served_here());
}

#[test]
fn a_legacy_post_is_never_recovered() {
    let mut plan = Plan::LegacyPost(LegacyPost {
        sid: "s1".to_string(),
        owner: Some(OWNER.to_string()),
        gone: None,
    });
    assert!(!owner_unreachable(&mut plan));
    assert_eq!(plan.via(), Some("forwarded"));
    assert_eq!(plan.client_sid(), Some("s1"));
}
