//! IPv4 and IPv6 routes of the main table, one request each on the shared socket, or in bulk
//! on a socket of their own ([`crate::bulk`]). The messages come from [`crate::codec::route`].

use netlink_packet_core::{NLM_F_CREATE, NLM_F_EXCL, NLM_F_REPLACE};
use netlink_packet_route::route::{RouteHeader, RouteMessage, RouteProtocol, RouteType};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};

use super::link::LinkState;
use super::{Rtnl, all_closed};
use crate::Result;
use crate::bulk::RouteChange;
use crate::codec::route::{
    Family, IpRoute, delete_route_message, route_from_message, route_message, route_metric,
    route_oif, route_text,
};

impl Rtnl {
    /// The routes of the main table of `family` (None: both), only those of `protocol` when
    /// given.
    pub async fn routes(
        &self,
        family: Option<Family>,
        protocol: Option<u8>,
    ) -> Result<Vec<IpRoute>> {
        let mut msg = RouteMessage::default();
        msg.header.address_family = Family::netlink(family);
        msg.header.table = RouteHeader::RT_TABLE_MAIN;
        // With strict checking the kernel filters by protocol itself.
        if let Some(p) = protocol {
            msg.header.protocol = RouteProtocol::from(p);
        }
        let what = match family {
            None => "list routes",
            Some(Family::V4) => "list IPv4 routes",
            Some(Family::V6) => "list IPv6 routes",
        };
        let replies = self.dump(RouteNetlinkMessage::GetRoute(msg), what).await?;
        Ok(replies
            .iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewRoute(r) => route_from_message(r),
                _ => None,
            })
            .filter(|r| family.is_none_or(|f| r.family() == f))
            .filter(|r| protocol.is_none_or(|p| r.protocol == p))
            .collect())
    }

    /// The link that holds the IPv4 default route of the main table (the lowest metric wins),
    /// or None when there is no default route.
    pub async fn default_route_link(&self) -> Result<Option<LinkState>> {
        let mut msg = RouteMessage::default();
        msg.header.address_family = AddressFamily::Inet;
        msg.header.table = RouteHeader::RT_TABLE_MAIN;
        let replies = self
            .dump(RouteNetlinkMessage::GetRoute(msg), "list IPv4 routes")
            .await?;
        let best = replies
            .iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewRoute(r)
                    if r.header.destination_prefix_length == 0
                        && r.header.kind == RouteType::Unicast =>
                {
                    let oif = route_oif(r)?;
                    Some((route_metric(r), oif))
                }
                _ => None,
            })
            .min();
        match best {
            Some((_, oif)) => self.link_by_index(oif).await,
            None => Ok(None),
        }
    }

    /// Adds a unicast route; fails with "exists" when any route with the same destination,
    /// TOS and metric is in the main table (whoever owns it).
    pub async fn add_route(&self, route: &IpRoute) -> Result<()> {
        self.ack(
            RouteNetlinkMessage::NewRoute(route_message(route)),
            NLM_F_CREATE | NLM_F_EXCL,
            || format!("add route {}", route_text(route)),
        )
        .await
    }

    /// Adds a unicast route or replaces the one with the same destination, TOS and metric.
    pub async fn replace_route(&self, route: &IpRoute) -> Result<()> {
        self.ack(
            RouteNetlinkMessage::NewRoute(route_message(route)),
            NLM_F_CREATE | NLM_F_REPLACE,
            || format!("replace route {}", route_text(route)),
        )
        .await
    }

    /// Deletes the route to `route.dst` with `route.protocol`, `route.metric`, `route.tos` and,
    /// when given, `route.gateway` (the link is not matched); a route that is not there is
    /// success. Because the kernel matches the protocol, a route of another owner is never
    /// deleted. (For IPv6, metric 0 matches any metric, and a route through a nexthop
    /// object matches whatever gateway is named.)
    pub async fn delete_route(&self, route: &IpRoute) -> Result<()> {
        let msg = delete_route_message(route);
        self.ack_gone_ok(RouteNetlinkMessage::DelRoute(msg), || {
            format!(
                "delete route {} proto {} metric {}",
                route.dst, route.protocol, route.metric
            )
        })
        .await
    }

    /// Runs route changes in order on a socket of their own, many per system call (see
    /// [`crate::bulk`]): for tables of thousands of routes. One outcome per change.
    pub async fn route_changes(&self, changes: Vec<RouteChange>) -> Vec<Result<()>> {
        let n = changes.len();
        self.on_bulk("bulk route changes", move |b| b.run(&changes))
            .await
            .unwrap_or_else(|_| all_closed(n, "bulk route changes"))
    }
}
