//! The mesh control protocol (crates/mesh/src/proto.rs) end to end over byte buffers: hellos
//! and version negotiation, framing with its bounds and partial input, and the password
//! handshake with sealed frames (wrong password, no password, tampering, replay).

use std::sync::OnceLock;

use proptest::prelude::*;
use twill_mesh::proto::*;

fn psk(password: &str) -> Psk {
    // Argon2id is slow unoptimised: derive each test password once.
    static RIGHT: OnceLock<Psk> = OnceLock::new();
    static WRONG: OnceLock<Psk> = OnceLock::new();
    match password {
        "right" => RIGHT.get_or_init(|| Psk::from_password(b"right").unwrap()),
        "wrong" => WRONG.get_or_init(|| Psk::from_password(b"wrong").unwrap()),
        _ => unreachable!(),
    }
    .clone()
}

fn decode_all(decoder: &mut FrameDecoder, mut input: &[u8]) -> Result<Vec<Frame>, ProtoError> {
    let mut frames = Vec::new();
    while let Some(frame) = decoder.decode(&mut input)? {
        frames.push(frame);
    }
    assert!(input.is_empty(), "decoder left input behind");
    Ok(frames)
}

fn sample_frames() -> Vec<Frame> {
    vec![
        Frame::Heartbeat,
        Frame::Gossip {
            channel: Channel::TOPOLOGY,
            payload: b"peers".to_vec(),
        },
        Frame::Gossip {
            channel: Channel::RING,
            payload: vec![],
        },
        Frame::Close {
            reason: "shutting down".into(),
        },
    ]
}

#[test]
fn hello_round_trips_and_parses_byte_by_byte() {
    let hello = Hello::new("aa:bb:cc:dd:ee:ff", "node-1", 0x0123_4567_89ab_cdef, true);
    let wire = hello.encode().unwrap();
    assert!(wire.starts_with(b"twill-mesh"));
    let (parsed, used) = Hello::parse(&wire).unwrap().unwrap();
    assert_eq!((parsed, used), (hello.clone(), wire.len()));
    for cut in 0..wire.len() {
        assert_eq!(Hello::parse(&wire[..cut]).unwrap(), None, "cut at {cut}");
    }
    // Bytes after the hello (the next stage) are not consumed.
    let mut more = wire.clone();
    more.extend_from_slice(b"xyz");
    assert_eq!(Hello::parse(&more).unwrap().unwrap().1, wire.len());
}

#[test]
fn hello_refuses_strangers_early_and_bad_fields() {
    assert_eq!(Hello::parse(b"GET / HTTP/1.1"), Err(ProtoError::BadMagic));
    assert_eq!(Hello::parse(b"tw0"), Err(ProtoError::BadMagic));
    let mut long = b"twill-mesh".to_vec();
    long.extend_from_slice(&u16::MAX.to_be_bytes());
    assert_eq!(
        Hello::parse(&long),
        Err(ProtoError::HelloTooLong(u16::MAX as usize))
    );
    assert!(Hello::new("", "n", 1, false).encode().is_err());
    assert!(Hello::new("a\nb", "n", 1, false).encode().is_err());
    // A body too short for its own name length.
    let mut wire = Hello::new("peer", "nick", 1, false).encode().unwrap();
    wire[10..12].copy_from_slice(&15u16.to_be_bytes());
    wire.truncate(12 + 15);
    assert!(matches!(Hello::parse(&wire), Err(ProtoError::BadHello(_))));
}

#[test]
fn version_negotiation_picks_highest_common_or_refuses() {
    let mut a = Hello::new("a", "", 1, false);
    let mut b = Hello::new("b", "", 2, false);
    (a.min_version, a.max_version) = (1, 3);
    (b.min_version, b.max_version) = (2, 5);
    assert_eq!(negotiate(&a, &b), Ok(3));
    assert_eq!(negotiate(&b, &a), Ok(3));
    (b.min_version, b.max_version) = (4, 5);
    let err = negotiate(&a, &b).unwrap_err();
    assert_eq!(
        err,
        ProtoError::NoCommonVersion {
            our_min: 1,
            our_max: 3,
            their_min: 4,
            their_max: 5
        }
    );
    assert!(err.to_string().contains("1..=3") && err.to_string().contains("4..=5"));
}

#[test]
fn frames_round_trip_whole_and_byte_by_byte() {
    let frames = sample_frames();
    let mut wire = Vec::new();
    for f in &frames {
        f.encode_into(&mut wire).unwrap();
    }
    assert_eq!(decode_all(&mut FrameDecoder::new(), &wire).unwrap(), frames);

    let mut decoder = FrameDecoder::new();
    let mut got = Vec::new();
    for byte in &wire {
        let mut one = std::slice::from_ref(byte);
        if let Some(f) = decoder.decode(&mut one).unwrap() {
            got.push(f);
        }
        assert!(one.is_empty());
    }
    assert_eq!(got, frames);
    assert!(!decoder.is_mid_frame());
}

#[test]
fn oversize_frames_are_refused_from_the_header_alone() {
    let mut decoder = FrameDecoder::new();
    let header = (MAX_FRAME_LEN + 1).to_be_bytes();
    let mut input = &header[..];
    assert_eq!(
        decoder.decode(&mut input),
        Err(ProtoError::FrameTooLarge(MAX_FRAME_LEN + 1))
    );
    assert_eq!(decoder.decode(&mut &b"x"[..]), Err(ProtoError::Poisoned));

    // The largest allowed frame passes; one byte more is refused by the encoder too.
    let payload = vec![7u8; MAX_FRAME_LEN as usize - 2];
    let max = Frame::Gossip {
        channel: Channel::RING,
        payload,
    };
    let wire = max.encode().unwrap();
    assert_eq!(
        decode_all(&mut FrameDecoder::new(), &wire).unwrap(),
        vec![max]
    );
    let over = Frame::Gossip {
        channel: Channel::RING,
        payload: vec![7u8; MAX_FRAME_LEN as usize - 1],
    };
    assert!(matches!(over.encode(), Err(ProtoError::FrameTooLarge(_))));
}

#[test]
fn malformed_frames_are_errors() {
    for (wire, want) in [
        (&[0, 0, 0, 0][..], ProtoError::EmptyFrame),
        (&[0, 0, 0, 1, 9][..], ProtoError::UnknownMessageType(9)),
        (&[0, 0, 0, 2, 1, 0][..], ProtoError::BadPayload("heartbeat")),
        (&[0, 0, 0, 1, 2][..], ProtoError::BadPayload("gossip")),
        (&[0, 0, 0, 2, 3, 0xff][..], ProtoError::BadPayload("close")),
    ] {
        assert_eq!(decode_all(&mut FrameDecoder::new(), wire), Err(want));
    }
}

#[test]
fn security_mode_refuses_a_password_on_one_side_only() {
    let with = Hello::new("a", "", 1, true);
    let without = Hello::new("b", "", 2, false);
    assert_eq!(
        SecurityMode::choose(true, &with),
        Ok(SecurityMode::Encrypted)
    );
    assert_eq!(
        SecurityMode::choose(false, &without),
        Ok(SecurityMode::Clear)
    );
    assert_eq!(
        SecurityMode::choose(true, &without),
        Err(ProtoError::PeerHasNoPassword)
    );
    assert_eq!(
        SecurityMode::choose(false, &with),
        Err(ProtoError::PeerHasPassword)
    );
    assert!(!SecurityMode::Clear.is_encrypted());
    assert!(SecurityMode::Clear.to_string().starts_with("UNENCRYPTED"));
}

/// Runs the handshake between two ends; returns (initiator, responder) transports.
fn handshake(
    initiator_psk: &Psk,
    responder_psk: &Psk,
    initiator_prologue: &[u8],
    responder_prologue: &[u8],
) -> Result<(Transport, Transport), ProtoError> {
    let (mut init, first) = Handshake::initiator(initiator_psk, initiator_prologue)?;
    let mut resp = Handshake::responder(responder_psk, responder_prologue)?;
    let mut input = &first[..];
    let HandshakeStep::Done {
        send,
        transport: resp_t,
    } = resp.read(&mut input)?
    else {
        panic!("responder needs more after a whole message");
    };
    assert!(input.is_empty());
    let mut input = &send[..];
    let HandshakeStep::Done {
        send,
        transport: init_t,
    } = init.read(&mut input)?
    else {
        panic!("initiator needs more after a whole message");
    };
    assert!(send.is_empty());
    Ok((*init_t, *resp_t))
}

fn hellos() -> (Vec<u8>, Vec<u8>) {
    (
        Hello::new("a", "", 1, true).encode().unwrap(),
        Hello::new("b", "", 2, true).encode().unwrap(),
    )
}

#[test]
fn sealed_frames_round_trip_both_ways_including_large_ones() {
    let (ha, hb) = hellos();
    let p = prologue(&ha, &hb);
    let (mut a, mut b) = handshake(&psk("right"), &psk("right"), &p, &p).unwrap();
    assert!(a.peer_confirmed() && !b.peer_confirmed());

    let mut frames = sample_frames();
    // Larger than one Noise message: cut into several records.
    frames.push(Frame::Gossip {
        channel: Channel::TOPOLOGY,
        payload: (0..200_000u32).map(|i| i as u8).collect(),
    });
    let mut wire = Vec::new();
    for f in &frames {
        wire.extend(a.seal(f).unwrap());
    }
    // The plaintext never shows on the wire.
    assert!(!wire.windows(13).any(|w| w == b"shutting down"));
    // Fed in odd-sized pieces.
    let mut got = Vec::new();
    for chunk in wire.chunks(777) {
        let mut input = chunk;
        while let Some(f) = b.open(&mut input).unwrap() {
            got.push(f);
        }
        assert!(input.is_empty());
    }
    assert_eq!(got, frames);
    assert!(b.peer_confirmed());

    let back = b.seal(&Frame::Heartbeat).unwrap();
    assert_eq!(a.open(&mut &back[..]).unwrap(), Some(Frame::Heartbeat));
}

#[test]
fn wrong_password_fails_the_handshake_at_the_first_message() {
    let (ha, hb) = hellos();
    let p = prologue(&ha, &hb);
    let err = handshake(&psk("wrong"), &psk("right"), &p, &p).unwrap_err();
    assert_eq!(err, ProtoError::HandshakeFailed);
    let err = handshake(&psk("right"), &psk("wrong"), &p, &p).unwrap_err();
    assert_eq!(err, ProtoError::HandshakeFailed);
}

#[test]
fn handshake_messages_fed_byte_by_byte_and_a_failed_handshake_stays_failed() {
    let (ha, hb) = hellos();
    let p = prologue(&ha, &hb);
    let (mut init, first) = Handshake::initiator(&psk("right"), &p).unwrap();
    let mut resp = Handshake::responder(&psk("right"), &p).unwrap();
    let mut answer = None;
    for byte in &first {
        let mut one = std::slice::from_ref(byte);
        match resp.read(&mut one).unwrap() {
            HandshakeStep::NeedMore => assert!(answer.is_none()),
            HandshakeStep::Done { send, transport } => answer = Some((send, transport)),
        }
    }
    let (send, mut resp_t) = answer.expect("responder finished");
    // The answer and a first sealed frame arrive together; the frame stays in the input.
    let mut wire = send;
    wire.extend(resp_t.seal(&Frame::Heartbeat).unwrap());
    let mut input = &wire[..];
    let mut init_t = loop {
        if let HandshakeStep::Done { send, transport } = init.read(&mut input).unwrap() {
            assert!(send.is_empty());
            break transport;
        }
    };
    assert_eq!(init_t.open(&mut input).unwrap(), Some(Frame::Heartbeat));
    assert!(input.is_empty());
    let sealed = init_t.seal(&Frame::Heartbeat).unwrap();
    assert!(!resp_t.peer_confirmed());
    assert_eq!(
        resp_t.open(&mut &sealed[..]).unwrap(),
        Some(Frame::Heartbeat)
    );
    assert!(resp_t.peer_confirmed());

    let mut wrong = Handshake::responder(&psk("wrong"), &p).unwrap();
    let (_, first) = Handshake::initiator(&psk("right"), &p).unwrap();
    assert_eq!(
        wrong.read(&mut &first[..]).unwrap_err(),
        ProtoError::HandshakeFailed
    );
    let (_, retry) = Handshake::initiator(&psk("wrong"), &p).unwrap();
    assert_eq!(
        wrong.read(&mut &retry[..]).unwrap_err(),
        ProtoError::Poisoned
    );
}

#[test]
fn an_altered_hello_fails_the_handshake() {
    let (ha, hb) = hellos();
    let hb_forged = Hello::new("b", "", 3, true).encode().unwrap();
    let err = handshake(
        &psk("right"),
        &psk("right"),
        &prologue(&ha, &hb_forged),
        &prologue(&ha, &hb),
    )
    .unwrap_err();
    assert_eq!(err, ProtoError::HandshakeFailed);
}

#[test]
fn a_peer_without_password_sending_clear_frames_is_refused_by_a_password_peer() {
    // Even if the password side were driven past the hello check, clear frames fed to the
    // handshake are not a Noise message that opens.
    let (_, hb) = hellos();
    let ha = Hello::new("a", "", 1, false).encode().unwrap();
    let p = prologue(&ha, &hb);
    let mut resp = Handshake::responder(&psk("right"), &p).unwrap();
    let clear = Frame::Gossip {
        channel: Channel::RING,
        payload: vec![0; 60],
    }
    .encode()
    .unwrap();
    let mut input = &clear[..];
    let outcome = loop {
        match resp.read(&mut input) {
            Ok(HandshakeStep::NeedMore) if input.is_empty() => break None,
            Ok(HandshakeStep::NeedMore) => continue,
            Ok(HandshakeStep::Done { .. }) => panic!("a clear frame completed the handshake"),
            Err(e) => break Some(e),
        }
    };
    // A clear frame's length starts with two zero bytes: an empty record, refused.
    assert_eq!(outcome, Some(ProtoError::HandshakeFailed));
    assert_eq!(
        SecurityMode::choose(true, &Hello::parse(&ha).unwrap().unwrap().0),
        Err(ProtoError::PeerHasNoPassword)
    );
}

#[test]
fn tampering_with_any_byte_of_a_sealed_frame_is_detected() {
    let (ha, hb) = hellos();
    let p = prologue(&ha, &hb);
    let frame = Frame::Gossip {
        channel: Channel::TOPOLOGY,
        payload: b"the topology".to_vec(),
    };
    let (mut a, _) = handshake(&psk("right"), &psk("right"), &p, &p).unwrap();
    let sealed_len = a.seal(&frame).unwrap().len();
    for i in 0..sealed_len {
        // A fresh session per case: the first failure poisons a session.
        let (mut a, mut b) = handshake(&psk("right"), &psk("right"), &p, &p).unwrap();
        let mut bad = a.seal(&frame).unwrap();
        bad[i] ^= 0x01;
        let mut input = &bad[..];
        let result = b.open(&mut input);
        // Flipping the length field makes the record shorter (rejected) or longer (waits for
        // bytes that never come, and nothing is believed meanwhile).
        match result {
            Err(ProtoError::RecordRejected) => {}
            Ok(None) if i < 2 => {}
            other => panic!("byte {i} tampered: {other:?}"),
        }
        assert!(
            !b.peer_confirmed(),
            "byte {i} tampered yet the peer counts as confirmed"
        );
    }
}

#[test]
fn replayed_and_reordered_records_are_detected() {
    let (ha, hb) = hellos();
    let p = prologue(&ha, &hb);
    let (mut a, mut b) = handshake(&psk("right"), &psk("right"), &p, &p).unwrap();
    let first = a.seal(&Frame::Heartbeat).unwrap();
    let second = a
        .seal(&Frame::Close {
            reason: "bye".into(),
        })
        .unwrap();
    assert_eq!(b.open(&mut &first[..]).unwrap(), Some(Frame::Heartbeat));
    assert_eq!(b.open(&mut &first[..]), Err(ProtoError::RecordRejected));
    // The session is dead after that; a fresh one shows reordering fails too.
    assert_eq!(b.open(&mut &second[..]), Err(ProtoError::Poisoned));
    let (mut a, mut b) = handshake(&psk("right"), &psk("right"), &p, &p).unwrap();
    let _skipped = a.seal(&Frame::Heartbeat).unwrap();
    let later = a.seal(&Frame::Heartbeat).unwrap();
    assert_eq!(b.open(&mut &later[..]), Err(ProtoError::RecordRejected));
}

#[test]
fn a_replayed_first_handshake_message_gives_the_replayer_nothing() {
    let (ha, hb) = hellos();
    let p = prologue(&ha, &hb);
    let (_init, first) = Handshake::initiator(&psk("right"), &p).unwrap();
    // The responder accepts the (replayed) message but is not confirmed, and a record from
    // anyone but the real initiator's ephemeral key does not open.
    let mut resp = Handshake::responder(&psk("right"), &p).unwrap();
    let HandshakeStep::Done { transport, .. } = resp.read(&mut &first[..]).unwrap() else {
        panic!("needs more");
    };
    let mut transport = *transport;
    assert!(!transport.peer_confirmed());
    let (mut other, _) = handshake(&psk("right"), &psk("right"), &p, &p).unwrap();
    let forged = other.seal(&Frame::Heartbeat).unwrap();
    assert_eq!(
        transport.open(&mut &forged[..]),
        Err(ProtoError::RecordRejected)
    );
    assert!(!transport.peer_confirmed());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn arbitrary_bytes_never_panic_the_decoders(
        data in proptest::collection::vec(any::<u8>(), 0..4096),
        cut in 1usize..64,
        limit in 1u32..2048,
    ) {
        let mut decoder = FrameDecoder::with_limit(limit);
        for chunk in data.chunks(cut) {
            let mut input = chunk;
            loop {
                match decoder.decode(&mut input) {
                    Ok(Some(frame)) => {
                        prop_assert!(frame.wire_len() <= limit as usize);
                        let wire = frame.encode().unwrap();
                        prop_assert_eq!(decode_all(&mut FrameDecoder::new(), &wire), Ok(vec![frame]));
                    }
                    Ok(None) => { prop_assert!(input.is_empty()); break }
                    Err(_) => break,
                }
            }
        }
        let _ = Hello::parse(&data);
        let mut with_magic = b"twill-mesh".to_vec();
        with_magic.extend_from_slice(&data);
        // Whatever parses re-encodes to a hello that parses the same (what the agent shows
        // in status is what the peer said, canonically).
        if let Ok(Some((hello, used))) = Hello::parse(&with_magic) {
            prop_assert!(used <= with_magic.len());
            let again = Hello::parse(&hello.encode().unwrap()).unwrap().unwrap().0;
            prop_assert_eq!(again, hello);
        }
    }

    #[test]
    fn parsed_hellos_from_plausible_bodies_re_encode(
        versions in any::<[u16; 2]>(),
        flags in any::<u8>(),
        uid in any::<u64>(),
        name in "[a-z0-9:]{0,12}",
        nick in "[a-z0-9-]{0,12}",
        trailer in proptest::collection::vec(any::<u8>(), 0..8),
    ) {
        let mut body = Vec::new();
        body.extend_from_slice(&versions[0].to_be_bytes());
        body.extend_from_slice(&versions[1].to_be_bytes());
        body.push(flags);
        body.extend_from_slice(&uid.to_be_bytes());
        body.push(name.len() as u8);
        body.extend_from_slice(name.as_bytes());
        body.push(nick.len() as u8);
        body.extend_from_slice(nick.as_bytes());
        body.extend_from_slice(&trailer);
        let mut wire = MAGIC.to_vec();
        wire.extend_from_slice(&(body.len() as u16).to_be_bytes());
        wire.extend_from_slice(&body);
        match Hello::parse(&wire) {
            Ok(Some((hello, used))) => {
                prop_assert_eq!(used, wire.len());
                prop_assert!(!name.is_empty() && versions[0] <= versions[1]);
                prop_assert_eq!(hello.has_password, flags & 1 != 0);
                let again = Hello::parse(&hello.encode().unwrap()).unwrap().unwrap().0;
                prop_assert_eq!(again, hello);
            }
            Ok(None) => prop_assert!(false, "a whole hello asked for more"),
            Err(_) => prop_assert!(name.is_empty() || versions[0] > versions[1]),
        }
    }

    #[test]
    fn headers_claiming_any_length_are_bounded(len in any::<u32>(), kind in any::<u8>()) {
        let mut wire = len.to_be_bytes().to_vec();
        wire.push(kind);
        let mut decoder = FrameDecoder::new();
        let mut input = &wire[..];
        match decoder.decode(&mut input) {
            Ok(Some(frame)) => prop_assert!(frame.wire_len() <= MAX_FRAME_LEN as usize),
            Ok(None) => prop_assert!((2..=MAX_FRAME_LEN).contains(&len)),
            Err(ProtoError::FrameTooLarge(l)) => prop_assert!(l > MAX_FRAME_LEN),
            Err(_) => {}
        }
    }

    #[test]
    fn gossip_round_trips(channel in any::<u8>(), payload in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let frame = Frame::Gossip { channel: Channel(channel), payload };
        let wire = frame.encode().unwrap();
        prop_assert_eq!(decode_all(&mut FrameDecoder::new(), &wire).unwrap(), vec![frame]);
    }
}
