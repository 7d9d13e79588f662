//! Codecs end to end on real memcached: every compiled codec round-trips a session through
//! memcached, a session written with one codec is read by an instance configured with
//! another, and a record from a newer format version is refused cleanly.
//! Run with `--features all-codecs` to cover every codec.

mod kit;
#[path = "kit/session.rs"]
mod session_kit;

use std::time::Duration;

use kit::Cluster;
use memkeep::session::{BackupSessionService, CodecKind, Mode};
use memkeep::Expiry;
use serde::{Deserialize, Serialize};
use session_kit::{config, observer, Browser};

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
struct Cart {
    items: Vec<(String, u32)>,
    coupon: Option<String>,
}

fn cart() -> Cart {
    Cart {
        items: vec![("book".into(), 2), ("pen".into(), 10)],
        coupon: None,
    }
}

#[tokio::test]
async fn a_session_written_with_any_codec_is_read_by_an_instance_configured_with_another() {
    let cluster = Cluster::start(2);
    for codec in CodecKind::ALL.into_iter().filter(|c| c.is_available()) {
        let writer = BackupSessionService::new(
            config(&cluster, Mode::NonSticky)
                .codec(codec)
                .build()
                .unwrap(),
        )
        .unwrap();
        let reader = BackupSessionService::new(
            config(&cluster, Mode::NonSticky)
                .codec(CodecKind::MessagePack)
                .build()
                .unwrap(),
        )
        .unwrap();
        let mut browser = Browser::new();
        browser
            .call(&writer, "/add", |s| {
                s.insert("cart", &cart()).unwrap();
                s.insert("user", "ann").unwrap();
            })
            .await
            .unwrap();
        // The reader changes it: the session keeps its own codec.
        browser
            .call(&reader, "/add", |s| {
                assert_eq!(s.get::<Cart>("cart").unwrap(), Some(cart()), "{codec}");
                s.update::<Cart, _>("cart", |c| c.coupon = Some("X".into()))
                    .unwrap();
            })
            .await
            .unwrap();
        let (c, _) = browser
            .visit(&writer, "/r", |s| s.unwrap().get::<Cart>("cart").unwrap())
            .await
            .unwrap();
        assert_eq!(c.unwrap().coupon.as_deref(), Some("X"), "{codec}");
    }
}

#[tokio::test]
async fn a_record_of_a_newer_format_version_is_refused_and_counted() {
    let cluster = Cluster::start(2);
    let svc =
        BackupSessionService::new(config(&cluster, Mode::NonSticky).build().unwrap()).unwrap();
    let mut browser = Browser::new();
    browser.increment(&svc, "n").await.unwrap();
    let id = browser.id().unwrap();
    let obs = observer(&cluster);
    let k = id.key().to_string();
    for (node, key) in [(id.node(), k.clone()), (id.backup().unwrap(), k.clone())] {
        let c = obs.on_node(node).unwrap();
        let mut record = c.get(&key).await.unwrap().unwrap().value.to_vec();
        record[2] = 99; // format version byte
        c.set(&key, &record, Expiry::In(Duration::from_secs(600)))
            .await
            .unwrap();
    }
    assert_eq!(browser.read_u64(&svc, "n").await.unwrap(), None);
    assert_eq!(svc.stats().foreign_records, 2);
}
