//! The Redis session store against a real redis-server: schema, TTLs, outage and reconnect.

use crate::harness::*;
use mcp_sidecar::config::RedisSection;
use mcp_sidecar::store::{keys, RedisStore, SessionRecord, SessionStore, Standing};
use std::time::{Duration, Instant};

fn record(id: &str) -> SessionRecord {
    SessionRecord {
        session_id: id.into(),
        upstream_session_id: format!("up-{id}"),
        owner: "10.0.0.7:8080".into(),
        server_name: "github".into(),
        transport: Default::default(),
        user: Some("u-42".into()),
        protocol_version: Some("2025-06-18".into()),
        init_params: Some(r#"{"protocolVersion":"2025-06-18","capabilities":{}}"#.into()),
        created_at: 1_700_000_000,
        last_seen: 1_700_000_000,
        ..Default::default()
    }
}

fn store(redis: &Redis) -> RedisStore {
    let section = RedisSection {
        connect_timeout: Duration::from_millis(300),
        command_timeout: Duration::from_millis(300),
        ..Default::default()
    };
    RedisStore::new(&section, &redis.url()).unwrap()
}

async fn raw(redis: &Redis) -> redis::aio::MultiplexedConnection {
    redis::Client::open(redis.url())
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn sessions_round_trip_under_the_prefix_with_a_ttl() {
    let dir = test_dir("store-roundtrip");
    let redis = Redis::start(&dir);
    let s = store(&redis);
    s.ping().await.unwrap();
    s.save_session(&record("abc"), Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(s.load_session("abc").await.unwrap(), Some(record("abc")));

    let mut c = raw(&redis).await;
    let all: Vec<String> = redis::cmd("KEYS")
        .arg("*")
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(all, vec![keys::session("abc")]);
    assert!(all.iter().all(|k| k.starts_with(keys::PREFIX)));
    let pttl: i64 = redis::cmd("PTTL")
        .arg(&all[0])
        .query_async(&mut c)
        .await
        .unwrap();
    assert!(pttl > 55_000 && pttl <= 60_000, "{pttl}");
    // readable with redis-cli HGETALL
    let owner: String = redis::cmd("HGET")
        .arg(&all[0])
        .arg("owner")
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(owner, "10.0.0.7:8080");

    assert!(s
        .touch_session("abc", 1_800_000_000, Duration::from_secs(600))
        .await
        .unwrap());
    let r = s.load_session("abc").await.unwrap().unwrap();
    assert_eq!(r.last_seen, 1_800_000_000);
    let ttl = s.session_ttl("abc").await.unwrap().unwrap();
    assert!(ttl > Duration::from_secs(590), "{ttl:?}");

    // touching an unknown session must not create a record without TTL
    assert!(!s
        .touch_session("ghost", 1, Duration::from_secs(60))
        .await
        .unwrap());
    let exists: i64 = redis::cmd("EXISTS")
        .arg(keys::session("ghost"))
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(exists, 0);

    // saving again replaces every field (no stale optional fields survive)
    let mut anon = record("abc");
    anon.user = None;
    s.save_session(&anon, Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(s.load_session("abc").await.unwrap().unwrap().user, None);

    assert!(s.delete_session("abc").await.unwrap());
    assert!(!s.delete_session("abc").await.unwrap());
    assert_eq!(s.load_session("abc").await.unwrap(), None);
    assert_eq!(s.session_ttl("abc").await.unwrap(), None);
}

#[tokio::test(flavor = "multi_thread")]
async fn records_expire_in_redis() {
    let dir = test_dir("store-expiry");
    let redis = Redis::start(&dir);
    let s = store(&redis);
    s.save_session(&record("short"), Duration::from_millis(300))
        .await
        .unwrap();
    assert!(s.load_session("short").await.unwrap().is_some());
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(s.load_session("short").await.unwrap(), None);
}

#[tokio::test(flavor = "multi_thread")]
async fn an_outage_fails_fast_and_the_store_reconnects_by_itself() {
    let dir = test_dir("store-outage");
    let mut redis = Redis::start(&dir);
    let port = redis.port;
    let s = store(&redis);
    s.save_session(&record("a"), Duration::from_secs(60))
        .await
        .unwrap();

    redis.proc.kill();
    for _ in 0..3 {
        // bounded by the command timeout: an error, not a hang
        let r = tokio::time::timeout(Duration::from_secs(5), s.load_session("a"))
            .await
            .expect("a store call hung while Redis was down");
        assert!(r.is_err(), "{r:?}");
        assert!(tokio::time::timeout(Duration::from_secs(5), s.ping())
            .await
            .unwrap()
            .is_err());
    }

    let _redis = Redis::start_on(&dir, port);
    let deadline = Instant::now() + Duration::from_secs(15);
    while s.ping().await.is_err() {
        assert!(Instant::now() < deadline, "the store never reconnected");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // a restarted, empty Redis: the old record is gone, new ones work
    assert_eq!(s.load_session("a").await.unwrap(), None);
    s.save_session(&record("b"), Duration::from_secs(60))
        .await
        .unwrap();
    assert!(s.load_session("b").await.unwrap().is_some());
}

#[tokio::test(flavor = "multi_thread")]
async fn pods_locks_and_listings() {
    let dir = test_dir("store-pods");
    let redis = Redis::start(&dir);
    let s = store(&redis);
    let ttl = Duration::from_secs(10);
    // no pod registered (the last one drained): an empty list, not an error
    assert!(s.list_pods().await.unwrap().is_empty());
    assert!(s.list_sessions().await.unwrap().is_empty());
    assert!(!s
        .heartbeat_pod("10.0.0.7:8081", r#"{"v":1}"#, ttl)
        .await
        .unwrap());
    assert!(s
        .heartbeat_pod("10.0.0.7:8081", r#"{"v":1}"#, ttl)
        .await
        .unwrap());
    assert!(s.pod_alive("10.0.0.7:8081").await.unwrap());
    assert!(!s.pod_alive("10.0.0.8:8081").await.unwrap());
    let pods = s.list_pods().await.unwrap();
    assert_eq!(pods.len(), 1);
    assert_eq!(pods[0].address, "10.0.0.7:8081");
    assert_eq!(pods[0].info, r#"{"v":1}"#);
    assert!(pods[0].ttl.unwrap() > Duration::from_secs(9));
    s.remove_pod("10.0.0.7:8081").await.unwrap();
    assert!(!s.pod_alive("10.0.0.7:8081").await.unwrap());
    assert!(s.list_pods().await.unwrap().is_empty());

    assert!(s.try_lock("recover:abc", "me", ttl).await.unwrap());
    assert!(!s.try_lock("recover:abc", "you", ttl).await.unwrap());
    s.unlock("recover:abc", "you").await.unwrap();
    assert!(!s.try_lock("recover:abc", "you", ttl).await.unwrap());
    s.unlock("recover:abc", "me").await.unwrap();
    assert!(s.try_lock("recover:abc", "you", ttl).await.unwrap());

    for i in 0..450 {
        s.save_session(&record(&format!("s{i}")), ttl)
            .await
            .unwrap();
    }
    let listed = s.list_sessions().await.unwrap();
    assert_eq!(listed.len(), 450);
    assert!(listed
        .iter()
        .all(|(r, t)| r.server_name == "github" && t.is_some()));

    // every key written by the store has a TTL
    let mut c = raw(&redis).await;
    let all: Vec<String> = redis::cmd("KEYS")
        .arg("*")
        .query_async(&mut c)
        .await
        .unwrap();
    for k in &all {
        assert!(k.starts_with(keys::PREFIX), "{k}");
        let t: i64 = redis::cmd("PTTL").arg(k).query_async(&mut c).await.unwrap();
        assert!(t > 0, "{k} has no TTL");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn sessions_change_hands_only_from_the_holder_the_claimant_saw() {
    let dir = test_dir("store-claims");
    let redis = Redis::start(&dir);
    let s = store(&redis);
    let ttl = Duration::from_secs(60);
    let by = |owner: &str, from: &SessionRecord| SessionRecord {
        owner: owner.into(),
        upstream_session_id: format!("up-{owner}"),
        epoch: from.epoch + 1,
        ..from.clone()
    };
    // a record of an older sidecar has no epoch: it is at 0
    let mut c = raw(&redis).await;
    let seen = record("abc");
    s.save_session(&seen, ttl).await.unwrap();
    let _: () = redis::cmd("HDEL")
        .arg(keys::session("abc"))
        .arg("epoch")
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(s.load_session("abc").await.unwrap().unwrap().epoch, 0);

    // two pods take over from the same record: the first wins, the second learns who
    let b = by("10.0.0.8:8080", &seen);
    assert_eq!(
        s.claim_session(&b, &seen, false, ttl).await,
        Ok(Standing::Held)
    );
    let lost_to_b = Ok(Standing::Lost(Box::new(b.clone())));
    let late = by("10.0.0.9:8080", &seen);
    assert_eq!(s.claim_session(&late, &seen, true, ttl).await, lost_to_b);
    assert_eq!(s.load_session("abc").await.unwrap(), Some(b.clone()));
    let epoch: String = redis::cmd("HGET")
        .arg(keys::session("abc"))
        .arg("epoch")
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(epoch, "1");
    // the claim replaced the whole record, with the TTL asked for
    assert!(s.session_ttl("abc").await.unwrap().unwrap() > Duration::from_secs(55));

    // only the holder slides the TTL
    assert_eq!(s.touch_owned(&seen, 7, ttl).await, lost_to_b);
    assert_eq!(
        s.touch_owned(&b, 7, Duration::from_secs(600)).await,
        Ok(Standing::Held)
    );
    assert_eq!(s.load_session("abc").await.unwrap().unwrap().last_seen, 7);
    assert!(s.session_ttl("abc").await.unwrap().unwrap() > Duration::from_secs(590));

    // a missing record is created only when asked to, and never by a touch
    s.delete_session("abc").await.unwrap();
    assert_eq!(s.touch_owned(&b, 8, ttl).await, Ok(Standing::Missing));
    assert_eq!(
        s.claim_session(&late, &seen, false, ttl).await,
        Ok(Standing::Missing)
    );
    assert_eq!(s.load_session("abc").await.unwrap(), None);
    assert_eq!(
        s.claim_session(&late, &seen, true, ttl).await,
        Ok(Standing::Held)
    );
    assert_eq!(s.load_session("abc").await.unwrap(), Some(late));
}
