//! The hello is the first thing a stranger sends, in clear: parsing must never panic, whatever
//! parses re-encodes to a hello that parses the same, and a prefix of a hello is either
//! "need more" or the same refusal. Input: the bytes after the magic.
//!
//!     cd crates/mesh/fuzz && cargo fuzz run -s none hello -- -max_total_time=60
#![no_main]

use libfuzzer_sys::fuzz_target;
use twill_mesh::proto::{Hello, MAGIC};

fuzz_target!(|data: &[u8]| {
    let _ = Hello::parse(data);
    let mut wire = MAGIC.to_vec();
    wire.extend_from_slice(data);
    if let Ok(Some((hello, used))) = Hello::parse(&wire) {
        assert!(used <= wire.len());
        let encoded = hello.encode().expect("a parsed hello re-encodes");
        let (again, _) = Hello::parse(&encoded)
            .expect("re-encoded hello parses")
            .expect("re-encoded hello is complete");
        assert_eq!(again, hello);
    }
});
