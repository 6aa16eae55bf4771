//! The agent-side CLI verbs: `twill cluster init|show`, `twill node leave`, `twill status`,
//! `twill bgp status|routes|peer add|peer del`.
//! Each returns the process exit code; errors carry a message for people.

use std::io::Read;
use std::path::Path;

use anyhow::{Context, bail};
use ipnet::{IpNet, Ipv6Net};
use twill_store::{Store, StoreError};
use twill_types::cluster::{
    Backend, BackendKind, BgpPeer, ClusterConfig, ConfigForm, HostNet, HostNet6,
};
use twill_types::desired::PeerPath;
use twill_types::keys::{CONFIG_KEY, ENDPOINT_PREFIX, LEASES_PREFIX};
use twill_types::node::{self, AgentStatus, BgpStatus, NodeFile};

use crate::StoreArgs;
use crate::files;

/// `twill cluster init --store S -f FILE [--force] [--allow-overlap]`: validates the config
/// (Flannel net-conf.json, TOML or YAML) and writes it to the store. An identical config is a
/// no-op; a different one needs `--force`, because nodes already hold subnets of the old one.
///
/// Besides the config's own rules (reserved ranges included), init refuses:
/// - a backend this build's agent cannot run (e.g. `wireguard`), which would leave every agent
///   failing at start;
/// - a pool that overlaps a network of the host init runs on: the subnet of one of its IPv4
///   addresses, or the destination of one of its main-table routes (the default route and
///   networks inside the pools of the config already in the store, which are twill's own, do
///   not count). `--allow-overlap` skips this check, for an operator who runs init elsewhere
///   than on a node or knows the overlap is harmless (a broad route the pods may shadow).
///
/// This is the only verb that creates an embedded store file; nothing is created when the
/// config is refused.
pub async fn cluster_init(
    store_at: &StoreArgs,
    file: &Path,
    force: bool,
    allow_overlap: bool,
) -> anyhow::Result<i32> {
    let text = if file == Path::new("-") {
        let mut s = String::new();
        std::io::stdin().read_to_string(&mut s)?;
        s
    } else {
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?
    };
    let config =
        ClusterConfig::parse(&text).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
    if let Err(e) = twill_backend::for_config(&config) {
        let field = match ConfigForm::of(&text) {
            ConfigForm::Flannel => "Backend.Type",
            ConfigForm::Twill => "backend",
        };
        bail!(
            "{}: {field} {:?}: twill's agent cannot run this backend ({e}); use one of {}",
            file.display(),
            config.backend.kind.name(),
            runnable_backends().join(", ")
        );
    }
    // The store as it is, without creating an embedded file yet.
    let auth = store_at.etcd.auth()?;
    let existing = match Store::connect_with(&store_at.url, &auth).await {
        Ok(store) => Some(store),
        Err(StoreError::Missing(_)) => None,
        Err(e) => return Err(e.into()),
    };
    let stored = match &existing {
        Some(store) => store.get(CONFIG_KEY).await?,
        None => None,
    };
    if !allow_overlap {
        let old = stored
            .as_ref()
            .and_then(|kv| ClusterConfig::from_json(&String::from_utf8_lossy(&kv.value)).ok());
        let (host, host6) = host_networks(old.as_ref()).await.with_context(|| {
            "reading this host's addresses and routes to check the pools against them              (--allow-overlap skips the check)"
        })?;
        config
            .check_host_networks(&host, ConfigForm::of(&text))
            .and_then(|()| config.check_host_networks6(&host6, ConfigForm::of(&text)))
            .map_err(|e| {
                anyhow::anyhow!(
                    "{}: {e} (--allow-overlap skips this check, if the overlap is intended)",
                    file.display()
                )
            })?;
    }
    let value = config.to_json();
    match &stored {
        Some(kv) if kv.value == value.as_bytes() => {
            let store = existing
                .as_ref()
                .expect("a stored config comes from a store");
            println!("cluster config unchanged in {}", store.describe());
            return Ok(0);
        }
        Some(_) if !force => bail!(
            "{} already holds a different cluster config; nodes may hold subnets of it. \
             Use --force to replace it",
            existing
                .as_ref()
                .expect("a stored config comes from a store")
                .describe()
        ),
        _ => {}
    }
    let store = match existing {
        Some(store) => store,
        None => Store::connect_or_create_with(&store_at.url, &auth).await?,
    };
    store.put(CONFIG_KEY, value.as_bytes(), None).await?;
    println!(
        "cluster config written to {}: {}, backend {}",
        store.describe(),
        pools_summary(&config),
        serde_json::to_value(config.backend.kind)?
            .as_str()
            .unwrap_or("?")
    );
    Ok(0)
}

/// The pools of `cluster init`'s summary: "2 pool(s)" as before; a dual-stack config adds its
/// IPv6 pools ("1 pool(s) + 1 IPv6"), an IPv6-only one has only those.
fn pools_summary(config: &ClusterConfig) -> String {
    match (config.pools.len(), config.ipv6_pools.len()) {
        (n, 0) => format!("{n} pool(s)"),
        (0, n6) => format!("{n6} IPv6 pool(s), IPv6-only"),
        (n, n6) => format!("{n} pool(s) + {n6} IPv6"),
    }
}

/// The backends this build's agent runs.
fn runnable_backends() -> Vec<&'static str> {
    BackendKind::ALL
        .into_iter()
        .filter(|kind| {
            let mut config = ClusterConfig {
                pools: Vec::new(),
                ipv6_pools: Vec::new(),
                backend: Backend::with_defaults(*kind),
                bgp: None,
                wireguard: None,
                host_access: Default::default(),
            };
            config.bgp = (*kind == BackendKind::Bgp).then(Default::default);
            twill_backend::for_config(&config).is_ok()
        })
        .map(BackendKind::name)
        .collect()
}

/// The networks of the host this runs on, as [`ClusterConfig::check_host_networks`] and
/// [`ClusterConfig::check_host_networks6`] compare them, read in one pass (one link dump, one
/// address dump per link, one route dump):
/// - IPv4: the subnet of every address (loopback aside) and the destination of every route of
///   the main table but the default route;
/// - IPv6: the prefix of every address and the destination of every route, but loopback,
///   link-local, multicast and the default route.
///
/// Networks inside a pool of `twill_config` (the config already in the store) are twill's own
/// (a node's bridge, its peers' routes) and left out.
async fn host_networks(
    twill_config: Option<&ClusterConfig>,
) -> anyhow::Result<(Vec<HostNet>, Vec<HostNet6>)> {
    let nl = twill_netlink::Rtnl::new()?;
    let links = nl.links().await?;
    let name = |index: Option<u32>| {
        index
            .and_then(|i| links.iter().find(|l| l.index == i))
            .map_or_else(|| "?".to_string(), |l| l.name.clone())
    };
    let local6 = |net: &Ipv6Net| {
        let a = net.addr();
        a.is_loopback() || a.is_multicast() || a.is_unicast_link_local() || net.prefix_len() == 0
    };
    let (mut out, mut out6) = (Vec::new(), Vec::new());
    for link in &links {
        for addr in nl.addresses(link.index, None).await? {
            let source = format!("address {addr} on {}", link.name);
            match addr {
                IpNet::V4(addr) if !addr.addr().is_loopback() => out.push(HostNet {
                    net: addr.trunc(),
                    source,
                }),
                IpNet::V6(addr) if !local6(&addr) => out6.push(HostNet6 {
                    net: addr.trunc(),
                    source,
                }),
                _ => {}
            }
        }
    }
    for route in nl.routes(None, None).await? {
        match route.dst {
            IpNet::V4(dst) if dst.prefix_len() != 0 => {
                let mut source = format!("route {}", route.dst);
                if let Some(gw) = route.gateway {
                    source += &format!(" via {gw}");
                }
                if route.oif.is_some() {
                    source += &format!(" dev {}", name(route.oif));
                }
                if !route.unicast {
                    source += " (not unicast: blackhole, unreachable, ...)";
                }
                out.push(HostNet {
                    net: dst.trunc(),
                    source,
                });
            }
            IpNet::V6(dst) if !local6(&dst) => out6.push(HostNet6 {
                net: dst.trunc(),
                source: format!("route {dst}"),
            }),
            _ => {}
        }
    }
    if let Some(old) = twill_config {
        out.retain(|h| old.pool_of(h.net).is_none());
        out6.retain(|h| old.pool6_of(h.net).is_none());
    }
    Ok((out, out6))
}

/// `twill cluster show --store S`: prints the normalized config as JSON.
pub async fn cluster_show(store_at: &StoreArgs) -> anyhow::Result<i32> {
    let store = store_at.connect().await?;
    let Some(kv) = store.get(CONFIG_KEY).await? else {
        bail!(
            "{} holds no cluster config: run `twill cluster init`",
            store.describe()
        );
    };
    let mut config = ClusterConfig::from_json(&String::from_utf8_lossy(&kv.value))
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    // BGP passwords given inline and WireGuard's pre-shared key are in the store; they are
    // never printed.
    if let Some(bgp) = &mut config.bgp {
        twill_types::cluster::redact(bgp);
    }
    config.wireguard = config.wireguard.map(|wg| wg.redacted());
    println!("{}", serde_json::to_string_pretty(&config)?);
    Ok(0)
}

/// `twill node leave --store S --node-name N [--data-dir D]`: releases the node's lease so every
/// peer removes its routes; with the node's data directory (run on the node itself, agent
/// stopped) it also removes the node's own twill state.
pub async fn node_leave(
    store_at: &StoreArgs,
    node: &str,
    data_dir: Option<&Path>,
) -> anyhow::Result<i32> {
    let store = store_at.connect().await?;
    let released = crate::lease::release_node(&store, node).await?;
    if released.is_empty() {
        println!("node {node} holds no lease in {}", store.describe());
    }
    for subnet in &released {
        println!("released {subnet} of node {node}");
    }
    // Its pods are gone from the cluster too: other nodes' policies stop counting them.
    let (endpoints, _) = store.list(ENDPOINT_PREFIX).await?;
    let mut removed = 0;
    for kv in endpoints {
        let on_node = serde_json::from_slice::<twill_policy::Endpoint>(&kv.value)
            .is_ok_and(|e| e.node == node);
        if on_node && store.delete(&kv.key).await? {
            removed += 1;
        }
    }
    if removed > 0 {
        println!("removed {removed} endpoints of node {node}");
    }
    if let Some(dir) = data_dir {
        let file: Option<NodeFile> = files::read_json(&node::node_file(dir))?;
        if file.is_some_and(|f| f.node == node) {
            let nl = twill_dataplane::reconcile::Rtnl::new()?;
            let (reconciler, _) = twill_dataplane::reconcile::Reconciler::start(nl.clone());
            crate::run::clear_local_state(&nl, &reconciler, dir).await?;
            println!(
                "removed node {node}'s routes, VXLAN device and files in {}",
                dir.display()
            );
        }
    }
    Ok(0)
}

/// `twill node rotate-key [--data-dir D] [--json]`: a new WireGuard private key for this
/// node, written atomically (0600) over the old one. The running agent notices the new file
/// within a second (it checks the file's identity every 250 ms), switches its engine to the
/// key and republishes its lease with the new public key. Prints the public keys only.
pub fn node_rotate_key(data_dir: &Path, json: bool) -> anyhow::Result<i32> {
    let (old, new) = crate::wg_key::rotate(data_dir)?;
    if json {
        let v = serde_json::json!({
            "keyFile": crate::wg_key::key_path(data_dir),
            "oldPublicKey": old.map(|k| k.to_string()),
            "publicKey": new.to_string(),
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(0);
    }
    match old {
        Some(old) => println!("rotated the WireGuard key: public key {old} -> {new}"),
        None => println!("created a WireGuard key: public key {new}"),
    }
    println!(
        "written to {}; a running agent uses it within a second",
        crate::wg_key::key_path(data_dir).display()
    );
    Ok(0)
}

/// `twill status [--data-dir D] [--json] [--store S]`: this node, its lease, the backend and
/// every peer with how it is reached and whether it is programmed.
pub async fn status(
    data_dir: &Path,
    json: bool,
    store_at: Option<&StoreArgs>,
) -> anyhow::Result<i32> {
    let path = data_dir.join(node::STATUS_FILE);
    let Some(mut status) = files::read_json::<AgentStatus>(&path)? else {
        bail!(
            "no agent status at {}: is `twill agent --data-dir {}` running?",
            path.display(),
            data_dir.display()
        );
    };
    let alive = pid_alive(status.pid);
    if !alive {
        status.in_sync = false;
    }
    let leases = match store_at {
        Some(at) => {
            let store = at.connect().await?;
            Some(store.list(LEASES_PREFIX).await?.0.len())
        }
        None => None,
    };
    if json {
        let mut v = serde_json::to_value(&status)?;
        v["agentRunning"] = alive.into();
        if let Some(n) = leases {
            v["leasesInStore"] = n.into();
        }
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(0);
    }
    let backend = serde_json::to_value(status.backend)?;
    match status.subnet.zip(status.public_ip) {
        Some((subnet, public_ip)) => println!(
            "node {}  subnet {subnet}  backend {}  public {public_ip}",
            status.node,
            backend.as_str().unwrap_or("?"),
        ),
        None => println!(
            "node {}  IPv6-only  backend {}",
            status.node,
            backend.as_str().unwrap_or("?"),
        ),
    }
    // Nodes with IPv6 only: an IPv4-only node's output is unchanged.
    if status.subnet6.is_some() || status.public_ip6.is_some() {
        let or_none = |v: Option<String>| v.unwrap_or_else(|| "none".into());
        println!(
            "ipv6: subnet {}  public {}",
            or_none(status.subnet6.map(|n| n.to_string())),
            or_none(status.public_ip6.map(|ip| ip.to_string())),
        );
    }
    println!(
        "agent {}  store {}  {}",
        if alive {
            format!("running (pid {})", status.pid)
        } else {
            "NOT running".to_string()
        },
        status.store,
        if status.in_sync {
            "in sync"
        } else {
            "NOT in sync"
        }
    );
    if let Some(n) = leases {
        println!("leases in store: {n}");
    }
    println!();
    println!(
        "{:<16} {:<18} {:<16} {:<8} {:<10}",
        "PEER", "SUBNET", "PUBLIC IP", "VIA", "PROGRAMMED"
    );
    for p in &status.peers {
        let (via, mut note) = match &p.path {
            PeerPath::Direct => ("direct", String::new()),
            PeerPath::Vxlan => ("vxlan", String::new()),
            PeerPath::Udp => ("udp", String::new()),
            PeerPath::Ipip => ("ipip", String::new()),
            PeerPath::Bgp => ("bgp", String::new()),
            PeerPath::Wireguard => ("wireguard", String::new()),
            PeerPath::Skipped(why) => ("skipped", why.clone()),
        };
        if let Some(c) = &p.counters {
            note = format!(
                "tx {} pkts {} B, rx {} pkts {} B",
                c.tx_packets, c.tx_bytes, c.rx_packets, c.rx_bytes
            );
        }
        if let Some(wg) = &p.wireguard {
            note = format!("{}, {note}", wireguard_session(wg));
        }
        // A peer of an IPv6-only cluster shows its IPv6 subnet in the SUBNET column.
        let subnet = match (p.subnet, p.subnet6) {
            (Some(subnet), Some(subnet6)) => {
                note = format!("ipv6 {subnet6} {note}");
                subnet.to_string()
            }
            (Some(subnet), None) => subnet.to_string(),
            (None, Some(subnet6)) => subnet6.to_string(),
            (None, None) => "-".into(),
        };
        println!(
            "{:<16} {:<18} {:<16} {:<8} {:<10} {}{}",
            p.node,
            subnet,
            p.public_ip.map_or("-".into(), |ip| ip.to_string()),
            via,
            if p.programmed { "yes" } else { "no" },
            note,
            p.error.as_deref().unwrap_or("")
        );
    }
    if let Some(p) = &status.policy {
        println!(
            "\npolicy: {} ({} network policies, {} cluster policies; {} endpoints, {} here; \
             {} transactions, last {:.1} ms){}",
            if p.in_sync { "in sync" } else { "NOT in sync" },
            p.network_policies,
            p.cluster_policies,
            p.endpoints,
            p.local_endpoints,
            p.applied,
            p.last_apply_us as f64 / 1000.0,
            p.error
                .as_ref()
                .map(|e| format!("; last apply FAILED: {e}"))
                .unwrap_or_default()
        );
    }
    if !status.lease_events.is_empty() {
        println!("\nlease events (the lease was lost without `twill node leave`):");
        for e in &status.lease_events {
            println!("  {}  {} {}: {}", e.at, e.event, e.subnet, e.message);
        }
    }
    if let Some(t) = &status.tunnel {
        let path = match &t.kernel_path {
            Some(underlay) => format!("kernel fast path on {underlay} + userspace engine"),
            None => "userspace engine".to_string(),
        };
        println!(
            "\ntunnel {} ({path}): dropped {}",
            t.device,
            drops_text(&t.drops)
        );
    }
    if let Some(wg) = &status.wireguard {
        println!(
            "\nwireguard {} port {} public key {}: dropped {}",
            wg.device,
            wg.port,
            wg.public_key,
            drops_text(&wg.drops)
        );
    }
    Ok(0)
}

/// One WireGuard session as `twill status` prints it: the short key, the endpoint and the
/// age of the last handshake.
fn wireguard_session(wg: &twill_types::node::WireguardPeerStatus) -> String {
    let handshake = match wg.last_handshake_secs {
        Some(secs) => format!("handshake {} ago", human_secs(secs)),
        None => "no handshake yet".to_string(),
    };
    format!(
        "key {} endpoint {} {handshake}",
        twill_types::wg_key::short(&wg.public_key),
        wg.endpoint.as_deref().unwrap_or("-")
    )
}

/// Non-zero drop counters as `reason n, reason n`, or `nothing`.
fn drops_text(drops: &std::collections::BTreeMap<String, u64>) -> String {
    let nonzero: Vec<String> = drops
        .iter()
        .filter(|(_, n)| **n > 0)
        .map(|(why, n)| format!("{why} {n}"))
        .collect();
    if nonzero.is_empty() {
        "nothing".to_string()
    } else {
        nonzero.join(", ")
    }
}

/// Whether the agent that wrote the status still runs (same pid namespace).
fn pid_alive(pid: u32) -> bool {
    pid != 0 && Path::new(&format!("/proc/{pid}")).exists()
}

// ----- twill bgp -----

/// The BGP part of this node's status, or a clear error.
fn bgp_of(data_dir: &Path) -> anyhow::Result<(AgentStatus, BgpStatus, bool)> {
    let path = data_dir.join(node::STATUS_FILE);
    let Some(status) = files::read_json::<AgentStatus>(&path)? else {
        bail!(
            "no agent status at {}: is `twill agent --data-dir {}` running?",
            path.display(),
            data_dir.display()
        );
    };
    let Some(bgp) = status.bgp.clone() else {
        bail!(
            "node {} runs no BGP speaker: the cluster config has no bgp section \
             (or the agent has not reported yet)",
            status.node
        );
    };
    let alive = pid_alive(status.pid);
    Ok((status, bgp, alive))
}

/// `1h02m03s`-style duration.
fn human_secs(s: u64) -> String {
    match s {
        s if s >= 86400 => format!(
            "{}d{:02}h{:02}m",
            s / 86400,
            s % 86400 / 3600,
            s % 3600 / 60
        ),
        s if s >= 3600 => format!("{}h{:02}m{:02}s", s / 3600, s % 3600 / 60, s % 60),
        s if s >= 60 => format!("{}m{:02}s", s / 60, s % 60),
        s => format!("{s}s"),
    }
}

/// Renders rows as a boxed table, like `calicoctl node status`.
fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut width: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for r in rows {
        for (w, c) in width.iter_mut().zip(r) {
            *w = (*w).max(c.len());
        }
    }
    let line = width
        .iter()
        .map(|w| "-".repeat(w + 2))
        .collect::<Vec<_>>()
        .join("+");
    let line = format!("+{line}+\n");
    let row = |cells: Vec<String>| {
        let c: Vec<String> = cells
            .iter()
            .zip(&width)
            .map(|(c, w)| format!(" {c:<w$} "))
            .collect();
        format!("|{}|\n", c.join("|"))
    };
    let mut out = line.clone();
    out += &row(header.iter().map(|h| h.to_string()).collect());
    out += &line;
    for r in rows {
        out += &row(r.clone());
    }
    out += &line;
    out
}

/// `twill bgp status [--data-dir D] [--json]`: the node's BGP sessions, like
/// `calicoctl node status`.
pub fn bgp_status(data_dir: &Path, json: bool) -> anyhow::Result<i32> {
    let (status, bgp, alive) = bgp_of(data_dir)?;
    if json {
        let mut v = serde_json::to_value(&bgp)?;
        v.as_object_mut().expect("an object").remove("routes");
        v["node"] = status.node.clone().into();
        v["agentRunning"] = alive.into();
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(0);
    }
    println!(
        "BGP speaker of node {}: AS {}, router ID {}; agent {}{}",
        status.node,
        bgp.as_number,
        bgp.router_id,
        if alive { "running" } else { "NOT running" },
        if bgp.settled {
            ""
        } else {
            "; settling (BGP routes already in the kernel stay until the peers have sent theirs)"
        }
    );
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let rows: Vec<Vec<String>> = bgp
        .peers
        .iter()
        .map(|p| {
            let up = p.state == "Established";
            vec![
                p.address.to_string(),
                match &p.node {
                    Some(n) => format!("{} {n}", p.kind),
                    None => p.kind.clone(),
                },
                p.as_number.to_string(),
                if up { "up" } else { "start" }.to_string(),
                p.since
                    .map(|s| human_secs(now.saturating_sub(s)))
                    .unwrap_or_default(),
                p.state.clone(),
                p.received.to_string(),
                p.accepted.to_string(),
                p.sent.to_string(),
            ]
        })
        .collect();
    print!(
        "{}",
        table(
            &[
                "PEER ADDRESS",
                "PEER TYPE",
                "AS",
                "STATE",
                "UPTIME",
                "INFO",
                "RECEIVED",
                "ACCEPTED",
                "SENT"
            ],
            &rows
        )
    );
    Ok(0)
}

/// `twill bgp routes [--data-dir D] [--json]`: the node's Loc-RIB.
pub fn bgp_routes(data_dir: &Path, json: bool) -> anyhow::Result<i32> {
    let (_, bgp, _) = bgp_of(data_dir)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&bgp.routes)?);
        return Ok(0);
    }
    let rows: Vec<Vec<String>> = bgp
        .routes
        .iter()
        .map(|r| {
            vec![
                r.prefix.to_string(),
                if r.from.is_none() {
                    "local".to_string()
                } else {
                    r.next_hop.to_string()
                },
                r.as_path
                    .iter()
                    .map(u32::to_string)
                    .collect::<Vec<_>>()
                    .join(" "),
                r.from.map(|a| a.to_string()).unwrap_or_default(),
                if r.best { "*" } else { "" }.to_string(),
                if r.stale { "stale" } else { "" }.to_string(),
            ]
        })
        .collect();
    print!(
        "{}",
        table(
            &[
                "PREFIX",
                "NEXT HOP",
                "AS PATH",
                "FROM PEER",
                "BEST",
                "STALE"
            ],
            &rows
        )
    );
    Ok(0)
}

/// Where `twill bgp peer add` takes a session's password from.
#[derive(Debug, Clone, Default)]
pub struct PeerPasswordArgs {
    /// `--password-file FILE`: read now (trailing newline dropped), kept in the peer record.
    pub file: Option<std::path::PathBuf>,
    /// `--password-env VAR`: read now from this environment, kept in the peer record.
    pub env: Option<String>,
    /// `--password-file-on-nodes PATH`: only the path is kept; each agent reads it.
    pub node_file: Option<std::path::PathBuf>,
    /// `--password-env-on-nodes VAR`: only the name is kept; each agent reads its environment.
    pub node_env: Option<String>,
    /// `--ttl-security`: GTSM, for a directly connected router.
    pub ttl_security: bool,
}

impl PeerPasswordArgs {
    /// The peer record's protection; the password read now when asked (never printed).
    pub fn to_auth(&self) -> anyhow::Result<twill_types::bgp_auth::BgpAuth> {
        use twill_types::bgp_auth::{BgpAuth, Secret, check_password};
        let given = [
            self.file.is_some(),
            self.env.is_some(),
            self.node_file.is_some(),
            self.node_env.is_some(),
        ];
        if given.iter().filter(|g| **g).count() > 1 {
            bail!(
                "give one of --password-file, --password-env, --password-file-on-nodes and                  --password-env-on-nodes"
            );
        }
        let password = if let Some(f) = &self.file {
            let mut s = std::fs::read_to_string(f)
                .with_context(|| format!("reading the password file {}", f.display()))?;
            if s.ends_with('\n') {
                s.pop();
                if s.ends_with('\r') {
                    s.pop();
                }
            }
            Some(s)
        } else if let Some(v) = &self.env {
            Some(std::env::var(v).map_err(|_| {
                anyhow::anyhow!("--password-env {v}: the variable is not set (or not UTF-8)")
            })?)
        } else {
            None
        };
        if let Some(p) = &password {
            check_password(p).map_err(|e| anyhow::anyhow!("BGP password: {e}"))?;
        }
        Ok(BgpAuth {
            password: password.map(Secret::new),
            password_file: self.node_file.clone(),
            password_env: self.node_env.clone(),
            ttl_security: self.ttl_security,
        })
    }
}

/// `twill bgp peer add ADDRESS --as N [--node NAME] [--password-file F | --password-env V |
/// --password-file-on-nodes P | --password-env-on-nodes V] [--ttl-security] --store S`: an
/// external peer for every node (or one), which the agents apply live. An IPv6-only cluster
/// takes only routers by IPv6 address (its nodes have no IPv4 to reach others).
pub async fn bgp_peer_add(
    store_at: &StoreArgs,
    address: std::net::IpAddr,
    asn: u32,
    node_name: Option<&str>,
    protect: &PeerPasswordArgs,
) -> anyhow::Result<i32> {
    if let Some(n) = node_name
        && n.trim().is_empty()
    {
        bail!("--node must name a node");
    }
    if asn == 0 || asn == 23456 {
        bail!("--as {asn} is reserved (0, and 23456 = AS_TRANS): use the router's AS number");
    }
    let auth = protect.to_auth()?;
    let peer = BgpPeer {
        address,
        as_number: asn,
        node: node_name.map(str::to_string),
        auth,
    };
    let key = peer.key();
    let value = serde_json::to_vec(&peer)?;
    // The same checks the agents make when they read it back.
    BgpPeer::from_store(&key, &value).map_err(|e| anyhow::anyhow!("{e}"))?;
    let store = store_at.connect().await?;
    let config = match store.get(CONFIG_KEY).await? {
        Some(kv) => ClusterConfig::from_json(&String::from_utf8_lossy(&kv.value))
            .map_err(|e| anyhow::anyhow!("{e}"))?,
        None => bail!(
            "{} holds no cluster config: run `twill cluster init` first",
            store.describe()
        ),
    };
    if config.bgp.is_none() {
        bail!(
            "the cluster config in {} has no bgp section, so no agent runs BGP: add one \
             (e.g. `bgp: {{}}`) with `twill cluster init --force`",
            store.describe()
        );
    }
    if config.pools.is_empty() && address.is_ipv4() {
        bail!(
            "{address} is an IPv4 address, and the cluster in {} is IPv6-only: its nodes have \
             no IPv4 underlay to reach it; add the router by its IPv6 address",
            store.describe()
        );
    }
    store.put(&key, &value, None).await?;
    let mut protection = Vec::new();
    if peer.auth.has_password() {
        protection.push("TCP-MD5");
    }
    if peer.auth.ttl_security {
        protection.push("TTL security");
    }
    println!(
        "BGP peer {address} (AS {asn}) added for {} at {key}{}",
        node_name
            .map(|n| format!("node {n}"))
            .unwrap_or_else(|| "every node".into()),
        if protection.is_empty() {
            String::new()
        } else {
            format!(" with {}", protection.join(" and "))
        }
    );
    Ok(0)
}

/// `twill bgp peer del ADDRESS [--node NAME] --store S`.
pub async fn bgp_peer_del(
    store_at: &StoreArgs,
    address: std::net::IpAddr,
    node_name: Option<&str>,
) -> anyhow::Result<i32> {
    let key = BgpPeer {
        address,
        as_number: 1,
        node: node_name.map(str::to_string),
        auth: Default::default(),
    }
    .key();
    let store = store_at.connect().await?;
    if store.get(&key).await?.is_none() {
        bail!(
            "no BGP peer {address}{} in {} (nothing at {key})",
            node_name
                .map(|n| format!(" for node {n}"))
                .unwrap_or_default(),
            store.describe()
        );
    }
    store.delete(&key).await?;
    println!("BGP peer {address} removed ({key})");
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::{PeerPasswordArgs, pools_summary};
    use twill_types::cluster::ClusterConfig;

    #[test]
    fn pools_summary_counts_each_family() {
        let summary = |text: &str| pools_summary(&ClusterConfig::parse(text).unwrap());
        assert_eq!(summary(r#"{"Network":"10.244.0.0/16"}"#), "1 pool(s)");
        assert_eq!(
            summary(
                r#"{"Network":"10.244.0.0/16","EnableIPv6":true,"IPv6Network":"fd00::/56","Backend":{"Type":"vxlan"}}"#
            ),
            "1 pool(s) + 1 IPv6"
        );
        assert_eq!(
            summary(
                r#"{"EnableIPv4":false,"EnableIPv6":true,"IPv6Network":"fd00::/56","Backend":{"Type":"vxlan"}}"#
            ),
            "1 IPv6 pool(s), IPv6-only"
        );
    }

    #[test]
    fn peer_password_args() {
        let none = PeerPasswordArgs::default().to_auth().unwrap();
        assert!(!none.has_password() && !none.ttl_security);
        let path = std::env::temp_dir().join(format!("twill-cli-pw-{}", std::process::id()));
        std::fs::write(&path, "from-file\r\n").unwrap();
        let a = PeerPasswordArgs {
            file: Some(path.clone()),
            ttl_security: true,
            ..Default::default()
        }
        .to_auth()
        .unwrap();
        std::fs::remove_file(&path).unwrap();
        assert_eq!(a.password.as_ref().unwrap().expose(), "from-file");
        assert!(a.ttl_security);
        // Only a reference is kept for the nodes' own file.
        let r = PeerPasswordArgs {
            node_file: Some("/etc/twill/tor.key".into()),
            ..Default::default()
        }
        .to_auth()
        .unwrap();
        assert!(r.password.is_none() && r.password_file.is_some());
        // One source only; an unset variable is an error that names it.
        let both = PeerPasswordArgs {
            env: Some("X".into()),
            node_env: Some("Y".into()),
            ..Default::default()
        };
        assert!(both.to_auth().is_err());
        let unset = PeerPasswordArgs {
            env: Some("TWILL_TEST_SURELY_UNSET_PW".into()),
            ..Default::default()
        };
        let e = unset.to_auth().unwrap_err().to_string();
        assert!(e.contains("TWILL_TEST_SURELY_UNSET_PW"), "{e}");
    }
}
