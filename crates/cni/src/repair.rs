//! `twill ipam repair NETWORK`: rebuilds a network's address state when `state.json` is
//! corrupt (or was deleted), without ever handing out an address that is in use.
//!
//! It starts from `state.json` if readable, else from its previous generation
//! (`state.json.prev`, at most one operation behind), else from nothing, and then records every
//! address the node shows in use by a twill host veth — the anti-spoofing filter's
//! (veth, address) entries and the routed mode's host routes — under the attachment that owns
//! the veth (found in the state itself or in the endpoint records), or under
//! `repaired:<veth>` when no record names it (released by that attachment's DEL or by GC once
//! the veth is gone). Addresses recorded for attachments that are gone stay recorded: a leak
//! that GC reclaims, never a double allocation.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write;
use std::net::IpAddr;
use std::path::Path;

use ipnet::IpNet;
use twill_dataplane::firewall;
use twill_ipam::{RepairBase, Store};
use twill_netlink::{Handle, LinkKind};

use crate::config::valid_network_name;
use crate::endpoint;
use crate::plumbing::{self, ROUTE_PROTOCOL, VETH_PREFIX};
use crate::verbs::REPAIRED_PREFIX;

/// Repairs network `network` under `data_dir`; returns a report for the operator.
pub fn repair(network: &str, data_dir: &Path) -> Result<String, String> {
    if !valid_network_name(network) {
        return Err(format!("{network:?} is not a CNI network name"));
    }
    if !data_dir.is_absolute() {
        return Err(format!(
            "--data-dir {} must be an absolute path",
            data_dir.display()
        ));
    }
    let dir = data_dir.join("ipam").join(network);
    if !dir.is_dir() {
        return Err(format!(
            "{} does not exist: network {network} has no address state under {}",
            dir.display(),
            data_dir.display()
        ));
    }

    // What is in use on this node: (host veth, address) for every twill veth that exists.
    let mut host = Handle::new().map_err(|e| e.to_string())?;
    let links = host.links().map_err(|e| e.to_string())?;
    let veths: HashMap<u32, String> = links
        .iter()
        .filter(|l| l.kind == LinkKind::Veth && l.name.starts_with(VETH_PREFIX))
        .map(|l| (l.index, l.name.clone()))
        .collect();
    let names: HashSet<&str> = veths.values().map(String::as_str).collect();
    let mut in_use: BTreeMap<IpAddr, String> = BTreeMap::new();
    for mode in [firewall::Mode::Bridge, firewall::Mode::Routed] {
        let entries = firewall::list_sources(mode)
            .map_err(|e| format!("cannot read the anti-spoofing filter: {e}"))?;
        for (name, ip) in entries {
            if names.contains(name.as_str()) {
                in_use.insert(ip, name);
            }
        }
    }
    for route in host.routes().map_err(|e| e.to_string())? {
        if route.protocol == ROUTE_PROTOCOL
            && route.dst.prefix_len() == route.dst.max_prefix_len()
            && let Some(name) = route.oif.and_then(|i| veths.get(&i))
        {
            in_use.insert(route.dst.addr(), name.clone());
        }
    }

    // Who owns which veth: the endpoint records (`<container id>@<ifname>`).
    let mut owners: HashMap<String, (String, String)> = HashMap::new();
    let mut record_ips: HashSet<IpAddr> = HashSet::new();
    for (key, ep) in endpoint::records(data_dir) {
        if let Some((cid, ifname)) = key.split_once('@')
            && plumbing::host_veth_name(cid, ifname) == ep.interface
        {
            owners.insert(ep.interface.clone(), (cid.to_string(), ifname.to_string()));
            record_ips.extend(ep.addresses.iter().copied());
        }
    }
    // Addresses other networks under this dataDir record are theirs.
    let mut others: HashSet<IpAddr> = HashSet::new();
    if let Ok(entries) = std::fs::read_dir(data_dir.join("ipam")) {
        for entry in entries.flatten() {
            if entry.file_name().to_string_lossy() == network || !entry.path().is_dir() {
                continue;
            }
            if let Ok(store) = Store::open(&entry.path())
                && let Ok(locked) = store.lock()
            {
                others.extend(locked.attachments().into_iter().flat_map(|(_, _, a)| a));
            }
        }
    }

    let store = Store::open(&dir).map_err(|e| e.to_string())?;
    let (mut locked, base) = store.lock_for_repair().map_err(|e| e.to_string())?;
    for (cid, ifname, _) in locked.attachments() {
        owners
            .entry(plumbing::host_veth_name(&cid, &ifname))
            .or_insert((cid, ifname));
    }
    let subnets: Vec<IpNet> = locked.known_subnets();
    let mut report = String::new();
    match &base {
        RepairBase::Current => {
            let _ = writeln!(report, "{}: readable", store.state_path().display());
        }
        RepairBase::Previous { why } => {
            let _ = writeln!(report, "{why}\nstarting from the previous generation");
        }
        RepairBase::Empty { why } => {
            let _ = writeln!(report, "{why}\nstarting from an empty state");
        }
    }
    let kept = locked.attachments().len();
    let mut claimed = 0;
    for (ip, veth) in &in_use {
        let ours = if subnets.is_empty() {
            // Nothing says which ranges this network has: take every address no other
            // network records (a leak at worst, never a double allocation).
            !others.contains(ip)
        } else {
            subnets.iter().any(|s| s.contains(ip)) || record_ips.contains(ip)
        };
        if !ours {
            continue;
        }
        let (cid, ifname) = owners
            .get(veth)
            .cloned()
            .unwrap_or_else(|| (format!("{REPAIRED_PREFIX}{veth}"), "unknown".to_string()));
        if locked.get(&cid, &ifname).contains(ip) {
            continue;
        }
        let replaced = locked.claim(*ip, &cid, &ifname);
        claimed += 1;
        let _ = write!(
            report,
            "in use: {ip} on {veth}, recorded for container {cid} interface {ifname}"
        );
        if let Some((c, i)) = replaced {
            let _ = write!(report, " (was recorded for container {c} interface {i})");
        }
        report.push('\n');
    }
    locked.commit_repair(&base).map_err(|e| e.to_string())?;
    let _ = writeln!(
        report,
        "{}: {} attachments, {claimed} addresses added from what is in use ({kept} attachments before)",
        store.state_path().display(),
        locked.attachments().len()
    );
    Ok(report)
}
