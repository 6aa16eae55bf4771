//! Reading twill's own state from the kernel: its routes of both families (by protocol), its
//! VXLAN devices (`twill.*`, `twill6.*`), the neighbours and FDB entries of the desired
//! devices, and the node's own objects (`host.rs`). Nothing else is read, so nothing else can
//! ever be planned for change.

use std::collections::{HashMap, HashSet};

use ipnet::IpNet;
use twill_netlink::{LinkState, Result};
use twill_types::MacAddr;
use twill_types::desired::{DesiredState, NeighSpec, PEER_ROUTE_PROTOCOL};

use super::Rtnl;
use super::host::{HostWriters, observe_host};
use super::model::{Observed, ObservedFdb, ObservedRoute, ObservedVxlan, is_twill_link};

/// Reads twill's own state from the kernel (the handle's namespace): its routes, its VXLAN
/// devices, the neighbours and FDB entries of the desired devices, and the node's own objects
/// (nft objects as a writer without a record sees them: present or absent).
pub async fn observe(nl: &Rtnl, desired: &DesiredState) -> Result<Observed> {
    observe_with(nl, desired, &HostWriters::default()).await
}

/// [`observe`], checking the nft objects against `writers`' records of what they wrote.
pub async fn observe_with(
    nl: &Rtnl,
    desired: &DesiredState,
    writers: &HostWriters,
) -> Result<Observed> {
    let host = observe_host(nl, desired, writers).await?;
    let links = nl.links().await?;
    let names: HashMap<u32, &str> = links.iter().map(|l| (l.index, l.name.as_str())).collect();
    let ours: Vec<&LinkState> = links
        .iter()
        .filter(|l| is_twill_link(&l.name) && l.kind.as_deref() == Some("vxlan"))
        .collect();
    // The desired devices that exist: their entries are read (those of a device that is
    // not desired go with it).
    let desired_devs: Vec<&LinkState> = desired
        .vxlan
        .iter()
        .chain(&desired.vxlan6)
        .filter_map(|d| ours.iter().find(|l| l.name == d.name).copied())
        .collect();

    let addresses = futures::future::try_join_all(ours.iter().map(|l| nl.addresses(l.index, None)));
    let routes = nl.routes(None, Some(PEER_ROUTE_PROTOCOL));
    let neighbours = futures::future::try_join_all(desired_devs.iter().map(|l| async move {
        let entries = nl.permanent_neighbours(l.index).await?;
        Ok::<_, twill_netlink::Error>(entries.into_iter().map(|n| NeighSpec {
            dev: l.name.clone(),
            ip: n.ip,
            mac: MacAddr(n.mac),
        }))
    }));
    let fdb = futures::future::try_join_all(desired_devs.iter().map(|l| async move {
        let entries = nl.fdb_entries(l.index).await?;
        Ok::<_, twill_netlink::Error>(entries.into_iter().map(|e| ObservedFdb {
            dev: l.name.clone(),
            mac: MacAddr(e.mac),
            dst: e.dst,
            port: e.port,
            vni: e.vni,
            ifindex: e.ifindex,
        }))
    }));
    let (addresses, routes, neighbours, fdb) =
        futures::try_join!(addresses, routes, neighbours, fdb)?;
    let used: HashSet<u32> = routes.iter().filter_map(|r| r.nhid).collect();
    let idle_nexthops = our_nexthops(nl)
        .await
        .into_iter()
        .filter(|id| !used.contains(id))
        .collect();

    let vxlan = ours
        .iter()
        .zip(addresses)
        .map(|(l, addresses)| {
            // The kernel always reports a VXLAN device's parameters; were they missing, the
            // zero values make the device differ from any desired one, so it is recreated.
            let info = l.vxlan.clone().unwrap_or(twill_netlink::VxlanInfo {
                vni: 0,
                port: 0,
                local: None,
                underlay: None,
                learning: true,
            });
            ObservedVxlan {
                name: l.name.clone(),
                index: l.index,
                vni: info.vni,
                port: info.port,
                local: info.local,
                underlay: info
                    .underlay
                    .and_then(|i| names.get(&i).map(|n| n.to_string())),
                learning: info.learning,
                mac: l.mac.map(MacAddr),
                mtu: l.mtu,
                up: l.up,
                addresses: addresses
                    .into_iter()
                    .filter(|a| !is_ipv6_link_local(a))
                    .collect(),
            }
        })
        .collect();
    let routes = routes
        .into_iter()
        .map(|r| ObservedRoute {
            dst: r.dst,
            via: r.gateway,
            dev: r.oif.and_then(|i| names.get(&i).map(|n| n.to_string())),
            onlink: r.onlink,
            metric: r.metric,
            tos: r.tos,
            unicast: r.unicast,
        })
        .collect();
    Ok(Observed {
        vxlan,
        routes,
        neighbours: neighbours.into_iter().flatten().collect(),
        fdb: fdb.into_iter().flatten().collect(),
        idle_nexthops,
        host,
    })
}

/// An IPv6 link-local address (`fe80::/10`): the kernel gives one to every link that is up.
fn is_ipv6_link_local(net: &IpNet) -> bool {
    matches!(net, IpNet::V6(n) if n.addr().segments()[0] & 0xffc0 == 0xfe80)
}

/// Ids of the nexthop objects of [`PEER_ROUTE_PROTOCOL`] (none on a kernel that cannot list
/// nexthop objects: it has none of twill's either).
pub(super) async fn our_nexthops(nl: &Rtnl) -> Vec<u32> {
    let all = nl.nexthops().await.unwrap_or_default();
    all.into_iter()
        .filter(|nh| nh.protocol == PEER_ROUTE_PROTOCOL)
        .map(|nh| nh.id)
        .collect()
}
