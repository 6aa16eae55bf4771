//! IPv4 addresses of links, and the primary address of an interface (the node's underlay).

use std::net::IpAddr;

use ipnet::Ipv4Net;
use netlink_packet_core::{NLM_F_CREATE, NLM_F_REPLACE};
use netlink_packet_route::address::{
    AddressAttribute, AddressHeaderFlags, AddressMessage, AddressScope,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};

use super::Rtnl;
use crate::Result;

/// An interface's primary IPv4 address and MTU (e.g. the node's underlay).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InterfaceV4 {
    pub index: u32,
    pub name: String,
    /// The first primary universe-scope IPv4 address, if the interface has one.
    pub address: Option<Ipv4Net>,
    pub mtu: u32,
}

impl Rtnl {
    /// The IPv4 addresses on link `index`.
    pub async fn ipv4_addresses(&self, index: u32) -> Result<Vec<Ipv4Net>> {
        Ok(self
            .ipv4_address_entries(index)
            .await?
            .into_iter()
            .map(|(net, _)| net)
            .collect())
    }

    /// Addresses with "is primary and universe scope".
    async fn ipv4_address_entries(&self, index: u32) -> Result<Vec<(Ipv4Net, bool)>> {
        let mut msg = AddressMessage::default();
        msg.header.family = AddressFamily::Inet;
        msg.header.index = index;
        let replies = self
            .dump(
                RouteNetlinkMessage::GetAddress(msg),
                &format!("list IPv4 addresses of link #{index}"),
            )
            .await?;
        let mut out = Vec::new();
        for reply in replies {
            let RouteNetlinkMessage::NewAddress(m) = reply else {
                continue;
            };
            if m.header.index != index || m.header.family != AddressFamily::Inet {
                continue;
            }
            // IFA_LOCAL is the interface's own address; IFA_ADDRESS is the peer's on
            // point-to-point links, so it is only the fallback.
            let mut local = None;
            let mut address = None;
            for attr in &m.attributes {
                match attr {
                    AddressAttribute::Local(IpAddr::V4(ip)) => local = Some(*ip),
                    AddressAttribute::Address(IpAddr::V4(ip)) => address = Some(*ip),
                    _ => {}
                }
            }
            if let Some(ip) = local.or(address)
                && let Ok(net) = Ipv4Net::new(ip, m.header.prefix_len)
            {
                let primary = !m.header.flags.contains(AddressHeaderFlags::Secondary)
                    && m.header.scope == AddressScope::Universe;
                out.push((net, primary));
            }
        }
        Ok(out)
    }

    /// Adds (or refreshes) `addr` on link `index`.
    pub async fn add_ipv4_address(&self, index: u32, addr: Ipv4Net) -> Result<()> {
        let msg = address_message(index, addr);
        self.ack(
            RouteNetlinkMessage::NewAddress(msg),
            NLM_F_CREATE | NLM_F_REPLACE,
            || format!("add address {addr} to link #{index}"),
        )
        .await
    }

    /// Removes `addr` from link `index`; an address that is not there is success.
    pub async fn delete_ipv4_address(&self, index: u32, addr: Ipv4Net) -> Result<()> {
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
        let addrs = self.ipv4_address_entries(link.index).await?;
        let address = addrs
            .iter()
            .find(|(_, primary)| *primary)
            .or(addrs.first())
            .map(|(net, _)| *net);
        Ok(Some(InterfaceV4 {
            index: link.index,
            name: link.name,
            address,
            mtu: link.mtu,
        }))
    }
}

fn address_message(index: u32, addr: Ipv4Net) -> AddressMessage {
    let mut msg = AddressMessage::default();
    msg.header.family = AddressFamily::Inet;
    msg.header.prefix_len = addr.prefix_len();
    msg.header.index = index;
    msg.header.scope = AddressScope::Universe;
    msg.attributes
        .push(AddressAttribute::Local(IpAddr::V4(addr.addr())));
    msg.attributes
        .push(AddressAttribute::Address(IpAddr::V4(addr.addr())));
    if addr.prefix_len() < 31 {
        msg.attributes
            .push(AddressAttribute::Broadcast(addr.broadcast()));
    }
    msg
}
