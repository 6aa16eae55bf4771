//! The node's own objects in the one reconciler: sysctls, the one address of a link made
//! elsewhere (the TUN device, which its engine creates), the cluster's masquerade chain
//! (`inet twill masq-_twill_cluster`) and the host protection table (`inet twill-host`).
//! Observed, diffed and applied like the peer objects, in the same plan.
//!
//! nft and sysctls act in the calling thread's network namespace, netlink requests in the
//! handle's: the reconciler's task runs where its handle was made (the agent: the host's
//! namespace; tests: a thread inside their namespace).

use std::collections::BTreeMap;

use ipnet::IpNet;
use twill_netlink::Error;
use twill_types::desired::{AddressSpec, DesiredState};
use twill_types::node::AGENT_NAT_NETWORK;

use super::Rtnl;
use super::model::ObjectKey;
use super::model::{
    AddressChange, ApplyFailure, ApplyReport, MasqueradeChange, NftState, ObservedHost, Plan,
    is_twill_link,
};
use crate::firewall::{self, MasqueradeWriter};
use crate::hostguard::{self, HostGuard};

/// The writers of the nft objects, with their records of what they last wrote (which spare
/// reading the host table's elements back; the objects' own comments tell a restarted agent
/// what they hold).
#[derive(Debug)]
pub struct HostWriters {
    guard: HostGuard,
    nat: MasqueradeWriter,
}

impl Default for HostWriters {
    fn default() -> Self {
        HostWriters {
            guard: HostGuard::new(),
            nat: MasqueradeWriter::new(AGENT_NAT_NETWORK).expect("a valid network name"),
        }
    }
}

/// The status key of the masquerade chain.
pub fn masquerade_key() -> ObjectKey {
    ObjectKey::Chain(firewall_chain())
}

fn firewall_chain() -> String {
    format!("masq-{AGENT_NAT_NETWORK}")
}

fn host_table_key() -> ObjectKey {
    ObjectKey::Table(hostguard::TABLE.to_string())
}

/// `/proc/sys/<path>` of a dotted sysctl name, if the name is one twill would write (under
/// `net.`, no path tricks).
fn sysctl_path(name: &str) -> Option<String> {
    let ok = name.starts_with("net.")
        && name.split('.').all(|part| {
            !part.is_empty()
                && part
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        });
    ok.then(|| name.replace('.', "/"))
}

/// Reads the node's own objects: the desired sysctls, the addresses of the links desired
/// addresses are for, and the nft objects against the writers' records and the desired state
/// (by the fingerprint in their comments, see [`crate::nft_state`]). An nft object that
/// cannot be checked counts as not known to be as written (so it is written again), never as
/// absent.
pub async fn observe_host(
    nl: &Rtnl,
    desired: &DesiredState,
    writers: &HostWriters,
) -> twill_netlink::Result<ObservedHost> {
    let sysctls = desired
        .sysctls
        .keys()
        .map(|name| {
            let value = sysctl_path(name).and_then(|path| {
                std::fs::read_to_string(format!("/proc/sys/{path}"))
                    .ok()
                    .map(|v| v.trim().to_string())
            });
            (name.clone(), value)
        })
        .collect();
    let mut addresses = BTreeMap::new();
    for spec in &desired.addresses {
        if addresses.contains_key(&spec.dev) || !is_twill_link(&spec.dev) {
            continue;
        }
        let held = match nl.link_by_name(&spec.dev).await? {
            Some(link) => Some(nl.ipv4_addresses(link.index).await?),
            None => None,
        };
        addresses.insert(spec.dev.clone(), held);
    }
    Ok(ObservedHost {
        sysctls,
        addresses,
        masquerade: writers
            .nat
            .observe(Some(desired.masquerade.as_slice()).filter(|r| !r.is_empty()))
            .unwrap_or(NftState::Other),
        host_guard: writers
            .guard
            .observe(desired.host_guard.as_ref())
            .unwrap_or(NftState::Other),
    })
}

/// Plans the node's own objects into `plan`. Pure.
pub fn diff_host(desired: &DesiredState, observed: &ObservedHost, plan: &mut Plan) {
    for (name, value) in &desired.sysctls {
        if sysctl_path(name).is_none() {
            plan.ignored
                .push(format!("sysctl {name}: not a net.* name twill would write"));
        } else if observed.sysctls.get(name).cloned().flatten().as_ref() != Some(value) {
            plan.sysctls.push((name.clone(), value.clone()));
        }
    }

    let mut seen: BTreeMap<&str, &AddressSpec> = BTreeMap::new();
    for want in &desired.addresses {
        if !is_twill_link(&want.dev) {
            plan.ignored.push(format!(
                "address {} on {}: not a link of twill's",
                want.address, want.dev
            ));
            continue;
        }
        if let Some(first) = seen.get(want.dev.as_str()) {
            if *first != want {
                plan.ignored.push(format!(
                    "address {} on {}: contradicts an earlier address for the link",
                    want.address, want.dev
                ));
            }
            continue;
        }
        seen.insert(&want.dev, want);
        let held = observed.addresses.get(&want.dev).cloned().flatten();
        let change = match held {
            // No such link (yet): applying says so, and it is retried.
            None => AddressChange {
                want: want.clone(),
                delete: Vec::new(),
                add: true,
            },
            Some(held) => AddressChange {
                want: want.clone(),
                add: !held.contains(&want.address),
                delete: held.into_iter().filter(|a| *a != want.address).collect(),
            },
        };
        if change.add || !change.delete.is_empty() {
            plan.addresses.push(change);
        }
    }

    plan.masquerade = match (&desired.masquerade[..], &observed.masquerade) {
        ([], NftState::Absent) => None,
        ([], _) => Some(MasqueradeChange::Remove),
        (ranges, NftState::AsWritten(script)) if *script == masquerade_script(ranges) => None,
        (ranges, _) => Some(MasqueradeChange::Write(ranges.to_vec())),
    };
    plan.host_guard = hostguard::change(desired.host_guard.as_ref(), &observed.host_guard);
}

/// The transaction that makes the cluster's masquerade chain masquerade `ranges`: one rule
/// for the IPv4 sources (`ip saddr`), one for the IPv6 ones (`ip6 saddr`), in the same
/// `inet` chain.
fn masquerade_script(ranges: &[IpNet]) -> String {
    firewall::masquerade_transaction(AGENT_NAT_NETWORK, ranges)
}

/// An nft or sysctl failure as the reconciler reports it (the reason in full: `nft`'s own
/// message, or the kernel's).
pub(super) fn failure(
    item: String,
    object: ObjectKey,
    op: &str,
    error: impl std::fmt::Display,
) -> ApplyFailure {
    ApplyFailure {
        item,
        object: Some(object),
        error: Error::Io {
            op: op.to_string(),
            source: std::io::Error::other(error.to_string()),
        },
    }
}

/// Sets the plan's sysctls, then writes the host protection table and the masquerade chain:
/// before any route, so a new peer's traffic is accepted (and forwarded) from its first
/// packet.
pub fn apply_host_first(plan: &Plan, writers: &mut HostWriters, report: &mut ApplyReport) {
    for (name, value) in &plan.sysctls {
        let item = format!("set sysctl {name}={value}");
        let key = ObjectKey::Sysctl(name.clone());
        match sysctl_path(name) {
            Some(path) => {
                report.record(twill_netlink::sysctl::set(&path, value).map_err(|error| {
                    ApplyFailure {
                        item,
                        object: Some(key),
                        error,
                    }
                }))
            }
            None => report
                .failures
                .push(failure(item, key, "sysctl", "not a net.* name")),
        }
    }
    if let Some(change) = &plan.host_guard {
        let item = match change {
            hostguard::Change::Table(_) => "write table inet twill-host",
            hostguard::Change::Elements(_) => "update the elements of table inet twill-host",
            hostguard::Change::Remove => "delete table inet twill-host",
        };
        report.record(
            writers
                .guard
                .write(change)
                .map_err(|e| failure(item.to_string(), host_table_key(), "nft", e)),
        );
    }
    if let Some(change) = &plan.masquerade {
        let (item, result) = match change {
            MasqueradeChange::Write(ranges) => (
                format!("write chain inet twill {}", firewall_chain()),
                writers.nat.write(ranges),
            ),
            MasqueradeChange::Remove => (
                format!("delete chain inet twill {}", firewall_chain()),
                writers.nat.remove(),
            ),
        };
        report.record(result.map_err(|e| failure(item, masquerade_key(), "nft", e)));
    }
}

/// Gives links made elsewhere their one address (after the devices step, before routes
/// through them): the wanted one is added before the others go, so the link always has one.
pub async fn apply_addresses(nl: &Rtnl, plan: &Plan, report: &mut ApplyReport) {
    for change in &plan.addresses {
        let AddressSpec { dev, address } = &change.want;
        let key = ObjectKey::Address(dev.clone());
        let outcome = async {
            let link = nl.link_by_name(dev).await?.ok_or(Error::Kernel {
                op: format!("look up link {dev}"),
                errno: twill_netlink::libc_errno::ENODEV,
            })?;
            if change.add {
                nl.add_address(link.index, (*address).into()).await?;
            }
            for stale in &change.delete {
                nl.delete_address(link.index, (*stale).into()).await?;
            }
            Ok(())
        }
        .await;
        report.record(outcome.map_err(|error| ApplyFailure {
            item: format!("set address {address} (only) on {dev}"),
            object: Some(key),
            error,
        }));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use twill_types::desired::HostGuardSpec;
    use twill_types::desired::host_guard::{Elements, Rules};

    fn guard(hosts: &[&str]) -> HostGuardSpec {
        HostGuardSpec {
            rules: Rules {
                pools: vec!["10.244.0.0/16".parse().unwrap()],
                node_subnet: Some("10.244.1.0/24".parse().unwrap()),
                workload_to_host: Default::default(),
                allow_ports: Vec::new(),
                control_tcp: vec![179, 2379],
                tunnel_udp: vec![8472],
                vxlan_port: Some(8472),
                pools6: Vec::new(),
                node_subnet6: None,
            },
            elements: Elements {
                control_hosts: hosts.iter().map(|h| h.parse().unwrap()).collect(),
                vxlan_peers: Default::default(),
                ..Elements::default()
            },
        }
    }

    fn desired() -> DesiredState {
        DesiredState {
            sysctls: [("net.ipv4.ip_forward".to_string(), "1".to_string())].into(),
            addresses: vec![AddressSpec {
                dev: "twill.tun".into(),
                address: "10.244.1.0/32".parse().unwrap(),
            }],
            masquerade: vec!["10.244.0.0/16".parse().unwrap()],
            host_guard: Some(guard(&["192.168.1.1"])),
            ..DesiredState::default()
        }
    }

    /// What observing gives once every object is as `d` wants.
    fn as_wanted(d: &DesiredState) -> ObservedHost {
        ObservedHost {
            sysctls: d
                .sysctls
                .iter()
                .map(|(k, v)| (k.clone(), Some(v.clone())))
                .collect(),
            addresses: d
                .addresses
                .iter()
                .map(|a| (a.dev.clone(), Some(vec![a.address])))
                .collect(),
            masquerade: NftState::AsWritten(masquerade_script(&d.masquerade)),
            host_guard: NftState::AsWritten(Arc::new(d.host_guard.clone().unwrap())),
        }
    }

    fn plan(d: &DesiredState, o: &ObservedHost) -> Plan {
        let mut plan = Plan::default();
        diff_host(d, o, &mut plan);
        plan
    }

    #[test]
    fn nothing_to_do_when_everything_is_as_written() {
        let d = desired();
        let p = plan(&d, &as_wanted(&d));
        assert!(p.is_empty(), "{p}");
        assert!(p.ignored.is_empty());
    }

    #[test]
    fn missing_objects_are_written_in_full() {
        let d = desired();
        let p = plan(&d, &ObservedHost::default());
        assert_eq!(p.sysctls, vec![("net.ipv4.ip_forward".into(), "1".into())]);
        assert_eq!(
            p.masquerade,
            Some(MasqueradeChange::Write(d.masquerade.clone()))
        );
        assert_eq!(
            p.host_guard,
            Some(hostguard::Change::Table(d.host_guard.clone().unwrap()))
        );
        // The link was not found: the change is planned, and applying it reports why.
        assert_eq!(p.addresses.len(), 1);
        assert!(p.addresses[0].add);
    }

    #[test]
    fn changed_peers_touch_only_the_elements_and_other_tables_are_rewritten() {
        let d = desired();
        let mut o = as_wanted(&d);
        o.host_guard = NftState::AsWritten(Arc::new(guard(&["192.168.1.1", "192.168.1.2"])));
        assert_eq!(
            plan(&d, &o).host_guard,
            Some(hostguard::Change::Elements(d.host_guard.clone().unwrap()))
        );
        o.host_guard = NftState::Other;
        o.masquerade = NftState::Other;
        let p = plan(&d, &o);
        assert!(matches!(p.host_guard, Some(hostguard::Change::Table(_))));
        assert!(matches!(p.masquerade, Some(MasqueradeChange::Write(_))));
    }

    #[test]
    fn undesired_tables_go_and_stale_addresses_are_replaced() {
        let mut d = desired();
        let mut o = as_wanted(&d);
        o.addresses.insert(
            "twill.tun".into(),
            Some(vec!["10.244.9.0/32".parse().unwrap()]),
        );
        d.masquerade.clear();
        d.host_guard = None;
        let p = plan(&d, &o);
        assert_eq!(p.masquerade, Some(MasqueradeChange::Remove));
        assert_eq!(p.host_guard, Some(hostguard::Change::Remove));
        assert_eq!(
            p.addresses,
            vec![AddressChange {
                want: d.addresses[0].clone(),
                delete: vec!["10.244.9.0/32".parse().unwrap()],
                add: true,
            }]
        );
        // Absent and not desired: nothing.
        let p = plan(&d, &ObservedHost::default());
        assert_eq!((p.masquerade, p.host_guard), (None, None));
    }

    #[test]
    fn objects_outside_twills_space_are_refused() {
        let d = DesiredState {
            sysctls: [
                ("kernel.panic".to_string(), "1".to_string()),
                ("net.ipv4.../x".to_string(), "1".to_string()),
            ]
            .into(),
            addresses: vec![AddressSpec {
                dev: "eth0".into(),
                address: "10.0.0.1/32".parse().unwrap(),
            }],
            ..DesiredState::default()
        };
        let p = plan(&d, &ObservedHost::default());
        assert!(p.is_empty(), "{p}");
        assert_eq!(p.ignored.len(), 3, "{:?}", p.ignored);
    }
}
