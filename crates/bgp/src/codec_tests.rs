//! Codec tests: round trips through netgauze, header errors, and RFC 7606 cases built byte by
//! byte.

use super::*;
use proptest::prelude::*;

fn open_info() -> OpenInfo {
    OpenInfo {
        asn: 4_200_000_001,
        hold_time: 90,
        router_id: Ipv4Addr::new(10, 0, 0, 1),
        families: [Afi::Ipv4, Afi::Ipv6].into(),
        asn4: true,
        route_refresh: true,
        graceful_restart: Some(GrCap {
            restarting: true,
            time: 120,
            families: vec![(Afi::Ipv4, true), (Afi::Ipv6, true)],
        }),
    }
}

#[test]
fn open_round_trip_with_as_trans_and_gr() {
    let info = open_info();
    let bytes = encode_message(&info.to_message()).unwrap();
    // My AS (octets 20..22 after the version octet at 19) carries AS_TRANS.
    assert_eq!(u16::from_be_bytes([bytes[20], bytes[21]]), AS_TRANS);
    let Incoming::Open(back) = decode_message(&bytes, true).unwrap() else {
        panic!("not an OPEN")
    };
    assert_eq!(back, info);
}

#[test]
fn open_without_mp_means_ipv4_only() {
    let msg = BgpMessage::Open(BgpOpenMessage::new(
        65001,
        30,
        Ipv4Addr::new(1, 1, 1, 1),
        vec![],
    ));
    let bytes = encode_message(&msg).unwrap();
    let Incoming::Open(o) = decode_message(&bytes, true).unwrap() else {
        panic!()
    };
    assert_eq!(o.asn, 65001);
    assert!(!o.asn4);
    assert_eq!(o.families, [Afi::Ipv4].into());
}

#[test]
fn header_errors_give_the_right_notification() {
    let mut bad_marker = encode_message(&BgpMessage::KeepAlive).unwrap();
    bad_marker[3] = 0;
    assert!(matches!(
        decode_message(&bad_marker, true),
        Err(CodecError::Fatal(
            BgpNotificationMessage::MessageHeaderError(
                MessageHeaderError::ConnectionNotSynchronized { .. }
            )
        ))
    ));
    let mut bad_type = encode_message(&BgpMessage::KeepAlive).unwrap();
    bad_type[18] = 9;
    assert!(matches!(
        decode_message(&bad_type, true),
        Err(CodecError::Fatal(
            BgpNotificationMessage::MessageHeaderError(MessageHeaderError::BadMessageType { .. })
        ))
    ));
    // A KEEPALIVE with a body has a bad length.
    let mut long_ka = encode_message(&BgpMessage::KeepAlive).unwrap();
    long_ka.push(0);
    long_ka[17] = 20;
    assert!(matches!(
        decode_message(&long_ka, true),
        Err(CodecError::Fatal(
            BgpNotificationMessage::MessageHeaderError(MessageHeaderError::BadMessageLength { .. })
        ))
    ));
}

#[test]
fn framing_rejects_short_length_instead_of_waiting() {
    let mut codec = BgpCodec::default();
    let mut buf = BytesMut::from(&[0xffu8; 16][..]);
    buf.extend_from_slice(&[0, 5, 4]);
    assert!(matches!(codec.decode(&mut buf), Err(CodecError::Fatal(_))));
    // A partial frame waits for more.
    let ka = encode_message(&BgpMessage::KeepAlive).unwrap();
    let mut buf = BytesMut::from(&ka[..10]);
    assert!(codec.decode(&mut buf).unwrap().is_none());
    buf.extend_from_slice(&ka[10..]);
    assert_eq!(codec.decode(&mut buf).unwrap(), Some(Incoming::Keepalive));
}

fn sample_attrs(nh: IpAddr) -> PathAttrs {
    PathAttrs {
        origin: Origin::Egp,
        as_path: vec![
            AsSegment {
                set: false,
                asns: vec![65001, 4_200_000_000],
            },
            AsSegment {
                set: true,
                asns: vec![7, 8],
            },
        ],
        next_hop: nh,
        next_hop_local: None,
        med: Some(50),
        local_pref: Some(200),
        atomic_aggregate: true,
        aggregator: Some((65001, Ipv4Addr::new(9, 9, 9, 9))),
        communities: vec![0xfde8_0001],
        originator_id: Some(Ipv4Addr::new(10, 0, 0, 9)),
        cluster_list: vec![Ipv4Addr::new(10, 0, 0, 1), Ipv4Addr::new(10, 0, 0, 2)],
        unknown: vec![],
        partial: vec![],
    }
}

fn decode_all(msgs: &[BgpMessage], asn4: bool) -> Vec<UpdateIn> {
    msgs.iter()
        .map(|m| {
            let b = encode_message(m).unwrap();
            match decode_message(&b, asn4).unwrap() {
                Incoming::Update(u) => u,
                other => panic!("{other:?}"),
            }
        })
        .collect()
}

#[test]
fn update_round_trip_v4_and_v6() {
    let a4 = sample_attrs("192.0.2.1".parse().unwrap());
    let a6 = sample_attrs("2001:db8::1".parse().unwrap());
    let n4: IpNet = "10.1.0.0/24".parse().unwrap();
    let n6: IpNet = "2001:db8:1::/64".parse().unwrap();
    let msgs = encode_updates(&[(a4.clone(), n4), (a6.clone(), n6)], &[], true).unwrap();
    let ups = decode_all(&msgs, true);
    let mut got: Vec<(PathAttrs, Vec<IpNet>)> = ups.into_iter().flat_map(|u| u.announced).collect();
    got.sort_by_key(|(_, n)| n[0]);
    assert_eq!(got, vec![(a4, vec![n4]), (a6, vec![n6])]);
}

#[test]
fn two_octet_session_uses_as_trans_and_as4_path() {
    let a = sample_attrs("192.0.2.1".parse().unwrap());
    let n: IpNet = "10.1.0.0/24".parse().unwrap();
    let msgs = encode_updates(&[(a.clone(), n)], &[], false).unwrap();
    let ups = decode_all(&msgs, false);
    assert_eq!(ups[0].announced[0].0.as_path, a.as_path);
}

#[test]
fn withdrawals_and_end_of_rib() {
    let w = [
        "10.1.0.0/24".parse().unwrap(),
        "2001:db8::/48".parse().unwrap(),
    ];
    let ups = decode_all(&encode_updates(&[], &w, true).unwrap(), true);
    let all: Vec<IpNet> = ups.iter().flat_map(|u| u.withdrawn.clone()).collect();
    assert_eq!(all, w.to_vec());
    assert_eq!(
        decode_all(&[end_of_rib(Afi::Ipv4)], true)[0].end_of_rib,
        Some(Afi::Ipv4)
    );
    assert_eq!(
        decode_all(&[end_of_rib(Afi::Ipv6)], true)[0].end_of_rib,
        Some(Afi::Ipv6)
    );
}

/// An UPDATE body built by hand: withdrawn, raw attribute bytes, NLRI.
pub(crate) fn raw_update(withdrawn: &[u8], attrs: &[u8], nlri: &[u8]) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(&(withdrawn.len() as u16).to_be_bytes());
    body.extend_from_slice(withdrawn);
    body.extend_from_slice(&(attrs.len() as u16).to_be_bytes());
    body.extend_from_slice(attrs);
    body.extend_from_slice(nlri);
    let mut msg = vec![0xff; 16];
    msg.extend_from_slice(&((19 + body.len()) as u16).to_be_bytes());
    msg.push(2);
    msg.extend_from_slice(&body);
    msg
}

/// Good ORIGIN, 4-octet AS_PATH [65002], NEXT_HOP 192.0.2.2.
pub(crate) const GOOD_ATTRS: &[u8] = &[
    0x40, 1, 1, 0, // ORIGIN IGP
    0x40, 2, 6, 2, 1, 0, 0, 0xfd, 0xea, // AS_PATH SEQ [65002]
    0x40, 3, 4, 192, 0, 2, 2, // NEXT_HOP
];
pub(crate) const NLRI_10_9: &[u8] = &[24, 10, 9, 0];

fn decode_raw(msg: &[u8]) -> Result<Incoming, CodecError> {
    decode_message(msg, true)
}

#[test]
fn good_raw_update_is_accepted() {
    let Incoming::Update(u) = decode_raw(&raw_update(&[], GOOD_ATTRS, NLRI_10_9)).unwrap() else {
        panic!()
    };
    assert_eq!(u.treat_as_withdraw, None);
    assert_eq!(
        u.announced[0].1,
        vec!["10.9.0.0/24".parse::<IpNet>().unwrap()]
    );
    assert_eq!(u.announced[0].0.as_path_flat(), vec![65002]);
}

fn assert_taw(attrs: &[u8]) {
    let Incoming::Update(u) = decode_raw(&raw_update(&[24, 10, 8, 0], attrs, NLRI_10_9))
        .unwrap_or_else(|e| panic!("session reset for {attrs:?}: {e}"))
    else {
        panic!()
    };
    assert!(u.treat_as_withdraw.is_some(), "{attrs:?} accepted");
    assert!(u.announced.is_empty());
    let w: Vec<String> = u.withdrawn.iter().map(|n| n.to_string()).collect();
    assert_eq!(w, vec!["10.8.0.0/24", "10.9.0.0/24"]);
}

#[test]
fn rfc7606_treat_as_withdraw_cases() {
    let mut bad_origin = GOOD_ATTRS.to_vec();
    bad_origin[3] = 7;
    assert_taw(&bad_origin);
    // ORIGIN flagged optional (wrong flags on a well-known attribute).
    let mut bad_flags = GOOD_ATTRS.to_vec();
    bad_flags[0] = 0xc0;
    assert_taw(&bad_flags);
    // AS_PATH segment claims 3 ASes but carries 1.
    let mut bad_path = GOOD_ATTRS.to_vec();
    bad_path[8] = 3;
    assert_taw(&bad_path);
    // AS_PATH with segment type 9.
    let mut bad_seg = GOOD_ATTRS.to_vec();
    bad_seg[7] = 9;
    assert_taw(&bad_seg);
    // NEXT_HOP of 3 octets: then its value eats into the next header; attribute section
    // no longer adds up.
    let mut short_nh = GOOD_ATTRS[..13].to_vec();
    short_nh.extend_from_slice(&[0x40, 3, 3, 192, 0, 2]);
    assert_taw(&short_nh);
    // Attribute length overrunning the attribute section.
    let mut overrun = GOOD_ATTRS.to_vec();
    overrun.extend_from_slice(&[0xc0, 99, 50, 1, 2]);
    assert_taw(&overrun);
    // Missing AS_PATH.
    let mut missing = GOOD_ATTRS[..4].to_vec();
    missing.extend_from_slice(&GOOD_ATTRS[13..]);
    assert_taw(&missing);
    // Unrecognised well-known attribute 99.
    let mut unknown_wk = GOOD_ATTRS.to_vec();
    unknown_wk.extend_from_slice(&[0x40, 99, 1, 0]);
    assert_taw(&unknown_wk);
    // COMMUNITIES not a multiple of 4.
    let mut comm = GOOD_ATTRS.to_vec();
    comm.extend_from_slice(&[0xc0, 8, 3, 1, 2, 3]);
    assert_taw(&comm);
    // CLUSTER_LIST with wrong flags.
    let mut cl = GOOD_ATTRS.to_vec();
    cl.extend_from_slice(&[0x40, 10, 4, 1, 2, 3, 4]);
    assert_taw(&cl);
}

#[test]
fn rfc7606_attribute_discard_keeps_the_route() {
    let mut agg = GOOD_ATTRS.to_vec();
    agg.extend_from_slice(&[0xc0, 7, 3, 1, 2, 3]); // AGGREGATOR of 3 octets
    agg.extend_from_slice(&[0x40, 6, 1, 0]); // ATOMIC_AGGREGATE with a value
    let Incoming::Update(u) = decode_raw(&raw_update(&[], &agg, NLRI_10_9)).unwrap() else {
        panic!()
    };
    assert_eq!(u.treat_as_withdraw, None);
    assert_eq!(u.announced.len(), 1);
    assert_eq!(u.announced[0].0.aggregator, None);
    assert!(!u.announced[0].0.atomic_aggregate);
}

#[test]
fn rfc7606_duplicates_keep_the_first() {
    let mut dup = GOOD_ATTRS.to_vec();
    dup.extend_from_slice(&[0x40, 1, 1, 2]); // a second ORIGIN (INCOMPLETE)
    let Incoming::Update(u) = decode_raw(&raw_update(&[], &dup, NLRI_10_9)).unwrap() else {
        panic!()
    };
    // Either netgauze kept the first, or the fallback withdrew; never a reset, and never
    // the second value.
    if u.treat_as_withdraw.is_none() {
        assert_eq!(u.announced[0].0.origin, Origin::Igp);
    }
}

#[test]
fn rfc7606_reset_cases() {
    // Withdrawn Routes Length beyond the message.
    let mut msg = raw_update(&[], GOOD_ATTRS, NLRI_10_9);
    msg[19] = 0x7f;
    assert!(matches!(decode_raw(&msg), Err(CodecError::Fatal(_))));
    // NLRI with a /40 prefix.
    let msg = raw_update(&[], GOOD_ATTRS, &[40, 1, 2, 3, 4, 5]);
    assert!(matches!(decode_raw(&msg), Err(CodecError::Fatal(_))));
}

prop_compose! {
    fn arb_attrs(v6: bool)(
        origin in 0u8..3,
        path in proptest::collection::vec((any::<bool>(), proptest::collection::vec(1u32..u32::MAX, 1..5)), 0..4),
        nh4 in any::<u32>(), nh6 in any::<u128>(),
        ll in proptest::option::of(any::<u64>()),
        med in proptest::option::of(any::<u32>()),
        lp in proptest::option::of(any::<u32>()),
        atomic in any::<bool>(),
        comms in proptest::collection::vec(any::<u32>(), 0..5),
        orig in proptest::option::of(any::<u32>()),
        cl in proptest::collection::vec(any::<u32>(), 0..4),
    ) -> PathAttrs {
        PathAttrs {
            origin: [Origin::Igp, Origin::Egp, Origin::Incomplete][origin as usize],
            as_path: path.into_iter().map(|(set, asns)| AsSegment { set, asns }).collect(),
            // The forms the decoder gives: a global next hop is never link-local (a lone
            // link-local one reads as `::` plus the link-local), and IPv4 routes have none.
            next_hop: if v6 {
                IpAddr::V6(if is_link_local(&nh6.into()) { (nh6 ^ (1 << 126)).into() } else { nh6.into() })
            } else {
                IpAddr::V4(nh4.into())
            },
            next_hop_local: ll
                .filter(|_| v6)
                .map(|iid| Ipv6Addr::from((0xfe80u128 << 112) | u128::from(iid))),
            med, local_pref: lp, atomic_aggregate: atomic, aggregator: None,
            communities: comms,
            originator_id: orig.map(Ipv4Addr::from),
            cluster_list: cl.into_iter().map(Ipv4Addr::from).collect(),
            unknown: vec![],
            partial: vec![],
        }
    }
}

fn arb_v4net() -> impl Strategy<Value = IpNet> {
    (any::<u32>(), 0u8..=32)
        .prop_map(|(a, l)| IpNet::V4(ipnet::Ipv4Net::new(a.into(), l).unwrap().trunc()))
}

fn arb_v6net() -> impl Strategy<Value = IpNet> {
    (any::<u128>(), 0u8..=128)
        .prop_map(|(a, l)| IpNet::V6(ipnet::Ipv6Net::new(a.into(), l).unwrap().trunc()))
}

proptest! {
    #[test]
    fn prop_update_round_trip(
        a4 in arb_attrs(false), a6 in arb_attrs(true),
        n4 in proptest::collection::btree_set(arb_v4net(), 1..40),
        n6 in proptest::collection::btree_set(arb_v6net(), 1..40),
        w in proptest::collection::btree_set(prop_oneof![arb_v4net(), arb_v6net()], 0..40),
    ) {
        // Multicast/class-E prefixes are not unicast NLRI; netgauze refuses them.
        let n4: Vec<IpNet> = n4.into_iter().filter(|n| Ipv4Unicast::from_net(match n { IpNet::V4(v) => *v, _ => unreachable!() }).is_ok()).collect();
        let w: Vec<IpNet> = w.into_iter().filter(|n| match n { IpNet::V4(v) => Ipv4Unicast::from_net(*v).is_ok(), IpNet::V6(v) => Ipv6Unicast::from_net(*v).is_ok() }).collect();
        let n6: Vec<IpNet> = n6.into_iter().filter(|n| match n { IpNet::V6(v) => Ipv6Unicast::from_net(*v).is_ok(), _ => false }).collect();
        let mut ann: Vec<(PathAttrs, IpNet)> = n4.iter().map(|n| (a4.clone(), *n)).collect();
        ann.extend(n6.iter().map(|n| (a6.clone(), *n)));
        let msgs = encode_updates(&ann, &w, true).unwrap();
        let ups = decode_all(&msgs, true);
        let mut got_w: Vec<IpNet> = ups.iter().flat_map(|u| u.withdrawn.clone()).collect();
        let mut want_w = w.clone();
        got_w.sort(); want_w.sort();
        prop_assert_eq!(got_w, want_w);
        let mut got: Vec<(PathAttrs, IpNet)> = ups.into_iter()
            .flat_map(|u| u.announced.into_iter().flat_map(|(a, ns)| ns.into_iter().map(move |n| (a.clone(), n))))
            .collect();
        got.sort_by_key(|(_, n)| *n);
        ann.sort_by_key(|(_, n)| *n);
        prop_assert_eq!(got, ann);
    }

    #[test]
    fn prop_decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..600), asn4 in any::<bool>()) {
        let _ = decode_message(&bytes, asn4);
        let mut msg = vec![0xffu8; 16];
        msg.extend_from_slice(&((19 + bytes.len()) as u16).to_be_bytes());
        msg.push(2);
        msg.extend_from_slice(&bytes);
        let _ = decode_message(&msg, asn4);
    }

    #[test]
    fn prop_mutated_update_never_resets_for_attribute_bytes(
        pos in 0usize..GOOD_ATTRS.len(), val in any::<u8>()
    ) {
        // Any single-byte corruption inside the attribute section is at worst
        // treat-as-withdraw: the section's length is intact, so the NLRI can be found.
        // Turning an attribute into an MP_REACH/MP_UNREACH whose NLRI cannot be parsed is
        // the one case where RFC 7606 §7.11 does ask for a reset.
        prop_assume!(!([1, 5, 14].contains(&pos) && (val == 14 || val == 15)));
        let mut attrs = GOOD_ATTRS.to_vec();
        attrs[pos] = val;
        let res = decode_raw(&raw_update(&[], &attrs, NLRI_10_9));
        prop_assert!(matches!(res, Ok(Incoming::Update(_))), "{:?}", res);
    }
}

#[test]
fn malformed_extended_and_large_communities_are_treat_as_withdraw() {
    // RFC 7606 §7.14 and RFC 8092 §6: a length that is not a multiple of the community size.
    let mut ext = GOOD_ATTRS.to_vec();
    ext.extend_from_slice(&[0xc0, 16, 7, 0, 2, 0xfd, 0xe9, 0, 0, 7]);
    assert_taw(&ext);
    let mut large = GOOD_ATTRS.to_vec();
    large.extend_from_slice(&[0xc0, 32, 5, 0, 0, 0xfd, 0xe9, 0]);
    assert_taw(&large);
}

#[test]
fn carried_attributes_decode_with_partial_set_and_in_type_order() {
    let mut attrs = GOOD_ATTRS.to_vec();
    attrs.extend_from_slice(&[0xc0, 32, 12, 0, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0, 3]);
    attrs.extend_from_slice(&[0xc0, 16, 8, 0, 2, 0xfd, 0xe9, 0, 0, 0, 7]);
    attrs.extend_from_slice(&[0x80, 99, 1, 0]); // optional non-transitive: dropped
    let Incoming::Update(u) = decode_raw(&raw_update(&[], &attrs, NLRI_10_9)).unwrap() else {
        panic!()
    };
    assert_eq!(
        u.announced[0].0.unknown,
        vec![
            RawAttr {
                flags: 0xe0,
                code: 16,
                value: vec![0, 2, 0xfd, 0xe9, 0, 0, 0, 7],
            },
            RawAttr {
                flags: 0xe0,
                code: 32,
                value: vec![0, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0, 3],
            },
        ]
    );
}

#[test]
fn long_carried_attribute_gets_an_extended_length() {
    let mut a = sample_attrs("192.0.2.1".parse().unwrap());
    a.unknown = vec![RawAttr {
        flags: 0xe0,
        code: 32,
        value: (0..300u16).map(|i| i as u8).collect(),
    }];
    let n: IpNet = "10.1.0.0/24".parse().unwrap();
    let msgs = encode_updates(&[(a.clone(), n)], &[], true).unwrap();
    let back = decode_all(&msgs, true);
    let got = &back[0].announced[0].0.unknown[0];
    assert_eq!((got.flags, got.value.len()), (0xf0, 300));
}

/// The MP_REACH_NLRI attribute of an encoded UPDATE: (next hop length, next hop octets).
fn mp_reach_next_hop(msg: &[u8]) -> (u8, Vec<u8>) {
    let body = &msg[19..];
    let wlen = usize::from(u16::from_be_bytes([body[0], body[1]]));
    let mut rest = &body[4 + wlen..];
    loop {
        let (len, hdr) = if rest[0] & 0x10 != 0 {
            (usize::from(u16::from_be_bytes([rest[2], rest[3]])), 4)
        } else {
            (usize::from(rest[2]), 3)
        };
        if rest[1] == 14 {
            let v = &rest[hdr..hdr + len];
            let n = v[3];
            return (n, v[4..4 + usize::from(n)].to_vec());
        }
        rest = &rest[hdr + len..];
    }
}

#[test]
fn ipv6_next_hop_global_plus_link_local_is_32_octets_both_ways() {
    let mut a = sample_attrs("2001:db8:ff::1".parse().unwrap());
    a.next_hop_local = Some("fe80::1".parse().unwrap());
    let n: IpNet = "2001:db8:44::/64".parse().unwrap();
    let msgs = encode_updates(&[(a.clone(), n)], &[], true).unwrap();
    let (len, nh) = mp_reach_next_hop(&encode_message(&msgs[0]).unwrap());
    assert_eq!(len, 32);
    assert_eq!(
        &nh[..16],
        &"2001:db8:ff::1".parse::<Ipv6Addr>().unwrap().octets()
    );
    assert_eq!(&nh[16..], &"fe80::1".parse::<Ipv6Addr>().unwrap().octets());
    assert_eq!(
        decode_all(&msgs, true)[0].announced,
        vec![(a.clone(), vec![n])]
    );
    assert_eq!(
        a.installable_next_hop(),
        "2001:db8:ff::1".parse::<IpAddr>().unwrap()
    );
    // Global only: 16 octets.
    a.next_hop_local = None;
    let msgs = encode_updates(&[(a, n)], &[], true).unwrap();
    assert_eq!(mp_reach_next_hop(&encode_message(&msgs[0]).unwrap()).0, 16);
}

#[test]
fn an_ipv4_mapped_global_next_hop_gives_way_to_the_link_local_one() {
    // What a sender without an IPv6 address sends over an IPv4 session on a shared link
    // (BIRD does the same): ::ffff:192.0.2.7 plus its link-local address.
    let mut a = sample_attrs("::ffff:192.0.2.7".parse().unwrap());
    a.next_hop_local = Some("fe80::7".parse().unwrap());
    let n: IpNet = "2001:db8:44::/64".parse().unwrap();
    let msgs = encode_updates(&[(a.clone(), n)], &[], true).unwrap();
    let got = &decode_all(&msgs, true)[0].announced[0].0;
    assert_eq!(got.next_hop, "::ffff:192.0.2.7".parse::<IpAddr>().unwrap());
    assert_eq!(
        got.installable_next_hop(),
        "fe80::7".parse::<IpAddr>().unwrap()
    );
    // Without the link-local one (not on the sender's link) it stays what it is, for the
    // installer to refuse.
    a.next_hop_local = None;
    assert_eq!(
        a.installable_next_hop(),
        "::ffff:192.0.2.7".parse::<IpAddr>().unwrap()
    );
}

#[test]
fn lone_link_local_ipv6_next_hop_means_no_global_one() {
    // MP_REACH_NLRI, IPv6 unicast, a 16-octet next hop fe80::2, 2001:db8:44::/64.
    let mut attrs = GOOD_ATTRS[..13].to_vec(); // ORIGIN, AS_PATH
    let mut mp = vec![0x80, 14, 0, 0, 2, 1, 16];
    mp.extend_from_slice(&"fe80::2".parse::<Ipv6Addr>().unwrap().octets());
    mp.push(0);
    mp.extend_from_slice(&[64, 0x20, 0x01, 0x0d, 0xb8, 0, 0x44, 0, 0]);
    mp[2] = (mp.len() - 3) as u8;
    attrs.extend_from_slice(&mp);
    let Incoming::Update(u) = decode_raw(&raw_update(&[], &attrs, &[])).unwrap() else {
        panic!()
    };
    assert_eq!(u.treat_as_withdraw, None);
    let (a, nets) = &u.announced[0];
    assert_eq!(nets, &vec!["2001:db8:44::/64".parse::<IpNet>().unwrap()]);
    assert_eq!(a.next_hop, "::".parse::<IpAddr>().unwrap());
    assert_eq!(a.next_hop_local, Some("fe80::2".parse().unwrap()));
    assert_eq!(
        a.installable_next_hop(),
        "fe80::2".parse::<IpAddr>().unwrap()
    );
}

#[test]
fn announcements_are_split_to_fit_4096_octets_with_large_carried_attributes() {
    let mut big = sample_attrs("192.0.2.1".parse().unwrap());
    big.unknown = vec![RawAttr {
        flags: 0xf0,
        code: 32,
        value: vec![7; 12 * 250], // 3000 octets of large communities
    }];
    let nets: Vec<IpNet> = (0..400u32)
        .map(|i| IpNet::V4(ipnet::Ipv4Net::new((0x0a00_0000 | (i << 8)).into(), 24).unwrap()))
        .collect();
    let announce: Vec<(PathAttrs, IpNet)> = nets.iter().map(|n| (big.clone(), *n)).collect();
    let msgs = encode_updates(&announce, &[], true).unwrap();
    assert!(msgs.len() > 1);
    for m in &msgs {
        assert!(encode_message(m).unwrap().len() <= MAX_MESSAGE);
    }
    let got: Vec<IpNet> = decode_all(&msgs, true)
        .into_iter()
        .flat_map(|u| u.announced.into_iter().flat_map(|(_, n)| n))
        .collect();
    assert_eq!(got, nets);

    // Attributes too large for any UPDATE: that route is left out, the others still go.
    let mut huge = big.clone();
    huge.unknown[0].value = vec![7; 12 * 340];
    let ok: IpNet = "10.200.0.0/24".parse().unwrap();
    let msgs = encode_updates(
        &[(huge, "10.100.0.0/24".parse().unwrap()), (big, ok)],
        &[],
        true,
    )
    .unwrap();
    let got: Vec<IpNet> = decode_all(&msgs, true)
        .into_iter()
        .flat_map(|u| u.announced.into_iter().flat_map(|(_, n)| n))
        .collect();
    assert_eq!(got, vec![ok]);
}

proptest! {
    /// Any optional transitive attribute of a type twill does not model goes out with the
    /// value octets it came with, its flags plus Partial, whatever its length.
    #[test]
    fn prop_unmodelled_optional_transitive_attributes_pass_unchanged(
        code in 200u8..=254,
        value in proptest::collection::vec(any::<u8>(), 0..400),
        partial in any::<bool>(),
        ext in any::<bool>(),
    ) {
        let ext = ext || value.len() > 255;
        let flags = 0xc0 | if partial { 0x20 } else { 0 } | if ext { 0x10 } else { 0 };
        let mut attr = vec![flags, code];
        if ext {
            attr.extend_from_slice(&(value.len() as u16).to_be_bytes());
        } else {
            attr.push(value.len() as u8);
        }
        attr.extend_from_slice(&value);
        let mut attrs = GOOD_ATTRS.to_vec();
        attrs.extend_from_slice(&attr);
        let Incoming::Update(u) = decode_raw(&raw_update(&[], &attrs, NLRI_10_9)).unwrap() else {
            panic!()
        };
        let (a, nets) = &u.announced[0];
        let msgs = encode_updates(&[(a.clone(), nets[0])], &[], true).unwrap();
        let bytes = encode_message(&msgs[0]).unwrap();
        let mut want = attr.clone();
        want[0] |= 0x20;
        prop_assert!(
            bytes.windows(want.len()).any(|w| w == want.as_slice()),
            "{want:?} not in {bytes:?}"
        );
    }
}
