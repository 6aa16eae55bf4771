//! The plugin's inputs come from the runtime and, through it, from whoever wrote the network
//! configuration and the pod's annotations: `CNI_ARGS`, the network configuration and its
//! `runtimeConfig` must parse or fail with an error, never panic, and whatever parses keeps
//! the plugin's invariants (spec network name, absolute dataDir, no reserved range).
//! Input: CNI_ARGS, a NUL byte, the configuration JSON.
//!
//!     cd crates/cni/fuzz && cargo fuzz run -s none config -- -max_total_time=60
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    twill_cni::config::check_parse(data);
});
