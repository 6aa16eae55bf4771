//! Links and VXLAN devices: listing and looking links up, creating VXLAN devices, setting
//! MTU, MAC and administrative state, deleting.

use std::net::IpAddr;

use futures::StreamExt;
use netlink_packet_core::{
    NLM_F_ACK, NLM_F_CREATE, NLM_F_EXCL, NLM_F_REQUEST, NetlinkMessage, NetlinkPayload,
};
use netlink_packet_route::RouteNetlinkMessage;
use netlink_packet_route::link::{
    InfoData, InfoKind, InfoVxlan, LinkAttribute, LinkFlags, LinkInfo, LinkMessage,
};

use super::{Rtnl, closed, mac_of, mac_text};
use crate::{Error, Result};

/// A network interface as the kernel reports it (`ip link`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkState {
    pub index: u32,
    pub name: String,
    pub mac: Option<[u8; 6]>,
    pub mtu: u32,
    /// Administratively up (`IFF_UP`).
    pub up: bool,
    /// The `IFLA_INFO_KIND` (`"vxlan"`, `"veth"`, ...), None for devices without one.
    pub kind: Option<String>,
    /// The VXLAN parameters, for a VXLAN device.
    pub vxlan: Option<VxlanInfo>,
}

/// The parameters of an existing VXLAN device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VxlanInfo {
    pub vni: u32,
    /// Destination UDP port.
    pub port: u16,
    /// The local VTEP address (`IFLA_VXLAN_LOCAL` or `IFLA_VXLAN_LOCAL6`).
    pub local: Option<IpAddr>,
    /// Index of the underlay link.
    pub underlay: Option<u32>,
    pub learning: bool,
}

/// A VXLAN device to create.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VxlanSpec {
    pub name: String,
    pub vni: u32,
    /// The local VTEP address; an IPv6 one makes the device carry its frames over IPv6
    /// (`IFLA_VXLAN_LOCAL6`), and then its FDB remotes are IPv6 too.
    pub local: IpAddr,
    /// Index of the underlay link.
    pub underlay: u32,
    /// Destination UDP port.
    pub port: u16,
    pub mac: [u8; 6],
    pub mtu: u32,
    /// Source-MAC learning; twill programs the FDB itself, so this is normally false
    /// (`nolearning`).
    pub learning: bool,
    /// Bring the device up in the same request.
    pub up: bool,
}

impl Rtnl {
    /// Every link in the namespace.
    pub async fn links(&self) -> Result<Vec<LinkState>> {
        let replies = self
            .dump(
                RouteNetlinkMessage::GetLink(LinkMessage::default()),
                "list links",
            )
            .await?;
        Ok(replies
            .iter()
            .filter_map(|m| match m {
                RouteNetlinkMessage::NewLink(l) => Some(link_from_message(l)),
                _ => None,
            })
            .collect())
    }

    /// The link called `name`, or None.
    pub async fn link_by_name(&self, name: &str) -> Result<Option<LinkState>> {
        let mut msg = LinkMessage::default();
        msg.attributes.push(LinkAttribute::IfName(name.to_string()));
        self.get_link(msg, || format!("look up link {name}")).await
    }

    /// The link with index `index`, or None.
    pub async fn link_by_index(&self, index: u32) -> Result<Option<LinkState>> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        self.get_link(msg, || format!("look up link #{index}"))
            .await
    }

    async fn get_link(
        &self,
        msg: LinkMessage,
        op: impl FnOnce() -> String,
    ) -> Result<Option<LinkState>> {
        let mut req = NetlinkMessage::from(RouteNetlinkMessage::GetLink(msg));
        req.header.flags = NLM_F_REQUEST | NLM_F_ACK;
        let mut nl = self.nl.clone();
        let Ok(mut replies) = nl.request(req) else {
            return Err(closed(op()));
        };
        let mut found = None;
        while let Some(reply) = replies.next().await {
            match reply.payload {
                NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(m)) => {
                    found = Some(link_from_message(&m));
                }
                NetlinkPayload::Error(err) => {
                    if let Some(code) = err.code {
                        let e = Error::Kernel {
                            op: op(),
                            errno: -code.get(),
                        };
                        return if e.is_not_found() { Ok(None) } else { Err(e) };
                    }
                }
                _ => {}
            }
        }
        Ok(found)
    }

    /// Creates a VXLAN device and returns its index. Fails with "exists" when the name is
    /// taken (whatever kind of link holds it).
    pub async fn create_vxlan(&self, spec: &VxlanSpec) -> Result<u32> {
        let mut msg = LinkMessage::default();
        if spec.up {
            msg.header.flags = LinkFlags::Up;
            msg.header.change_mask = LinkFlags::Up;
        }
        msg.attributes
            .push(LinkAttribute::IfName(spec.name.clone()));
        msg.attributes
            .push(LinkAttribute::Address(spec.mac.to_vec()));
        msg.attributes.push(LinkAttribute::Mtu(spec.mtu));
        msg.attributes.push(LinkAttribute::LinkInfo(vec![
            LinkInfo::Kind(InfoKind::Vxlan),
            LinkInfo::Data(InfoData::Vxlan(vec![
                InfoVxlan::Id(spec.vni),
                match spec.local {
                    IpAddr::V4(local) => InfoVxlan::Local(local),
                    IpAddr::V6(local) => InfoVxlan::Local6(local),
                },
                InfoVxlan::Link(spec.underlay),
                InfoVxlan::Port(spec.port),
                InfoVxlan::Learning(spec.learning),
            ])),
        ]));
        self.ack(
            RouteNetlinkMessage::NewLink(msg),
            NLM_F_CREATE | NLM_F_EXCL,
            || {
                format!(
                    "create vxlan device {} (id {} local {} dev #{} dstport {})",
                    spec.name, spec.vni, spec.local, spec.underlay, spec.port
                )
            },
        )
        .await?;
        // The create request does not echo the new index; one lookup is cheaper than asking for
        // NLM_F_ECHO and parsing the echoed message.
        match self.link_by_name(&spec.name).await? {
            Some(link) => Ok(link.index),
            None => Err(Error::Kernel {
                op: format!("create vxlan device {}: it vanished right after", spec.name),
                errno: crate::libc_errno::ENODEV,
            }),
        }
    }

    async fn set_link(&self, msg: LinkMessage, op: impl FnOnce() -> String) -> Result<()> {
        self.ack(RouteNetlinkMessage::SetLink(msg), 0, op).await
    }

    /// Sets the MTU of link `index`.
    pub async fn set_link_mtu(&self, index: u32, mtu: u32) -> Result<()> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        msg.attributes.push(LinkAttribute::Mtu(mtu));
        self.set_link(msg, || format!("set mtu {mtu} on link #{index}"))
            .await
    }

    /// Sets the MAC address of link `index`.
    pub async fn set_link_mac(&self, index: u32, mac: [u8; 6]) -> Result<()> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        msg.attributes.push(LinkAttribute::Address(mac.to_vec()));
        self.set_link(msg, || {
            format!("set address {} on link #{index}", mac_text(&mac))
        })
        .await
    }

    /// Sets link `index` administratively up (or down).
    pub async fn set_link_up(&self, index: u32, up: bool) -> Result<()> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        msg.header.flags = if up {
            LinkFlags::Up
        } else {
            LinkFlags::empty()
        };
        msg.header.change_mask = LinkFlags::Up;
        let state = if up { "up" } else { "down" };
        self.set_link(msg, || format!("set link #{index} {state}"))
            .await
    }

    /// Deletes link `index`; a link that is already gone is success.
    pub async fn delete_link(&self, index: u32) -> Result<()> {
        let mut msg = LinkMessage::default();
        msg.header.index = index;
        self.ack_gone_ok(RouteNetlinkMessage::DelLink(msg), || {
            format!("delete link #{index}")
        })
        .await
    }
}

fn link_from_message(m: &LinkMessage) -> LinkState {
    let mut link = LinkState {
        index: m.header.index,
        name: String::new(),
        mac: None,
        mtu: 0,
        up: m.header.flags.contains(LinkFlags::Up),
        kind: None,
        vxlan: None,
    };
    for attr in &m.attributes {
        match attr {
            LinkAttribute::IfName(n) => link.name.clone_from(n),
            LinkAttribute::Address(a) => link.mac = mac_of(a),
            LinkAttribute::Mtu(mtu) => link.mtu = *mtu,
            LinkAttribute::LinkInfo(infos) => {
                for info in infos {
                    match info {
                        LinkInfo::Kind(kind) => link.kind = Some(kind.to_string()),
                        LinkInfo::Data(InfoData::Vxlan(attrs)) => {
                            link.vxlan = Some(vxlan_from_attrs(attrs));
                        }
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    link
}

fn vxlan_from_attrs(attrs: &[InfoVxlan]) -> VxlanInfo {
    let mut info = VxlanInfo {
        vni: 0,
        port: 0,
        local: None,
        underlay: None,
        // The kernel's default when the attribute is absent.
        learning: true,
    };
    for attr in attrs {
        match attr {
            InfoVxlan::Id(v) => info.vni = *v,
            InfoVxlan::Port(p) => info.port = *p,
            InfoVxlan::Local(ip) => info.local = Some((*ip).into()),
            InfoVxlan::Local6(ip) => info.local = Some((*ip).into()),
            InfoVxlan::Link(i) if *i != 0 => info.underlay = Some(*i),
            InfoVxlan::Learning(l) => info.learning = *l,
            _ => {}
        }
    }
    info
}
