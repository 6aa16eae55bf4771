//! RIB tests: best-path steps one by one, export rules, route reflection, loop checks,
//! graceful restart, and a property test that the emitted diffs always rebuild the RIBs.

use super::*;
use crate::attrs::{AsSegment, Origin};
use proptest::prelude::*;

const ME: u32 = 65000;

fn rib() -> Rib {
    Rib::new(RibConfig {
        asn: ME,
        router_id: Ipv4Addr::new(10, 0, 0, 100),
        cluster_id: None,
    })
}

fn peer(last: u8, asn: u32, rr_client: bool) -> PeerInfo {
    PeerInfo {
        addr: IpAddr::V4(Ipv4Addr::new(192, 0, 2, last)),
        asn,
        local_asn: ME,
        router_id: Ipv4Addr::new(10, 0, 0, last),
        rr_client,
        local_addr: IpAddr::V4(Ipv4Addr::new(192, 0, 2, 100)),
        local_v6: Some("2001:db8::100".parse().unwrap()),
        link: None,
        families: [Afi::Ipv4, Afi::Ipv6].into(),
        gr_keep: [Afi::Ipv4, Afi::Ipv6].into(),
    }
}

fn attrs(path: &[u32], nh_last: u8) -> PathAttrs {
    PathAttrs {
        as_path: if path.is_empty() {
            vec![]
        } else {
            vec![AsSegment {
                set: false,
                asns: path.to_vec(),
            }]
        },
        ..PathAttrs::local(
            Some(IpAddr::V4(Ipv4Addr::new(192, 0, 2, nh_last))),
            Afi::Ipv4,
        )
    }
}

fn net(s: &str) -> IpNet {
    s.parse().unwrap()
}

fn announce(r: &mut Rib, p: &PeerInfo, a: PathAttrs, n: &str) -> Output {
    r.update(
        p.addr,
        &UpdateIn {
            announced: vec![(a, vec![net(n)])],
            ..UpdateIn::default()
        },
    )
}

fn withdraw(r: &mut Rib, p: &PeerInfo, n: &str) -> Output {
    r.update(
        p.addr,
        &UpdateIn {
            withdrawn: vec![net(n)],
            ..UpdateIn::default()
        },
    )
}

fn best_from(r: &Rib, n: &str) -> Option<Source> {
    r.best(&net(n)).map(|b| b.source.clone())
}

const N: &str = "10.9.0.0/24";

#[test]
fn prefers_higher_local_pref() {
    let mut r = rib();
    let (a, b) = (peer(1, ME, false), peer(2, ME, false));
    r.peer_up(a.clone());
    r.peer_up(b.clone());
    announce(
        &mut r,
        &a,
        PathAttrs {
            local_pref: Some(100),
            ..attrs(&[1], 1)
        },
        N,
    );
    announce(
        &mut r,
        &b,
        PathAttrs {
            local_pref: Some(200),
            ..attrs(&[1, 2, 3], 2)
        },
        N,
    );
    assert_eq!(best_from(&r, N), Some(Source::Peer(b.addr)));
}

#[test]
fn prefers_shorter_as_path_then_lower_origin() {
    let mut r = rib();
    let (a, b) = (peer(1, 65001, false), peer(2, 65002, false));
    r.peer_up(a.clone());
    r.peer_up(b.clone());
    announce(&mut r, &a, attrs(&[65001, 7], 1), N);
    announce(&mut r, &b, attrs(&[65002], 2), N);
    assert_eq!(best_from(&r, N), Some(Source::Peer(b.addr)));
    announce(
        &mut r,
        &b,
        PathAttrs {
            origin: Origin::Incomplete,
            ..attrs(&[65002, 7], 2)
        },
        N,
    );
    assert_eq!(best_from(&r, N), Some(Source::Peer(a.addr)));
}

#[test]
fn med_only_compared_within_the_same_neighbour_as() {
    let mut r = rib();
    let (a, b, c) = (
        peer(1, 65001, false),
        peer(2, 65001, false),
        peer(3, 65003, false),
    );
    for p in [&a, &b, &c] {
        r.peer_up(p.clone());
    }
    // Same neighbour AS: lower MED wins even though a has the lower router ID.
    announce(
        &mut r,
        &a,
        PathAttrs {
            med: Some(50),
            ..attrs(&[65001], 1)
        },
        N,
    );
    announce(
        &mut r,
        &b,
        PathAttrs {
            med: Some(10),
            ..attrs(&[65001], 2)
        },
        N,
    );
    assert_eq!(best_from(&r, N), Some(Source::Peer(b.addr)));
    // A different AS with a huge MED is not beaten by MED: router ID decides between b and c.
    let mut r2 = rib();
    for p in [&a, &c] {
        r2.peer_up(p.clone());
    }
    announce(
        &mut r2,
        &c,
        PathAttrs {
            med: Some(1000),
            ..attrs(&[65003], 3)
        },
        N,
    );
    announce(
        &mut r2,
        &a,
        PathAttrs {
            med: Some(10),
            ..attrs(&[65001], 1)
        },
        N,
    );
    assert_eq!(best_from(&r2, N), Some(Source::Peer(a.addr)));
    let mut r3 = rib();
    let c_low = PeerInfo {
        router_id: Ipv4Addr::new(10, 0, 0, 0),
        ..c.clone()
    };
    r3.peer_up(a.clone());
    r3.peer_up(c_low.clone());
    announce(
        &mut r3,
        &a,
        PathAttrs {
            med: Some(10),
            ..attrs(&[65001], 1)
        },
        N,
    );
    announce(
        &mut r3,
        &c_low,
        PathAttrs {
            med: Some(1000),
            ..attrs(&[65003], 3)
        },
        N,
    );
    assert_eq!(best_from(&r3, N), Some(Source::Peer(c_low.addr)));
}

#[test]
fn prefers_ebgp_over_ibgp() {
    let mut r = rib();
    let (i, e) = (peer(1, ME, false), peer(2, 65002, false));
    r.peer_up(i.clone());
    r.peer_up(e.clone());
    announce(&mut r, &i, attrs(&[65002], 1), N);
    announce(&mut r, &e, attrs(&[65002], 2), N);
    assert_eq!(best_from(&r, N), Some(Source::Peer(e.addr)));
}

#[test]
fn originator_id_then_cluster_list_then_peer_address() {
    let mut r = rib();
    let (a, b) = (peer(1, ME, false), peer(2, ME, false));
    r.peer_up(a.clone());
    r.peer_up(b.clone());
    // b's route carries a lower ORIGINATOR_ID than a's router ID.
    announce(&mut r, &a, attrs(&[], 1), N);
    announce(
        &mut r,
        &b,
        PathAttrs {
            originator_id: Some(Ipv4Addr::new(1, 1, 1, 1)),
            cluster_list: vec![Ipv4Addr::new(9, 9, 9, 9)],
            ..attrs(&[], 2)
        },
        N,
    );
    assert_eq!(best_from(&r, N), Some(Source::Peer(b.addr)));
    // Same originator on both: the shorter CLUSTER_LIST wins.
    let same = Ipv4Addr::new(1, 1, 1, 1);
    announce(
        &mut r,
        &a,
        PathAttrs {
            originator_id: Some(same),
            cluster_list: vec![],
            ..attrs(&[], 1)
        },
        N,
    );
    assert_eq!(best_from(&r, N), Some(Source::Peer(a.addr)));
    // Same everything: lowest peer address.
    announce(
        &mut r,
        &b,
        PathAttrs {
            originator_id: Some(same),
            cluster_list: vec![],
            ..attrs(&[], 2)
        },
        N,
    );
    assert_eq!(best_from(&r, N), Some(Source::Peer(a.addr)));
}

#[test]
fn ebgp_export_prepends_as_sets_next_hop_self_strips_local_pref() {
    let mut r = rib();
    let (i, e) = (peer(1, ME, false), peer(2, 65002, false));
    r.peer_up(i.clone());
    r.peer_up(e.clone());
    let out = announce(
        &mut r,
        &i,
        PathAttrs {
            local_pref: Some(300),
            med: Some(5),
            ..attrs(&[65009], 7)
        },
        N,
    );
    let sent = &out.updates[&e.addr].announce[0].0;
    assert_eq!(sent.as_path_flat(), vec![ME, 65009]);
    assert_eq!(sent.next_hop, e.local_addr);
    assert_eq!(sent.local_pref, None);
    assert_eq!(sent.med, None);
    // The route never goes back to where it came from.
    assert!(!out.updates.contains_key(&i.addr));
}

#[test]
fn local_routes_go_everywhere_with_next_hop_self() {
    let mut r = rib();
    let (i, e) = (peer(1, ME, false), peer(2, 65002, false));
    r.peer_up(i.clone());
    r.peer_up(e.clone());
    let out = r.originate(net("10.244.1.0/24"), None);
    let to_i = &out.updates[&i.addr].announce[0].0;
    assert_eq!(to_i.next_hop, i.local_addr);
    assert_eq!(to_i.local_pref, Some(DEFAULT_LOCAL_PREF));
    assert!(to_i.as_path.is_empty());
    let to_e = &out.updates[&e.addr].announce[0].0;
    assert_eq!(to_e.as_path_flat(), vec![ME]);
    // IPv6 gets the configured IPv6 next hop.
    let out = r.originate(net("2001:db8:5::/64"), None);
    assert_eq!(
        out.updates[&e.addr].announce[0].0.next_hop,
        IpAddr::V6("2001:db8::100".parse().unwrap())
    );
    // A peer coming up later gets the whole table.
    let late = peer(3, 65003, false);
    let out = r.peer_up(late.clone());
    assert_eq!(out.updates[&late.addr].announce.len(), 2);
    // Withdrawing a local route withdraws it everywhere.
    let out = r.withdraw_local(net("10.244.1.0/24"));
    for p in [&i, &e, &late] {
        assert_eq!(out.updates[&p.addr].withdraw, vec![net("10.244.1.0/24")]);
    }
}

#[test]
fn ibgp_split_horizon_without_route_reflection() {
    let mut r = rib();
    let (a, b, e) = (
        peer(1, ME, false),
        peer(2, ME, false),
        peer(3, 65003, false),
    );
    for p in [&a, &b, &e] {
        r.peer_up(p.clone());
    }
    let out = announce(&mut r, &a, attrs(&[], 1), N);
    assert!(
        !out.updates.contains_key(&b.addr),
        "iBGP route leaked to iBGP"
    );
    assert!(out.updates.contains_key(&e.addr));
    let out = withdraw(&mut r, &a, N);
    assert_eq!(out.updates[&e.addr].withdraw, vec![net(N)]);
    assert_eq!(
        out.best,
        vec![BestChange {
            prefix: net(N),
            best: None
        }]
    );
    // eBGP-learned routes do go to iBGP peers, next hop unchanged.
    let out = announce(&mut r, &e, attrs(&[65003], 3), "10.10.0.0/24");
    assert_eq!(
        out.updates[&a.addr].announce[0].0.next_hop,
        IpAddr::V4(Ipv4Addr::new(192, 0, 2, 3))
    );
}

#[test]
fn route_reflection_rules() {
    let mut r = rib();
    let (c1, c2, nc) = (peer(1, ME, true), peer(2, ME, true), peer(3, ME, false));
    for p in [&c1, &c2, &nc] {
        r.peer_up(p.clone());
    }
    // From a client: to the other client and to the non-client, with ORIGINATOR_ID and
    // CLUSTER_LIST set; next hop unchanged.
    let out = announce(&mut r, &c1, attrs(&[], 1), N);
    for p in [&c2, &nc] {
        let a = &out.updates[&p.addr].announce[0].0;
        assert_eq!(a.originator_id, Some(c1.router_id));
        assert_eq!(a.cluster_list, vec![Ipv4Addr::new(10, 0, 0, 100)]);
        assert_eq!(a.next_hop, IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1)));
    }
    assert!(!out.updates.contains_key(&c1.addr));
    // From a non-client: clients only.
    let out = announce(&mut r, &nc, attrs(&[], 3), "10.11.0.0/24");
    assert!(out.updates.contains_key(&c1.addr) && out.updates.contains_key(&c2.addr));
    assert!(!out.updates.contains_key(&nc.addr));
    // An existing CLUSTER_LIST is prepended to, an existing ORIGINATOR_ID kept.
    let out = announce(
        &mut r,
        &c1,
        PathAttrs {
            originator_id: Some(Ipv4Addr::new(10, 0, 0, 55)),
            cluster_list: vec![Ipv4Addr::new(7, 7, 7, 7)],
            ..attrs(&[], 1)
        },
        "10.12.0.0/24",
    );
    let a = &out.updates[&c2.addr].announce[0].0;
    assert_eq!(a.originator_id, Some(Ipv4Addr::new(10, 0, 0, 55)));
    assert_eq!(
        a.cluster_list,
        vec![Ipv4Addr::new(10, 0, 0, 100), Ipv4Addr::new(7, 7, 7, 7)]
    );
}

#[test]
fn receive_loop_checks() {
    let mut r = Rib::new(RibConfig {
        asn: ME,
        router_id: Ipv4Addr::new(10, 0, 0, 100),
        cluster_id: Some(Ipv4Addr::new(1, 2, 3, 4)),
    });
    let (i, e) = (peer(1, ME, false), peer(2, 65002, false));
    r.peer_up(i.clone());
    r.peer_up(e.clone());
    announce(&mut r, &e, attrs(&[65002, ME, 7], 2), N);
    assert_eq!(r.best(&net(N)), None, "AS loop accepted");
    announce(&mut r, &e, attrs(&[65099], 2), N);
    assert_eq!(r.best(&net(N)), None, "first AS not the peer's accepted");
    announce(
        &mut r,
        &i,
        PathAttrs {
            originator_id: Some(Ipv4Addr::new(10, 0, 0, 100)),
            ..attrs(&[], 1)
        },
        N,
    );
    assert_eq!(r.best(&net(N)), None, "our ORIGINATOR_ID accepted");
    announce(
        &mut r,
        &i,
        PathAttrs {
            cluster_list: vec![Ipv4Addr::new(1, 2, 3, 4)],
            ..attrs(&[], 1)
        },
        N,
    );
    assert_eq!(r.best(&net(N)), None, "our cluster ID accepted");
    assert_eq!(
        r.counts(&i.addr),
        PrefixCounts {
            received: 1,
            accepted: 0,
            sent: 0,
            stale: 0
        }
    );
    // A good announcement replaces the refused one; a refused one replaces a good one.
    announce(&mut r, &i, attrs(&[], 1), N);
    assert!(r.best(&net(N)).is_some());
    announce(
        &mut r,
        &i,
        PathAttrs {
            originator_id: Some(Ipv4Addr::new(10, 0, 0, 100)),
            ..attrs(&[], 1)
        },
        N,
    );
    assert_eq!(r.best(&net(N)), None);
}

#[test]
fn ebgp_import_sets_local_pref_and_drops_reflection_attrs() {
    let mut r = rib();
    let e = peer(2, 65002, false);
    r.peer_up(e.clone());
    announce(
        &mut r,
        &e,
        PathAttrs {
            local_pref: Some(999),
            originator_id: Some(Ipv4Addr::new(1, 1, 1, 1)),
            cluster_list: vec![Ipv4Addr::new(2, 2, 2, 2)],
            ..attrs(&[65002], 2)
        },
        N,
    );
    let b = r.best(&net(N)).unwrap();
    assert_eq!(b.attrs.local_pref, Some(DEFAULT_LOCAL_PREF));
    assert_eq!(b.attrs.originator_id, None);
    assert!(b.attrs.cluster_list.is_empty());
}

#[test]
fn graceful_restart_keeps_stale_until_end_of_rib() {
    let mut r = rib();
    let (e, other) = (peer(2, 65002, false), peer(3, 65003, false));
    r.peer_up(e.clone());
    r.peer_up(other.clone());
    announce(&mut r, &e, attrs(&[65002], 2), "10.1.0.0/24");
    announce(&mut r, &e, attrs(&[65002], 2), "10.2.0.0/24");
    let out = r.peer_down(e.addr, true);
    // Nothing changes for the agent or the other peers, apart from the stale mark.
    assert!(out.updates.is_empty(), "{out:?}");
    assert!(r.best(&net("10.1.0.0/24")).unwrap().stale);
    assert_eq!(r.counts(&e.addr).stale, 2);
    // Back up; it re-sends only 10.1 and then End-of-RIB: 10.2 goes.
    r.peer_up(e.clone());
    assert!(r.best(&net("10.2.0.0/24")).is_some());
    announce(&mut r, &e, attrs(&[65002], 2), "10.1.0.0/24");
    assert!(!r.best(&net("10.1.0.0/24")).unwrap().stale);
    let out = r.update(
        e.addr,
        &UpdateIn {
            end_of_rib: Some(Afi::Ipv4),
            ..UpdateIn::default()
        },
    );
    assert_eq!(
        out.best,
        vec![BestChange {
            prefix: net("10.2.0.0/24"),
            best: None
        }]
    );
    assert_eq!(out.updates[&other.addr].withdraw, vec![net("10.2.0.0/24")]);
    assert!(r.best(&net("10.1.0.0/24")).is_some());
}

#[test]
fn graceful_restart_timer_flushes_and_no_f_bit_flushes_at_once() {
    let mut r = rib();
    let e = peer(2, 65002, false);
    r.peer_up(e.clone());
    announce(&mut r, &e, attrs(&[65002], 2), "10.1.0.0/24");
    r.peer_down(e.addr, true);
    let out = r.flush_stale(e.addr);
    assert_eq!(out.best.len(), 1);
    assert!(r.best(&net("10.1.0.0/24")).is_none());

    r.peer_up(e.clone());
    announce(&mut r, &e, attrs(&[65002], 2), "10.1.0.0/24");
    r.peer_down(e.addr, true);
    // Restarted without preserving forwarding state for IPv4: flushed on session up.
    r.peer_up(PeerInfo {
        gr_keep: BTreeSet::new(),
        ..e.clone()
    });
    assert!(r.best(&net("10.1.0.0/24")).is_none());
}

#[test]
fn hard_down_withdraws_everywhere() {
    let mut r = rib();
    let (e, other) = (peer(2, 65002, false), peer(3, 65003, false));
    r.peer_up(e.clone());
    r.peer_up(other.clone());
    announce(&mut r, &e, attrs(&[65002], 2), N);
    let out = r.peer_down(e.addr, false);
    assert_eq!(
        out.best,
        vec![BestChange {
            prefix: net(N),
            best: None
        }]
    );
    assert_eq!(out.updates[&other.addr].withdraw, vec![net(N)]);
}

#[derive(Debug, Clone)]
enum Op {
    Announce(usize, usize, u32, u8, bool),
    Withdraw(usize, usize),
    Down(usize, bool),
    Up(usize),
    Eor(usize),
    Originate(usize),
    Unoriginate(usize),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..4usize, 0..6usize, 0..3u32, 0..3u8, any::<bool>()).prop_map(|(p, n, lp, len, med)| Op::Announce(p, n, lp, len, med)),
        2 => (0..4usize, 0..6usize).prop_map(|(p, n)| Op::Withdraw(p, n)),
        1 => (0..4usize, any::<bool>()).prop_map(|(p, g)| Op::Down(p, g)),
        1 => (0..4usize).prop_map(Op::Up),
        1 => (0..4usize).prop_map(Op::Eor),
        1 => (0..6usize).prop_map(Op::Originate),
        1 => (0..6usize).prop_map(Op::Unoriginate),
    ]
}

proptest! {
    /// Whatever happens, the diffs the RIB emits rebuild exactly its Adj-RIB-Out per peer
    /// (what a peer holds equals what we think we sent) and its Loc-RIB.
    #[test]
    fn prop_emitted_diffs_rebuild_the_ribs(ops in proptest::collection::vec(op(), 1..60)) {
        let peers = [peer(1, ME, true), peer(2, ME, false), peer(3, 65003, false), peer(4, 65004, false)];
        let nets: Vec<IpNet> = (0..6).map(|i| net(&format!("10.{i}.0.0/16"))).collect();
        let mut r = rib();
        let mut up = [false; 4];
        let mut peer_view: BTreeMap<IpAddr, BTreeMap<IpNet, PathAttrs>> = BTreeMap::new();
        let mut loc_view: BTreeMap<IpNet, Route> = BTreeMap::new();
        let apply = |out: Output, pv: &mut BTreeMap<IpAddr, BTreeMap<IpNet, PathAttrs>>, lv: &mut BTreeMap<IpNet, Route>| {
            for c in out.best {
                match c.best { Some(b) => { lv.insert(c.prefix, b); } None => { lv.remove(&c.prefix); } }
            }
            for (p, u) in out.updates {
                let t = pv.entry(p).or_default();
                for n in u.withdraw { t.remove(&n); }
                for (a, n) in u.announce { t.insert(n, a); }
            }
        };
        for op in ops {
            let out = match op {
                Op::Announce(p, n, lp, len, med) if up[p] => {
                    let pi = &peers[p];
                    let mut path = if pi.ibgp() { vec![] } else { vec![pi.asn] };
                    path.extend((0..len).map(|x| 64000 + u32::from(x)));
                    let a = PathAttrs { local_pref: Some(100 + lp), med: med.then_some(5), ..attrs(&path, p as u8 + 1) };
                    r.update(pi.addr, &UpdateIn { announced: vec![(a, vec![nets[n]])], ..UpdateIn::default() })
                }
                Op::Withdraw(p, n) if up[p] => r.update(peers[p].addr, &UpdateIn { withdrawn: vec![nets[n]], ..UpdateIn::default() }),
                Op::Down(p, g) if up[p] => {
                    up[p] = false;
                    peer_view.remove(&peers[p].addr);
                    r.peer_down(peers[p].addr, g)
                }
                Op::Up(p) if !up[p] => { up[p] = true; r.peer_up(peers[p].clone()) }
                Op::Eor(p) if up[p] => r.end_of_rib(peers[p].addr, Afi::Ipv4),
                Op::Originate(n) => r.originate(nets[n], None),
                Op::Unoriginate(n) => r.withdraw_local(nets[n]),
                _ => Output::default(),
            };
            apply(out, &mut peer_view, &mut loc_view);
        }
        let loc: BTreeMap<IpNet, Route> = r.loc_rib().map(|x| (x.prefix, x.clone())).collect();
        prop_assert_eq!(&loc, &loc_view);
        for (i, p) in peers.iter().enumerate() {
            let want: BTreeMap<IpNet, PathAttrs> = r.adj_out(&p.addr).into_iter().collect();
            let got = peer_view.get(&p.addr).cloned().unwrap_or_default();
            prop_assert_eq!(&got, &want, "peer {}", i);
            // Nothing is ever sent back to its source, and iBGP non-clients never get
            // routes learned from other non-clients.
            for n in want.keys() {
                prop_assert_ne!(loc[n].source.clone(), Source::Peer(p.addr));
            }
        }
    }
}

#[test]
fn per_peer_local_as_is_prepended_and_loop_checked() {
    let mut r = rib();
    let e = PeerInfo {
        local_asn: 64999,
        ..peer(2, 65002, false)
    };
    r.peer_up(e.clone());
    let out = r.originate(net("10.244.1.0/24"), None);
    assert_eq!(
        out.updates[&e.addr].announce[0].0.as_path_flat(),
        vec![64999]
    );
    // A path through our overriding AS is a loop too.
    announce(&mut r, &e, attrs(&[65002, 64999], 2), N);
    assert_eq!(r.best(&net(N)), None);
}

/// The attributes of one route as a peer sends them: ORIGIN, AS_PATH [65001], NEXT_HOP,
/// then optional transitive attributes twill models (COMMUNITIES, sent Partial) and ones it
/// does not (extended, large, an unassigned code), and an optional non-transitive unknown.
mod pass_through {
    use super::*;
    use crate::codec::tests::raw_update;
    use crate::codec::{self, Incoming};

    const COMMUNITIES: &[u8] = &[0xe0, 8, 8, 0xfd, 0xe9, 0, 1, 0xfd, 0xe9, 0, 2];
    const EXT_COMMUNITIES: &[u8] = &[0xc0, 16, 8, 0x00, 0x02, 0xfd, 0xe9, 0, 0, 0, 7];
    const IPV6_EXT_COMMUNITIES: &[u8] = &[
        0xc0, 25, 20, 0x00, 0x02, 0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0,
        0x2a,
    ];
    const LARGE_COMMUNITIES: &[u8] = &[0xc0, 32, 12, 0, 0, 0xfd, 0xe9, 0, 0, 0, 1, 0, 0, 0, 2];
    /// An unassigned optional transitive code, already Partial, with an extended length.
    const UNASSIGNED: &[u8] = &[0xf0, 201, 0, 3, 1, 2, 3];
    const NON_TRANSITIVE: &[u8] = &[0x80, 202, 2, 9, 9];

    fn received() -> Vec<u8> {
        let mut a = vec![
            0x40, 1, 1, 0, // ORIGIN IGP
            0x40, 2, 6, 2, 1, 0, 0, 0xfd, 0xe9, // AS_PATH SEQ [65001]
            0x40, 3, 4, 192, 0, 2, 1, // NEXT_HOP 192.0.2.1
        ];
        // Out of order on purpose: twill sends them in ascending type code.
        for part in [
            LARGE_COMMUNITIES,
            NON_TRANSITIVE,
            UNASSIGNED,
            COMMUNITIES,
            IPV6_EXT_COMMUNITIES,
            EXT_COMMUNITIES,
        ] {
            a.extend_from_slice(part);
        }
        raw_update(&[], &a, &[24, 10, 9, 0])
    }

    fn with_partial(attr: &[u8]) -> Vec<u8> {
        let mut a = attr.to_vec();
        a[0] |= 0x20;
        a
    }

    /// The path attribute section of an encoded UPDATE, split into attributes.
    fn attributes(msg: &[u8]) -> Vec<Vec<u8>> {
        let body = &msg[19..];
        let wlen = usize::from(u16::from_be_bytes([body[0], body[1]]));
        let alen = usize::from(u16::from_be_bytes([body[2 + wlen], body[3 + wlen]]));
        let mut rest = &body[4 + wlen..4 + wlen + alen];
        let mut out = Vec::new();
        while !rest.is_empty() {
            let (len, hdr) = if rest[0] & 0x10 != 0 {
                (usize::from(u16::from_be_bytes([rest[2], rest[3]])), 4)
            } else {
                (usize::from(rest[2]), 3)
            };
            out.push(rest[..hdr + len].to_vec());
            rest = &rest[hdr + len..];
        }
        out
    }

    /// Decode → RIB → encode for `to`; returns the attributes as sent.
    fn pass_on(from: PeerInfo, to: PeerInfo) -> Vec<Vec<u8>> {
        let Incoming::Update(upd) = codec::decode_message(&received(), true).unwrap() else {
            panic!("not an UPDATE")
        };
        assert_eq!(upd.treat_as_withdraw, None);
        let mut r = rib();
        r.peer_up(from.clone());
        r.peer_up(to.clone());
        let out = r.update(from.addr, &upd);
        let sent = &out.updates[&to.addr];
        let msgs = codec::encode_updates(&sent.announce, &sent.withdraw, true).unwrap();
        assert_eq!(msgs.len(), 1);
        attributes(&codec::encode_message(&msgs[0]).unwrap())
    }

    fn assert_carried(sent: &[Vec<u8>]) {
        let codes: Vec<u8> = sent.iter().map(|a| a[1]).collect();
        let mut sorted = codes.clone();
        sorted.sort();
        assert_eq!(codes, sorted, "attributes not in ascending type code");
        let find = |code: u8| sent.iter().find(|a| a[1] == code).cloned();
        // COMMUNITIES is modelled: same bytes, its Partial bit kept.
        assert_eq!(find(8), Some(COMMUNITIES.to_vec()));
        // The rest are not: the same bytes with Partial set.
        assert_eq!(find(16), Some(with_partial(EXT_COMMUNITIES)));
        assert_eq!(find(25), Some(with_partial(IPV6_EXT_COMMUNITIES)));
        assert_eq!(find(32), Some(with_partial(LARGE_COMMUNITIES)));
        assert_eq!(find(201), Some(UNASSIGNED.to_vec()));
        assert_eq!(
            find(202),
            None,
            "optional non-transitive attribute passed on"
        );
    }

    #[test]
    fn reflected_route_keeps_every_optional_transitive_attribute() {
        let sent = pass_on(peer(1, ME, true), peer(2, ME, false));
        assert_carried(&sent);
        // ORIGINATOR_ID and CLUSTER_LIST added by the reflection, in their place.
        assert!(sent.iter().any(|a| a[1] == 9) && sent.iter().any(|a| a[1] == 10));
    }

    #[test]
    fn ebgp_to_ibgp_and_ibgp_to_ebgp_keep_them_too() {
        assert_carried(&pass_on(peer(1, 65001, false), peer(2, ME, false)));
        assert_carried(&pass_on(peer(1, ME, false), peer(3, 65003, false)));
    }

    #[test]
    fn a_route_twill_originates_carries_none() {
        let mut r = rib();
        let to = peer(2, 65002, false);
        r.peer_up(to.clone());
        let out = r.originate(net("10.8.0.0/24"), None);
        let (a, _) = &out.updates[&to.addr].announce[0];
        assert!(a.unknown.is_empty() && a.partial.is_empty());
    }
}

/// IPv6 unicast (RFC 4760) with RFC 2545 next hops, over IPv4 and IPv6 sessions.
mod ipv6 {
    use super::*;

    const N6: &str = "2001:db8:9::/64";

    fn v6(s: &str) -> Ipv6Addr {
        s.parse().unwrap()
    }

    fn link(ifindex: u32, ll: &str) -> Option<SharedLink> {
        Some(SharedLink {
            ifindex,
            link_local: v6(ll),
        })
    }

    /// A peer over an IPv6 session: we are 2001:db8:ff::100 on it.
    fn peer6(last: u8, asn: u32, rr_client: bool) -> PeerInfo {
        PeerInfo {
            addr: IpAddr::V6(v6(&format!("2001:db8:ff::{last}"))),
            local_addr: IpAddr::V6(v6("2001:db8:ff::100")),
            local_v6: None,
            ..peer(last, asn, rr_client)
        }
    }

    fn attrs6(path: &[u32], nh: &str, ll: Option<&str>) -> PathAttrs {
        PathAttrs {
            next_hop: nh.parse().unwrap(),
            next_hop_local: ll.map(v6),
            ..attrs(path, 0)
        }
    }

    fn sent(out: &Output, to: &PeerInfo) -> Option<PathAttrs> {
        out.updates
            .get(&to.addr)?
            .announce
            .iter()
            .find(|(_, n)| *n == net(N6))
            .map(|(a, _)| a.clone())
    }

    #[test]
    fn ipv6_routes_only_on_sessions_that_negotiated_ipv6() {
        let mut r = rib();
        let v4_only = PeerInfo {
            families: [Afi::Ipv4].into(),
            ..peer(1, 65001, false)
        };
        let both = peer(2, 65002, false);
        r.peer_up(v4_only.clone());
        r.peer_up(both.clone());
        // Sent anyway by a peer that did not announce IPv6: ignored.
        announce(&mut r, &v4_only, attrs6(&[65001], "2001:db8::1", None), N6);
        assert_eq!(r.best(&net(N6)), None);
        assert_eq!(r.counts(&v4_only.addr).received, 0);
        // From a peer that did: learned, and not passed to the IPv4-only peer.
        let out = announce(&mut r, &both, attrs6(&[65002], "2001:db8::2", None), N6);
        assert_eq!(best_from(&r, N6), Some(Source::Peer(both.addr)));
        assert!(sent(&out, &v4_only).is_none());
        assert!(!out.updates.contains_key(&v4_only.addr));
    }

    #[test]
    fn ebgp_over_ipv4_session_sends_configured_global_plus_link_local() {
        let mut r = rib();
        let from = peer(1, 65001, false);
        let to = PeerInfo {
            link: link(2, "fe80::100"),
            ..peer(2, 65002, false)
        };
        r.peer_up(from.clone());
        r.peer_up(to.clone());
        let out = announce(
            &mut r,
            &from,
            attrs6(&[65001], "2001:db8::1", Some("fe80::1")),
            N6,
        );
        let a = sent(&out, &to).unwrap();
        assert_eq!(a.next_hop, IpAddr::V6(v6("2001:db8::100")));
        assert_eq!(a.next_hop_local, Some(v6("fe80::100")));
        assert_eq!(a.as_path_flat(), vec![ME, 65001]);
        // Not on a shared link (multihop): global only.
        let far = peer(3, 65003, false);
        let out = r.peer_up(far.clone());
        let a = sent(&out, &far).unwrap();
        assert_eq!(a.next_hop_local, None);
        // No IPv6 address configured: our IPv4 address, IPv4-mapped.
        let mapped = PeerInfo {
            local_v6: None,
            ..peer(4, 65004, false)
        };
        let a = sent(&r.peer_up(mapped.clone()), &mapped).unwrap();
        assert_eq!(a.next_hop, IpAddr::V6(v6("::ffff:192.0.2.100")));
    }

    #[test]
    fn ebgp_over_ipv6_session_uses_the_session_address() {
        let mut r = rib();
        let to = PeerInfo {
            local_v6: Some(v6("2001:db8:aaaa::1")),
            link: link(2, "fe80::100"),
            ..peer6(2, 65002, false)
        };
        r.peer_up(to.clone());
        let out = r.originate(net(N6), None);
        let a = sent(&out, &to).unwrap();
        assert_eq!(a.next_hop, IpAddr::V6(v6("2001:db8:ff::100")));
        assert_eq!(a.next_hop_local, Some(v6("fe80::100")));
        // A session between link-local addresses takes the configured global address,
        // and without one there is no global next hop to give: nothing is sent.
        let ll_session = PeerInfo {
            local_addr: IpAddr::V6(v6("fe80::100")),
            ..to.clone()
        };
        let mut r2 = rib();
        r2.originate(net(N6), None);
        let a = sent(&r2.peer_up(ll_session.clone()), &ll_session).unwrap();
        assert_eq!(a.next_hop, IpAddr::V6(v6("2001:db8:aaaa::1")));
        let bare = PeerInfo {
            local_v6: None,
            ..ll_session
        };
        let mut r3 = rib();
        r3.originate(net(N6), None);
        assert!(sent(&r3.peer_up(bare.clone()), &bare).is_none());
    }

    #[test]
    fn route_reflection_of_ipv6_keeps_next_hop_and_link_local_only_on_the_same_link() {
        let mut r = rib();
        let client = PeerInfo {
            link: link(2, "fe80::100"),
            ..peer6(1, ME, true)
        };
        let same_link = PeerInfo {
            link: link(2, "fe80::100"),
            ..peer6(2, ME, false)
        };
        let other_link = PeerInfo {
            link: link(3, "fe80::300"),
            ..peer6(3, ME, false)
        };
        for p in [&client, &same_link, &other_link] {
            r.peer_up(p.clone());
        }
        let out = announce(
            &mut r,
            &client,
            attrs6(&[], "2001:db8:ff::1", Some("fe80::1")),
            N6,
        );
        let a = sent(&out, &same_link).unwrap();
        assert_eq!(a.originator_id, Some(client.router_id));
        assert_eq!(a.cluster_list, vec![Ipv4Addr::new(10, 0, 0, 100)]);
        assert_eq!(a.next_hop, IpAddr::V6(v6("2001:db8:ff::1")));
        assert_eq!(a.next_hop_local, Some(v6("fe80::1")));
        let b = sent(&out, &other_link).unwrap();
        assert_eq!(b.next_hop, IpAddr::V6(v6("2001:db8:ff::1")));
        assert_eq!(
            b.next_hop_local, None,
            "a link-local next hop left its link"
        );
        // Loop rules as for IPv4: our cluster ID in the list → refused.
        let looped = PathAttrs {
            cluster_list: vec![Ipv4Addr::new(10, 0, 0, 100)],
            ..attrs6(&[], "2001:db8:ff::2", None)
        };
        announce(&mut r, &same_link, looped, "2001:db8:8::/64");
        assert_eq!(r.best(&net("2001:db8:8::/64")), None);
    }

    #[test]
    fn link_local_only_route_is_passed_on_with_us_as_next_hop() {
        let mut r = rib();
        let client = PeerInfo {
            link: link(2, "fe80::100"),
            ..peer6(1, ME, true)
        };
        let other = PeerInfo {
            link: link(3, "fe80::300"),
            ..peer6(3, ME, false)
        };
        r.peer_up(client.clone());
        r.peer_up(other.clone());
        let out = announce(&mut r, &client, attrs6(&[], "::", Some("fe80::1")), N6);
        // Installed via the link-local address (on the client's link).
        let best = &out.best[0];
        assert_eq!(
            crate::speaker::learned_route(best),
            Some((net(N6), IpAddr::V6(v6("fe80::1"))))
        );
        let a = sent(&out, &other).unwrap();
        assert_eq!(a.next_hop, IpAddr::V6(v6("2001:db8:ff::100")));
        assert_eq!(a.next_hop_local, Some(v6("fe80::300")));
    }

    #[test]
    fn ipv4_routes_never_carry_a_link_local_next_hop() {
        let mut r = rib();
        let to = PeerInfo {
            link: link(2, "fe80::100"),
            ..peer(2, 65002, false)
        };
        let out = r.peer_up(to.clone());
        assert!(out.updates[&to.addr].announce.is_empty());
        let out = r.originate(net(N), None);
        let (a, _) = &out.updates[&to.addr].announce[0];
        assert_eq!(a.next_hop_local, None);
        assert_eq!(a.next_hop, IpAddr::V4(Ipv4Addr::new(192, 0, 2, 100)));
    }
}
