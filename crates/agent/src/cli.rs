//! The agent-side CLI verbs: `twill cluster init|show`, `twill node leave`, `twill status`,
//! `twill bgp status|routes|peer add|peer del`.
//! Each returns the process exit code; errors carry a message for people.

use std::io::Read;
use std::path::Path;

use anyhow::{Context, bail};
use twill_types::cluster::{BgpPeer, ClusterConfig};
use twill_types::desired::PeerPath;
use twill_types::lease::{CONFIG_KEY, LEASES_PREFIX};
use twill_types::node::{self, AgentStatus, BgpStatus, NodeFile};

use crate::StoreArgs;
use crate::files;

/// `twill cluster init --store S -f FILE [--force]`: validates the config (Flannel net-conf.json,
/// TOML or YAML) and writes it to the store. An identical config is a no-op; a different one
/// needs `--force`, because nodes already hold subnets of the old one.
pub async fn cluster_init(store_at: &StoreArgs, file: &Path, force: bool) -> anyhow::Result<i32> {
    let text = if file == Path::new("-") {
        let mut s = String::new();
        std::io::stdin().read_to_string(&mut s)?;
        s
    } else {
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?
    };
    let config =
        ClusterConfig::parse(&text).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
    let store = store_at.connect().await?;
    let value = config.to_json();
    match store.get(CONFIG_KEY).await? {
        Some(kv) if kv.value == value.as_bytes() => {
            println!("cluster config unchanged in {}", store.describe());
            return Ok(0);
        }
        Some(_) if !force => bail!(
            "{} already holds a different cluster config; nodes may hold subnets of it. \
             Use --force to replace it",
            store.describe()
        ),
        _ => {}
    }
    store.put(CONFIG_KEY, value.as_bytes(), None).await?;
    println!(
        "cluster config written to {}: {} pool(s), backend {}",
        store.describe(),
        config.pools.len(),
        serde_json::to_value(config.backend.kind)?
            .as_str()
            .unwrap_or("?")
    );
    Ok(0)
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
    let config = ClusterConfig::from_json(&String::from_utf8_lossy(&kv.value))
        .map_err(|e| anyhow::anyhow!("{e}"))?;
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
    let (endpoints, _) = store.list(twill_policy::keys::ENDPOINT_PREFIX).await?;
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
            let nl = twill_dataplane::peers::AgentHandle::new()?;
            crate::run::clear_local_state(&nl, dir).await?;
            println!(
                "removed node {node}'s routes, VXLAN device and files in {}",
                dir.display()
            );
        }
    }
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
    println!(
        "node {}  subnet {}  backend {}  public {}",
        status.node,
        status.subnet,
        backend.as_str().unwrap_or("?"),
        status.public_ip
    );
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
            PeerPath::Skipped(why) => ("skipped", why.clone()),
        };
        if let Some(c) = &p.counters {
            note = format!(
                "tx {} pkts {} B, rx {} pkts {} B",
                c.tx_packets, c.tx_bytes, c.rx_packets, c.rx_bytes
            );
        }
        println!(
            "{:<16} {:<18} {:<16} {:<8} {:<10} {}{}",
            p.node,
            p.subnet.to_string(),
            p.public_ip.to_string(),
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
    if let Some(t) = &status.tunnel {
        let drops: Vec<String> = t
            .drops
            .iter()
            .filter(|(_, n)| **n > 0)
            .map(|(why, n)| format!("{why} {n}"))
            .collect();
        let path = match &t.kernel_path {
            Some(underlay) => format!("kernel fast path on {underlay} + userspace engine"),
            None => "userspace engine".to_string(),
        };
        println!(
            "\ntunnel {} ({path}): dropped {}",
            t.device,
            if drops.is_empty() {
                "nothing".to_string()
            } else {
                drops.join(", ")
            }
        );
    }
    Ok(0)
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

/// `twill bgp peer add ADDRESS --as N [--node NAME] --store S`: an external peer for every
/// node (or one), which the agents apply live.
pub async fn bgp_peer_add(
    store_at: &StoreArgs,
    address: std::net::IpAddr,
    asn: u32,
    node_name: Option<&str>,
) -> anyhow::Result<i32> {
    if let Some(n) = node_name
        && n.trim().is_empty()
    {
        bail!("--node must name a node");
    }
    if asn == 0 || asn == 23456 {
        bail!("--as {asn} is reserved (0, and 23456 = AS_TRANS): use the router's AS number");
    }
    let peer = BgpPeer {
        address,
        as_number: asn,
        node: node_name.map(str::to_string),
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
    store.put(&key, &value, None).await?;
    println!(
        "BGP peer {address} (AS {asn}) added for {} at {key}",
        node_name
            .map(|n| format!("node {n}"))
            .unwrap_or_else(|| "every node".into())
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
