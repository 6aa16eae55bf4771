//! Frames come from any peer that reaches port 6783, before and without any password: the
//! decoder must never panic, never buffer more than the frame limit, and never yield a frame
//! over it, however the bytes are split. Input: one byte choosing the split size (and a lower
//! limit), then the stream.
//!
//!     cd crates/mesh/fuzz && cargo fuzz run -s none frames -- -max_total_time=60
#![no_main]

use libfuzzer_sys::fuzz_target;
use twill_mesh::proto::{FrameDecoder, MAX_FRAME_LEN};

fuzz_target!(|data: &[u8]| {
    let Some((&knob, stream)) = data.split_first() else {
        return;
    };
    let chunk = usize::from(knob % 64) + 1;
    let limit = if knob & 0x80 != 0 {
        4096
    } else {
        MAX_FRAME_LEN
    };
    let mut decoder = FrameDecoder::with_limit(limit);
    'feed: for piece in stream.chunks(chunk) {
        let mut input = piece;
        loop {
            match decoder.decode(&mut input) {
                Ok(Some(frame)) => {
                    assert!(frame.wire_len() <= limit as usize);
                    // What decodes re-encodes to the same frame.
                    let wire = frame.encode().expect("a decoded frame re-encodes");
                    let mut again = FrameDecoder::new();
                    let mut wire_in = &wire[..];
                    assert_eq!(again.decode(&mut wire_in), Ok(Some(frame)));
                }
                Ok(None) => {
                    assert!(input.is_empty());
                    break;
                }
                Err(_) => break 'feed,
            }
        }
    }
});
