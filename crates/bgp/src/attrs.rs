//! The speaker's own view of a route's path attributes and address families.
//!
//! The RIB works on these small, comparable, serialisable types rather than on the codec's
//! types, so best-path selection and export rules can be tested without any wire format, and
//! the agent receives attributes it can print or store as JSON.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

/// AS_TRANS (RFC 6793): the 2-octet stand-in for a 4-octet AS number.
pub const AS_TRANS: u16 = 23456;

/// The two address families this speaker carries (unicast only).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Afi {
    Ipv4,
    Ipv6,
}

impl Afi {
    pub fn of(net: &IpNet) -> Afi {
        match net {
            IpNet::V4(_) => Afi::Ipv4,
            IpNet::V6(_) => Afi::Ipv6,
        }
    }
}

/// ORIGIN values; the derive order is the preference order (IGP < EGP < INCOMPLETE).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default, Serialize, Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Origin {
    #[default]
    Igp,
    Egp,
    Incomplete,
}

/// One AS_PATH segment.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct AsSegment {
    /// AS_SET when true, AS_SEQUENCE otherwise.
    pub set: bool,
    pub asns: Vec<u32>,
}

/// An optional transitive attribute twill does not model, carried on unchanged: `flags` is
/// the flags octet as received with the Partial bit (0x20) set, as RFC 4271 §5 asks of an
/// attribute the speaker does not recognise; `value` is the value octets as received.
///
/// "Recognised" means modelled in [`PathAttrs`]: ORIGIN, AS_PATH, NEXT_HOP, MED, LOCAL_PREF,
/// ATOMIC_AGGREGATE, AGGREGATOR, COMMUNITIES, ORIGINATOR_ID, CLUSTER_LIST, MP_REACH/UNREACH,
/// AS4_PATH and AS4_AGGREGATOR. Everything else (extended communities, IPv6 extended
/// communities, large communities, ...) is carried with Partial set: twill neither reads
/// nor acts on those values, so it cannot vouch that every speaker on the path did.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct RawAttr {
    pub flags: u8,
    pub code: u8,
    pub value: Vec<u8>,
}

/// Path attributes of one route. `next_hop` is per route: IPv4 routes carry NEXT_HOP (or an
/// IPv4 MP_REACH next hop), IPv6 routes the MP_REACH global next hop. An unspecified next hop
/// (0.0.0.0 or ::) on a locally originated route means "this speaker's address on the session".
///
/// IPv6 next hops follow RFC 2545: a 32-octet MP_REACH next hop is the global address
/// (`next_hop`) then the link-local one (`next_hop_local`). A peer that sends only a
/// link-local address (16 octets, fe80::/10; FRR does on unnumbered links) is read as "no
/// global next hop": `next_hop` is `::` and `next_hop_local` holds it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PathAttrs {
    pub origin: Origin,
    pub as_path: Vec<AsSegment>,
    pub next_hop: IpAddr,
    /// IPv6 routes only: the link-local next hop, valid on the link the route was learned on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_hop_local: Option<Ipv6Addr>,
    pub med: Option<u32>,
    pub local_pref: Option<u32>,
    pub atomic_aggregate: bool,
    pub aggregator: Option<(u32, Ipv4Addr)>,
    pub communities: Vec<u32>,
    pub originator_id: Option<Ipv4Addr>,
    pub cluster_list: Vec<Ipv4Addr>,
    /// Optional transitive attributes twill does not model, in ascending type code.
    pub unknown: Vec<RawAttr>,
    /// Type codes of the modelled optional transitive attributes (AGGREGATOR, COMMUNITIES)
    /// that arrived with the Partial bit set: once set it is never cleared (RFC 4271 §5).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub partial: Vec<u8>,
}

impl PathAttrs {
    /// Attributes of a route this speaker originates.
    pub fn local(next_hop: Option<IpAddr>, afi: Afi) -> PathAttrs {
        PathAttrs {
            origin: Origin::Igp,
            as_path: Vec::new(),
            next_hop: next_hop.unwrap_or(match afi {
                Afi::Ipv4 => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
                Afi::Ipv6 => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
            }),
            next_hop_local: None,
            med: None,
            local_pref: None,
            atomic_aggregate: false,
            aggregator: None,
            communities: Vec::new(),
            originator_id: None,
            cluster_list: Vec::new(),
            unknown: Vec::new(),
            partial: Vec::new(),
        }
    }

    /// The next hop to install a learned route with: the global next hop, or, for an IPv6
    /// route that has none, the link-local one, which is only meaningful together with the
    /// interface of the session the route came over. A global next hop that is an IPv4
    /// address mapped into IPv6 (`::ffff:a.b.c.d`: a sender without an IPv6 address on an
    /// IPv4 session, as BIRD sends it) counts as none when a link-local one came with it:
    /// Linux routes no IPv6 prefix via an IPv4 gateway, but does via the link-local one.
    pub fn installable_next_hop(&self) -> IpAddr {
        match (self.next_hop, self.next_hop_local) {
            (IpAddr::V6(g), Some(ll)) if g.is_unspecified() || g.to_ipv4_mapped().is_some() => {
                IpAddr::V6(ll)
            }
            (nh, _) => nh,
        }
    }

    /// AS_PATH length for best-path selection: an AS_SET counts as one (RFC 4271 §9.1.2.2 a).
    pub fn as_path_len(&self) -> usize {
        self.as_path
            .iter()
            .map(|s| if s.set { 1 } else { s.asns.len() })
            .sum()
    }

    /// The neighbouring AS: the first AS of the first AS_SEQUENCE (None for local routes).
    pub fn neighbour_as(&self) -> Option<u32> {
        match self.as_path.first() {
            Some(seg) if !seg.set => seg.asns.first().copied(),
            _ => None,
        }
    }

    /// True when `asn` appears anywhere in the AS_PATH (loop detection).
    pub fn as_path_contains(&self, asn: u32) -> bool {
        self.as_path.iter().any(|s| s.asns.contains(&asn))
    }

    /// Prepends `asn` to the AS_PATH (eBGP export).
    pub fn prepend_as(&mut self, asn: u32) {
        match self.as_path.first_mut() {
            // A segment holds at most 255 ASes on the wire.
            Some(seg) if !seg.set && seg.asns.len() < 255 => seg.asns.insert(0, asn),
            _ => self.as_path.insert(
                0,
                AsSegment {
                    set: false,
                    asns: vec![asn],
                },
            ),
        }
    }

    /// The flat list of ASes, for display.
    pub fn as_path_flat(&self) -> Vec<u32> {
        self.as_path.iter().flat_map(|s| s.asns.clone()).collect()
    }
}
