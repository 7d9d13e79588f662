//! Feeds arbitrary bytes to the reply decoders (text and meta, every split point).
//! The decoders must never panic, hang or allocate what a length field merely claims.
//!
//! Run: `RUSTC_BOOTSTRAP=1 cargo fuzz run --fuzz-dir fuzz decode_replies fuzz/corpus fuzz/seeds`
//! (scripts/test.sh does it for a bounded time).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    memkeep::__fuzz::decode_replies(data);
});
