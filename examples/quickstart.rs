//! Starts a local memcached, stores and reads through the client, and prints what it
//! did: the first-run check that the client works on this machine.
//!
//! ```text
//! cargo run --example quickstart
//! ```

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use memkeep::{Client, Expiry, Protocol};

/// A memcached child process, killed on drop.
struct Server {
    child: Child,
    address: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_memcached() -> Result<Server, String> {
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(|e| format!("no free port: {e}"))?
        .port();
    let mut cmd = Command::new("memcached");
    // `-u` only takes effect when started as root, where memcached insists on it.
    cmd.args([
        "-l",
        "127.0.0.1",
        "-p",
        &port.to_string(),
        "-U",
        "0",
        "-m",
        "64",
        "-u",
        "nobody",
    ]);
    let child = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| {
            format!("cannot start memcached ({e}); install it with `apt-get install memcached`")
        })?;
    let address = format!("127.0.0.1:{port}");
    let server = Server { child, address };
    let deadline = Instant::now() + Duration::from_secs(5);
    while std::net::TcpStream::connect(&server.address).is_err() {
        if Instant::now() > deadline {
            return Err("memcached did not start listening within 5 s".into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(server)
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let server = start_memcached()?;
    println!("started memcached on {}", server.address);

    for protocol in [Protocol::Meta, Protocol::Text] {
        let client = Client::builder()
            .node(&server.address)
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
