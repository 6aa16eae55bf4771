//! Routing information bases, pure: Adj-RIB-In per peer, the Loc-RIB with RFC 4271
//! §9.1.2.2 best-path selection, and Adj-RIB-Out per peer with the export rules (iBGP split
//! horizon, RFC 4456 route reflection, eBGP next-hop-self and AS prepend), plus the receiving
//! side of graceful restart (stale routes kept until End-of-RIB or the restart timer).
//!
//! Every mutation returns an [`Output`]: the Loc-RIB changes for the agent and the UPDATE
//! contents per peer. Nothing here does I/O or reads a clock.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use ipnet::IpNet;
use serde::Serialize;

use crate::attrs::{Afi, PathAttrs};
use crate::codec::UpdateIn;

/// LOCAL_PREF assumed when a route has none (and given to routes learned by eBGP).
pub const DEFAULT_LOCAL_PREF: u32 = 100;

/// This speaker's identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RibConfig {
    pub asn: u32,
    pub router_id: Ipv4Addr,
    /// Route-reflector cluster ID; the router ID when unset (RFC 4456 §7).
    pub cluster_id: Option<Ipv4Addr>,
}

impl RibConfig {
    fn cluster(&self) -> Ipv4Addr {
        self.cluster_id.unwrap_or(self.router_id)
    }
}

/// A peer whose session is up, as the RIB needs to know it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerInfo {
    pub addr: IpAddr,
    pub asn: u32,
    /// Our AS on this session (a per-peer local AS override, or the speaker's).
    pub local_asn: u32,
    pub router_id: Ipv4Addr,
    pub rr_client: bool,
    /// Our address on the session: the next hop when we set next-hop-self.
    pub local_addr: IpAddr,
    /// Our global IPv6 next hop when the session itself does not give one (an IPv4 session,
    /// or an IPv6 session between link-local addresses).
    pub local_v6: Option<Ipv6Addr>,
    /// The link we share with the peer (it is on one of our interfaces' subnets), when that
    /// interface has an IPv6 link-local address: RFC 2545 next hops include it.
    pub link: Option<SharedLink>,
    /// Families negotiated on the session.
    pub families: BTreeSet<Afi>,
    /// Families whose stale routes survive this session coming up (the peer restarted with
    /// the F bit set, RFC 4724 §4.2); stale routes of other families are flushed at once.
    pub gr_keep: BTreeSet<Afi>,
}

impl PeerInfo {
    pub fn ibgp(&self) -> bool {
        self.asn == self.local_asn
    }

    /// Our global IPv6 next hop on this session (RFC 2545 §2): the session's own address
    /// when it is a global IPv6 one, else the configured one, else, on an IPv4 session, our
    /// IPv4 address mapped into IPv6. None on a link-local-only session with nothing
    /// configured: then IPv6 routes we would have to be the next hop for are not sent.
    fn global_v6(&self) -> Option<Ipv6Addr> {
        match self.local_addr {
            IpAddr::V6(v6) if !v6.is_unspecified() && !crate::codec::is_link_local(&v6) => Some(v6),
            IpAddr::V6(_) => self.local_v6,
            IpAddr::V4(v4) => Some(self.local_v6.unwrap_or(v4.to_ipv6_mapped())),
        }
    }
}

/// An interface this speaker shares with a peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SharedLink {
    pub ifindex: u32,
    /// Our link-local address on it.
    pub link_local: Ipv6Addr,
}

/// Where a Loc-RIB route came from.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    Local,
    Peer(IpAddr),
}

/// A route in the Loc-RIB.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Route {
    pub prefix: IpNet,
    pub source: Source,
    pub attrs: Arc<PathAttrs>,
    /// Kept by graceful restart while its peer is away.
    pub stale: bool,
}

/// A Loc-RIB change: the new best route, or None when the prefix is gone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BestChange {
    pub prefix: IpNet,
    pub best: Option<Route>,
}

/// What to send one peer.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PeerUpdate {
    pub announce: Vec<(PathAttrs, IpNet)>,
    pub withdraw: Vec<IpNet>,
}

/// The result of a RIB mutation.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Output {
    pub best: Vec<BestChange>,
    pub updates: BTreeMap<IpAddr, PeerUpdate>,
}

impl Output {
    fn merge(&mut self, other: Output) {
        self.best.extend(other.best);
        for (p, u) in other.updates {
            let e = self.updates.entry(p).or_default();
            e.announce.extend(u.announce);
            e.withdraw.extend(u.withdraw);
        }
    }
}

#[derive(Debug, Clone)]
struct InEntry {
    attrs: Arc<PathAttrs>,
    stale: bool,
}

#[derive(Debug, Clone)]
struct PeerEntry {
    /// The last session's view; kept while the peer is down for its stale routes.
    info: PeerInfo,
    up: bool,
    adj_in: BTreeMap<IpNet, InEntry>,
    /// Prefixes received but refused by import rules (counted as received).
    rejected: BTreeSet<IpNet>,
    adj_out: BTreeMap<IpNet, PathAttrs>,
}

/// Per-peer counts for the status view.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct PrefixCounts {
    pub received: usize,
    pub accepted: usize,
    pub sent: usize,
    pub stale: usize,
}

/// The RIBs of one speaker.
#[derive(Debug, Clone)]
pub struct Rib {
    cfg: RibConfig,
    peers: BTreeMap<IpAddr, PeerEntry>,
    local: BTreeMap<IpNet, Arc<PathAttrs>>,
    loc: BTreeMap<IpNet, Route>,
}

/// One candidate for best-path selection.
#[derive(Debug, Clone)]
struct Cand<'a> {
    source: Source,
    attrs: &'a Arc<PathAttrs>,
    ebgp: bool,
    /// ORIGINATOR_ID if present, else the peer's BGP Identifier.
    router_id: Ipv4Addr,
    stale: bool,
}

/// RFC 4271 §9.1.2.2 by elimination, in order; locally originated routes win outright.
fn select(mut c: Vec<Cand<'_>>) -> Option<Cand<'_>> {
    if let Some(local) = c.iter().position(|x| x.source == Source::Local) {
        return Some(c.swap_remove(local));
    }
    fn keep_min<T: Ord + Copy>(c: &mut Vec<Cand<'_>>, key: impl Fn(&Cand<'_>) -> T) {
        if let Some(m) = c.iter().map(&key).min() {
            c.retain(|x| key(x) == m);
        }
    }
    // a) highest LOCAL_PREF
    keep_min(&mut c, |x| {
        std::cmp::Reverse(x.attrs.local_pref.unwrap_or(DEFAULT_LOCAL_PREF))
    });
    // b) shortest AS_PATH
    keep_min(&mut c, |x| x.attrs.as_path_len());
    // c) lowest ORIGIN
    keep_min(&mut c, |x| x.attrs.origin);
    // d) MED, compared only among routes from the same neighbour AS; a missing MED is the
    // lowest value.
    let snapshot: Vec<(Option<u32>, u32)> = c
        .iter()
        .map(|x| (x.attrs.neighbour_as(), x.attrs.med.unwrap_or(0)))
        .collect();
    let mut i = 0;
    c.retain(|_| {
        let (nas, med) = snapshot[i];
        i += 1;
        !snapshot
            .iter()
            .any(|(other_as, other_med)| *other_as == nas && *other_med < med)
    });
    // e) eBGP over iBGP
    keep_min(&mut c, |x| !x.ebgp);
    // (f: IGP cost to the next hop is the same for all here: every next hop is connected.)
    // Fresh over stale, so a route refreshed after a restart beats its stale twin.
    keep_min(&mut c, |x| x.stale);
    // g) lowest router ID (ORIGINATOR_ID when reflected)
    keep_min(&mut c, |x| u32::from(x.router_id));
    // RFC 4456 §9: shorter CLUSTER_LIST
    keep_min(&mut c, |x| x.attrs.cluster_list.len());
    // h) lowest peer address
    keep_min(&mut c, |x| match &x.source {
        Source::Peer(a) => *a,
        Source::Local => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
    });
    c.into_iter().next()
}

fn unspecified(a: &IpAddr) -> bool {
    a.is_unspecified()
}

impl Rib {
    pub fn new(cfg: RibConfig) -> Rib {
        Rib {
            cfg,
            peers: BTreeMap::new(),
            local: BTreeMap::new(),
            loc: BTreeMap::new(),
        }
    }

    pub fn config(&self) -> &RibConfig {
        &self.cfg
    }

    /// The Loc-RIB: best route per prefix.
    pub fn loc_rib(&self) -> impl Iterator<Item = &Route> {
        self.loc.values()
    }

    pub fn best(&self, prefix: &IpNet) -> Option<&Route> {
        self.loc.get(prefix)
    }

    /// What we last sent a peer.
    pub fn adj_out(&self, peer: &IpAddr) -> Vec<(IpNet, PathAttrs)> {
        self.peers
            .get(peer)
            .map(|p| p.adj_out.iter().map(|(n, a)| (*n, a.clone())).collect())
            .unwrap_or_default()
    }

    pub fn counts(&self, peer: &IpAddr) -> PrefixCounts {
        self.peers
            .get(peer)
            .map(|p| PrefixCounts {
                received: p.adj_in.len() + p.rejected.len(),
                accepted: p.adj_in.len(),
                sent: p.adj_out.len(),
                stale: p.adj_in.values().filter(|e| e.stale).count(),
            })
            .unwrap_or_default()
    }

    /// Import rules; None when the route must be refused.
    fn import(&self, peer: &PeerInfo, attrs: &PathAttrs) -> Option<PathAttrs> {
        let mut a = attrs.clone();
        if !peer.ibgp() {
            // AS loop (RFC 4271 §9.1.2) and the first AS must be the peer's (§6.3).
            if a.as_path_contains(peer.local_asn) || a.as_path_contains(self.cfg.asn) {
                return None;
            }
            if a.neighbour_as() != Some(peer.asn) {
                return None;
            }
            // LOCAL_PREF, ORIGINATOR_ID and CLUSTER_LIST have no meaning across ASes
            // (RFC 4271 §5.1.5, RFC 7606 §7.9/7.10: discard).
            a.local_pref = Some(DEFAULT_LOCAL_PREF);
            a.originator_id = None;
            a.cluster_list.clear();
        } else {
            // Reflection loops (RFC 4456 §8).
            if a.originator_id == Some(self.cfg.router_id)
                || a.cluster_list.contains(&self.cfg.cluster())
            {
                return None;
            }
            if a.local_pref.is_none() {
                a.local_pref = Some(DEFAULT_LOCAL_PREF);
            }
        }
        Some(a)
    }

    /// Export rules for one best route to one peer; None when it is not sent.
    fn export(&self, route: &Route, to: &PeerInfo) -> Option<PathAttrs> {
        if route.source == Source::Peer(to.addr) {
            return None;
        }
        let afi = Afi::of(&route.prefix);
        if !to.families.contains(&afi) {
            return None;
        }
        let mut a = (*route.attrs).clone();
        let from = match &route.source {
            Source::Local => None,
            Source::Peer(addr) => Some(&self.peers.get(addr)?.info),
        };
        let self_nh = match (afi, to.local_addr) {
            (Afi::Ipv4, IpAddr::V4(v4)) => Some(IpAddr::V4(v4)),
            (Afi::Ipv4, IpAddr::V6(_)) => None,
            (Afi::Ipv6, _) => to.global_v6().map(IpAddr::V6),
        };
        // RFC 2545 §3: a link-local next hop goes only to a peer on the link it belongs to.
        // Ours when we are the next hop; a received one only when it was learned over the
        // very link the peer is on.
        let own_link_local = to.link.filter(|_| afi == Afi::Ipv6).map(|l| l.link_local);
        let same_link = match (from.and_then(|f| f.link), to.link) {
            (Some(a), Some(b)) => a.ifindex == b.ifindex,
            _ => false,
        };
        if !to.ibgp() {
            a.prepend_as(to.local_asn);
            a.next_hop = self_nh?;
            a.next_hop_local = own_link_local;
            a.local_pref = None;
            a.originator_id = None;
            a.cluster_list.clear();
            // MED is not passed on from one neighbouring AS to another (RFC 4271 §5.1.4).
            if from.is_some() {
                a.med = None;
            }
            return Some(a);
        }
        match from {
            None => {
                if a.local_pref.is_none() {
                    a.local_pref = Some(DEFAULT_LOCAL_PREF);
                }
            }
            Some(f) if !f.ibgp() => {}
            Some(f) => {
                // iBGP to iBGP: only a route reflector passes it on, and only when either
                // side is a client (RFC 4456 §6).
                if !(f.rr_client || to.rr_client) {
                    return None;
                }
                let originator = a.originator_id.unwrap_or(f.router_id);
                if originator == to.router_id {
                    return None;
                }
                a.originator_id = Some(originator);
                a.cluster_list.insert(0, self.cfg.cluster());
            }
        }
        if unspecified(&a.next_hop) {
            // Ours (a local route), or a learned IPv6 route with only a link-local next hop,
            // which means nothing off its link: we become the next hop.
            a.next_hop = self_nh?;
            a.next_hop_local = own_link_local;
        } else if !same_link {
            a.next_hop_local = None;
        }
        Some(a)
    }

    /// Recomputes one prefix: best path, then every up peer's Adj-RIB-Out.
    fn recompute(&mut self, prefix: IpNet, out: &mut Output) {
        let mut cands = Vec::new();
        if let Some(a) = self.local.get(&prefix) {
            cands.push(Cand {
                source: Source::Local,
                attrs: a,
                ebgp: false,
                router_id: self.cfg.router_id,
                stale: false,
            });
        }
        for (addr, p) in &self.peers {
            if let Some(e) = p.adj_in.get(&prefix) {
                cands.push(Cand {
                    source: Source::Peer(*addr),
                    attrs: &e.attrs,
                    ebgp: !p.info.ibgp(),
                    router_id: e.attrs.originator_id.unwrap_or(p.info.router_id),
                    stale: e.stale,
                });
            }
        }
        let new = select(cands).map(|c| Route {
            prefix,
            source: c.source,
            attrs: Arc::clone(c.attrs),
            stale: c.stale,
        });
        let old = self.loc.get(&prefix);
        if old != new.as_ref() {
            out.best.push(BestChange {
                prefix,
                best: new.clone(),
            });
            match &new {
                Some(r) => self.loc.insert(prefix, r.clone()),
                None => self.loc.remove(&prefix),
            };
        }
        let addrs: Vec<IpAddr> = self
            .peers
            .iter()
            .filter(|(_, p)| p.up)
            .map(|(a, _)| *a)
            .collect();
        for addr in addrs {
            let want = new
                .as_ref()
                .and_then(|r| self.export(r, &self.peers[&addr].info));
            let p = self.peers.get_mut(&addr).expect("peer listed above");
            let have = p.adj_out.get(&prefix);
            if have == want.as_ref() {
                continue;
            }
            let u = out.updates.entry(addr).or_default();
            match want {
                Some(a) => {
                    u.announce.push((a.clone(), prefix));
                    p.adj_out.insert(prefix, a);
                }
                None => {
                    u.withdraw.push(prefix);
                    p.adj_out.remove(&prefix);
                }
            }
        }
    }

    fn recompute_all(&mut self, prefixes: BTreeSet<IpNet>) -> Output {
        let mut out = Output::default();
        for p in prefixes {
            self.recompute(p, &mut out);
        }
        out
    }

    /// A session came up: stale routes of families the peer did not preserve go, and the
    /// peer gets our whole table.
    pub fn peer_up(&mut self, info: PeerInfo) -> Output {
        let addr = info.addr;
        let entry = self.peers.entry(addr).or_insert_with(|| PeerEntry {
            info: info.clone(),
            up: false,
            adj_in: BTreeMap::new(),
            rejected: BTreeSet::new(),
            adj_out: BTreeMap::new(),
        });
        entry.info = info.clone();
        entry.up = true;
        entry.adj_out.clear();
        entry.rejected.clear();
        let flushed: BTreeSet<IpNet> = entry
            .adj_in
            .iter()
            .filter(|(n, e)| e.stale && !info.gr_keep.contains(&Afi::of(n)))
            .map(|(n, _)| *n)
            .collect();
        entry.adj_in.retain(|n, _| !flushed.contains(n));
        let mut out = self.recompute_all(flushed);
        let mut full = PeerUpdate::default();
        let routes: Vec<Route> = self.loc.values().cloned().collect();
        for r in routes {
            if let Some(a) = self.export(&r, &info) {
                full.announce.push((a.clone(), r.prefix));
                self.peers
                    .get_mut(&addr)
                    .expect("inserted above")
                    .adj_out
                    .insert(r.prefix, a);
            }
        }
        let u = out.updates.entry(addr).or_default();
        u.announce.extend(full.announce);
        out
    }

    /// A session went down. With graceful restart its routes stay, marked stale, until
    /// [`Rib::end_of_rib`] or [`Rib::flush_stale`]; otherwise they go now.
    pub fn peer_down(&mut self, addr: IpAddr, graceful: bool) -> Output {
        let Some(p) = self.peers.get_mut(&addr) else {
            return Output::default();
        };
        p.up = false;
        p.adj_out.clear();
        p.rejected.clear();
        let prefixes: BTreeSet<IpNet> = p.adj_in.keys().copied().collect();
        if graceful {
            for e in p.adj_in.values_mut() {
                e.stale = true;
            }
        } else {
            p.adj_in.clear();
        }
        self.recompute_all(prefixes)
    }

    /// The peer is no longer configured: everything it sent goes.
    pub fn remove_peer(&mut self, addr: IpAddr) -> Output {
        let out = self.peer_down(addr, false);
        self.peers.remove(&addr);
        out
    }

    /// One received UPDATE.
    pub fn update(&mut self, addr: IpAddr, upd: &UpdateIn) -> Output {
        let Some(info) = self
            .peers
            .get(&addr)
            .filter(|p| p.up)
            .map(|p| p.info.clone())
        else {
            return Output::default();
        };
        let mut touched = BTreeSet::new();
        let mut accepted: Vec<(IpNet, Arc<PathAttrs>)> = Vec::new();
        let mut refused: Vec<IpNet> = Vec::new();
        for (attrs, nets) in &upd.announced {
            // RFC 4760 §6: only families both sides announced; others are ignored.
            let nets: Vec<IpNet> = nets
                .iter()
                .filter(|n| info.families.contains(&Afi::of(n)))
                .copied()
                .collect();
            if nets.is_empty() {
                continue;
            }
            match self.import(&info, attrs) {
                Some(a) => {
                    let a = Arc::new(a);
                    accepted.extend(nets.iter().map(|n| (*n, Arc::clone(&a))));
                }
                None => refused.extend(nets.iter().copied()),
            }
        }
        let p = self.peers.get_mut(&addr).expect("checked above");
        for n in &upd.withdrawn {
            p.adj_in.remove(n);
            p.rejected.remove(n);
            touched.insert(*n);
        }
        for n in refused {
            // A refused announcement replaces (withdraws) what the peer sent before.
            p.adj_in.remove(&n);
            p.rejected.insert(n);
            touched.insert(n);
        }
        for (n, a) in accepted {
            p.rejected.remove(&n);
            p.adj_in.insert(
                n,
                InEntry {
                    attrs: a,
                    stale: false,
                },
            );
            touched.insert(n);
        }
        let mut out = self.recompute_all(touched);
        if let Some(afi) = upd.end_of_rib {
            out.merge(self.end_of_rib(addr, afi));
        }
        out
    }

    /// End-of-RIB from a peer: its routes of that family still stale are gone.
    pub fn end_of_rib(&mut self, addr: IpAddr, afi: Afi) -> Output {
        self.flush(addr, Some(afi))
    }

    /// The restart timer ran out: every stale route of the peer goes.
    pub fn flush_stale(&mut self, addr: IpAddr) -> Output {
        self.flush(addr, None)
    }

    fn flush(&mut self, addr: IpAddr, afi: Option<Afi>) -> Output {
        let Some(p) = self.peers.get_mut(&addr) else {
            return Output::default();
        };
        let gone: BTreeSet<IpNet> = p
            .adj_in
            .iter()
            .filter(|(n, e)| e.stale && afi.is_none_or(|f| Afi::of(n) == f))
            .map(|(n, _)| *n)
            .collect();
        p.adj_in.retain(|n, _| !gone.contains(n));
        self.recompute_all(gone)
    }

    /// Originates a local prefix; `next_hop` None means our address on each session.
    pub fn originate(&mut self, prefix: IpNet, next_hop: Option<IpAddr>) -> Output {
        let prefix = prefix.trunc();
        self.local.insert(
            prefix,
            Arc::new(PathAttrs::local(next_hop, Afi::of(&prefix))),
        );
        self.recompute_all([prefix].into())
    }

    pub fn withdraw_local(&mut self, prefix: IpNet) -> Output {
        let prefix = prefix.trunc();
        self.local.remove(&prefix);
        self.recompute_all([prefix].into())
    }

    /// ROUTE-REFRESH from a peer: everything in its Adj-RIB-Out again.
    pub fn refresh(&self, addr: IpAddr) -> PeerUpdate {
        PeerUpdate {
            announce: self
                .adj_out(&addr)
                .into_iter()
                .map(|(n, a)| (a, n))
                .collect(),
            withdraw: Vec::new(),
        }
    }
}

#[cfg(test)]
#[path = "rib_tests.rs"]
mod tests;
