//! What pods may reach of the nodes, and who may send to the VXLAN port: the agent's own
//! nftables table `inet twill-host`.
//!
//! Two jobs (issue 12, items 1 and 2):
//! - **Workload-to-host protection** (Calico's `DefaultEndpointToHostAction` and failsafe
//!   ports): a connection from one of this node's pods to any address of this node is dropped
//!   unless the cluster config allows it (`workloadToHost`, `workloadToHostPorts`); DNS (port
//!   53), ICMP echo to the pod's gateway, IPv6 neighbour discovery and replies of connections
//!   the node opened always pass. Control-plane ports are closed to every pod of the cluster,
//!   local or remote, whatever the config says, and encapsulated or control traffic from pods
//!   is dropped before NAT, so masquerading never makes a pod's packet look like the node's
//!   (Calico's `allowVXLANPacketsFromWorkloads: false`, `allowIPIPPacketsFromWorkloads: false`).
//! - **Receivers check senders** (kernel VXLAN): a packet to the VXLAN port is accepted only
//!   from a current peer's underlay address and with an IPv4 inner source inside that peer's
//!   subnet. The udp and ipip backends make the same check themselves (the userspace engine
//!   and the tc fast path, see `twill_tunnel`), so they get no rule here.
//!
//! The exact matches:
//! - *This node's pods* ("workloads"): packets arriving on a host veth `tw*` (routed pods,
//!   IPv4 and IPv6) or with a source in this node's pod subnet from any interface but `lo`
//!   (bridged pods arrive on their bridge; anti-spoofing pins a pod to its own addresses, and
//!   the tunnels' checks keep other nodes from sending from our subnet).
//! - *Any pod*: a source in one of the cluster's pools.
//! - *Control plane*: TCP to the ports of `twill_types::cluster::control_tcp_ports` (BGP 179
//!   and the configured listen port, etcd 2379/2380) plus the store endpoints' ports; UDP to
//!   every tunnel port (vxlan's, the udp backend's, twill's defaults 8472 and 8285); IP
//!   protocol 4 (ipip).
//! - Input (to this node): from any pod, control-plane TCP/UDP and protocol 4 are dropped;
//!   from this node's pods, then DNS, ICMP echo to an address of the node's pod subnet (the
//!   bridge gateway; routed pods' 169.254.1.1 is answered by proxy ARP, not here), IPv6
//!   neighbour/router solicitations and echo, and the allow-listed ports are accepted, the
//!   rest gets `workloadToHost` (Drop by default). Replies (`ct state established,related`)
//!   pass first.
//! - Prerouting, before NAT (a `nat` chain, so only the first packet of each connection is
//!   looked at): from any pod, UDP to a tunnel port and protocol 4 to any destination, and
//!   control-plane TCP to a node of the cluster (this one and every peer's underlay address)
//!   or a store endpoint, are dropped.
//! - VXLAN (input, `udp dport <vxlan port>`): inner Ethernet type IPv4 and
//!   `outer source . inner source` in the set of `(peer underlay address . peer subnet)`,
//!   else dropped.
//!
//! Cost: pod-to-pod packets never meet these rules (the input hook sees only packets for the
//! node; the nat chain sees one packet per connection), except received VXLAN packets, which
//! pay one concatenated-set lookup.
//!
//! Dual-stack clusters (IPv6 pools) get the same rules for IPv6 (and protocol 41, IPv6 in IPv4,
//! is treated as protocol 4 is): `ip6 saddr` of this node's
//! IPv6 subnet and of the IPv6 pools, the nodes' IPv6 underlay addresses as control hosts, and
//! at the VXLAN port an inner IPv6 frame must come from a peer (over either underlay family)
//! with an inner source in that peer's IPv6 subnet. An IPv4-only cluster's table is unchanged.
//!
//! Rules are computed purely from data ([`Spec`]; golden-tested without root) and applied
//! atomically with `nft -f` ([`HostGuard::apply`]): the whole table in one transaction when
//! the rules change, only the elements of the two element sets when only peers or store
//! endpoints change.

use std::fmt::Write as _;
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use ipnet::{Ipv4Net, Ipv6Net};
use twill_types::cluster::{HostPort, WorkloadToHost};

use crate::Error;
use crate::nfnl::{self, NFPROTO_INET, NlError};
use crate::nft_state::{NftState, fingerprint};

/// The table (family `inet`).
pub const TABLE: &str = "twill-host";
/// The filter chain on the input hook.
pub const INPUT_CHAIN: &str = "input";
/// The nat chain on the prerouting hook (before NAT).
pub const PREROUTING_CHAIN: &str = "prerouting";
/// The set of control-plane addresses (nodes and store endpoints).
pub const CONTROL_HOSTS_SET: &str = "control_hosts";
/// The set of `peer underlay address . peer subnet` the VXLAN port accepts.
pub const VXLAN_PEERS_SET: &str = "vxlan_peers";

/// The IPv6 control-plane addresses (dual-stack clusters).
pub const CONTROL_HOSTS6_SET: &str = "control_hosts6";
/// `peer IPv4 underlay address . peer IPv6 subnet`: IPv6 pod packets over an IPv4 underlay.
pub const VXLAN_PEERS46_SET: &str = "vxlan_peers46";
/// `peer IPv6 underlay address . peer IPv6 subnet`: IPv6 pod packets over an IPv6 underlay.
pub const VXLAN_PEERS6_SET: &str = "vxlan_peers6";

/// IP protocol 41, IPv6 in IPv4 (Linux's `sit`): how ipip carries IPv6 pod packets.
const SIT_PROTOCOL: u8 = 41;

/// Bit offset, from the outer UDP header, of the inner Ethernet type
/// (UDP 8 + VXLAN 8 + Ethernet addresses 12 bytes).
const VXLAN_INNER_ETHERTYPE_BITS: u32 = (8 + 8 + 12) * 8;
/// Bit offset, from the outer UDP header, of the inner IPv4 source
/// (UDP 8 + VXLAN 8 + Ethernet 14 + 12 bytes into the IPv4 header).
const VXLAN_INNER_SOURCE_BITS: u32 = (8 + 8 + 14 + 12) * 8;
/// Bit offset, from the outer UDP header, of the inner IPv6 source
/// (UDP 8 + VXLAN 8 + Ethernet 14 + 8 bytes into the IPv6 header).
const VXLAN_INNER_SOURCE6_BITS: u32 = (8 + 8 + 14 + 8) * 8;

/// The spec's data lives with the desired state; this module renders it and applies it.
pub use twill_types::desired::HostGuardSpec as Spec;
pub use twill_types::desired::host_guard::{Elements, Rules, store_endpoints};

/// The nftables form of a [`Spec`].
pub trait Render {
    /// The number of rules the input chain holds (to check the table is in place).
    fn input_rule_count(&self) -> usize;
    /// The `nft -f` transaction that replaces the whole table with this spec.
    fn table_script(&self) -> String;
    /// The `nft -f` transaction that makes the element sets equal to this spec's (the table
    /// must already hold this spec's rules).
    fn elements_script(&self) -> String;
}

impl Render for Spec {
    fn input_rule_count(&self) -> usize {
        input_rules(&self.rules).len()
    }

    fn table_script(&self) -> String {
        let body = rules_script(&self.rules);
        let mut s = String::new();
        // Create-then-delete makes the delete safe when the table is missing; the new table
        // follows in the same transaction, so no packet sees a half-made or missing table.
        let _ = writeln!(s, "add table inet {TABLE}");
        let _ = writeln!(s, "delete table inet {TABLE}");
        let _ = writeln!(
            s,
            "add table inet {TABLE} {{ comment \"{}\"; }}",
            fingerprint(&body)
        );
        s.push_str(&body);
        s.push_str(&self.elements_script());
        s
    }

    fn elements_script(&self) -> String {
        let e = &self.elements;
        let mut s = String::new();
        let _ = writeln!(s, "flush set inet {TABLE} {CONTROL_HOSTS_SET}");
        if !e.control_hosts.is_empty() {
            let hosts: Vec<String> = e.control_hosts.iter().map(|a| a.to_string()).collect();
            let _ = writeln!(
                s,
                "add element inet {TABLE} {CONTROL_HOSTS_SET} {{ {} }}",
                hosts.join(", ")
            );
        }
        if dual_stack(&self.rules) {
            let hosts: Vec<String> = e.control_hosts6.iter().map(|a| a.to_string()).collect();
            set_elements(&mut s, CONTROL_HOSTS6_SET, &hosts);
            if self.rules.vxlan_port.is_some() {
                let peers: Vec<String> = e
                    .vxlan_peers46
                    .iter()
                    .map(|(addr, net)| format!("{addr} . {}", int_range6(*net)))
                    .collect();
                set_elements(&mut s, VXLAN_PEERS46_SET, &peers);
                let peers: Vec<String> = e
                    .vxlan_peers6
                    .iter()
                    .map(|(addr, net)| format!("{addr} . {}", int_range6(*net)))
                    .collect();
                set_elements(&mut s, VXLAN_PEERS6_SET, &peers);
            }
        }
        if self.rules.vxlan_port.is_some() {
            let _ = writeln!(s, "flush set inet {TABLE} {VXLAN_PEERS_SET}");
            if !e.vxlan_peers.is_empty() {
                let peers: Vec<String> = e
                    .vxlan_peers
                    .iter()
                    .map(|(addr, net)| format!("{addr} . {}", int_range(*net)))
                    .collect();
                let _ = writeln!(
                    s,
                    "add element inet {TABLE} {VXLAN_PEERS_SET} {{ {} }}",
                    peers.join(", ")
                );
            }
        }
        s
    }
}

/// Everything of the table but its elements: sets, chains and rules, as `nft -f` lines. The
/// table's comment is the [`fingerprint`] of this, so it names the rules and not the
/// elements: an element-only update keeps it right, and a writer without a record reads the
/// elements themselves (see [`HostGuard::observe`]).
fn rules_script(r: &Rules) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "add set inet {TABLE} {CONTROL_HOSTS_SET} {{ type ipv4_addr; }}"
    );
    let _ = writeln!(
        s,
        "add set inet {TABLE} control_tcp {{ type inet_service; elements = {{ {} }}; }}",
        join(&r.control_tcp)
    );
    let _ = writeln!(
        s,
        "add set inet {TABLE} tunnel_udp {{ type inet_service; elements = {{ {} }}; }}",
        join(&r.tunnel_udp)
    );
    let _ = writeln!(
        s,
        "add set inet {TABLE} allow_ports {{ type inet_proto . inet_service; flags interval; }}"
    );
    if !r.allow_ports.is_empty() {
        let ports: Vec<String> = r.allow_ports.iter().map(allow_element).collect();
        let _ = writeln!(
            s,
            "add element inet {TABLE} allow_ports {{ {} }}",
            ports.join(", ")
        );
    }
    if r.vxlan_port.is_some() {
        // The inner source is raw payload (an integer to nft), so the set is declared by
        // its expressions and holds subnets as integer ranges.
        let _ = writeln!(
            s,
            "add set inet {TABLE} {VXLAN_PEERS_SET} {{ typeof ip saddr . @th,{VXLAN_INNER_SOURCE_BITS},32; flags interval; }}"
        );
    }
    if dual_stack(r) {
        let _ = writeln!(
            s,
            "add set inet {TABLE} {CONTROL_HOSTS6_SET} {{ type ipv6_addr; }}"
        );
        if r.vxlan_port.is_some() {
            for (set, outer) in [(VXLAN_PEERS46_SET, "ip"), (VXLAN_PEERS6_SET, "ip6")] {
                let _ = writeln!(
                    s,
                    "add set inet {TABLE} {set} {{ typeof {outer} saddr . @th,{VXLAN_INNER_SOURCE6_BITS},128; flags interval; }}"
                );
            }
        }
    }
    let chains: [(&str, Option<&str>); 5] = [
        (
            INPUT_CHAIN,
            Some("type filter hook input priority filter - 5; policy accept;"),
        ),
        ("vxlan_in", None),
        ("pod_in", None),
        ("workload_in", None),
        (
            PREROUTING_CHAIN,
            Some("type nat hook prerouting priority dstnat - 10; policy accept;"),
        ),
    ];
    for (chain, base) in chains {
        if chain == "vxlan_in" && r.vxlan_port.is_none() {
            continue;
        }
        match base {
            Some(b) => {
                let _ = writeln!(s, "add chain inet {TABLE} {chain} {{ {b} }}");
            }
            None => {
                let _ = writeln!(s, "add chain inet {TABLE} {chain}");
            }
        }
    }
    let _ = writeln!(s, "add chain inet {TABLE} pod_out");
    let mut add = |chain: &str, rules: Vec<String>| {
        for rule in rules {
            let _ = writeln!(s, "add rule inet {TABLE} {chain} {rule}");
        }
    };
    add(INPUT_CHAIN, input_rules(r));
    if r.vxlan_port.is_some() {
        add("vxlan_in", vxlan_rules(r));
    }
    let mut pod_in = vec![
        "ct state established,related accept".into(),
        "tcp dport @control_tcp counter drop".into(),
        "udp dport @tunnel_udp counter drop".into(),
        "meta l4proto ipencap counter drop".into(),
    ];
    if dual_stack(r) {
        // IPv6 in IPv4 (protocol 41), the ipip backend's framing of IPv6 pod packets.
        pod_in.push(format!("meta l4proto {SIT_PROTOCOL} counter drop"));
    }
    add("pod_in", pod_in);
    let verdict = match r.workload_to_host {
        WorkloadToHost::Drop => "counter drop",
        WorkloadToHost::Accept => "counter accept",
    };
    let mut workload_in = vec![
        "jump pod_in".into(),
        "meta l4proto { tcp, udp } th dport 53 accept".into(),
    ];
    if let Some(node_subnet) = r.node_subnet {
        workload_in.push(format!(
            "icmp type echo-request ip daddr {node_subnet} accept"
        ));
    }
    workload_in.extend([
        "icmpv6 type { echo-request, nd-router-solicit, nd-neighbor-solicit, nd-neighbor-advert } accept".into(),
        "meta l4proto . th dport @allow_ports accept".into(),
        verdict.into(),
    ]);
    add("workload_in", workload_in);
    // An IPv6-only node has no IPv4 pools: no IPv4 pod sources to send to pod_out.
    let mut prerouting: Vec<String> = (!r.pools.is_empty())
        .then(|| format!("ip saddr {} jump pod_out", set_expr(&r.pools)))
        .into_iter()
        .collect();
    let mut pod_out: Vec<String> = vec![
        "udp dport @tunnel_udp counter drop".into(),
        "meta l4proto ipencap counter drop".into(),
    ];
    if !r.pools.is_empty() {
        pod_out.push(format!(
            "ip daddr @{CONTROL_HOSTS_SET} tcp dport @control_tcp counter drop"
        ));
    }
    if dual_stack(r) {
        pod_out.push(format!("meta l4proto {SIT_PROTOCOL} counter drop"));
        prerouting.push(format!("ip6 saddr {} jump pod_out", set_expr(&r.pools6)));
        pod_out.push(format!(
            "ip6 daddr @{CONTROL_HOSTS6_SET} tcp dport @control_tcp counter drop"
        ));
    }
    add(PREROUTING_CHAIN, prerouting);
    add("pod_out", pod_out);
    s
}

/// The table's comment for `rules`.
fn rules_fingerprint(rules: &Rules) -> String {
    fingerprint(&rules_script(rules))
}

/// The input chain's rules.
fn input_rules(r: &Rules) -> Vec<String> {
    let mut rules = Vec::new();
    if let Some(port) = r.vxlan_port {
        // First: the only rule received VXLAN traffic pays before its own check.
        rules.push(format!("udp dport {port} jump vxlan_in"));
    }
    rules.push("iif \"lo\" accept".into());
    rules.push(format!(
        "iifname \"{}*\" jump workload_in",
        crate::firewall::IFNAME_PREFIX
    ));
    if let Some(node_subnet) = r.node_subnet {
        rules.push(format!("ip saddr {node_subnet} jump workload_in"));
    }
    if !r.pools.is_empty() {
        rules.push(format!("ip saddr {} jump pod_in", set_expr(&r.pools)));
    }
    if dual_stack(r) {
        if let Some(subnet6) = r.node_subnet6 {
            rules.push(format!("ip6 saddr {subnet6} jump workload_in"));
        }
        rules.push(format!("ip6 saddr {} jump pod_in", set_expr(&r.pools6)));
    }
    rules
}

/// Whether the cluster has IPv6 pools: only then does the table have IPv6 rules and sets.
fn dual_stack(r: &Rules) -> bool {
    !r.pools6.is_empty()
}

/// The VXLAN port's check: the inner frame is IPv4 from the outer sender's IPv4 subnet, or
/// (dual-stack) IPv6 from the outer sender's IPv6 subnet, whichever underlay family it came
/// over; anything else is dropped.
fn vxlan_rules(r: &Rules) -> Vec<String> {
    let ethertype = format!("@th,{VXLAN_INNER_ETHERTYPE_BITS},16");
    if !dual_stack(r) {
        return vec![
            format!("{ethertype} != 0x0800 counter drop"),
            format!("ip saddr . @th,{VXLAN_INNER_SOURCE_BITS},32 @{VXLAN_PEERS_SET} accept"),
            "counter drop".into(),
        ];
    }
    let inner6 = format!("@th,{VXLAN_INNER_SOURCE6_BITS},128");
    if r.node_subnet.is_none() {
        // An IPv6-only node: IPv6 pod packets over the IPv6 underlay, nothing else.
        return vec![
            format!("{ethertype} 0x86dd ip6 saddr . {inner6} @{VXLAN_PEERS6_SET} accept"),
            "counter drop".into(),
        ];
    }
    vec![
        format!(
            "{ethertype} 0x0800 ip saddr . @th,{VXLAN_INNER_SOURCE_BITS},32 @{VXLAN_PEERS_SET} accept"
        ),
        format!("{ethertype} 0x86dd ip saddr . {inner6} @{VXLAN_PEERS46_SET} accept"),
        format!("{ethertype} 0x86dd ip6 saddr . {inner6} @{VXLAN_PEERS6_SET} accept"),
        "counter drop".into(),
    ]
}

/// Flushes `set` and adds `elements` (already in nft's syntax).
fn set_elements(s: &mut String, set: &str, elements: &[String]) {
    let _ = writeln!(s, "flush set inet {TABLE} {set}");
    if !elements.is_empty() {
        let _ = writeln!(
            s,
            "add element inet {TABLE} {set} {{ {} }}",
            elements.join(", ")
        );
    }
}

/// `tcp . 22` or `tcp . 30000-32767`.
fn allow_element(p: &HostPort) -> String {
    let proto = p.proto.name();
    if p.first == p.last {
        format!("{proto} . {}", p.first)
    } else {
        format!("{proto} . {}-{}", p.first, p.last)
    }
}

/// A subnet as the integer range raw payload compares with (network byte order, as the
/// packet holds it): 10.244.2.0/24 is `0x0af40200-0x0af402ff`.
fn int_range(net: Ipv4Net) -> String {
    format!(
        "0x{:08x}-0x{:08x}",
        u32::from(net.network()),
        u32::from(net.broadcast())
    )
}

/// An IPv6 subnet as the integer range raw payload compares with (see [`int_range`]).
fn int_range6(net: Ipv6Net) -> String {
    format!(
        "0x{:032x}-0x{:032x}",
        u128::from(net.network()),
        u128::from(net.broadcast())
    )
}

fn join(ports: &[u16]) -> String {
    ports
        .iter()
        .map(|p| p.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

fn set_expr<N: std::fmt::Display>(nets: &[N]) -> String {
    match nets {
        [one] => one.to_string(),
        _ => format!(
            "{{ {} }}",
            nets.iter()
                .map(|n| n.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// What [`HostGuard::apply`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// The kernel already held the spec.
    Unchanged,
    /// Only set elements were replaced.
    Elements,
    /// The whole table was (re)written.
    Table,
}

/// A change of the table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Write the whole table (one transaction).
    Table(Spec),
    /// Replace the elements of the two element sets (the table holds the spec's rules).
    Elements(Spec),
    /// Delete the table.
    Remove,
}

/// The change that turns what the kernel holds of the table into `desired` (None: no
/// table). Pure.
pub fn change(desired: Option<&Spec>, observed: &NftState<Arc<Spec>>) -> Option<Change> {
    match (desired, observed) {
        (None, NftState::Absent) => None,
        (None, _) => Some(Change::Remove),
        (Some(want), NftState::AsWritten(have)) if **have == *want => None,
        (Some(want), NftState::AsWritten(have)) if have.rules == want.rules => {
            Some(Change::Elements(want.clone()))
        }
        (Some(want), _) => Some(Change::Table(want.clone())),
    }
}

/// Keeps `inet twill-host` equal to a [`Spec`] (in the calling thread's network namespace),
/// with a record of the spec it last wrote.
#[derive(Debug, Default)]
pub struct HostGuard {
    /// The spec last written and the fingerprint of its rules (kept, not recomputed on every
    /// observe).
    applied: Option<(Arc<Spec>, String)>,
}

impl HostGuard {
    pub fn new() -> HostGuard {
        HostGuard::default()
    }

    /// What the kernel holds of the table: the spec last written, or else `want`'s rules,
    /// when the table is there with their [`fingerprint`] as its comment and their rule count
    /// in the input chain. Two netlink requests, no process. Without a record (a restarted
    /// agent) the elements are not known, so they are read from the kernel (two dumps) and
    /// the observed spec is `want`'s rules with those elements.
    pub fn observe(&self, want: Option<&Spec>) -> Result<NftState<Arc<Spec>>, Error> {
        let op = format!("checking the table inet {TABLE}");
        nfnl::with_sock(|sock| {
            let Some(comment) = nfnl::table_comment(sock, NFPROTO_INET, TABLE)? else {
                return Ok(NftState::Absent);
            };
            let holds = |sock: &mut nfnl::NfSock, rules: &Rules, mark: &str| {
                Ok::<_, NlError>(
                    comment.as_deref() == Some(mark)
                        && nfnl::rule_count(sock, NFPROTO_INET, TABLE, INPUT_CHAIN)?
                            == input_rules(rules).len(),
                )
            };
            if let Some((spec, mark)) = &self.applied
                && holds(sock, &spec.rules, mark)?
            {
                return Ok(NftState::AsWritten(spec.clone()));
            }
            if let Some(want) = want
                && self
                    .applied
                    .as_ref()
                    .is_none_or(|(a, _)| a.rules != want.rules)
                && holds(sock, &want.rules, &rules_fingerprint(&want.rules))?
                && let Some(elements) = read_elements(sock, &want.rules)?
            {
                return Ok(NftState::AsWritten(Arc::new(Spec {
                    rules: want.rules.clone(),
                    elements,
                })));
            }
            Ok(NftState::Other)
        })
        .map_err(|e| nl_error(op, e))
    }

    /// Makes the change: one `nft -f` transaction.
    pub fn write(&mut self, change: &Change) -> Result<(), Error> {
        let spec = match change {
            Change::Table(spec) => {
                self.applied = None;
                crate::nftcli::apply(
                    "writes the host protection table (inet twill-host)",
                    &spec.table_script(),
                )?;
                spec
            }
            Change::Elements(spec) => {
                crate::nftcli::apply(
                    "updates the peers of the host protection table",
                    &spec.elements_script(),
                )?;
                spec
            }
            Change::Remove => {
                self.applied = None;
                return remove();
            }
        };
        self.applied = Some((Arc::new(spec.clone()), rules_fingerprint(&spec.rules)));
        Ok(())
    }

    /// Makes the table hold `spec`: nothing when it already does, only the element sets when
    /// only they differ, otherwise the whole table in one transaction.
    pub fn apply(&mut self, spec: &Spec) -> Result<Applied, Error> {
        let Some(todo) = change(Some(spec), &self.observe(Some(spec))?) else {
            return Ok(Applied::Unchanged);
        };
        self.write(&todo)?;
        Ok(match todo {
            Change::Elements(_) => Applied::Elements,
            _ => Applied::Table,
        })
    }
}

/// The elements of the table's element sets, when they are ones the table's writer could
/// have written (None: something else, so the table is rewritten).
fn read_elements(sock: &mut nfnl::NfSock, rules: &Rules) -> Result<Option<Elements>, NlError> {
    let mut elements = Elements::default();
    for key in nfnl::set_keys(sock, NFPROTO_INET, TABLE, CONTROL_HOSTS_SET)? {
        let Ok(octets) = <[u8; 4]>::try_from(key) else {
            return Ok(None);
        };
        elements.control_hosts.insert(Ipv4Addr::from(octets));
    }
    if rules.vxlan_port.is_some() {
        for range in nfnl::set_ranges(sock, NFPROTO_INET, TABLE, VXLAN_PEERS_SET)? {
            let Some(peer) = vxlan_peer(range) else {
                return Ok(None);
            };
            elements.vxlan_peers.insert(peer);
        }
    }
    if dual_stack(rules) {
        for key in nfnl::set_keys(sock, NFPROTO_INET, TABLE, CONTROL_HOSTS6_SET)? {
            let Ok(octets) = <[u8; 16]>::try_from(key) else {
                return Ok(None);
            };
            elements.control_hosts6.insert(Ipv6Addr::from(octets));
        }
        if rules.vxlan_port.is_some() {
            for range in nfnl::set_ranges(sock, NFPROTO_INET, TABLE, VXLAN_PEERS46_SET)? {
                let Some((addr, net)) = vxlan_peer6::<4>(range) else {
                    return Ok(None);
                };
                elements.vxlan_peers46.insert((Ipv4Addr::from(addr), net));
            }
            for range in nfnl::set_ranges(sock, NFPROTO_INET, TABLE, VXLAN_PEERS6_SET)? {
                let Some((addr, net)) = vxlan_peer6::<16>(range) else {
                    return Ok(None);
                };
                elements.vxlan_peers6.insert((Ipv6Addr::from(addr), net));
            }
        }
    }
    Ok(Some(elements))
}

/// An element of an IPv6 VXLAN peers' set as [`int_range6`] writes it: the key is
/// `peer address (N bytes) . first address of the IPv6 subnet`, the range end
/// `peer address . last address`.
fn vxlan_peer6<const N: usize>((key, end): nfnl::ElementRange) -> Option<([u8; N], Ipv6Net)> {
    let end = end?;
    if key.len() != N + 16 || end.len() != N + 16 || key[..N] != end[..N] {
        return None;
    }
    let first = u128::from_be_bytes(key[N..].try_into().ok()?);
    let last = u128::from_be_bytes(end[N..].try_into().ok()?);
    let span = last.checked_sub(first)?;
    // A prefix's range spans 2^k - 1 and starts aligned.
    if span
        .checked_add(1)
        .is_some_and(|size| !size.is_power_of_two())
        || first & span != 0
    {
        return None;
    }
    let prefix = u8::try_from(span.leading_zeros()).ok()?;
    let net = Ipv6Net::new(Ipv6Addr::from(first), prefix).ok()?;
    Some((key[..N].try_into().ok()?, net))
}

/// An element of the VXLAN peers' set as [`int_range`] writes it: the key is
/// `peer address . first address of the subnet` (4 bytes each, network order), the range end
/// `peer address . last address`.
fn vxlan_peer((key, end): nfnl::ElementRange) -> Option<(Ipv4Addr, Ipv4Net)> {
    let word = |b: &[u8], at: usize| -> Option<u32> {
        Some(u32::from_be_bytes(b.get(at..at + 4)?.try_into().ok()?))
    };
    let end = end?;
    if key.len() != 8 || end.len() != 8 || key[..4] != end[..4] {
        return None;
    }
    let (first, last) = (word(&key, 4)?, word(&end, 4)?);
    let size = u64::from(last.checked_sub(first)?) + 1;
    if !size.is_power_of_two() || u64::from(first) % size != 0 {
        return None;
    }
    let prefix = 32 - u8::try_from(size.trailing_zeros()).ok()?;
    let net = Ipv4Net::new(Ipv4Addr::from(first), prefix).ok()?;
    Some((Ipv4Addr::from(word(&key, 0)?), net))
}

fn nl_error(op: String, e: NlError) -> Error {
    match e {
        NlError::Io(source) => Error::Io { op, source },
        NlError::Kernel { errno, msg } => Error::Kernel {
            op,
            errno,
            reason: msg.unwrap_or_else(|| io::Error::from_raw_os_error(errno).to_string()),
        },
        NlError::Malformed(detail) => Error::Protocol { op, detail },
    }
}

/// The transaction that removes the table (nothing when it is not there).
pub fn remove_script() -> String {
    format!("add table inet {TABLE}\ndelete table inet {TABLE}\n")
}

/// Removes the table (`twill node leave`); fine when it is not there.
pub fn remove() -> Result<(), Error> {
    crate::nftcli::apply("removes the host protection table", &remove_script())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn element(addr: [u8; 4], first: [u8; 4], last: [u8; 4]) -> nfnl::ElementRange {
        ([addr, first].concat(), Some([addr, last].concat()))
    }

    #[test]
    fn an_ipv6_vxlan_peer_is_read_back_from_its_range_and_odd_ranges_are_refused() {
        let net: Ipv6Net = "fd00:10:244:2::/64".parse().unwrap();
        let addr = [10, 9, 0, 2];
        let first = u128::from(net.network()).to_be_bytes();
        let last = u128::from(net.broadcast()).to_be_bytes();
        let range = (
            [&addr[..], &first].concat(),
            Some([&addr[..], &last].concat()),
        );
        assert_eq!(vxlan_peer6::<4>(range), Some((addr, net)));
        // The whole space (span 2^128 - 1) is /0.
        let all = (
            [&addr[..], &[0; 16]].concat(),
            Some([&addr[..], &[0xff; 16]].concat()),
        );
        assert_eq!(vxlan_peer6::<4>(all).map(|(_, n)| n.prefix_len()), Some(0));
        // Not a prefix, not aligned, a short key.
        let odd = u128::from(net.network()) + 2;
        let bad = (
            [&addr[..], &first].concat(),
            Some([&addr[..], &odd.to_be_bytes()].concat()),
        );
        assert_eq!(vxlan_peer6::<4>(bad), None);
        let unaligned = (
            [&addr[..], &odd.to_be_bytes()].concat(),
            Some([&addr[..], &last].concat()),
        );
        assert_eq!(vxlan_peer6::<4>(unaligned), None);
        assert_eq!(
            vxlan_peer6::<16>(([&addr[..], &first].concat(), None)),
            None
        );
    }

    #[test]
    fn a_vxlan_peer_is_read_back_from_its_range_and_odd_ranges_are_refused() {
        assert_eq!(
            vxlan_peer(element([10, 9, 0, 2], [10, 244, 2, 0], [10, 244, 2, 255])),
            Some((
                "10.9.0.2".parse().unwrap(),
                "10.244.2.0/24".parse().unwrap()
            ))
        );
        assert_eq!(
            vxlan_peer(element([10, 9, 0, 2], [10, 244, 2, 7], [10, 244, 2, 7])),
            Some((
                "10.9.0.2".parse().unwrap(),
                "10.244.2.7/32".parse().unwrap()
            ))
        );
        // Not a prefix, not aligned, different peers at the two ends, no end.
        assert_eq!(
            vxlan_peer(element([10, 9, 0, 2], [10, 244, 2, 0], [10, 244, 2, 2])),
            None
        );
        assert_eq!(
            vxlan_peer(element([10, 9, 0, 2], [10, 244, 2, 1], [10, 244, 2, 2])),
            None
        );
        let (key, _) = element([10, 9, 0, 2], [10, 244, 2, 0], [10, 244, 2, 255]);
        let (_, end) = element([10, 9, 0, 3], [10, 244, 2, 0], [10, 244, 2, 255]);
        assert_eq!(vxlan_peer((key.clone(), end)), None);
        assert_eq!(vxlan_peer((key, None)), None);
    }

    #[test]
    fn an_ipv6_only_nodes_rules_have_no_ipv4_pod_rules() {
        let rules = Rules {
            pools: Vec::new(),
            node_subnet: None,
            workload_to_host: Default::default(),
            allow_ports: Vec::new(),
            control_tcp: vec![2379],
            tunnel_udp: vec![8472],
            vxlan_port: Some(8472),
            pools6: vec!["fd00:10:244::/56".parse().unwrap()],
            node_subnet6: Some("fd00:10:244:3::/64".parse().unwrap()),
        };
        let script = rules_script(&rules);
        let ipv4: Vec<&str> = script
            .lines()
            .filter(|l| l.contains("ip saddr") || l.contains("ip daddr") || l.contains("icmp type"))
            .filter(|l| !l.contains("typeof"))
            .collect();
        assert!(ipv4.is_empty(), "{ipv4:?}\n{script}");
        for rule in [
            "ip6 saddr fd00:10:244:3::/64 jump workload_in",
            "ip6 saddr fd00:10:244::/56 jump pod_in",
            "ip6 saddr fd00:10:244::/56 jump pod_out",
            "ip6 daddr @control_hosts6 tcp dport @control_tcp counter drop",
            "@vxlan_peers6 accept",
        ] {
            assert!(script.contains(rule), "{rule} is not in\n{script}");
        }
        assert!(!script.contains("@vxlan_peers accept"), "{script}");
        assert!(!script.contains("@vxlan_peers46"), "{script}");
    }

    #[test]
    fn the_fingerprint_names_the_rules_not_the_elements() {
        let spec = |hosts: &[&str], node_subnet: &str| Spec {
            rules: Rules {
                pools: vec!["10.244.0.0/16".parse().unwrap()],
                node_subnet: Some(node_subnet.parse().unwrap()),
                workload_to_host: Default::default(),
                allow_ports: Vec::new(),
                control_tcp: vec![179],
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
        };
        let comment = |s: &Spec| {
            s.table_script()
                .lines()
                .find(|l| l.contains("comment"))
                .unwrap()
                .to_string()
        };
        let a = spec(&["10.9.0.1"], "10.244.1.0/24");
        assert_eq!(comment(&a), comment(&spec(&["10.9.0.2"], "10.244.1.0/24")));
        assert_ne!(comment(&a), comment(&spec(&["10.9.0.1"], "10.244.3.0/24")));
        assert!(comment(&a).contains(&fingerprint(&rules_script(&a.rules))));
    }
}
