//! Permanent FDB entries of VXLAN devices (`bridge fdb ... self permanent`): which remote VTEP
//! (IPv4 or IPv6, `NDA_DST` of 4 or 16 bytes) the frames for a MAC go to.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

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
    /// The remote VTEP: of the device's own family (its local address's).
    pub dst: IpAddr,
    /// Destination port when it differs from the device's (`NDA_PORT`).
    pub port: Option<u16>,
    /// VNI when it differs from the device's (`NDA_VNI`).
    pub vni: Option<u32>,
    /// Outgoing underlay link when one is pinned (`NDA_IFINDEX`).
    pub ifindex: Option<u32>,
}

impl FdbEntry {
    /// An entry with the device's defaults for port, VNI and underlay link.
    pub fn new(mac: [u8; 6], dst: IpAddr) -> FdbEntry {
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
    /// The permanent FDB entries of VXLAN link `index` (IPv4 and IPv6 remotes), without the
    /// all-zero MAC (default destination) entries.
    pub async fn fdb_entries(&self, index: u32) -> Result<Vec<FdbEntry>> {
        let mut msg = NeighbourMessage::default();
        msg.header.family = AddressFamily::Bridge;
        msg.header.ifindex = index;
        let entries = self
            .permanent_entries(
                msg,
                &[AddressFamily::Bridge],
                index,
                &format!("list FDB of link #{index}"),
            )
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
                        dst = fdb_dst(b);
                    }
                    NeighbourAttribute::Destination(NeighbourAddress::Inet(a)) => {
                        dst = Some((*a).into());
                    }
                    NeighbourAttribute::Destination(NeighbourAddress::Inet6(a)) => {
                        dst = Some((*a).into());
                    }
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
        .push(NeighbourAttribute::Destination(NeighbourAddress::from(
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

/// The remote of an undecoded `NDA_DST`: 4 bytes for IPv4, 16 for IPv6.
fn fdb_dst(bytes: &[u8]) -> Option<IpAddr> {
    if let Ok(o) = <[u8; 4]>::try_from(bytes) {
        return Some(Ipv4Addr::from(o).into());
    }
    <[u8; 16]>::try_from(bytes)
        .ok()
        .map(|o| Ipv6Addr::from(o).into())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fdb_remotes_are_written_and_read_with_their_family_length() {
        for dst in ["10.9.0.2", "fd00:9::2"] {
            let dst: IpAddr = dst.parse().unwrap();
            let msg = fdb_message(3, &FdbEntry::new([2, 0, 0, 0, 0, 1], dst));
            let written = msg.attributes.iter().find_map(|a| match a {
                NeighbourAttribute::Destination(d) => Some(d.clone()),
                _ => None,
            });
            let bytes = match written.unwrap() {
                NeighbourAddress::Inet(a) => a.octets().to_vec(),
                NeighbourAddress::Inet6(a) => a.octets().to_vec(),
                other => panic!("NDA_DST {other:?}"),
            };
            assert_eq!(bytes.len(), if dst.is_ipv4() { 4 } else { 16 });
            assert_eq!(fdb_dst(&bytes), Some(dst));
        }
        assert_eq!(fdb_dst(&[1, 2, 3]), None);
    }
}
