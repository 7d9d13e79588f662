//! Starts a local memcached, stores and reads through the client, and prints what it
//! did: the first-run check that the client works on this machine.
//!
//! ```text
//! cargo run --example quickstart
//! ```

use std::time::Duration;

use memkeep::{Client, Expiry, Protocol};

#[path = "common/local_memcached.rs"]
mod local_memcached;

/// Starts `memcached` from the `PATH` (64 MB): the server this example talks to.
fn start_memcached() -> Result<local_memcached::LocalMemcached, String> {
    // `-u` only takes effect when started as root, where memcached insists on it.
    local_memcached::start_local_memcached(
        "memcached",
        &["-m", "64", "-u", "nobody"],
        Duration::from_secs(5),
    )
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let server = start_memcached()?;
    let address = server.address();
    println!("started memcached on {address}");

    for protocol in [Protocol::Meta, Protocol::Text] {
        let client = Client::builder()
            .node(&address)
            .protocol(protocol)
            .build()?;
        println!("\n-- {protocol:?} protocol --");

        client
            .set(
                "greeting",
                "hello, memcached",
                Expiry::In(Duration::from_secs(60)),
            )
            .await?;
        let item = client.get("greeting").await?;
        println!(
            "set greeting, read back {:?}",
            item.map(|i| String::from_utf8_lossy(&i.value).into_owned())
        );

        let added = client.add("greeting", "again", Expiry::Never).await?;
        println!("add of an existing key stored: {added}");

        client.set("visits", "41", Expiry::Never).await?;
        println!("incr visits by 1 -> {:?}", client.incr("visits", 1).await?);

        let item = client.gets("greeting").await?.ok_or("greeting vanished")?;
        let cas = item.cas.ok_or("no cas token")?;
        println!(
            "cas with the fresh token -> {:?}",
            client
                .cas("greeting", "updated", Expiry::Never, cas)
                .await?
        );
        println!(
            "cas with the stale token -> {:?}",
            client.cas("greeting", "lost", Expiry::Never, cas).await?
        );

        let keys: Vec<String> = (0..5).map(|i| format!("many:{i}")).collect();
        for key in &keys {
            client.set(key, key.to_uppercase(), Expiry::Never).await?;
        }
        let found = client.get_many(&keys).await?;
        println!("get_many of {} keys found {}", keys.len(), found.len());

        println!("delete greeting -> {}", client.delete("greeting").await?);
        println!(
            "get greeting after delete -> {:?}",
            client.get("greeting").await?
        );
        for (node, version) in client.version().await {
            println!("node {node} runs memcached {}", version?);
        }
        println!("client metrics: {:?}", client.metrics());
        client.flush_all().await?;
    }
    Ok(())
}
