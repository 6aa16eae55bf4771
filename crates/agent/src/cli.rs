//! The agent-side CLI verbs: `twill cluster init|show`, `twill node leave`, `twill status`.
//! Each returns the process exit code; errors carry a message for people.

use std::io::Read;
use std::path::Path;

use anyhow::{Context, bail};
use twill_store::Store;
use twill_types::cluster::ClusterConfig;
use twill_types::desired::PeerPath;
use twill_types::lease::{CONFIG_KEY, LEASES_PREFIX};
use twill_types::node::{self, AgentStatus, NodeFile};

use crate::files;

/// `twill cluster init --store S -f FILE [--force]`: validates the config (Flannel net-conf.json,
/// TOML or YAML) and writes it to the store. An identical config is a no-op; a different one
/// needs `--force`, because nodes already hold subnets of the old one.
pub async fn cluster_init(store_url: &str, file: &Path, force: bool) -> anyhow::Result<i32> {
    let text = if file == Path::new("-") {
        let mut s = String::new();
        std::io::stdin().read_to_string(&mut s)?;
        s
    } else {
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?
    };
    let config =
        ClusterConfig::parse(&text).map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
    let store = Store::connect(store_url).await?;
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
pub async fn cluster_show(store_url: &str) -> anyhow::Result<i32> {
    let store = Store::connect(store_url).await?;
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
    store_url: &str,
    node: &str,
    data_dir: Option<&Path>,
) -> anyhow::Result<i32> {
    let store = Store::connect(store_url).await?;
    let released = crate::lease::release_node(&store, node).await?;
    if released.is_empty() {
        println!("node {node} holds no lease in {}", store.describe());
    }
    for subnet in &released {
        println!("released {subnet} of node {node}");
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
pub async fn status(data_dir: &Path, json: bool, store_url: Option<&str>) -> anyhow::Result<i32> {
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
    let leases = match store_url {
        Some(url) => {
            let store = Store::connect(url).await?;
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
