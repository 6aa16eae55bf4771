//! Permanent FDB entries of VXLAN devices (`bridge fdb ... self permanent`): which remote VTEP
//! the frames for a MAC go to.

use std::net::Ipv4Addr;

use netlink_packet_core::{NLM_F_APPEND, NLM_F_CREATE, NLM_F_REPLACE};
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};

use super::{Rtnl, mac_of, mac_text};
use crate::Result;

/// A permanent FDB entry of a VXLAN device (`bridge fdb ... self permanent`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FdbEntry {
    pub mac: [u8; 6],
    /// The remote VTEP.
    pub dst: Ipv4Addr,
    /// Destination port when it differs from the device's (`NDA_PORT`).
    pub port: Option<u16>,
    /// VNI when it differs from the device's (`NDA_VNI`).
    pub vni: Option<u32>,
    /// Outgoing underlay link when one is pinned (`NDA_IFINDEX`).
    pub ifindex: Option<u32>,
}

impl FdbEntry {
    /// An entry with the device's defaults for port, VNI and underlay link.
    pub fn new(mac: [u8; 6], dst: Ipv4Addr) -> FdbEntry {
        FdbEntry {
            mac,
            dst,
            port: None,
            vni: None,
            ifindex: None,
        }
    }
}

impl Rtnl {
    /// The permanent FDB entries of VXLAN link `index` with an IPv4 remote, without the
    /// all-zero MAC (default destination) entries.
    pub async fn fdb_entries(&self, index: u32) -> Result<Vec<FdbEntry>> {
        let mut msg = NeighbourMessage::default();
        msg.header.family = AddressFamily::Bridge;
        msg.header.ifindex = index;
        let entries = self
            .permanent_entries(msg, index, &format!("list FDB of link #{index}"))
            .await?;
        let mut out = Vec::new();
        for m in entries {
            let mut mac = None;
            let mut dst = None;
            let mut port = None;
            let mut vni = None;
            let mut ifindex = None;
            for attr in &m.attributes {
                match attr {
                    NeighbourAttribute::LinkLayerAddress(l) => mac = mac_of(l),
                    // Bridge-family messages leave the address undecoded.
                    NeighbourAttribute::Destination(NeighbourAddress::Other(b)) => {
                        if let Ok(o) = <[u8; 4]>::try_from(b.as_slice()) {
                            dst = Some(Ipv4Addr::from(o));
                        }
                    }
                    NeighbourAttribute::Destination(NeighbourAddress::Inet(a)) => dst = Some(*a),
                    NeighbourAttribute::Port(p) => port = Some(*p),
                    NeighbourAttribute::Vni(v) => vni = Some(*v),
                    NeighbourAttribute::IfIndex(i) => ifindex = Some(*i),
                    _ => {}
                }
            }
            if let (Some(mac), Some(dst)) = (mac, dst)
                && mac != [0; 6]
            {
                out.push(FdbEntry {
                    mac,
                    dst,
                    port,
                    vni,
                    ifindex,
                });
            }
        }
        Ok(out)
    }

    /// Sets a permanent FDB entry on VXLAN link `index`: frames for `entry.mac` go to
    /// `entry.dst`. An existing entry for the MAC is overwritten (for a unicast MAC the kernel
    /// keeps one remote).
    pub async fn replace_fdb(&self, index: u32, entry: &FdbEntry) -> Result<()> {
        self.ack(
            RouteNetlinkMessage::NewNeighbour(fdb_message(index, entry)),
            NLM_F_CREATE | NLM_F_REPLACE,
            || format!("set fdb {} on link #{index}", fdb_text(entry)),
        )
        .await
    }

    /// Adds one more remote for `entry.mac` (meaningful for the all-zero and multicast MACs,
    /// whose frames are flooded to every remote).
    pub async fn append_fdb(&self, index: u32, entry: &FdbEntry) -> Result<()> {
        self.ack(
            RouteNetlinkMessage::NewNeighbour(fdb_message(index, entry)),
            NLM_F_CREATE | NLM_F_APPEND,
            || format!("append fdb {} on link #{index}", fdb_text(entry)),
        )
        .await
    }

    /// Deletes the remote `entry.dst` (with its port, VNI and link) of `entry.mac`; the whole
    /// entry goes with its last remote. One that is not there is success.
    pub async fn delete_fdb(&self, index: u32, entry: &FdbEntry) -> Result<()> {
        self.ack_gone_ok(
            RouteNetlinkMessage::DelNeighbour(fdb_message(index, entry)),
            || format!("delete fdb {} on link #{index}", fdb_text(entry)),
        )
        .await
    }
}

fn fdb_message(index: u32, entry: &FdbEntry) -> NeighbourMessage {
    let mut msg = NeighbourMessage::default();
    msg.header.family = AddressFamily::Bridge;
    msg.header.ifindex = index;
    msg.header.state = NeighbourState::Permanent;
    // NTF_SELF: the entry belongs to the VXLAN device itself, not to a bridge it is a port of.
    msg.header.flags = NeighbourFlags::Own;
    msg.attributes
        .push(NeighbourAttribute::LinkLayerAddress(entry.mac.to_vec()));
    msg.attributes
        .push(NeighbourAttribute::Destination(NeighbourAddress::Inet(
            entry.dst,
        )));
    if let Some(port) = entry.port {
        msg.attributes.push(NeighbourAttribute::Port(port));
    }
    if let Some(vni) = entry.vni {
        msg.attributes.push(NeighbourAttribute::Vni(vni));
    }
    if let Some(ifindex) = entry.ifindex {
        msg.attributes.push(NeighbourAttribute::IfIndex(ifindex));
    }
    msg
}

fn fdb_text(entry: &FdbEntry) -> String {
    let mut s = format!("{} dst {}", mac_text(&entry.mac), entry.dst);
    if let Some(port) = entry.port {
        s.push_str(&format!(" port {port}"));
    }
    if let Some(vni) = entry.vni {
        s.push_str(&format!(" vni {vni}"));
    }
    if let Some(i) = entry.ifindex {
        s.push_str(&format!(" via #{i}"));
    }
    s
}
