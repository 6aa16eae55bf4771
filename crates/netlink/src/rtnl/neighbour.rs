//! Permanent neighbours of both families (ARP entries, IPv6 NDP entries), and the dump of
//! permanent neighbour-table entries that [`super::fdb`] shares (the FDB is the neighbour
//! table's bridge family).

use std::net::IpAddr;

use netlink_packet_core::{NLM_F_CREATE, NLM_F_REPLACE};
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourMessage, NeighbourState,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};

use super::{Rtnl, mac_of, mac_text};
use crate::Result;

/// A permanent neighbour: an ARP entry for an IPv4 address, an NDP entry for an IPv6 one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Neighbour {
    pub ip: IpAddr,
    pub mac: [u8; 6],
}

impl Rtnl {
    /// Dumps the neighbour table with `request` (IP neighbours or FDB, by its family) and keeps
    /// the permanent entries of `families` on link `index`: the kernel may ignore the filter.
    pub(super) async fn permanent_entries(
        &self,
        request: NeighbourMessage,
        families: &[AddressFamily],
        index: u32,
        what: &str,
    ) -> Result<Vec<NeighbourMessage>> {
        let replies = self
            .dump(RouteNetlinkMessage::GetNeighbour(request), what)
            .await?;
        Ok(replies
            .into_iter()
            .filter_map(|reply| match reply {
                RouteNetlinkMessage::NewNeighbour(m)
                    if m.header.ifindex == index
                        && families.contains(&m.header.family)
                        && m.header.state == NeighbourState::Permanent =>
                {
                    Some(m)
                }
                _ => None,
            })
            .collect())
    }

    /// The permanent neighbours of both families on link `index` (dynamic entries the kernel
    /// resolved by itself are left out).
    pub async fn permanent_neighbours(&self, index: u32) -> Result<Vec<Neighbour>> {
        // AF_UNSPEC: the ARP and the NDP table in one dump.
        let mut msg = NeighbourMessage::default();
        // Strict checking wants the filter as an attribute, not in the header.
        msg.attributes.push(NeighbourAttribute::IfIndex(index));
        let entries = self
            .permanent_entries(
                msg,
                &[AddressFamily::Inet, AddressFamily::Inet6],
                index,
                &format!("list neighbours of link #{index}"),
            )
            .await?;
        let mut out = Vec::new();
        for m in entries {
            let mut ip = None;
            let mut mac = None;
            for attr in &m.attributes {
                match attr {
                    NeighbourAttribute::Destination(NeighbourAddress::Inet(a)) => {
                        ip = Some((*a).into());
                    }
                    NeighbourAttribute::Destination(NeighbourAddress::Inet6(a)) => {
                        ip = Some((*a).into());
                    }
                    NeighbourAttribute::LinkLayerAddress(l) => mac = mac_of(l),
                    _ => {}
                }
            }
            if let (Some(ip), Some(mac)) = (ip, mac) {
                out.push(Neighbour { ip, mac });
            }
        }
        Ok(out)
    }

    /// Sets a permanent neighbour on link `index` (creating or overwriting the entry for
    /// `neigh.ip`).
    pub async fn replace_neighbour(&self, index: u32, neigh: Neighbour) -> Result<()> {
        let mut msg = neighbour_message(index, neigh.ip);
        msg.header.state = NeighbourState::Permanent;
        msg.attributes
            .push(NeighbourAttribute::LinkLayerAddress(neigh.mac.to_vec()));
        self.ack(
            RouteNetlinkMessage::NewNeighbour(msg),
            NLM_F_CREATE | NLM_F_REPLACE,
            || {
                format!(
                    "set neighbour {} lladdr {} on link #{index}",
                    neigh.ip,
                    mac_text(&neigh.mac)
                )
            },
        )
        .await
    }

    /// Deletes the neighbour `ip` on link `index`; one that is not there is success.
    pub async fn delete_neighbour(&self, index: u32, ip: IpAddr) -> Result<()> {
        let msg = neighbour_message(index, ip);
        self.ack_gone_ok(RouteNetlinkMessage::DelNeighbour(msg), || {
            format!("delete neighbour {ip} on link #{index}")
        })
        .await
    }
}

/// A request about neighbour `ip` on link `index`, in the table of `ip`'s family.
fn neighbour_message(index: u32, ip: IpAddr) -> NeighbourMessage {
    let mut msg = NeighbourMessage::default();
    msg.header.family = match ip {
        IpAddr::V4(_) => AddressFamily::Inet,
        IpAddr::V6(_) => AddressFamily::Inet6,
    };
    msg.header.ifindex = index;
    msg.attributes
        .push(NeighbourAttribute::Destination(NeighbourAddress::from(ip)));
    msg
}
