//! Micro-benchmarks of the wire codec and the node locators.
//!
//! ```text
//! cargo bench --bench codec
//! ```
//!
//! Each benchmark asserts its result inside the timed loop, so a broken codec can't
//! produce a fast number.

use bytes::BytesMut;
use criterion::{black_box, criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use memkeep::__bench;
use memkeep::locator::{
    HashAlgorithm, KetamaLayout, KetamaLocator, LocatorNode, ModuloLocator, NodeLocator,
};

fn replies(n: usize, meta: bool) -> Vec<u8> {
    let value = [b'v'; 100];
    let mut out = Vec::new();
    for i in 0..n {
        if meta {
            out.extend_from_slice(format!("VA 100 f0 O{i}\r\n").as_bytes());
        } else {
            out.extend_from_slice(format!("VALUE key:{i} 0 100\r\n").as_bytes());
        }
        out.extend_from_slice(&value);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(if meta { b"MN\r\n" } else { b"END\r\n" });
    out
}

fn decode(c: &mut Criterion) {
    let mut group = c.benchmark_group("decode");
    for (name, meta) in [("meta_100_values", true), ("text_100_values", false)] {
        let bytes = replies(100, meta);
        group.throughput(Throughput::Bytes(bytes.len() as u64));
        group.bench_function(name, |b| {
            b.iter_batched(
                || BytesMut::from(&bytes[..]),
                |mut buf| assert_eq!(__bench::decode_frames(&mut buf), 101),
                BatchSize::SmallInput,
            )
        });
    }
    group.finish();
}

fn encode(c: &mut Criterion) {
    let mut group = c.benchmark_group("encode");
    let value = [b'v'; 100];
    let mut buf = BytesMut::with_capacity(64 * 1024);
    group.bench_function("meta_get", |b| {
        b.iter(|| {
            buf.clear();
            __bench::encode_meta_get(black_box(b"key:1234"), &mut buf);
            assert_eq!(&buf[..], b"mg key:1234 v f O1\r\n");
        })
    });
    group.bench_function("meta_set_100b", |b| {
        b.iter(|| {
            buf.clear();
            __bench::encode_meta_set(black_box(b"key:1234"), &value, &mut buf);
            assert!(buf.len() > 100);
        })
    });
    let keys: Vec<Vec<u8>> = (0..100).map(|i| format!("key:{i}").into_bytes()).collect();
    let refs: Vec<&[u8]> = keys.iter().map(Vec::as_slice).collect();
    group.bench_function("text_get_many_100", |b| {
        b.iter(|| {
            buf.clear();
            __bench::encode_text_get_many(black_box(&refs), &mut buf);
            assert!(buf.ends_with(b"\r\n"));
        })
    });
    group.finish();
}

fn locators(c: &mut Criterion) {
    let nodes: Vec<LocatorNode> = (0..10)
        .map(|i| LocatorNode {
            host: format!("10.0.0.{i}"),
            port: 11211,
            weight: 1,
        })
        .collect();
    let keys: Vec<Vec<u8>> = (0..1024)
        .map(|i| format!("session:{i:08}").into_bytes())
        .collect();
    let locators: Vec<(&str, Box<dyn NodeLocator>)> = vec![
        (
            "ketama_spymemcached",
            Box::new(KetamaLocator::new(KetamaLayout::Spymemcached, &nodes).expect("valid nodes")),
        ),
        (
            "ketama_libmemcached",
            Box::new(
                KetamaLocator::new(
                    KetamaLayout::Libmemcached(HashAlgorithm::OneAtATime),
                    &nodes,
                )
                .expect("valid nodes"),
            ),
        ),
        (
            "modulo_fnv1a_32",
            Box::new(ModuloLocator::new(HashAlgorithm::Fnv1a_32, &nodes).expect("valid nodes")),
        ),
    ];
    let mut group = c.benchmark_group("locate_1024_keys_10_nodes");
    group.throughput(Throughput::Elements(keys.len() as u64));
    for (name, locator) in &locators {
        group.bench_function(*name, |b| {
            b.iter(|| {
                let mut sum = 0usize;
                for key in &keys {
                    let node = locator.primary(black_box(key));
                    assert!(node < 10);
                    sum += node;
                }
                sum
            })
        });
    }
    group.finish();
}

criterion_group!(benches, decode, encode, locators);
criterion_main!(benches);
