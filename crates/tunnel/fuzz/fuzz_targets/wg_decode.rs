//! Fuzz target: the WireGuard receive path (message classification, mac1/cookie checks, peer
//! lookup by key or index, replay window, AEAD, inner-packet policy) on arbitrary bytes. The
//! first byte picks how the rest is fed: raw as a datagram, sealed in the peer's real
//! session (so that the decrypted inner packet reaches the policy checks), or sealed and then
//! replayed. It must never panic.
#![no_main]

use std::cell::RefCell;

use libfuzzer_sys::fuzz_target;
use twill_tunnel::wg::fuzzing::Harness;

thread_local! {
    // Establishing the session costs two Diffie-Hellmans: once per process, not per input.
    static HARNESS: RefCell<Harness> = RefCell::new(Harness::new());
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    HARNESS.with(|h| {
        let mut h = h.borrow_mut();
        let before = h.outcome().delivered;
        match mode % 3 {
            0 => h.feed(rest),
            1 => h.feed_sealed(rest),
            _ => {
                // A sealed message and its replay: delivered at most once.
                let sealed = h.seal(rest);
                h.feed(&sealed);
                h.feed(&sealed);
                assert!(h.outcome().delivered <= before + 1, "a replay was delivered");
            }
        }
        // Raw bytes never authenticate: only sealed input may deliver anything.
        if mode % 3 == 0 {
            assert_eq!(h.outcome().delivered, before, "unauthenticated bytes delivered");
        }
    });
});
