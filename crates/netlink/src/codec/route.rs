//! Route messages: the requests that add, replace and delete an [`IpRoute`] of either family
//! (plain or through a nexthop object), and the decoding of the kernel's route replies. Both
//! the one-request-at-a-time client ([`crate::rtnl`]) and the bulk writer ([`crate::bulk`])
//! send these, so a route reads back the same whichever wrote it.

use std::net::IpAddr;

use ipnet::IpNet;
use netlink_packet_route::AddressFamily;
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteFlags, RouteHeader, RouteMessage, RouteProtocol, RouteScope,
    RouteType,
};

/// An IPv4 or IPv6 route of the main table; the family is the destination's.
///
/// For writes, `tos` and `unicast` are ignored (routes are unicast with TOS 0); `metric` 0 is
/// the kernel's default priority, which an IPv6 route reads back as
/// [`IPV6_DEFAULT_METRIC`]. The gateway is of the destination's family (an IPv6 gateway
/// may be link-local, with `oif` naming its link).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct IpRoute {
    pub dst: IpNet,
    pub gateway: Option<IpAddr>,
    /// Output link index.
    pub oif: Option<u32>,
    /// `RTNH_F_ONLINK`: the gateway is taken as directly reachable on `oif` even though no
    /// connected subnet covers it (VXLAN next hops).
    pub onlink: bool,
    /// Routing protocol number (who owns the route).
    pub protocol: u8,
    /// Priority (`ip route ... metric N`).
    pub metric: u32,
    pub tos: u8,
    /// False for blackhole, unreachable, local, ... routes.
    pub unicast: bool,
    /// The nexthop object the route goes through (`ip route ... nhid N`), as read back; the
    /// kernel also reports that object's gateway and link in `gateway` and `oif`. Requests
    /// never use it: [`crate::bulk`] picks nexthop objects itself.
    pub nhid: Option<u32>,
}

/// The priority the kernel gives an IPv6 route added without one (`IP6_RT_PRIO_USER`);
/// IPv4 routes keep 0.
pub const IPV6_DEFAULT_METRIC: u32 = 1024;

/// An IP address family, for filtering dumps and notifications.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Family {
    V4,
    V6,
}

impl Family {
    /// The family of `ip`.
    pub fn of(ip: IpAddr) -> Family {
        match ip {
            IpAddr::V4(_) => Family::V4,
            IpAddr::V6(_) => Family::V6,
        }
    }

    /// The rtnetlink address family; `None` is `AF_UNSPEC` (both).
    pub(crate) fn netlink(family: Option<Family>) -> AddressFamily {
        match family {
            None => AddressFamily::Unspec,
            Some(Family::V4) => AddressFamily::Inet,
            Some(Family::V6) => AddressFamily::Inet6,
        }
    }
}

impl IpRoute {
    /// The family of the route (its destination's).
    pub fn family(&self) -> Family {
        Family::of(self.dst.addr())
    }
}

/// What every route request carries: family, destination, main table, protocol and (when
/// given) gateway.
fn route_request(route: &IpRoute) -> RouteMessage {
    let mut msg = RouteMessage::default();
    msg.header.address_family = Family::netlink(Some(route.family()));
    msg.header.destination_prefix_length = route.dst.prefix_len();
    msg.header.table = RouteHeader::RT_TABLE_MAIN;
    msg.header.protocol = RouteProtocol::from(route.protocol);
    msg.attributes
        .push(RouteAttribute::Destination(RouteAddress::from(
            route.dst.network(),
        )));
    if let Some(gw) = route.gateway {
        msg.attributes
            .push(RouteAttribute::Gateway(RouteAddress::from(gw)));
    }
    msg
}

/// The request that deletes the route to `route.dst` with its protocol, metric, TOS and
/// (when given) gateway.
pub(crate) fn delete_route_message(route: &IpRoute) -> RouteMessage {
    let mut msg = route_request(route);
    msg.header.tos = route.tos;
    // NOWHERE and UNSPEC are the kernel's wildcards for scope and type.
    msg.header.scope = RouteScope::NoWhere;
    msg.header.kind = RouteType::Unspec;
    if route.metric != 0 {
        msg.attributes.push(RouteAttribute::Priority(route.metric));
    }
    msg
}

/// The request that adds (or replaces) `route`.
pub(crate) fn route_message(route: &IpRoute) -> RouteMessage {
    let mut msg = route_request(route);
    // A route without a gateway is to a directly connected destination.
    msg.header.scope = if route.gateway.is_some() {
        RouteScope::Universe
    } else {
        RouteScope::Link
    };
    msg.header.kind = RouteType::Unicast;
    if route.onlink {
        msg.header.flags = RouteFlags::Onlink;
    }
    if let Some(oif) = route.oif {
        msg.attributes.push(RouteAttribute::Oif(oif));
    }
    if route.metric != 0 {
        msg.attributes.push(RouteAttribute::Priority(route.metric));
    }
    msg
}

/// The output link of a route reply (the first hop's, for a multipath route).
pub(crate) fn route_oif(m: &RouteMessage) -> Option<u32> {
    m.attributes.iter().find_map(|a| match a {
        RouteAttribute::Oif(i) => Some(*i),
        RouteAttribute::MultiPath(hops) => hops.first().map(|h| h.interface_index),
        _ => None,
    })
}

/// The priority of a route reply (0 when it has none).
pub(crate) fn route_metric(m: &RouteMessage) -> u32 {
    m.attributes
        .iter()
        .find_map(|a| match a {
            RouteAttribute::Priority(p) => Some(*p),
            _ => None,
        })
        .unwrap_or(0)
}

/// A route reply as an [`IpRoute`], or None when it is not an IPv4 or IPv6 route of the main
/// table.
pub(crate) fn route_from_message(m: &RouteMessage) -> Option<IpRoute> {
    let unspecified: IpAddr = match m.header.address_family {
        AddressFamily::Inet => std::net::Ipv4Addr::UNSPECIFIED.into(),
        AddressFamily::Inet6 => std::net::Ipv6Addr::UNSPECIFIED.into(),
        _ => return None,
    };
    // Dumps name tables above 255 only in RTA_TABLE, with RT_TABLE_COMPAT in the header.
    let table = m
        .attributes
        .iter()
        .find_map(|a| match a {
            RouteAttribute::Table(t) => Some(*t),
            _ => None,
        })
        .unwrap_or(u32::from(m.header.table));
    if table != u32::from(RouteHeader::RT_TABLE_MAIN) {
        return None;
    }
    let mut dst = unspecified;
    let mut gateway = None;
    let mut oif = None;
    let mut metric = 0;
    let mut nhid = None;
    for attr in &m.attributes {
        match attr {
            RouteAttribute::NhId(id) => nhid = Some(*id),
            RouteAttribute::Destination(RouteAddress::Inet(a)) => dst = (*a).into(),
            RouteAttribute::Destination(RouteAddress::Inet6(a)) => dst = (*a).into(),
            RouteAttribute::Gateway(RouteAddress::Inet(a)) => gateway = Some((*a).into()),
            RouteAttribute::Gateway(RouteAddress::Inet6(a)) => gateway = Some((*a).into()),
            RouteAttribute::Oif(i) => oif = Some(*i),
            RouteAttribute::Priority(p) => metric = *p,
            _ => {}
        }
    }
    Some(IpRoute {
        dst: IpNet::new(dst, m.header.destination_prefix_length).ok()?,
        gateway,
        oif,
        onlink: m.header.flags.contains(RouteFlags::Onlink),
        protocol: u8::from(m.header.protocol),
        metric,
        tos: m.header.tos,
        unicast: m.header.kind == RouteType::Unicast,
        nhid,
    })
}

/// The route as `ip route` would show it, for errors.
pub(crate) fn route_text(route: &IpRoute) -> String {
    let mut s = route.dst.to_string();
    if let Some(gw) = route.gateway {
        s.push_str(&format!(" via {gw}"));
    }
    if let Some(oif) = route.oif {
        s.push_str(&format!(" dev #{oif}"));
    }
    if route.onlink {
        s.push_str(" onlink");
    }
    s.push_str(&format!(" proto {}", route.protocol));
    if route.metric != 0 {
        s.push_str(&format!(" metric {}", route.metric));
    }
    s
}

/// The message that adds `route`, through nexthop object `nexthop` (which carries the
/// gateway, link and onlink flag) when given.
pub(crate) fn new_route_message(route: &IpRoute, nexthop: Option<u32>) -> RouteMessage {
    let mut msg = route_message(route);
    if let Some(id) = nexthop {
        msg.attributes
            .retain(|a| !matches!(a, RouteAttribute::Gateway(_) | RouteAttribute::Oif(_)));
        msg.attributes.push(RouteAttribute::NhId(id));
        msg.header.flags = RouteFlags::empty();
    }
    msg
}

/// The message that deletes `route`, naming nexthop object `nexthop` instead of the gateway
/// when given (the kernel matches a route through an object only by its id).
pub(crate) fn delete_route_message_via(route: &IpRoute, nexthop: Option<u32>) -> RouteMessage {
    match nexthop {
        None => delete_route_message(route),
        Some(id) => {
            let mut msg = delete_route_message(&IpRoute {
                gateway: None,
                ..route.clone()
            });
            msg.attributes.push(RouteAttribute::NhId(id));
            msg
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Any nexthop object id.
    const NEXTHOP_ID: u32 = 117 << 24;

    #[test]
    fn routes_through_a_nexthop_name_it_instead_of_the_gateway() {
        let route = IpRoute {
            dst: "100.64.0.0/24".parse().unwrap(),
            gateway: Some("10.9.0.1".parse().unwrap()),
            oif: Some(3),
            onlink: true,
            protocol: 117,
            ..IpRoute::default()
        };
        let msg = new_route_message(&route, Some(NEXTHOP_ID));
        assert!(msg.attributes.contains(&RouteAttribute::NhId(NEXTHOP_ID)));
        assert!(
            !msg.attributes
                .iter()
                .any(|a| matches!(a, RouteAttribute::Gateway(_) | RouteAttribute::Oif(_)))
        );
        assert!(!msg.header.flags.contains(RouteFlags::Onlink));
        let plain = new_route_message(&route, None);
        assert!(
            plain
                .attributes
                .iter()
                .any(|a| matches!(a, RouteAttribute::Gateway(_)))
        );
        assert!(plain.header.flags.contains(RouteFlags::Onlink));
        // A deletion through an object names its id, not the gateway (which the kernel
        // would not match).
        let del = delete_route_message_via(&route, Some(NEXTHOP_ID));
        assert!(del.attributes.contains(&RouteAttribute::NhId(NEXTHOP_ID)));
        assert!(
            !del.attributes
                .iter()
                .any(|a| matches!(a, RouteAttribute::Gateway(_)))
        );
        let del = delete_route_message_via(&route, None);
        assert!(
            del.attributes
                .iter()
                .any(|a| matches!(a, RouteAttribute::Gateway(_)))
        );
    }

    #[test]
    fn ipv6_routes_are_written_and_read_as_inet6() {
        let route = IpRoute {
            dst: "fd00:244:2::/64".parse().unwrap(),
            gateway: Some("fe80::2".parse().unwrap()),
            oif: Some(4),
            onlink: true,
            protocol: 117,
            unicast: true,
            ..IpRoute::default()
        };
        let msg = route_message(&route);
        assert_eq!(msg.header.address_family, AddressFamily::Inet6);
        assert_eq!(route_from_message(&msg), Some(route.clone()));
        let del = delete_route_message(&route);
        assert_eq!(del.header.address_family, AddressFamily::Inet6);
        assert_eq!(route.family(), Family::V6);
    }
}
