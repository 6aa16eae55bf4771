//! Reading twill's own state from the kernel: its routes (by protocol), its `twill.*` VXLAN
//! devices, the neighbours and FDB entries of the desired device, and the node's own objects
//! (`host.rs`). Nothing else is read, so nothing else can ever be planned for change.

use std::collections::{HashMap, HashSet};

use ipnet::IpNet;
use twill_netlink::{Family, Result};
use twill_types::MacAddr;
use twill_types::desired::{DesiredState, NeighSpec, PEER_ROUTE_PROTOCOL};

use super::Rtnl;
use super::host::{HostWriters, observe_host};
use super::model::{Observed, ObservedFdb, ObservedRoute, ObservedVxlan, is_twill_link};

/// Reads twill's own state from the kernel (the handle's namespace): its routes, its VXLAN
/// devices, the neighbours and FDB entries of the desired device, and the node's own objects
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
    let ours: Vec<_> = links
        .iter()
        .filter(|l| is_twill_link(&l.name) && l.kind.as_deref() == Some("vxlan"))
        .collect();
    let desired_dev = desired
        .vxlan
        .as_ref()
        .and_then(|d| ours.iter().find(|l| l.name == d.name));

    let addresses = futures::future::try_join_all(ours.iter().map(|l| nl.ipv4_addresses(l.index)));
    let routes = nl.routes(Some(Family::V4), Some(PEER_ROUTE_PROTOCOL));
    let neighbours = async {
        match desired_dev {
            Some(l) => nl.permanent_neighbours(l.index).await,
            None => Ok(Vec::new()),
        }
    };
    let fdb = async {
        match desired_dev {
            Some(l) => nl.fdb_entries(l.index).await,
            None => Ok(Vec::new()),
        }
    };
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
                addresses: addresses.into_iter().map(IpNet::V4).collect(),
            }
        })
        .collect();
    let routes = routes
        .into_iter()
        .filter_map(|r| {
            // The kernel layer still programs IPv4 only.
            if !r.dst.addr().is_ipv4() {
                return None;
            }
            Some(ObservedRoute {
                dst: r.dst,
                via: r.gateway,
                dev: r.oif.and_then(|i| names.get(&i).map(|n| n.to_string())),
                onlink: r.onlink,
                metric: r.metric,
                tos: r.tos,
                unicast: r.unicast,
            })
        })
        .collect();
    let dev_name = desired_dev.map(|l| l.name.clone()).unwrap_or_default();
    let neighbours = neighbours
        .into_iter()
        .filter_map(|n| {
            Some(NeighSpec {
                dev: dev_name.clone(),
                ip: n.ip.is_ipv4().then_some(n.ip)?,
                mac: MacAddr(n.mac),
            })
        })
        .collect();
    let fdb = fdb
        .into_iter()
        .filter_map(|e| {
            Some(ObservedFdb {
                dev: dev_name.clone(),
                mac: MacAddr(e.mac),
                dst: e.dst.is_ipv4().then_some(e.dst)?,
                port: e.port,
                vni: e.vni,
                ifindex: e.ifindex,
            })
        })
        .collect();
    Ok(Observed {
        vxlan,
        routes,
        neighbours,
        fdb,
        idle_nexthops,
        host,
    })
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
