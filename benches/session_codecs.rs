//! Session codec benchmark: serialize / deserialize time and encoded size of realistic
//! sessions with every compiled codec, and the cost of the dirty check.
//!
//! Run: `cargo bench --bench session_codecs --features all-codecs`
//! (without the feature only MessagePack is measured). Sizes are printed first.

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion};
use memkeep::session::{CodecKind, Session};
use serde::{Deserialize, Serialize};

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
struct CartItem {
    sku: String,
    name: String,
    quantity: u32,
    unit_price_cents: u64,
    options: Vec<(String, String)>,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
struct Cart {
    items: Vec<CartItem>,
    coupon: Option<String>,
    currency: String,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
struct Prefs {
    theme: String,
    page_size: u32,
    beta: bool,
}

enum Attr {
    Number(u64),
    Text(String),
    Prefs(Prefs),
}

/// The attribute values, built once (so the measurements are the codecs', not the
/// building of the test data).
struct Data {
    user_id: u64,
    username: String,
    roles: Vec<String>,
    csrf: String,
    locale: String,
    cart: Cart,
    attrs: Vec<(String, Attr)>,
    blob: String,
}

fn data() -> &'static Data {
    static DATA: std::sync::OnceLock<Data> = std::sync::OnceLock::new();
    DATA.get_or_init(|| Data {
        user_id: 4_211_337,
        username: "ann.example".into(),
        roles: vec!["user".into(), "editor".into()],
        csrf: "Zq3v9k2LmPq8XyT0aBcDeFgH1jKlMnOp".into(),
        locale: "en-GB".into(),
        cart: Cart {
            items: (0..20)
                .map(|i| CartItem {
                    sku: format!("SKU-{:06}", 1000 + i),
                    name: format!("Product number {i} with a longer display name"),
                    quantity: 1 + i % 3,
                    unit_price_cents: 499 + 100 * u64::from(i),
                    options: vec![
                        ("size".into(), "M".into()),
                        ("colour".into(), "blue".into()),
                    ],
                })
                .collect(),
            coupon: Some("SPRING10".into()),
            currency: "EUR".into(),
        },
        attrs: (0..100u32)
            .map(|i| {
                let v = match i % 3 {
                    0 => Attr::Number(u64::from(i) * 7919),
                    1 => Attr::Text(format!("value number {i}")),
                    _ => Attr::Prefs(Prefs {
                        theme: "dark".into(),
                        page_size: i,
                        beta: i % 2 == 0,
                    }),
                };
                (format!("attr_{i:03}"), v)
            })
            .collect(),
        blob: "lorem ipsum dolor sit amet, consectetur adipiscing elit. "
            .chars()
            .cycle()
            .take(100 * 1024)
            .collect(),
    })
}

/// Sets the attributes of one scenario on a session and reads them back typed.
#[derive(Clone, Copy)]
enum Scenario {
    Login,
    Cart20,
    Attrs100,
    Blob100k,
}

impl Scenario {
    const ALL: [Scenario; 4] = [
        Scenario::Login,
        Scenario::Cart20,
        Scenario::Attrs100,
        Scenario::Blob100k,
    ];

    fn name(self) -> &'static str {
        match self {
            Scenario::Login => "login",
            Scenario::Cart20 => "cart20",
            Scenario::Attrs100 => "attrs100",
            Scenario::Blob100k => "blob100k",
        }
    }

    fn fill(self, s: &Session) {
        let d = data();
        match self {
            Scenario::Login => {
                s.insert("user_id", &d.user_id).unwrap();
                s.insert("username", &d.username).unwrap();
                s.insert("roles", &d.roles).unwrap();
                s.insert("csrf_token", &d.csrf).unwrap();
                s.insert("locale", &d.locale).unwrap();
            }
            Scenario::Cart20 => {
                s.insert("cart", &d.cart).unwrap();
                s.insert("user_id", &d.user_id).unwrap();
            }
            Scenario::Attrs100 => {
                for (name, value) in &d.attrs {
                    match value {
                        Attr::Number(n) => s.insert(name, n).unwrap(),
                        Attr::Text(t) => s.insert(name, t).unwrap(),
                        Attr::Prefs(p) => s.insert(name, p).unwrap(),
                    }
                }
            }
            Scenario::Blob100k => {
                s.insert("document", &d.blob).unwrap();
            }
        }
    }

    fn read(self, s: &Session) {
        match self {
            Scenario::Login => {
                black_box(s.get::<u64>("user_id").unwrap());
                black_box(s.get::<String>("username").unwrap());
                black_box(s.get::<Vec<String>>("roles").unwrap());
                black_box(s.get::<String>("csrf_token").unwrap());
                black_box(s.get::<String>("locale").unwrap());
            }
            Scenario::Cart20 => {
                black_box(s.get::<Cart>("cart").unwrap());
                black_box(s.get::<u64>("user_id").unwrap());
            }
            Scenario::Attrs100 => {
                for i in 0..100u32 {
                    let name = format!("attr_{i:03}");
                    match i % 3 {
                        0 => drop(black_box(s.get::<u64>(&name).unwrap())),
                        1 => drop(black_box(s.get::<String>(&name).unwrap())),
                        _ => drop(black_box(s.get::<Prefs>(&name).unwrap())),
                    }
                }
            }
            Scenario::Blob100k => {
                black_box(s.get::<String>("document").unwrap());
            }
        }
    }

    /// Marks every attribute live (as a handler that took `get_mut` on each would).
    fn touch_mut(self, s: &Session) {
        let mut d = s.lock();
        match self {
            Scenario::Login => {
                let _ = d.get_mut::<u64>("user_id").unwrap();
                let _ = d.get_mut::<String>("username").unwrap();
                let _ = d.get_mut::<Vec<String>>("roles").unwrap();
                let _ = d.get_mut::<String>("csrf_token").unwrap();
                let _ = d.get_mut::<String>("locale").unwrap();
            }
            Scenario::Cart20 => {
                let _ = d.get_mut::<Cart>("cart").unwrap();
                let _ = d.get_mut::<u64>("user_id").unwrap();
            }
            Scenario::Attrs100 => {
                for i in 0..100u32 {
                    let name = format!("attr_{i:03}");
                    match i % 3 {
                        0 => drop(d.get_mut::<u64>(&name).unwrap()),
                        1 => drop(d.get_mut::<String>(&name).unwrap()),
                        _ => drop(d.get_mut::<Prefs>(&name).unwrap()),
                    }
                }
            }
            Scenario::Blob100k => {
                let _ = d.get_mut::<String>("document").unwrap();
            }
        }
    }
}

fn codecs() -> Vec<CodecKind> {
    CodecKind::ALL
        .into_iter()
        .filter(|c| c.is_available())
        .collect()
}

/// The size table goes to stderr: test runners list a bench binary's tests on stdout.
fn print_sizes() {
    eprintln!("encoded session record size (bytes, incl. the 45-byte header):");
    eprint!("{:<10}", "scenario");
    for c in codecs() {
        eprint!("{:>10}", c.name());
    }
    eprintln!();
    for sc in Scenario::ALL {
        eprint!("{:<10}", sc.name());
        for c in codecs() {
            let s = Session::detached(c).unwrap();
            sc.fill(&s);
            let bytes = s.lock().encode_record().unwrap();
            eprint!("{:>10}", bytes.len());
        }
        eprintln!();
    }
}

fn bench(c: &mut Criterion) {
    for sc in Scenario::ALL {
        let mut group = c.benchmark_group(format!("session/{}", sc.name()));
        for codec in codecs() {
            // serialize: typed attributes in, stored record out (what a changed request pays).
            let target = Session::detached(codec).unwrap();
            group.bench_with_input(
                BenchmarkId::new("serialize", codec.name()),
                &codec,
                |b, _| {
                    b.iter(|| {
                        target.lock().clear();
                        sc.fill(&target);
                        let bytes = target.lock().encode_record().unwrap();
                        black_box(bytes)
                    })
                },
            );
            let s = Session::detached(codec).unwrap();
            sc.fill(&s);
            let record = s.lock().encode_record().unwrap();
            let id = s.id();
            // deserialize: stored record in, every attribute read back typed.
            group.bench_with_input(
                BenchmarkId::new("deserialize", codec.name()),
                &codec,
                |b, _| {
                    b.iter(|| {
                        let loaded = Session::from_record(id.clone(), black_box(&record)).unwrap();
                        sc.read(&loaded);
                    })
                },
            );
            // dirty check of an unchanged session: hashes only...
            let loaded = Session::from_record(id.clone(), &record).unwrap();
            group.bench_with_input(
                BenchmarkId::new("dirty_check", codec.name()),
                &codec,
                |b, _| b.iter(|| black_box(loaded.lock().is_changed().unwrap())),
            );
            // ...and with every attribute handed out mutably (re-encode + hash).
            let live = Session::from_record(id.clone(), &record).unwrap();
            sc.touch_mut(&live);
            group.bench_with_input(
                BenchmarkId::new("dirty_check_live", codec.name()),
                &codec,
                |b, _| b.iter(|| black_box(live.lock().is_changed().unwrap())),
            );
        }
        group.finish();
    }
}

fn main() {
    print_sizes();
    let mut c = Criterion::default().configure_from_args();
    bench(&mut c);
    c.final_summary();
}
