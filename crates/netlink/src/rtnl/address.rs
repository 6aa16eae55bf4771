//! IPv4 and IPv6 addresses of links, and the primary IPv4 address of an interface (the node's
//! underlay).

use ipnet::{IpNet, Ipv4Net};
use netlink_packet_core::{NLM_F_CREATE, NLM_F_REPLACE};
use netlink_packet_route::address::{
    AddressAttribute, AddressFlags, AddressHeaderFlags, AddressMessage, AddressScope,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};

use super::Rtnl;
use crate::Result;
use crate::codec::route::Family;

/// An interface's primary IPv4 address and MTU (e.g. the node's underlay).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InterfaceV4 {
    pub index: u32,
    pub name: String,
    /// The first primary universe-scope IPv4 address, if the interface has one.
    pub address: Option<Ipv4Net>,
    pub mtu: u32,
}

/// One address of a link as the kernel reports it.
struct AddressEntry {
    net: IpNet,
    /// Not secondary, and of universe scope.
    primary: bool,
}

impl Rtnl {
    /// The addresses of `family` (None: both) on link `index`, IPv6 link-local ones included.
    pub async fn addresses(&self, index: u32, family: Option<Family>) -> Result<Vec<IpNet>> {
        Ok(self
            .address_entries(index, family)
            .await?
            .into_iter()
            .map(|e| e.net)
            .collect())
    }

    /// The IPv4 addresses on link `index`.
    pub async fn ipv4_addresses(&self, index: u32) -> Result<Vec<Ipv4Net>> {
        Ok(self
            .addresses(index, Some(Family::V4))
            .await?
            .into_iter()
            .filter_map(|net| match net {
                IpNet::V4(net) => Some(net),
                IpNet::V6(_) => None,
            })
            .collect())
    }

    async fn address_entries(
        &self,
        index: u32,
        family: Option<Family>,
    ) -> Result<Vec<AddressEntry>> {
        let mut msg = AddressMessage::default();
        msg.header.family = Family::netlink(family);
        msg.header.index = index;
        let what = match family {
            None => "addresses",
            Some(Family::V4) => "IPv4 addresses",
            Some(Family::V6) => "IPv6 addresses",
        };
        let replies = self
            .dump(
                RouteNetlinkMessage::GetAddress(msg),
                &format!("list {what} of link #{index}"),
            )
            .await?;
        let mut out = Vec::new();
        for reply in replies {
            let RouteNetlinkMessage::NewAddress(m) = reply else {
                continue;
            };
            let of_family = match m.header.family {
                AddressFamily::Inet => family != Some(Family::V6),
                AddressFamily::Inet6 => family != Some(Family::V4),
                _ => false,
            };
            if m.header.index != index || !of_family {
                continue;
            }
            // IFA_LOCAL is the interface's own address; IFA_ADDRESS is the peer's on
            // point-to-point links, so it is only the fallback (IPv6 addresses have only
            // IFA_ADDRESS unless they have a peer).
            let mut local = None;
            let mut address = None;
            for attr in &m.attributes {
                match attr {
                    AddressAttribute::Local(ip) => local = Some(*ip),
                    AddressAttribute::Address(ip) => address = Some(*ip),
                    _ => {}
                }
            }
            if let Some(ip) = local.or(address)
                && let Ok(net) = IpNet::new(ip, m.header.prefix_len)
            {
                let primary = !m.header.flags.contains(AddressHeaderFlags::Secondary)
                    && m.header.scope == AddressScope::Universe;
                out.push(AddressEntry { net, primary });
            }
        }
        Ok(out)
    }

    /// Adds (or refreshes) `addr` on link `index`. An IPv6 address skips duplicate address
    /// detection: twill's addresses come from its own allocator, and a tentative address
    /// could not be used for the seconds DAD takes.
    pub async fn add_address(&self, index: u32, addr: IpNet) -> Result<()> {
        let mut msg = address_message(index, addr);
        if addr.addr().is_ipv6() {
            msg.header.flags = AddressHeaderFlags::Nodad;
            msg.attributes
                .push(AddressAttribute::Flags(AddressFlags::Nodad));
        }
        self.ack(
            RouteNetlinkMessage::NewAddress(msg),
            NLM_F_CREATE | NLM_F_REPLACE,
            || format!("add address {addr} to link #{index}"),
        )
        .await
    }

    /// Removes `addr` from link `index`; an address that is not there is success.
    pub async fn delete_address(&self, index: u32, addr: IpNet) -> Result<()> {
        let msg = address_message(index, addr);
        self.ack_gone_ok(RouteNetlinkMessage::DelAddress(msg), || {
            format!("delete address {addr} from link #{index}")
        })
        .await
    }

    /// The interface called `name` with its primary IPv4 address and MTU, or None when there
    /// is no such interface.
    pub async fn interface_ipv4(&self, name: &str) -> Result<Option<InterfaceV4>> {
        let Some(link) = self.link_by_name(name).await? else {
            return Ok(None);
        };
        let v4 = |e: &AddressEntry| match e.net {
            IpNet::V4(net) => Some(net),
            IpNet::V6(_) => None,
        };
        let addrs = self.address_entries(link.index, Some(Family::V4)).await?;
        let address = addrs
            .iter()
            .find(|e| e.primary)
            .or(addrs.first())
            .and_then(v4);
        Ok(Some(InterfaceV4 {
            index: link.index,
            name: link.name,
            address,
            mtu: link.mtu,
        }))
    }
}

fn address_message(index: u32, addr: IpNet) -> AddressMessage {
    let mut msg = AddressMessage::default();
    msg.header.family = Family::netlink(Some(Family::of(addr.addr())));
    msg.header.prefix_len = addr.prefix_len();
    msg.header.index = index;
    msg.header.scope = AddressScope::Universe;
    msg.attributes.push(AddressAttribute::Local(addr.addr()));
    msg.attributes.push(AddressAttribute::Address(addr.addr()));
    if let IpNet::V4(v4) = addr
        && v4.prefix_len() < 31
    {
        msg.attributes
            .push(AddressAttribute::Broadcast(v4.broadcast()));
    }
    msg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_ipv4_addresses_have_a_broadcast() {
        let has_broadcast = |addr: &str| {
            address_message(1, addr.parse().unwrap())
                .attributes
                .iter()
                .any(|a| matches!(a, AddressAttribute::Broadcast(_)))
        };
        assert!(has_broadcast("10.244.1.0/24"));
        assert!(!has_broadcast("10.244.1.0/32"));
        assert!(!has_broadcast("fd00:244:1::/64"));
        let v6 = address_message(1, "fd00:244:1::/128".parse().unwrap());
        assert_eq!(v6.header.family, AddressFamily::Inet6);
    }
}
