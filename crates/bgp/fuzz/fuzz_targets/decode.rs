//! Fuzz target: the BGP framing codec and message decoder on arbitrary bytes, in both
//! 2- and 4-octet AS modes. It must never panic; a treat-as-withdraw result must announce
//! nothing; whatever UPDATE content it accepts must encode again and decode to the same
//! prefixes.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use tokio_util::codec::Decoder;
use twill_bgp::codec::{self, BgpCodec, Incoming};

fuzz_target!(|data: &[u8]| {
    for asn4 in [true, false] {
        // As a stream: frames as the session would cut them.
        let mut c = BgpCodec { asn4 };
        let mut buf = BytesMut::from(data);
        while let Ok(Some(_)) = c.decode(&mut buf) {}

        // As one message with a valid header around the input, so the body parsers are
        // reached for every message type.
        for ty in 1u8..=5 {
            let mut msg = vec![0xffu8; 16];
            let len = (19 + data.len()).min(4096);
            msg.extend_from_slice(&(len as u16).to_be_bytes());
            msg.push(ty);
            msg.extend_from_slice(&data[..len - 19]);
            let Ok(Incoming::Update(u)) = codec::decode_message(&msg, asn4) else {
                continue;
            };
            if u.treat_as_withdraw.is_some() {
                assert!(u.announced.is_empty());
            }
            let announce: Vec<_> = u
                .announced
                .iter()
                .flat_map(|(a, ns)| ns.iter().map(move |n| (a.clone(), *n)))
                .collect();
            if let Ok(msgs) = codec::encode_updates(&announce, &u.withdrawn, asn4) {
                let mut got = 0;
                for m in msgs {
                    let bytes = codec::encode_message(&m).expect("encodes");
                    match codec::decode_message(&bytes, asn4) {
                        Ok(Incoming::Update(again)) => {
                            got += again.announced.iter().map(|(_, n)| n.len()).sum::<usize>()
                        }
                        other => panic!("re-encoded UPDATE does not decode: {other:?}"),
                    }
                }
                assert_eq!(got, announce.len());
            }
        }
    }
});
