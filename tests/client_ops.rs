//! Every client operation against real memcached processes, in both wire protocols.
//!
//! Each behaviour is one `async fn` taking the protocol; `both_protocols!` turns it into
//! `<behaviour>::meta` and `<behaviour>::text` tests. The servers are read back through
//! a raw text connection (kit::memcached::raw) where the client's own view could hide
//! a bug (routing, flags, expiry).

mod kit;

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use kit::memcached::raw;
use kit::{Cluster, Memcached};
use memkeep::{CasOutcome, Client, Error, Expiry, Protocol, StoreMode, StoreOptions, StoreOutcome};

/// Upper bound for one whole test case: a hung client fails the test instead of
/// hanging the run.
const CASE_LIMIT: Duration = Duration::from_secs(60);

macro_rules! both_protocols {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn meta() {
                crate::kit::no_hang(concat!(stringify!($name), " (meta)"), crate::CASE_LIMIT,
                    super::$name(memkeep::Protocol::Meta)).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn text() {
                crate::kit::no_hang(concat!(stringify!($name), " (text)"), crate::CASE_LIMIT,
                    super::$name(memkeep::Protocol::Text)).await
            }
        }
    )*};
}

both_protocols!(
    get_returns_stored_value_and_none_on_miss,
    gets_returns_a_cas_token_that_changes_on_write,
    get_many_gathers_keys_from_every_server_and_omits_misses,
    get_and_touch_returns_the_value_and_applies_the_new_expiry,
    set_overwrites_an_existing_value,
    add_stores_only_when_the_key_is_absent,
    replace_stores_only_when_the_key_is_present,
    append_and_prepend_extend_existing_values_and_refuse_missing_keys,
    cas_reports_stored_exists_and_not_found,
    store_carries_flags_through_to_the_server_and_back,
    store_reports_every_outcome,
    delete_removes_the_key_and_reports_a_missing_one,
    incr_and_decr_count_and_report_missing_keys,
    incr_on_a_non_numeric_value_is_a_not_numeric_error,
    touch_reports_presence_and_applies_the_new_expiry,
    flush_all_empties_every_node,
    version_answers_for_every_node,
    stats_answer_for_every_node_from_the_right_process,
    noreply_variants_are_applied_before_later_requests,
    expiry_in_one_second_expires,
    expiry_over_thirty_days_is_stored_and_readable,
    expiry_zero_expires_at_once,
    expiry_past_2038_is_clamped_and_the_item_lives,
    expiry_at_a_time_is_honoured,
    key_of_251_bytes_is_refused_before_sending_and_250_is_accepted,
    empty_key_is_refused,
    value_over_max_value_size_is_refused_before_sending,
    value_over_the_server_item_size_is_a_server_error_and_the_connection_goes_on,
    large_value_round_trips,
    a_server_value_over_max_value_size_fails_only_its_own_read,
    on_node_routes_every_key_to_that_node_only,
    keys_are_spread_over_every_node,
    concurrent_callers_each_get_their_own_reply,
    metrics_count_operations,
    a_unix_socket_node_serves_every_operation_and_survives_a_restart,
);

/// One server and a client for it.
fn one(protocol: Protocol) -> (Memcached, Client) {
    let m = Memcached::start();
    let c = kit::client_for(&[m.addr()], protocol);
    (m, c)
}

/// `n` servers and a client over all of them.
fn cluster(n: usize, protocol: Protocol) -> (Cluster, Client) {
    let cl = Cluster::start(n);
    let c = kit::client(&cl, protocol);
    (cl, c)
}

fn s(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Where the raw view finds `key`: the indices of the servers holding it.
fn holders(cl: &Cluster, key: &str) -> Vec<usize> {
    (0..cl.len())
        .filter(|&i| raw::get(&cl[i].addr(), key).is_some())
        .collect()
}

async fn get_returns_stored_value_and_none_on_miss(p: Protocol) {
    let (m, c) = one(p);
    c.set("k1", "v1", Expiry::Never).await.expect("set");
    let item = c.get("k1").await.expect("get").expect("hit after set");
    assert_eq!(s(&item.value), "v1");
    assert_eq!(item.flags, 0);
    assert!(c.get("missing").await.expect("get miss").is_none());
    // The server really holds it (not a client-side cache).
    assert_eq!(raw::get(&m.addr(), "k1").as_deref(), Some("v1"));
    // Binary and empty values survive.
    let bin: Vec<u8> = (0..=255u8).chain([b'\r', b'\n', 0]).collect();
    c.set("bin", &bin, Expiry::Never).await.expect("set binary");
    assert_eq!(
        c.get("bin").await.unwrap().unwrap().value.as_ref(),
        &bin[..]
    );
    c.set("empty", "", Expiry::Never).await.expect("set empty");
    assert_eq!(c.get("empty").await.unwrap().unwrap().value.len(), 0);
}

async fn gets_returns_a_cas_token_that_changes_on_write(p: Protocol) {
    let (_m, c) = one(p);
    c.set("k", "a", Expiry::Never).await.unwrap();
    let first = c.gets("k").await.unwrap().expect("hit");
    let t1 = first.cas.expect("gets returns a cas token");
    assert_eq!(s(&first.value), "a");
    c.set("k", "b", Expiry::Never).await.unwrap();
    let t2 = c.gets("k").await.unwrap().unwrap().cas.expect("cas");
    assert_ne!(t1, t2, "a write must change the cas token");
    assert!(c.gets("nope").await.unwrap().is_none());
}

async fn get_many_gathers_keys_from_every_server_and_omits_misses(p: Protocol) {
    let (cl, c) = cluster(3, p);
    let keys: Vec<String> = (0..90).map(|i| format!("many-{i}")).collect();
    for k in &keys {
        c.set(k, format!("val-{k}"), Expiry::Never).await.unwrap();
    }
    // The keys live on every server, so the multi-get really is split.
    for i in 0..3 {
        assert!(
            raw::curr_items(&cl[i].addr()) > 0,
            "server n{i} holds none of the 90 keys"
        );
    }
    let mut asked: Vec<String> = keys.clone();
    asked.extend((0..10).map(|i| format!("absent-{i}")));
    let got: HashMap<Vec<u8>, memkeep::Item> = c.get_many(&asked).await.expect("get_many");
    assert_eq!(got.len(), 90, "hits only, misses absent");
    for k in &keys {
        let item = got
            .get(k.as_bytes())
            .unwrap_or_else(|| panic!("{k} missing from get_many"));
        assert_eq!(s(&item.value), format!("val-{k}"));
    }
    // Duplicates and an empty request.
    let dup = c.get_many(["many-1", "many-1", "many-2"]).await.unwrap();
    assert_eq!(dup.len(), 2);
    let none = c.get_many(Vec::<String>::new()).await.unwrap();
    assert!(none.is_empty());
}

async fn get_and_touch_returns_the_value_and_applies_the_new_expiry(p: Protocol) {
    let (_m, c) = one(p);
    c.set("gat", "v", Expiry::Never).await.unwrap();
    let item = c
        .get_and_touch("gat", Expiry::In(Duration::from_secs(3600)))
        .await
        .unwrap()
        .expect("hit");
    assert_eq!(s(&item.value), "v");
    assert!(
        c.get("gat").await.unwrap().is_some(),
        "touched to 1 h: still there"
    );
    // A zero expiry makes the item expire at once: the touch really reached the server.
    let item = c
        .get_and_touch("gat", Expiry::In(Duration::ZERO))
        .await
        .unwrap();
    assert_eq!(item.map(|i| s(&i.value)).as_deref(), Some("v"));
    assert!(
        c.get("gat").await.unwrap().is_none(),
        "touched with In(0): expired"
    );
    assert!(c
        .get_and_touch("nope", Expiry::Never)
        .await
        .unwrap()
        .is_none());
}

async fn set_overwrites_an_existing_value(p: Protocol) {
    let (_m, c) = one(p);
    c.set("k", "one", Expiry::Never).await.unwrap();
    c.set("k", "two", Expiry::Never).await.unwrap();
    assert_eq!(s(&c.get("k").await.unwrap().unwrap().value), "two");
}

async fn add_stores_only_when_the_key_is_absent(p: Protocol) {
    let (_m, c) = one(p);
    assert!(
        c.add("k", "first", Expiry::Never).await.unwrap(),
        "add on absent key"
    );
    assert!(
        !c.add("k", "second", Expiry::Never).await.unwrap(),
        "add on present key"
    );
    assert_eq!(s(&c.get("k").await.unwrap().unwrap().value), "first");
}

async fn replace_stores_only_when_the_key_is_present(p: Protocol) {
    let (_m, c) = one(p);
    assert!(
        !c.replace("k", "x", Expiry::Never).await.unwrap(),
        "replace on absent key"
    );
    assert!(c.get("k").await.unwrap().is_none());
    c.set("k", "a", Expiry::Never).await.unwrap();
    assert!(c.replace("k", "b", Expiry::Never).await.unwrap());
    assert_eq!(s(&c.get("k").await.unwrap().unwrap().value), "b");
}

async fn append_and_prepend_extend_existing_values_and_refuse_missing_keys(p: Protocol) {
    let (_m, c) = one(p);
    assert!(!c.append("k", "x").await.unwrap(), "append on absent key");
    assert!(!c.prepend("k", "x").await.unwrap(), "prepend on absent key");
    assert!(c.get("k").await.unwrap().is_none());
    c.set("k", "mid", Expiry::Never).await.unwrap();
    assert!(c.append("k", "-end").await.unwrap());
    assert!(c.prepend("k", "start-").await.unwrap());
    assert_eq!(
        s(&c.get("k").await.unwrap().unwrap().value),
        "start-mid-end"
    );
}

async fn cas_reports_stored_exists_and_not_found(p: Protocol) {
    let (_m, c) = one(p);
    c.set("k", "v1", Expiry::Never).await.unwrap();
    let token = c.gets("k").await.unwrap().unwrap().cas.expect("cas token");
    let out = c.cas("k", "v2", Expiry::Never, token).await.unwrap();
    assert!(matches!(out, CasOutcome::Stored), "fresh token: {out:?}");
    assert_eq!(s(&c.get("k").await.unwrap().unwrap().value), "v2");
    let out = c.cas("k", "v3", Expiry::Never, token).await.unwrap();
    assert!(matches!(out, CasOutcome::Exists), "stale token: {out:?}");
    assert_eq!(
        s(&c.get("k").await.unwrap().unwrap().value),
        "v2",
        "stale cas must not write"
    );
    let out = c.cas("absent", "v", Expiry::Never, token).await.unwrap();
    assert!(matches!(out, CasOutcome::NotFound), "absent key: {out:?}");
    assert!(c.get("absent").await.unwrap().is_none());
}

async fn store_carries_flags_through_to_the_server_and_back(p: Protocol) {
    let (m, c) = one(p);
    for (key, flags) in [
        ("f0", 0u32),
        ("f7", 7),
        ("fmax", u32::MAX),
        ("fbig", 0x8000_0001),
    ] {
        let out = c
            .store(
                StoreMode::Set,
                key,
                "v",
                StoreOptions {
                    flags,
                    expiry: Expiry::Never,
                    cas: None,
                },
            )
            .await
            .unwrap();
        assert!(matches!(out, StoreOutcome::Stored), "{key}: {out:?}");
        assert_eq!(
            c.get(key).await.unwrap().unwrap().flags,
            flags,
            "{key} via get"
        );
        assert_eq!(
            c.gets(key).await.unwrap().unwrap().flags,
            flags,
            "{key} via gets"
        );
        let many = c.get_many([key]).await.unwrap();
        assert_eq!(many[key.as_bytes()].flags, flags, "{key} via get_many");
        // The server itself holds the flags.
        assert_eq!(
            raw::get_with_flags(&m.addr(), key),
            Some((flags, "v".to_string())),
            "{key} raw"
        );
    }
    // Flags set by another client are read back too.
    raw::exchange(&m.addr(), b"set other 4242 0 1\r\nz\r\n", &["STORED"]);
    assert_eq!(c.get("other").await.unwrap().unwrap().flags, 4242);
}

async fn store_reports_every_outcome(p: Protocol) {
    let (_m, c) = one(p);
    let opts = |cas| StoreOptions {
        flags: 1,
        expiry: Expiry::Never,
        cas,
    };
    let r = c.store(StoreMode::Add, "k", "a", opts(None)).await.unwrap();
    assert!(matches!(r, StoreOutcome::Stored), "add absent: {r:?}");
    let r = c.store(StoreMode::Add, "k", "b", opts(None)).await.unwrap();
    assert!(matches!(r, StoreOutcome::NotStored), "add present: {r:?}");
    let r = c
        .store(StoreMode::Replace, "absent", "b", opts(None))
        .await
        .unwrap();
    assert!(
        matches!(r, StoreOutcome::NotStored),
        "replace absent: {r:?}"
    );
    let r = c
        .store(StoreMode::Append, "absent", "b", opts(None))
        .await
        .unwrap();
    assert!(matches!(r, StoreOutcome::NotStored), "append absent: {r:?}");
    let token = c.gets("k").await.unwrap().unwrap().cas.unwrap();
    let r = c
        .store(
            StoreMode::Set,
            "k",
            "c",
            opts(Some(token.wrapping_add(1000))),
        )
        .await
        .unwrap();
    assert!(
        matches!(r, StoreOutcome::Exists),
        "set with a wrong cas: {r:?}"
    );
    let r = c
        .store(StoreMode::Set, "absent", "c", opts(Some(token)))
        .await
        .unwrap();
    assert!(
        matches!(r, StoreOutcome::NotFound),
        "set with cas on absent key: {r:?}"
    );
    let r = c
        .store(StoreMode::Set, "k", "d", opts(Some(token)))
        .await
        .unwrap();
    assert!(
        matches!(r, StoreOutcome::Stored),
        "set with the right cas: {r:?}"
    );
    assert_eq!(s(&c.get("k").await.unwrap().unwrap().value), "d");
}

async fn delete_removes_the_key_and_reports_a_missing_one(p: Protocol) {
    let (m, c) = one(p);
    c.set("k", "v", Expiry::Never).await.unwrap();
    assert!(c.delete("k").await.unwrap(), "delete present");
    assert!(c.get("k").await.unwrap().is_none());
    assert!(raw::get(&m.addr(), "k").is_none());
    assert!(!c.delete("k").await.unwrap(), "delete absent");
}

async fn incr_and_decr_count_and_report_missing_keys(p: Protocol) {
    let (_m, c) = one(p);
    c.set("n", "10", Expiry::Never).await.unwrap();
    assert_eq!(c.incr("n", 5).await.unwrap(), Some(15));
    assert_eq!(c.decr("n", 3).await.unwrap(), Some(12));
    assert_eq!(c.decr("n", 100).await.unwrap(), Some(0), "decr stops at 0");
    assert_eq!(s(&c.get("n").await.unwrap().unwrap().value).trim(), "0");
    assert_eq!(c.incr("absent", 1).await.unwrap(), None);
    assert_eq!(c.decr("absent", 1).await.unwrap(), None);
    c.set("max", u64::MAX.to_string(), Expiry::Never)
        .await
        .unwrap();
    assert_eq!(
        c.incr("max", 1).await.unwrap(),
        Some(0),
        "incr wraps at 2^64"
    );
}

async fn incr_on_a_non_numeric_value_is_a_not_numeric_error(p: Protocol) {
    let (_m, c) = one(p);
    c.set("word", "abc", Expiry::Never).await.unwrap();
    let e = c.incr("word", 1).await.expect_err("incr on text");
    assert!(matches!(e, Error::NotNumeric(_)), "incr: {e:?}");
    let e = c.decr("word", 1).await.expect_err("decr on text");
    assert!(matches!(e, Error::NotNumeric(_)), "decr: {e:?}");
    // Not a node failure: the connection goes on.
    assert!(!e.is_node_failure());
    assert_eq!(s(&c.get("word").await.unwrap().unwrap().value), "abc");
}

async fn touch_reports_presence_and_applies_the_new_expiry(p: Protocol) {
    let (_m, c) = one(p);
    c.set("k", "v", Expiry::Never).await.unwrap();
    assert!(c
        .touch("k", Expiry::In(Duration::from_secs(600)))
        .await
        .unwrap());
    assert!(c.get("k").await.unwrap().is_some());
    assert!(!c.touch("absent", Expiry::Never).await.unwrap());
    assert!(c.touch("k", Expiry::In(Duration::ZERO)).await.unwrap());
    assert!(
        c.get("k").await.unwrap().is_none(),
        "touched with In(0): expired"
    );
}

async fn flush_all_empties_every_node(p: Protocol) {
    let (cl, c) = cluster(3, p);
    let keys: Vec<String> = (0..60).map(|i| format!("fl-{i}")).collect();
    for k in &keys {
        c.set(k, "v", Expiry::Never).await.unwrap();
    }
    assert_eq!(c.get_many(&keys).await.unwrap().len(), 60);
    c.flush_all().await.expect("flush_all");
    assert!(c.get_many(&keys).await.unwrap().is_empty());
    for k in &keys {
        assert!(holders(&cl, k).is_empty(), "{k} survived flush_all");
    }
}

async fn version_answers_for_every_node(p: Protocol) {
    let (_cl, c) = cluster(3, p);
    let v = c.version().await;
    let ids: Vec<&str> = v.iter().map(|(id, _)| id.as_str()).collect();
    assert_eq!(ids, ["n0", "n1", "n2"]);
    for (id, r) in &v {
        let ver = r
            .as_ref()
            .unwrap_or_else(|e| panic!("version of {id}: {e}"));
        assert!(ver.starts_with("1."), "{id}: version {ver:?}");
    }
}

async fn stats_answer_for_every_node_from_the_right_process(p: Protocol) {
    let (cl, c) = cluster(3, p);
    let st = c.stats().await;
    assert_eq!(st.len(), 3);
    for (i, (id, r)) in st.iter().enumerate() {
        assert_eq!(id, &Cluster::id(i));
        let map = r.as_ref().unwrap_or_else(|e| panic!("stats of {id}: {e}"));
        let pid = cl[i].pid().unwrap().to_string();
        assert_eq!(
            map.get("pid"),
            Some(&pid),
            "{id}'s stats come from its own process"
        );
        assert!(map.contains_key("curr_connections"));
    }
}

async fn noreply_variants_are_applied_before_later_requests(p: Protocol) {
    let (m, c) = one(p);
    c.set_noreply("nr", "v1", Expiry::Never)
        .await
        .expect("set_noreply");
    // Requests on one connection are answered in order, so this get sees the set.
    assert_eq!(
        c.get("nr").await.unwrap().map(|i| s(&i.value)).as_deref(),
        Some("v1")
    );
    c.touch_noreply("nr", Expiry::In(Duration::ZERO))
        .await
        .expect("touch_noreply");
    assert!(
        c.get("nr").await.unwrap().is_none(),
        "touch_noreply(In(0)) expired it"
    );
    c.set_noreply("nr2", "v2", Expiry::Never).await.unwrap();
    c.delete_noreply("nr2").await.expect("delete_noreply");
    assert!(
        c.get("nr2").await.unwrap().is_none(),
        "delete_noreply applied"
    );
    // A noreply to an absent key produces no reply that could shift later ones.
    c.delete_noreply("never-there").await.unwrap();
    c.touch_noreply("never-there", Expiry::Never).await.unwrap();
    c.set("after", "ok", Expiry::Never).await.unwrap();
    assert_eq!(s(&c.get("after").await.unwrap().unwrap().value), "ok");
    // Many in a row, then a read: the stream stayed in step.
    for i in 0..200 {
        c.set_noreply(format!("bulk-{i}"), format!("b{i}"), Expiry::Never)
            .await
            .unwrap();
    }
    assert_eq!(s(&c.get("bulk-199").await.unwrap().unwrap().value), "b199");
    assert_eq!(raw::get(&m.addr(), "bulk-0").as_deref(), Some("b0"));
    // Bad keys are refused even without a reply.
    let e = c
        .set_noreply(vec![b'x'; 251], "v", Expiry::Never)
        .await
        .unwrap_err();
    assert!(matches!(e, Error::InvalidKey(_)), "{e:?}");
}

async fn expiry_in_one_second_expires(p: Protocol) {
    let (_m, c) = one(p);
    c.set("short", "v", Expiry::In(Duration::from_secs(1)))
        .await
        .unwrap();
    c.set("long", "v", Expiry::In(Duration::from_secs(3600)))
        .await
        .unwrap();
    assert!(
        c.get("short").await.unwrap().is_some(),
        "readable before it expires"
    );
    // memcached's clock ticks in whole seconds: past 2 s a 1 s item is gone for sure.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(c.get("short").await.unwrap().is_none(), "In(1s) expired");
    assert!(c.get("long").await.unwrap().is_some(), "In(1h) did not");
}

async fn expiry_over_thirty_days_is_stored_and_readable(p: Protocol) {
    let (_m, c) = one(p);
    // Sent as a relative number of seconds, memcached would read 31 days as a Unix time
    // in 1970 and expire the item at once.
    let d31 = Duration::from_secs(31 * 24 * 3600);
    c.set("k", "v", Expiry::In(d31)).await.unwrap();
    assert!(
        c.get("k").await.unwrap().is_some(),
        "In(31 days) is readable"
    );
    c.set("k2", "v", Expiry::Never).await.unwrap();
    assert!(c.touch("k2", Expiry::In(d31)).await.unwrap());
    assert!(
        c.get("k2").await.unwrap().is_some(),
        "touch In(31 days) keeps it"
    );
    assert!(c
        .get_and_touch("k2", Expiry::In(d31))
        .await
        .unwrap()
        .is_some());
    assert!(
        c.get("k2").await.unwrap().is_some(),
        "gat In(31 days) keeps it"
    );
}

/// Seconds left before `key` expires on the server, read with a raw meta `mg <key> t`
/// (`None` on a miss, `-1` for never).
fn raw_ttl(addr: &str, key: &str) -> Option<i64> {
    let lines = raw::exchange(addr, format!("mg {key} t\r\nmn\r\n").as_bytes(), &["MN"]);
    lines
        .iter()
        .find_map(|l| l.strip_prefix("HD t"))
        .map(|t| t.parse().expect("a number after t"))
}

async fn expiry_past_2038_is_clamped_and_the_item_lives(p: Protocol) {
    let (m, c) = one(p);
    let year = 365 * 24 * 3600;
    let in_2040 = SystemTime::UNIX_EPOCH + Duration::from_secs(2_208_988_800);
    let expiries = [
        ("in12y", Expiry::In(Duration::from_secs(12 * year))),
        ("at2040", Expiry::At(in_2040)),
        ("max", Expiry::In(Duration::MAX)),
    ];
    // memcached reads exptime as a signed 32-bit number: sent unclamped, each of these
    // wraps negative and the item is deleted at once.
    let latest = SystemTime::UNIX_EPOCH + Duration::from_secs(Expiry::LATEST);
    let until_latest = latest
        .duration_since(SystemTime::now())
        .expect("this test runs before 2038")
        .as_secs() as i64;
    let ttl_is_the_latest = |key: &str| {
        let ttl = raw_ttl(&m.addr(), key).unwrap_or_else(|| panic!("{key}: gone from the server"));
        // The server's clock and ours may differ by a second or two.
        assert!(
            (until_latest - 5..=until_latest + 5).contains(&ttl),
            "{key}: the server keeps it {ttl} s, expected about {until_latest} s (until 2038-01-19)"
        );
    };
    for (key, expiry) in expiries {
        c.set(key, "v", expiry).await.unwrap();
        assert!(c.get(key).await.unwrap().is_some(), "set {key}: item lives");
        ttl_is_the_latest(key);

        let touched = format!("{key}-touched");
        c.set(&touched, "v", Expiry::Never).await.unwrap();
        assert!(c.touch(&touched, expiry).await.unwrap(), "touch {key}");
        assert!(
            c.get(&touched).await.unwrap().is_some(),
            "touch {key}: item lives"
        );
        ttl_is_the_latest(&touched);

        let gat = format!("{key}-gat");
        c.set(&gat, "v", Expiry::Never).await.unwrap();
        assert!(c.get_and_touch(&gat, expiry).await.unwrap().is_some());
        assert!(
            c.get(&gat).await.unwrap().is_some(),
            "gat {key}: item lives"
        );
        ttl_is_the_latest(&gat);
    }
}

async fn expiry_zero_expires_at_once(p: Protocol) {
    let (_m, c) = one(p);
    c.set("k", "v", Expiry::In(Duration::ZERO)).await.unwrap();
    assert!(
        c.get("k").await.unwrap().is_none(),
        "In(0) expires at once, not never"
    );
    assert!(
        c.add("k", "again", Expiry::Never).await.unwrap(),
        "the expired key is free for add"
    );
}

async fn expiry_at_a_time_is_honoured(p: Protocol) {
    let (_m, c) = one(p);
    let future = SystemTime::now() + Duration::from_secs(3600);
    c.set("fut", "v", Expiry::At(future)).await.unwrap();
    assert!(
        c.get("fut").await.unwrap().is_some(),
        "At(now + 1h) is readable"
    );
    let past = SystemTime::now() - Duration::from_secs(3600);
    c.set("past", "v", Expiry::At(past)).await.unwrap();
    assert!(
        c.get("past").await.unwrap().is_none(),
        "At(now - 1h) is expired"
    );
}

/// Sum of the server's get/set/touch counters: unchanged when nothing was sent.
fn command_count(addr: &str) -> u64 {
    raw::exchange(addr, b"stats\r\n", &["END"])
        .iter()
        .filter_map(|l| {
            let mut t = l.split_whitespace();
            match (t.next(), t.next(), t.next()) {
                (
                    Some("STAT"),
                    Some("cmd_get" | "cmd_set" | "cmd_touch" | "delete_misses" | "delete_hits"),
                    Some(v),
                ) => v.parse::<u64>().ok(),
                _ => None,
            }
        })
        .sum()
}

async fn key_of_251_bytes_is_refused_before_sending_and_250_is_accepted(p: Protocol) {
    let (m, c) = one(p);
    c.set("warmup", "v", Expiry::Never).await.unwrap();
    let long = "k".repeat(251);
    let before = command_count(&m.addr());
    let e = c.set(&long, "v", Expiry::Never).await.unwrap_err();
    assert!(matches!(e, Error::InvalidKey(_)), "set: {e:?}");
    let e = c.get(&long).await.unwrap_err();
    assert!(matches!(e, Error::InvalidKey(_)), "get: {e:?}");
    let e = c.delete(&long).await.unwrap_err();
    assert!(matches!(e, Error::InvalidKey(_)), "delete: {e:?}");
    let e = c.get_many(["ok", long.as_str()]).await.unwrap_err();
    assert!(matches!(e, Error::InvalidKey(_)), "get_many: {e:?}");
    assert!(!e.is_retryable());
    assert_eq!(
        command_count(&m.addr()),
        before,
        "nothing reached the server"
    );
    let max = "k".repeat(250);
    c.set(&max, "v", Expiry::Never)
        .await
        .expect("a 250-byte key is valid");
    assert_eq!(
        c.get(&max).await.unwrap().map(|i| s(&i.value)).as_deref(),
        Some("v")
    );
}

async fn empty_key_is_refused(p: Protocol) {
    let (_m, c) = one(p);
    let e = c.set("", "v", Expiry::Never).await.unwrap_err();
    assert!(matches!(e, Error::InvalidKey(_)), "{e:?}");
    let e = c.get("").await.unwrap_err();
    assert!(matches!(e, Error::InvalidKey(_)), "{e:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_with_space_or_control_bytes_is_refused_in_text() {
    let (m, c) = one(Protocol::Text);
    let before = command_count(&m.addr());
    for key in [
        &b"a key"[..],
        b"tab\tkey",
        b"nl\nkey",
        b"cr\rkey",
        b"nul\0key",
    ] {
        let e = c.set(key, "v", Expiry::Never).await.unwrap_err();
        assert!(matches!(e, Error::InvalidKey(_)), "{:?}: {e:?}", s(key));
        let e = c.get(key).await.unwrap_err();
        assert!(matches!(e, Error::InvalidKey(_)), "{:?}: {e:?}", s(key));
    }
    assert_eq!(
        command_count(&m.addr()),
        before,
        "nothing reached the server"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_with_space_or_control_bytes_round_trips_in_meta() {
    let (_m, c) = one(Protocol::Meta);
    let keys: Vec<Vec<u8>> = vec![
        b"a key with spaces".to_vec(),
        b"line\r\nbreak".to_vec(),
        b"nul\0and\xffhigh".to_vec(),
        b"plain".to_vec(),
    ];
    for (i, k) in keys.iter().enumerate() {
        c.set(k, format!("value-{i}"), Expiry::Never)
            .await
            .unwrap_or_else(|e| panic!("set {k:?}: {e}"));
    }
    for (i, k) in keys.iter().enumerate() {
        let got = c
            .get(k)
            .await
            .unwrap()
            .unwrap_or_else(|| panic!("get {k:?} missed"));
        assert_eq!(s(&got.value), format!("value-{i}"));
    }
    // A multi-get hands the keys back as the caller wrote them, not base64.
    let many = c.get_many(&keys).await.unwrap();
    for (i, k) in keys.iter().enumerate() {
        assert_eq!(
            s(&many
                .get(k)
                .unwrap_or_else(|| panic!("{k:?} absent from get_many"))
                .value),
            format!("value-{i}")
        );
    }
    assert!(c.delete(&keys[0]).await.unwrap());
    assert!(c.get(&keys[0]).await.unwrap().is_none());
    // Base64 makes a key 4/3 longer, padded to a multiple of 4 (memcached refuses
    // unpadded base64): 186 raw bytes are 248 on the wire, 187 would be 252 > 250.
    let fits = vec![b' '; 186];
    c.set(&fits, "v", Expiry::Never)
        .await
        .expect("a 186-byte key with spaces fits");
    assert!(c.get(&fits).await.unwrap().is_some());
    let too_long = vec![b' '; 187];
    let e = c.set(&too_long, "v", Expiry::Never).await.unwrap_err();
    assert!(matches!(e, Error::InvalidKey(_)), "{e:?}");
}

async fn value_over_max_value_size_is_refused_before_sending(p: Protocol) {
    let m = Memcached::start();
    let c = kit::builder_for(&[m.addr()], p)
        .max_value_size(1024)
        .build()
        .unwrap();
    c.set("fits", vec![b'a'; 1024], Expiry::Never)
        .await
        .expect("1024 bytes fit");
    let before = command_count(&m.addr());
    let e = c
        .set("big", vec![b'a'; 1025], Expiry::Never)
        .await
        .unwrap_err();
    assert!(
        matches!(
            e,
            Error::ValueTooLarge {
                size: 1025,
                max: 1024
            }
        ),
        "set: {e:?}"
    );
    let e = c
        .add("big", vec![b'a'; 5000], Expiry::Never)
        .await
        .unwrap_err();
    assert!(matches!(e, Error::ValueTooLarge { .. }), "add: {e:?}");
    let e = c
        .set_noreply("big", vec![b'a'; 5000], Expiry::Never)
        .await
        .unwrap_err();
    assert!(
        matches!(e, Error::ValueTooLarge { .. }),
        "set_noreply: {e:?}"
    );
    assert!(!e.is_retryable());
    assert_eq!(
        command_count(&m.addr()),
        before,
        "nothing reached the server"
    );
    assert!(c.get("big").await.unwrap().is_none());
}

async fn value_over_the_server_item_size_is_a_server_error_and_the_connection_goes_on(p: Protocol) {
    // memcached's default item size limit is 1 MiB; the client allows 4 MiB.
    let m = Memcached::start();
    let c = kit::builder_for(&[m.addr()], p)
        .max_value_size(4 << 20)
        .build()
        .unwrap();
    let e = c
        .set("huge", vec![b'h'; 2 << 20], Expiry::Never)
        .await
        .unwrap_err();
    assert!(matches!(e, Error::Server(_)), "{e:?}");
    assert!(
        !e.is_retryable(),
        "refused for its size: sending it again fails again: {e:?}"
    );
    c.set("small", "ok", Expiry::Never)
        .await
        .expect("the connection goes on");
    assert_eq!(s(&c.get("small").await.unwrap().unwrap().value), "ok");
    assert!(c.get("huge").await.unwrap().is_none());
}

/// Another client (with a higher limit) wrote a 1.5 MB item to a `-I 2m` server; this
/// client keeps the default 1 MiB limit. Reading the item fails that read alone: its
/// block is skipped, the connection stays, and 200 unrelated reads in flight with it all
/// succeed (single gets, merged gets and multi-gets).
async fn a_server_value_over_max_value_size_fails_only_its_own_read(p: Protocol) {
    let m = Memcached::start_with(&["-I", "2m"]);
    let big = 1_500_000;
    let mut request = format!("set big 0 0 {big}\r\n").into_bytes();
    request.extend(std::iter::repeat_n(b'b', big));
    request.extend_from_slice(b"\r\n");
    assert_eq!(raw::exchange(&m.addr(), &request, &["STORED"]), ["STORED"]);
    for merge in [false, true] {
        let c = kit::builder_for(&[m.addr()], p)
            .merge_gets(merge)
            .build()
            .unwrap();
        for i in 0..200 {
            c.set(format!("k{i}"), format!("v{i}"), Expiry::Never)
                .await
                .unwrap();
        }
        let too_large = |e: &Error| matches!(e, Error::ValueTooLarge { size, max } if *size == big && *max == 1 << 20);
        let reads = (0..200).map(|i| {
            let c = c.clone();
            async move {
                let (big_read, read) = tokio::join!(c.get("big"), c.get(format!("k{i}")));
                (i, big_read, read)
            }
        });
        for (i, big_read, read) in futures::future::join_all(reads).await {
            let e = big_read.expect_err("the oversized read fails");
            assert!(too_large(&e), "merge {merge}: {e:?}");
            assert!(!e.is_retryable(), "{e:?}");
            let item = read.unwrap_or_else(|e| panic!("merge {merge}: unrelated k{i}: {e:?}"));
            assert_eq!(s(&item.expect("k{i} is stored").value), format!("v{i}"));
        }
        let e = c.get_many(["k1", "big", "k2"]).await.unwrap_err();
        assert!(too_large(&e), "get_many with the big key: {e:?}");
        let many = c.get_many(["k1", "k2"]).await.unwrap();
        assert_eq!(many.len(), 2);
        let metrics = c.metrics();
        assert_eq!(
            metrics.reconnects, 0,
            "the connection was kept: {metrics:?}"
        );
        assert_eq!(metrics.protocol_errors, 0, "{metrics:?}");
        assert!(c.is_up("n0").unwrap());
    }
}

async fn large_value_round_trips(p: Protocol) {
    let m = Memcached::start_with(&["-I", "4m"]);
    let c = kit::builder_for(&[m.addr()], p)
        .max_value_size(4 << 20)
        .build()
        .unwrap();
    let value: Vec<u8> = (0..(3 << 20)).map(|i: u32| (i % 251) as u8).collect();
    c.set("large", &value, Expiry::Never)
        .await
        .expect("3 MiB set");
    let got = c.get("large").await.unwrap().expect("3 MiB get");
    assert!(
        got.value.as_ref() == &value[..],
        "3 MiB value came back intact"
    );
    // Pipelined small requests behind a large one come back in step.
    let (a, b, d) = tokio::join!(
        c.get("large"),
        c.set("after", "x", Expiry::Never),
        c.get("after")
    );
    assert_eq!(a.unwrap().unwrap().value.len(), value.len());
    b.unwrap();
    let _ = d.unwrap();
}

async fn on_node_routes_every_key_to_that_node_only(p: Protocol) {
    let (cl, c) = cluster(3, p);
    assert!(matches!(c.on_node("nope"), Err(Error::UnknownNode(_))));
    assert_eq!(c.node_ids(), ["n0", "n1", "n2"]);
    for i in 0..3 {
        let id = Cluster::id(i);
        let pinned = c.on_node(&id).expect("on_node");
        // A second client that only knows node i: the ground truth for "is it there".
        let only = kit::client_for(&[cl[i].addr()], p);
        for k in 0..20 {
            let key = format!("pin-{i}-{k}");
            pinned
                .set(&key, format!("on-{id}"), Expiry::Never)
                .await
                .unwrap();
            let got = only.get(&key).await.unwrap();
            assert_eq!(
                got.map(|g| s(&g.value)),
                Some(format!("on-{id}")),
                "{key} on {id}"
            );
            assert_eq!(holders(&cl, &key), vec![i], "{key} only on {id}");
            assert!(pinned.get(&key).await.unwrap().is_some());
        }
    }
    // A pinned flush empties only its node.
    c.set("keep-0", "v", Expiry::Never).await.unwrap();
    let pinned1 = c.on_node("n1").unwrap();
    pinned1.flush_all().await.unwrap();
    assert!(holders(&cl, "pin-1-0").is_empty(), "n1 flushed");
    assert_eq!(holders(&cl, "pin-0-0"), vec![0], "n0 untouched");
    assert_eq!(holders(&cl, "pin-2-0"), vec![2], "n2 untouched");
}

async fn keys_are_spread_over_every_node(p: Protocol) {
    let (cl, c) = cluster(3, p);
    for k in 0..300 {
        c.set(format!("spread-{k}"), "v", Expiry::Never)
            .await
            .unwrap();
    }
    let counts: Vec<u64> = (0..3).map(|i| raw::curr_items(&cl[i].addr())).collect();
    assert_eq!(
        counts.iter().sum::<u64>(),
        300,
        "every key on exactly one node: {counts:?}"
    );
    for (i, n) in counts.iter().enumerate() {
        assert!(*n >= 30, "node n{i} got {n} of 300 keys: {counts:?}");
    }
    // And every key is found again where the client put it.
    for k in 0..300 {
        let key = format!("spread-{k}");
        assert_eq!(holders(&cl, &key).len(), 1);
        assert!(c.get(&key).await.unwrap().is_some(), "{key}");
    }
}

async fn concurrent_callers_each_get_their_own_reply(p: Protocol) {
    let (_cl, c) = cluster(2, p);
    let mut tasks = Vec::new();
    for t in 0..64u64 {
        let c = c.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..20u64 {
                let key = format!("cc-{t}-{i}");
                let val = kit::History::value(&key, t, i, (t * 7 % 50) as usize);
                c.set(&key, &val, Expiry::Never).await.unwrap();
                let got = c.get(&key).await.unwrap().expect("hit");
                assert!(
                    got.value.as_ref() == &val[..],
                    "{key} got {:?}",
                    s(&got.value)
                );
            }
        }));
    }
    for t in tasks {
        t.await.expect("caller task");
    }
}

async fn metrics_count_operations(p: Protocol) {
    let (_m, c) = one(p);
    let before = c.metrics();
    c.set("m", "v", Expiry::Never).await.unwrap();
    c.get("m").await.unwrap();
    c.get("absent").await.unwrap();
    let after = c.metrics();
    assert!(
        after.operations >= before.operations + 3,
        "{before:?} -> {after:?}"
    );
    assert_eq!(after.errors, before.errors, "no errors: {after:?}");
    assert_eq!(after.timeouts, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_configuration_is_refused_naming_the_field() {
    let m = Memcached::start();
    let addr = m.addr();
    let field_of = |r: memkeep::Result<Client>| -> String {
        match r {
            Err(Error::Config { field, reason }) => {
                assert!(!reason.is_empty(), "{field}: a reason is given");
                field.to_string()
            }
            Err(e) => panic!("expected Error::Config, got {e:?}"),
            Ok(_) => panic!("expected Error::Config, the client was built"),
        }
    };
    let f = field_of(Client::builder().build());
    assert!(f.contains("node"), "no nodes: field {f:?}");
    let b = || Client::builder().node(addr.as_str());
    assert_eq!(
        field_of(b().operation_timeout(Duration::ZERO).build()),
        "operation_timeout"
    );
    assert_eq!(
        field_of(b().connect_timeout(Duration::ZERO).build()),
        "connect_timeout"
    );
    assert_eq!(
        field_of(b().connections_per_node(0).build()),
        "connections_per_node"
    );
    assert_eq!(field_of(b().max_in_flight(0).build()), "max_in_flight");
    assert_eq!(field_of(b().max_value_size(0).build()), "max_value_size");
    assert_eq!(
        field_of(b().timeout_threshold(0).build()),
        "timeout_threshold"
    );
    assert_eq!(
        field_of(
            b().reconnect_backoff(Duration::from_secs(10), Duration::from_secs(1))
                .build()
        ),
        "reconnect_backoff"
    );
    let f = field_of(
        Client::builder()
            .node_config(memkeep::NodeConfig::new(addr.as_str()).id("same"))
            .node_config(memkeep::NodeConfig::new("127.0.0.1:1").id("same"))
            .build(),
    );
    assert!(
        f.contains("id") || f.contains("node"),
        "duplicate ids: field {f:?}"
    );
    let f = field_of(
        Client::builder()
            .node_config(memkeep::NodeConfig::new(addr.as_str()).weight(0))
            .build(),
    );
    assert!(
        f.contains("weight") || f.contains("node"),
        "zero weight: field {f:?}"
    );
    let f = field_of(Client::builder().node("127.0.0.1:notaport").build());
    assert!(
        f.contains("node") || f.contains("address"),
        "bad address: field {f:?}"
    );
    // The error says it is a configuration problem and is not retryable.
    let e = Client::builder().build().err().unwrap();
    assert!(!e.is_retryable() && !e.is_node_failure());
    assert!(e.to_string().contains("configuration"), "{e}");
    // And a good configuration builds.
    b().build().expect("a valid configuration builds");
}

/// A node at `unix:/path` (memcached `-s`): every kind of operation, the server's own
/// view through the socket, and a restart of the server behind it.
async fn a_unix_socket_node_serves_every_operation_and_survives_a_restart(p: Protocol) {
    let mut m = Memcached::start_unix(&[]);
    let tcp = Memcached::start();
    let addr = m.addr();
    assert!(addr.starts_with("unix:/"), "{addr}");
    let c = kit::client_for(&[addr.clone(), tcp.addr()], p);
    let unix_only = c.on_node("n0").unwrap();
    unix_only.set("k", "v", Expiry::Never).await.unwrap();
    assert_eq!(
        raw::get(&addr, "k").as_deref(),
        Some("v"),
        "stored on the socket's server"
    );
    assert_eq!(s(&unix_only.get("k").await.unwrap().unwrap().value), "v");
    unix_only.set("n", "41", Expiry::Never).await.unwrap();
    assert_eq!(unix_only.incr("n", 1).await.unwrap(), Some(42));
    assert!(unix_only.delete("k").await.unwrap());
    // Keys spread over both nodes, one of them a UNIX socket.
    let keys: Vec<String> = (0..50).map(|i| format!("spread{i}")).collect();
    for key in &keys {
        c.set(key, key, Expiry::Never).await.unwrap();
    }
    assert_eq!(c.get_many(&keys).await.unwrap().len(), keys.len());
    assert!(raw::curr_items(&addr) > 1 && raw::curr_items(&tcp.addr()) > 0);
    let status = &c.nodes()[0];
    assert_eq!(status.address, addr);
    m.restart();
    let after = kit::no_hang(
        "get after the socket's server restarted",
        CASE_LIMIT,
        async {
            loop {
                match unix_only.set("back", "yes", Expiry::Never).await {
                    Ok(()) => return unix_only.get("back").await.unwrap(),
                    Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
                }
            }
        },
    )
    .await;
    assert_eq!(s(&after.unwrap().value), "yes");
}
