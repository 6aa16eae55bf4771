//! The CNI verbs: ADD, DEL, CHECK, STATUS, GC. Each validates everything it can before it
//! changes anything, and ADD undoes its own work when it fails part-way.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::path::Path;

use ipnet::IpNet;
use serde_json::Value;
use twill_dataplane::firewall;
use twill_ipam::{Range, Store};
use twill_netlink::netns::Netns;
use twill_netlink::{Handle, Link, LinkKind};
use twill_types::MacAddr;

use crate::config::{Cluster, Env, Mode, NetConf, overlaps};
use crate::endpoint;
use crate::plumbing::{self, Attach, kernel};
use crate::sandbox;
use crate::spec::{
    Attachment, CniError, CniResult, Interface, IpConfig, RouteConfig, Version, code,
};

fn state_error(e: twill_ipam::Error) -> CniError {
    match e {
        twill_ipam::Error::RangeFull { .. } => CniError::new(code::RANGE_FULL, e.to_string()),
        twill_ipam::Error::InvalidRange { .. } => {
            CniError::new(code::INVALID_CONFIG, e.to_string())
        }
        other => CniError::new(code::STATE, other.to_string()),
    }
}

fn firewall_error(e: twill_dataplane::Error) -> CniError {
    CniError::new(code::FIREWALL, e.to_string())
}

fn fw_mode(mode: Mode) -> firewall::Mode {
    match mode {
        Mode::Bridge => firewall::Mode::Bridge,
        Mode::Routed => firewall::Mode::Routed,
    }
}

fn ranges(conf: &NetConf) -> Result<Vec<Range>, CniError> {
    conf.ranges
        .iter()
        .map(|r| Range::new(*r).map_err(state_error))
        .collect()
}

fn open_netns(env: &Env) -> Result<Netns, CniError> {
    sandbox::open_netns(env.netns.as_deref().unwrap_or(Path::new("")))
}

/// The container ID under which `twill ipam repair` records an address it found in use on a
/// host veth whose attachment it could not name (`repaired:<host veth>`; never a real
/// container ID, which holds no `:`). DEL of that veth's attachment and GC release it once the
/// veth is gone.
pub const REPAIRED_PREFIX: &str = "repaired:";

/// Refuses ranges that overlap an address or route of the host (other than on the network's
/// own bridge, and twill's own pod routes): pods would shadow the host's own networks. Checked
/// before anything is made; in bridge mode once per network (while its bridge lacks a
/// gateway address), in routed mode at every ADD.
/// Cluster mode's node subnet is the agent's lease (checked when the cluster was made) and
/// lives next to the agent's own addresses and routes for it, so it is not checked here.
fn check_host_overlap(host: &mut Handle, conf: &NetConf) -> Result<(), CniError> {
    if conf.cluster != Cluster::Off {
        return Ok(());
    }
    let own = match conf.mode {
        Mode::Bridge => match host.link_by_name(&conf.bridge).map_err(kernel)? {
            Some(bridge) => {
                // The bridge holds every range's gateway: an earlier ADD of this network
                // passed this check and made it so. ADD stays cheap for every later pod.
                let present = host.addresses(bridge.index).map_err(kernel)?;
                if conf.ranges.iter().all(|r| {
                    IpNet::new(plumbing::bridge_gateway(r), r.prefix_len())
                        .is_ok_and(|gw| present.contains(&gw))
                }) {
                    return Ok(());
                }
                Some(bridge.index)
            }
            None => None,
        },
        Mode::Routed => None,
    };
    let refuse = |range: &IpNet, what: String| {
        CniError::new(
            code::INVALID_CONFIG,
            format!(
                "range {range} overlaps {what} on this host: choose a range the host does not use"
            ),
        )
    };
    // A concurrent ADD of the same network may make the bridge and give it its gateways
    // between the lookup above and the dumps below: a conflict is looked at again against the
    // bridge as it is now before it is reported.
    let mut own = own;
    let mut is_own = |host: &mut Handle, index: u32| -> Result<bool, CniError> {
        if own == Some(index) {
            return Ok(true);
        }
        if conf.mode == Mode::Bridge {
            own = host
                .link_by_name(&conf.bridge)
                .map_err(kernel)?
                .map(|l| l.index);
        }
        Ok(own == Some(index))
    };
    for (index, addr) in host.all_addresses().map_err(kernel)? {
        if let Some(range) = conf.ranges.iter().find(|r| overlaps(r, &addr.trunc()))
            && !is_own(host, index)?
        {
            return Err(refuse(range, format!("address {addr} (link #{index})")));
        }
    }
    for route in host.routes().map_err(kernel)? {
        if route.dst.prefix_len() == 0 || route.protocol == plumbing::ROUTE_PROTOCOL {
            continue;
        }
        if let Some(range) = conf.ranges.iter().find(|r| overlaps(r, &route.dst)) {
            let on_bridge = match route.oif {
                Some(oif) => is_own(host, oif)?,
                None => false,
            };
            if !on_bridge {
                return Err(refuse(range, format!("route {}", route.dst)));
            }
        }
    }
    Ok(())
}

/// The error for an ADD whose host veth name is already taken.
fn name_taken(env: &Env, host_name: &str, link: &Link) -> CniError {
    if plumbing::proven_ours(link, &env.container_id, &env.ifname, None) {
        CniError::new(
            code::INTERFACE_EXISTS,
            format!(
                "host interface {host_name} of container {} interface {} already exists: \
                 this attachment is set up already; DEL it first",
                env.container_id, env.ifname
            ),
        )
    } else {
        CniError::new(
            code::INTERFACE_EXISTS,
            format!(
                "host interface name {host_name} (derived from container {} interface {}) is \
                 taken by another attachment, which is left alone; this is a name collision: \
                 retry with another container ID or interface name",
                env.container_id, env.ifname
            ),
        )
    }
}

/// The address a container gets on its interface: the range's prefix in bridge mode (the
/// bridge is its link), a host prefix in routed mode (everything goes via the gateway).
fn container_address(mode: Mode, ip: IpAddr, range: &IpNet) -> IpNet {
    let prefix = match (mode, ip) {
        (Mode::Bridge, _) => range.prefix_len(),
        (Mode::Routed, IpAddr::V4(_)) => 32,
        (Mode::Routed, IpAddr::V6(_)) => 128,
    };
    IpNet::new(ip, prefix).expect("prefix fits the family")
}

/// What ipMasq treats as "inside": the network's ranges, or in cluster mode every pool of the
/// cluster, per family (traffic to other nodes' pods keeps its pod source address, IPv6 too);
/// a family whose pools the node file does not list keeps the node's own subnet inside.
fn masquerade_ranges(conf: &NetConf) -> Vec<IpNet> {
    let Cluster::Ready(node) = &conf.cluster else {
        return conf.ranges.clone();
    };
    let v4 = node.cluster_networks.iter().map(|n| IpNet::V4(*n));
    let v6 = node.cluster_networks6.iter().map(|n| IpNet::V6(*n));
    let mut inside: Vec<IpNet> = v4.chain(v6).collect();
    for range in &conf.ranges {
        if !inside
            .iter()
            .any(|n| n.addr().is_ipv4() == range.addr().is_ipv4())
        {
            inside.push(*range);
        }
    }
    inside
}

fn range_of(conf: &NetConf, ip: IpAddr) -> Option<&IpNet> {
    conf.ranges.iter().find(|r| r.contains(&ip))
}

// ===== ADD =====

pub fn add(env: &Env, conf: &NetConf) -> Result<Value, CniError> {
    conf.require_ranges()?;
    let netns = open_netns(env)?;
    let mut host = Handle::new().map_err(kernel)?;
    check_host_overlap(&mut host, conf)?;
    let host_name = plumbing::host_veth_name(&env.container_id, &env.ifname);
    // Checked before anything is allocated or allowed: another attachment's veth of this name
    // (a collision, or one whose address record was lost) must be left exactly as it is.
    if let Some(link) = host.link_by_name(&host_name).map_err(kernel)? {
        return Err(name_taken(env, &host_name, &link));
    }
    let mut container = Handle::in_netns(&netns).map_err(kernel)?;
    if container
        .link_by_name(&env.ifname)
        .map_err(kernel)?
        .is_some()
    {
        return Err(CniError::new(
            code::INTERFACE_EXISTS,
            format!(
                "interface {} already exists in {}",
                env.ifname,
                netns.path()
            ),
        ));
    }
    let ranges = ranges(conf)?;
    let store = Store::open(&conf.ipam_dir()).map_err(state_error)?;
    let ips = store
        .lock()
        .and_then(|mut locked| locked.allocate(&ranges, &env.container_id, &env.ifname))
        .map_err(state_error)?;

    let added = add_with_addresses(
        env,
        conf,
        &netns,
        &mut host,
        &mut container,
        &host_name,
        &ips,
    )
    .and_then(|result| {
        // The agent enforces network policy: the pod's policy must be in force before ADD
        // returns, so its first packet is already policed.
        if let Cluster::Ready(node) = &conf.cluster
            && node.policy
        {
            let ep = endpoint::endpoint(env, conf, node, &host_name, &ips);
            endpoint::register(conf, env, &ep)?;
        }
        Ok(result)
    });
    match added {
        Ok(result) => Ok(result),
        Err(e) => {
            // Leave nothing behind: the veth (if this ADD made it: its MAC says so), the
            // anti-spoofing entries, the addresses.
            let removed =
                plumbing::detach_own(&mut host, &host_name, &env.container_id, &env.ifname);
            let _ = firewall::forget_source(fw_mode(conf.mode), &host_name, &ips);
            // The MAC binding is keyed by the veth's name: kept if a veth of that name is
            // still there and not ours (another ADD made it meanwhile).
            let name_free = matches!(host.link_by_name(&host_name), Ok(None));
            if removed.unwrap_or(false) || name_free {
                let _ = firewall::forget_mac(fw_mode(conf.mode), &host_name);
            }
            let _ = store
                .lock()
                .and_then(|mut l| l.release(&env.container_id, &env.ifname));
            Err(e)
        }
    }
}

fn add_with_addresses(
    env: &Env,
    conf: &NetConf,
    netns: &Netns,
    host: &mut Handle,
    container: &mut Handle,
    host_name: &str,
    ips: &[IpAddr],
) -> Result<Value, CniError> {
    let mtu = match conf.mtu {
        Some(m) => m,
        None => plumbing::default_mtu(host)?,
    };
    // Forwarding of the families the pods have: an IPv6-only node keeps IPv4 forwarding off.
    if conf.ranges.iter().any(|r| r.addr().is_ipv4()) {
        plumbing::set_sysctl("net/ipv4/ip_forward", "1")?;
    }
    if conf.ranges.iter().any(|r| r.addr().is_ipv6()) {
        plumbing::set_sysctl("net/ipv6/conf/all/forwarding", "1")?;
    }
    let bridge = match conf.mode {
        Mode::Bridge => Some(plumbing::ensure_bridge(
            host,
            &conf.bridge,
            mtu,
            &conf.ranges,
        )?),
        Mode::Routed => None,
    };
    if conf.ip_masq {
        firewall::ensure_masquerade(&conf.firewall_dir(), &conf.name, &masquerade_ranges(conf))
            .map_err(firewall_error)?;
    }
    if firewall::ensure_antispoof_base(&conf.firewall_dir()).map_err(firewall_error)? {
        // The sets were (re)created empty, e.g. after someone flushed the host's ruleset:
        // re-allow this network's running containers so their traffic flows again.
        restore_sources(conf)?;
    }
    // Allowed before the veth exists, so the container's first packet already passes (and the
    // transactions' deferred kernel work is over before the plugin exits). Bridge mode: the
    // port carries the container's MAC and no other (routed mode: no-op).
    firewall::allow_source(fw_mode(conf.mode), host_name, ips).map_err(firewall_error)?;
    let container_mac = plumbing::random_mac();
    firewall::allow_mac(fw_mode(conf.mode), host_name, container_mac).map_err(firewall_error)?;

    let addresses: Vec<IpNet> = ips
        .iter()
        .map(|ip| {
            container_address(
                conf.mode,
                *ip,
                range_of(conf, *ip).expect("allocated from a range"),
            )
        })
        .collect();
    let attached = plumbing::attach(
        host,
        container,
        &Attach {
            mode: conf.mode,
            host_name,
            ifname: &env.ifname,
            netns,
            mtu,
            bridge: bridge.as_ref(),
            addresses: &addresses,
            host_mac: plumbing::owner_mac(&env.container_id, &env.ifname),
            container_mac,
        },
    )?;

    let mut result = match &conf.prev_result {
        Some(prev) => CniResult::from_json(prev).map_err(|m| CniError::new(code::DECODE, m))?,
        None => CniResult::default(),
    };
    if let Some(b) = &bridge {
        result.interfaces.push(Interface {
            name: b.name.clone(),
            mac: b.mac.map(|m| MacAddr(m).to_string()).unwrap_or_default(),
            mtu: Some(b.mtu),
            sandbox: String::new(),
        });
    }
    result.interfaces.push(Interface {
        name: host_name.to_string(),
        mac: MacAddr(attached.host_mac).to_string(),
        mtu: Some(mtu),
        sandbox: String::new(),
    });
    result.interfaces.push(Interface {
        name: env.ifname.clone(),
        mac: MacAddr(attached.container_mac).to_string(),
        mtu: Some(mtu),
        sandbox: netns.path().to_string(),
    });
    let container_index = result.interfaces.len() - 1;
    for (addr, gw) in addresses.iter().zip(&attached.gateways) {
        result.ips.push(IpConfig {
            address: *addr,
            gateway: Some(*gw),
            interface: Some(container_index),
        });
        let default = if gw.is_ipv4() { "0.0.0.0/0" } else { "::/0" };
        result.routes.push(RouteConfig {
            dst: default.parse().expect("literal"),
            gw: Some(*gw),
        });
    }
    if !conf.dns.is_empty() {
        result.dns = conf.dns.clone();
    }
    Ok(result.to_json(conf.version))
}

/// Allows the sources of every attachment recorded for this network.
fn restore_sources(conf: &NetConf) -> Result<(), CniError> {
    let store = Store::open(&conf.ipam_dir()).map_err(state_error)?;
    let attachments = store.lock().map_err(state_error)?.attachments();
    for (cid, ifname, ips) in attachments {
        let name = plumbing::host_veth_name(&cid, &ifname);
        firewall::allow_source(fw_mode(conf.mode), &name, &ips).map_err(firewall_error)?;
    }
    Ok(())
}

// ===== DEL =====

pub fn del(env: &Env, conf: &NetConf) -> Result<(), CniError> {
    let host_name = plumbing::host_veth_name(&env.container_id, &env.ifname);
    endpoint::unregister(conf, env, &host_name);
    let store = Store::open(&conf.ipam_dir()).map_err(state_error)?;
    // A corrupt state is not a reason to keep the pod's veth: DEL still removes what it can
    // prove is this attachment's, then reports the state error (its address cannot be
    // released until `twill ipam repair`).
    let held = store.lock().map(|l| l.get(&env.container_id, &env.ifname));
    let mut host = Handle::new().map_err(kernel)?;
    let link = host.link_by_name(&host_name).map_err(kernel)?;
    let ours = match &link {
        None => false,
        Some(link) => {
            plumbing::proven_ours(link, &env.container_id, &env.ifname, None)
                // Veths made before host MACs were derived: this attachment's address record,
                // or the veth's peer being this attachment's interface in CNI_NETNS.
                || (link.kind == LinkKind::Veth && held.as_ref().is_ok_and(|h| !h.is_empty()))
                || plumbing::proven_ours(
                    link,
                    &env.container_id,
                    &env.ifname,
                    container_peer(env).as_ref(),
                )
        }
    };
    // Releasing nftables set elements queues work that waits for an RCU grace period, and
    // closing a netfilter socket waits for that work. Done first, the wait elapses while the
    // veth is deleted (itself ~15 ms of kernel RCU waits) and the socket closes for free.
    let forgotten = match &held {
        Ok(h) if h.is_empty() => Ok(()),
        Ok(h) => firewall::forget_source(fw_mode(conf.mode), &host_name, h),
        // Addresses unknown: forget what the filter allows from the veth, if it is ours.
        Err(_) if ours => firewall::list_sources(fw_mode(conf.mode)).and_then(|entries| {
            let ips: Vec<IpAddr> = entries
                .into_iter()
                .filter(|(n, _)| *n == host_name)
                .map(|(_, ip)| ip)
                .collect();
            firewall::forget_source(fw_mode(conf.mode), &host_name, &ips)
        }),
        Err(_) => Ok(()),
    }
    // The port's MAC binding is keyed by the veth's name: forgotten only when that veth is
    // this attachment's or gone, never when it belongs to a container whose name collides.
    .and_then(|()| {
        if ours || link.is_none() {
            firewall::forget_mac(fw_mode(conf.mode), &host_name)
        } else {
            Ok(())
        }
    });
    if ours && let Some(link) = &link {
        plumbing::delete_veth(&mut host, link)?;
    }
    held.map_err(state_error)?;
    // Only now is the address free: it must not be handed out while the old link exists.
    let repaired = format!("{REPAIRED_PREFIX}{host_name}");
    let veth_gone = ours || link.is_none();
    store
        .lock()
        .and_then(|mut l| {
            l.retain(|c, i| {
                !((c == env.container_id && i == env.ifname) || (veth_gone && c == repaired))
            })
        })
        .map_err(state_error)?;
    forgotten.map_err(firewall_error)
}

/// The attachment's interface in its namespace, when CNI_NETNS names one that can be opened
/// (DEL does not require it; an unusable one is simply no evidence).
fn container_peer(env: &Env) -> Option<Link> {
    let path = env.netns.as_deref()?;
    let netns = sandbox::open_netns(path).ok()?;
    let mut container = Handle::in_netns(&netns).ok()?;
    container.link_by_name(&env.ifname).ok()?
}

// ===== CHECK =====

pub fn check(env: &Env, conf: &NetConf) -> Result<(), CniError> {
    if conf.version < Version::V0_4_0 {
        return Err(CniError::new(
            code::INCOMPATIBLE_VERSION,
            format!(
                "CHECK needs cniVersion 0.4.0 or later, the configuration says {}",
                conf.version.as_str()
            ),
        ));
    }
    conf.require_ranges()?;
    let failed = |msg: String| CniError::new(code::CHECK_FAILED, msg);
    let prev = conf.prev_result.as_ref().ok_or_else(|| {
        CniError::new(
            code::INVALID_CONFIG,
            "CHECK needs prevResult (the result of ADD)",
        )
    })?;
    let prev = CniResult::from_json(prev).map_err(|m| CniError::new(code::DECODE, m))?;
    let netns = open_netns(env)?;
    let host_name = plumbing::host_veth_name(&env.container_id, &env.ifname);

    // The container interface: present, same MAC, its addresses and routes.
    let (cindex, ciface) = prev
        .interfaces
        .iter()
        .enumerate()
        .find(|(_, i)| i.name == env.ifname && !i.sandbox.is_empty())
        .ok_or_else(|| {
            failed(format!(
                "prevResult has no interface {} in a sandbox",
                env.ifname
            ))
        })?;
    let mut container = Handle::in_netns(&netns).map_err(kernel)?;
    let link = container
        .link_by_name(&env.ifname)
        .map_err(kernel)?
        .ok_or_else(|| {
            failed(format!(
                "interface {} is missing from {}",
                env.ifname,
                netns.path()
            ))
        })?;
    let mac = link.mac.map(|m| MacAddr(m).to_string()).unwrap_or_default();
    if !ciface.mac.is_empty() && !ciface.mac.eq_ignore_ascii_case(&mac) {
        return Err(failed(format!(
            "interface {} has MAC {mac}, ADD gave it {}",
            env.ifname, ciface.mac
        )));
    }
    if !link.up {
        return Err(failed(format!("interface {} is down", env.ifname)));
    }
    let present = container.addresses(link.index).map_err(kernel)?;
    let mine: Vec<&IpConfig> = prev
        .ips
        .iter()
        .filter(|ip| ip.interface.is_none_or(|i| i == cindex))
        .collect();
    for ip in &mine {
        if !present.contains(&ip.address) {
            return Err(failed(format!(
                "address {} is missing from {}",
                ip.address, env.ifname
            )));
        }
    }
    let routes = container.routes().map_err(kernel)?;
    for r in &prev.routes {
        if !routes
            .iter()
            .any(|k| k.dst == r.dst && (r.gw.is_none() || k.gateway == r.gw))
        {
            let via = r.gw.map(|g| format!(" via {g}")).unwrap_or_default();
            return Err(failed(format!(
                "route {}{via} is missing from the container",
                r.dst
            )));
        }
    }

    // The host end: our veth, paired with the container interface, on the right bridge.
    let mut host = Handle::new().map_err(kernel)?;
    let hlink = host
        .link_by_name(&host_name)
        .map_err(kernel)?
        .ok_or_else(|| failed(format!("host interface {host_name} is missing")))?;
    if hlink.kind != LinkKind::Veth || hlink.peer_index != Some(link.index) {
        return Err(failed(format!(
            "host interface {host_name} is not the veth peer of {}",
            env.ifname
        )));
    }
    if conf.mode == Mode::Bridge {
        let bridge = host
            .link_by_name(&conf.bridge)
            .map_err(kernel)?
            .ok_or_else(|| failed(format!("bridge {} is missing", conf.bridge)))?;
        if hlink.master != Some(bridge.index) {
            return Err(failed(format!(
                "{host_name} is not a port of bridge {}",
                conf.bridge
            )));
        }
    } else {
        let host_routes = host.routes().map_err(kernel)?;
        for ip in &mine {
            let ip = ip.address.addr();
            if !host_routes.iter().any(|r| {
                r.dst.addr() == ip
                    && r.dst.prefix_len() == r.dst.max_prefix_len()
                    && r.oif == Some(hlink.index)
            }) {
                return Err(failed(format!(
                    "host route to {ip} via {host_name} is missing"
                )));
            }
        }
    }

    // Local state: the addresses are still ours, and the anti-spoofing filter knows them.
    let store = Store::open(&conf.ipam_dir()).map_err(state_error)?;
    let held = store
        .lock()
        .map_err(state_error)?
        .get(&env.container_id, &env.ifname);
    for ip in &mine {
        let ip = ip.address.addr();
        if !held.contains(&ip) {
            return Err(failed(format!(
                "address {ip} is not allocated to this container in {}",
                conf.ipam_dir().display()
            )));
        }
        if !firewall::source_allowed(fw_mode(conf.mode), &host_name, ip).map_err(firewall_error)? {
            return Err(failed(format!(
                "anti-spoofing filter does not allow {ip} from {host_name}"
            )));
        }
    }
    if let Some(m) = link.mac
        && !firewall::mac_allowed(fw_mode(conf.mode), &host_name, m).map_err(firewall_error)?
    {
        return Err(failed(format!(
            "anti-spoofing filter does not bind {host_name} to MAC {mac}"
        )));
    }
    if conf.ip_masq && !firewall::masquerade_present(&conf.name).map_err(firewall_error)? {
        return Err(failed(format!(
            "masquerade chain for network {} is missing",
            conf.name
        )));
    }
    Ok(())
}

// ===== STATUS =====

pub fn status(conf: &NetConf) -> Result<(), CniError> {
    let unavailable = |msg: String| CniError::new(code::STATUS_UNAVAILABLE, msg);
    if conf.version < Version::V1_1_0 {
        return Err(CniError::new(
            code::INCOMPATIBLE_VERSION,
            "STATUS needs cniVersion 1.1.0",
        ));
    }
    if let Cluster::Pending(why) = &conf.cluster {
        return Err(unavailable(why.clone()));
    }
    let ranges = ranges(conf)?;
    let store = Store::open(&conf.ipam_dir())
        .map_err(|e| unavailable(format!("data directory is not usable: {e}")))?;
    let locked = store
        .lock()
        .map_err(|e| unavailable(format!("address state is not usable: {e}")))?;
    let held: Vec<IpAddr> = locked
        .attachments()
        .into_iter()
        .flat_map(|(_, _, ips)| ips)
        .collect();
    for range in &ranges {
        let used = held.iter().filter(|ip| range.contains(**ip)).count() as u128;
        if used >= range.usable_count() {
            return Err(unavailable(format!(
                "range {} is full ({used} addresses allocated); ADD would fail",
                range.subnet
            )));
        }
    }
    if firewall::nft_binary().is_none() {
        return Err(unavailable(
            "the nft binary (Debian package nftables) is not installed".into(),
        ));
    }
    Ok(())
}

// ===== GC =====

pub fn gc(conf: &NetConf) -> Result<(), CniError> {
    if conf.version < Version::V1_1_0 {
        return Err(CniError::new(
            code::INCOMPATIBLE_VERSION,
            "GC needs cniVersion 1.1.0",
        ));
    }
    let raw = conf.valid_attachments.clone().ok_or_else(|| {
        CniError::new(
            code::INVALID_CONFIG,
            "GC needs cni.dev/valid-attachments (the attachments to keep)",
        )
    })?;
    let valid: Vec<Attachment> = serde_json::from_value(raw)
        .map_err(|e| CniError::new(code::DECODE, format!("cni.dev/valid-attachments: {e}")))?;
    let keep: HashSet<(String, String)> = valid
        .iter()
        .map(|a| (a.container_id.clone(), a.ifname.clone()))
        .collect();
    let keep_names: HashSet<String> = valid
        .iter()
        .map(|a| plumbing::host_veth_name(&a.container_id, &a.ifname))
        .collect();

    // Spec: GC keeps going on errors and reports the first one at the end.
    let mut first_error: Option<CniError> = None;
    let mut note = |r: Result<(), CniError>| {
        if let Err(e) = r
            && first_error.is_none()
        {
            first_error = Some(e);
        }
    };
    let mode = fw_mode(conf.mode);
    let mut host = Handle::new().map_err(kernel)?;
    let links = host.links().map_err(kernel)?;
    let by_name: HashMap<&str, &Link> = links.iter().map(|l| (l.name.as_str(), l)).collect();

    // This network's attachments that the runtime no longer knows. Their veths are deleted
    // only when provably theirs (the veth's MAC, or for veths made before MACs were derived,
    // the record itself); an address `twill ipam repair` found in use stays recorded while
    // its veth exists.
    let store = Store::open(&conf.ipam_dir()).map_err(state_error)?;
    let released = store
        .lock()
        .and_then(|mut l| {
            l.retain(|cid, ifname| {
                if let Some(veth) = cid.strip_prefix(REPAIRED_PREFIX) {
                    return keep_names.contains(veth) || by_name.contains_key(veth);
                }
                keep.contains(&(cid.to_string(), ifname.to_string()))
            })
        })
        .map_err(state_error)?;
    let mut deleted: HashSet<String> = HashSet::new();
    for (cid, ifname, ips) in &released {
        if cid.starts_with(REPAIRED_PREFIX) {
            continue;
        }
        let name = plumbing::host_veth_name(cid, ifname);
        if keep_names.contains(&name) {
            // A valid attachment's veth (a colliding name): not this record's to delete.
            continue;
        }
        if let Some(link) = by_name.get(name.as_str())
            && link.kind == LinkKind::Veth
        {
            note(plumbing::delete_veth(&mut host, link));
            deleted.insert(name.clone());
        }
        note(firewall::forget_source(mode, &name, ips).map_err(firewall_error));
    }

    // Veths that no attachment of any network records (e.g. the address record was lost):
    // deleted only with evidence that they are this network's — attached to its bridge (or
    // routed to its ranges) and allowed by the anti-spoofing filter to send only from its
    // ranges — and never when another network under this dataDir records them. Several
    // networks may share one bridge (the default twill0 included).
    let sources = firewall::list_sources(mode);
    let others = other_networks_veths(conf);
    match (&sources, &others) {
        (Ok(entries), Some(others)) => {
            let bridge_index = by_name
                .get(conf.bridge.as_str())
                .filter(|l| l.kind == LinkKind::Bridge)
                .map(|l| l.index);
            let host_routes = if conf.mode == Mode::Routed {
                host.routes().map_err(kernel)?
            } else {
                Vec::new()
            };
            let mine: HashSet<String> = store
                .lock()
                .map(|l| {
                    l.attachments()
                        .iter()
                        .map(|(c, i, _)| plumbing::host_veth_name(c, i))
                        .collect()
                })
                .unwrap_or_default();
            for link in links
                .iter()
                .filter(|l| l.kind == LinkKind::Veth && l.name.starts_with(plumbing::VETH_PREFIX))
            {
                if keep_names.contains(&link.name)
                    || mine.contains(&link.name)
                    || others.contains(&link.name)
                    || deleted.contains(&link.name)
                {
                    continue;
                }
                let attached = match conf.mode {
                    Mode::Bridge => bridge_index.is_some() && link.master == bridge_index,
                    Mode::Routed => host_routes.iter().any(|r| {
                        r.oif == Some(link.index)
                            && r.protocol == plumbing::ROUTE_PROTOCOL
                            && range_of(conf, r.dst.addr()).is_some()
                    }),
                };
                let allowed: Vec<IpAddr> = entries
                    .iter()
                    .filter(|(n, _)| *n == link.name)
                    .map(|(_, ip)| *ip)
                    .collect();
                let evidence =
                    !allowed.is_empty() && allowed.iter().all(|ip| range_of(conf, *ip).is_some());
                if attached && evidence {
                    note(plumbing::delete_veth(&mut host, link));
                }
            }
        }
        (Err(e), _) => note(Err(CniError::new(code::FIREWALL, e.to_string()))),
        (_, None) => {}
    }

    // Anti-spoofing entries for this network's addresses whose interface no longer exists
    // (an entry of a live veth is its attachment's, whichever network that is).
    if let Ok(entries) = sources {
        let present: HashSet<String> = host
            .links()
            .map(|l| l.into_iter().map(|l| l.name).collect())
            .unwrap_or_else(|_| by_name.keys().map(|n| n.to_string()).collect());
        for (name, ip) in entries {
            if !keep_names.contains(&name)
                && !present.contains(&name)
                && range_of(conf, ip).is_some()
            {
                note(firewall::forget_source(mode, &name, &[ip]).map_err(firewall_error));
            }
        }
    }
    // MAC bindings of ports whose veth is gone (whatever network they were in).
    note(firewall::forget_stale_macs(mode).map_err(firewall_error));
    match first_error {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// The host veth names that the other networks under this `dataDir` record, or `None` when
/// one of their states cannot be read (then nothing is known to be unrecorded).
fn other_networks_veths(conf: &NetConf) -> Option<HashSet<String>> {
    let root = conf.data_dir.join("ipam");
    let mut out = HashSet::new();
    let dir = match std::fs::read_dir(&root) {
        Ok(d) => d,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Some(out),
        Err(_) => return None,
    };
    for entry in dir {
        let entry = entry.ok()?;
        if entry.file_name().to_string_lossy() == conf.name || !entry.path().is_dir() {
            continue;
        }
        let store = Store::open(&entry.path()).ok()?;
        let locked = store.lock().ok()?;
        out.extend(locked.attachments().iter().map(
            |(c, i, _)| match c.strip_prefix(REPAIRED_PREFIX) {
                Some(veth) => veth.to_string(),
                None => plumbing::host_veth_name(c, i),
            },
        ));
    }
    Some(out)
}
