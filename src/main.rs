//! The `twill` binary. Started with `CNI_COMMAND` set, it is the CNI plugin of
//! `"type": "twill"`; otherwise it is the command-line tool: the node agent, cluster and node
//! administration, status, and the lab.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};
use twill_agent::policy_cli as pcli;
use twill_agent::{DataDirArgs, JsonArgs, OptionalStoreArgs, StoreArgs};

#[derive(Parser)]
#[command(name = "twill", version, about = "Container networking for Linux")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum IpamCmd {
    /// Rebuild a network's address state (a corrupt or deleted state.json) from its previous
    /// generation and the addresses in use on this node, so none is handed out twice.
    Repair {
        /// The CNI network name (its `name`).
        network: String,
        #[command(flatten)]
        data_dir: DataDirArgs,
    },
}

#[derive(Subcommand)]
enum Cmd {
    /// Print the CNI spec versions this plugin speaks.
    CniVersions,
    /// Run the node agent: lease a subnet, publish it, program routes to every peer.
    Agent {
        #[command(flatten)]
        store: StoreArgs,
        /// This node's name, unique in the cluster (default: the host name).
        #[arg(long, env = "TWILL_NODE_NAME")]
        node_name: Option<String>,
        /// The address peers reach this node at (default: the address of --iface).
        #[arg(long, conflicts_with = "iface")]
        public_ip: Option<Ipv4Addr>,
        /// The IPv6 address peers reach this node at in a dual-stack cluster; it must be on the
        /// underlay interface (default: that interface's first global IPv6 address, if any).
        #[arg(long)]
        public_ipv6: Option<Ipv6Addr>,
        /// The underlay interface (default: the interface of the default route).
        #[arg(long)]
        iface: Option<String>,
        #[command(flatten)]
        data_dir: DataDirArgs,
        /// Seconds the node's lease lives without renewal (renewed every third of it).
        #[arg(long, default_value_t = 86400)]
        lease_ttl: u64,
        /// Seconds between full re-reads and repairs of the kernel state.
        #[arg(long, default_value_t = 60)]
        resync: u64,
        /// Carry ipip traffic in the userspace engine only, without the kernel fast path
        /// (tc BPF programs on the tunnel and underlay devices).
        #[arg(long, env = "TWILL_NO_KERNEL_PATH",
              value_parser = clap::builder::BoolishValueParser::new())]
        no_kernel_path: bool,
    },
    /// Pod address state of the CNI plugin.
    Ipam {
        #[command(subcommand)]
        command: IpamCmd,
    },
    /// Cluster configuration in the store.
    Cluster {
        #[command(subcommand)]
        command: ClusterCmd,
    },
    /// Node membership.
    Node {
        #[command(subcommand)]
        command: NodeCmd,
    },
    /// This node, its lease, the backend, and every peer with how it is reached; with --store,
    /// also the number of leases in the store.
    Status {
        #[command(flatten)]
        data_dir: DataDirArgs,
        #[command(flatten)]
        json: JsonArgs,
        #[command(flatten)]
        store: OptionalStoreArgs,
    },
    /// Network policy: Kubernetes NetworkPolicies and twill's ordered ClusterPolicies.
    Policy {
        #[command(subcommand)]
        command: PolicyCmd,
    },
    /// Namespaces and their labels (which policies' namespace selectors match).
    Namespace {
        #[command(subcommand)]
        command: NamespaceCmd,
    },
    /// Workload endpoints (pods) and their labels.
    Endpoint {
        #[command(subcommand)]
        command: EndpointCmd,
    },
    /// This node's BGP speaker (clusters whose config has a bgp section).
    Bgp {
        #[command(subcommand)]
        command: BgpCmd,
    },
    /// A virtual cluster of network namespaces on this machine, with real agents and etcd.
    Lab {
        #[command(subcommand)]
        command: twill_lab::LabCommand,
    },
}

#[derive(Subcommand)]
enum ClusterCmd {
    /// Write the cluster config (Flannel net-conf.json, or twill's TOML/YAML pools).
    Init {
        #[command(flatten)]
        store: StoreArgs,
        /// The config file (`-` for stdin).
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
        /// Replace a different existing config.
        #[arg(long)]
        force: bool,
        /// Accept pools that overlap this host's own networks (its addresses' subnets and
        /// routes); reserved ranges are refused regardless.
        #[arg(long)]
        allow_overlap: bool,
    },
    /// Print the cluster config as twill normalized it.
    Show {
        #[command(flatten)]
        store: StoreArgs,
    },
}

// Parsed once per process: the size of a variant costs nothing worth a box.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum BgpCmd {
    /// The BGP sessions of this node: peer, type, AS, state, uptime, prefixes (like
    /// `calicoctl node status`).
    Status {
        #[command(flatten)]
        data_dir: DataDirArgs,
        #[command(flatten)]
        json: JsonArgs,
    },
    /// The Loc-RIB of this node: prefix, next hop, AS path, from peer, best, stale.
    Routes {
        #[command(flatten)]
        data_dir: DataDirArgs,
        #[command(flatten)]
        json: JsonArgs,
    },
    /// External BGP peers kept in the store; agents apply changes live.
    Peer {
        #[command(subcommand)]
        command: BgpPeerCmd,
    },
}

#[derive(Subcommand)]
enum BgpPeerCmd {
    /// Peer with a router: every node, or only --node.
    Add {
        /// The router's address.
        address: std::net::IpAddr,
        /// The router's AS number.
        #[arg(long = "as")]
        asn: u32,
        /// Only this node peers with the router (default: every node).
        #[arg(long)]
        node: Option<String>,
        /// TCP-MD5 (RFC 2385): read the password from FILE now and keep it in the peer record
        /// (never printed; a trailing newline is dropped).
        #[arg(long, value_name = "FILE")]
        password_file: Option<PathBuf>,
        /// TCP-MD5: read the password from this environment variable now, keep it in the
        /// peer record.
        #[arg(long, value_name = "VAR")]
        password_env: Option<String>,
        /// TCP-MD5: keep only this path; each agent reads the password from it on its node.
        #[arg(long, value_name = "PATH")]
        password_file_on_nodes: Option<PathBuf>,
        /// TCP-MD5: keep only this name; each agent reads the password from its environment.
        #[arg(long, value_name = "VAR")]
        password_env_on_nodes: Option<String>,
        /// GTSM (RFC 5082) for a directly connected router: TTL 255 out, only 255 accepted
        /// (BIRD's `ttl security on`).
        #[arg(long)]
        ttl_security: bool,
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Remove a peer added with `peer add` (same --node).
    Del {
        /// The router's address.
        address: std::net::IpAddr,
        /// The node the peer was added for (as given to `peer add`).
        #[arg(long)]
        node: Option<String>,
        #[command(flatten)]
        store: StoreArgs,
    },
}

#[derive(Subcommand)]
enum NodeCmd {
    /// Release a node's subnet lease so every peer drops its routes. Given the node's
    /// --data-dir (on that node, agent stopped), also remove its local twill state.
    Leave {
        #[command(flatten)]
        store: StoreArgs,
        /// The node that leaves (default: the host name).
        #[arg(long, env = "TWILL_NODE_NAME")]
        node_name: Option<String>,
        /// The node's data directory: also remove its local twill state (on that node, with
        /// its agent stopped). Unlike other commands', no default: without it only the store
        /// is changed.
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
    /// Replace this node's WireGuard private key (<data-dir>/wireguard.key, 0600) with a new
    /// one. The running agent switches to it within a second and publishes the new public key;
    /// peers pick it up from the store. Prints the public keys, never the private one.
    RotateKey {
        #[command(flatten)]
        data_dir: DataDirArgs,
        #[command(flatten)]
        json: JsonArgs,
    },
}

#[derive(Subcommand)]
enum PolicyCmd {
    /// Store every policy of a YAML file (several documents allowed), all or none.
    Apply {
        #[command(flatten)]
        store: StoreArgs,
        /// The policy file (`-` for stdin).
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
    },
    /// The stored policies: cluster policies in evaluation order, then NetworkPolicies (with
    /// --json, the policy documents).
    List {
        #[command(flatten)]
        store: StoreArgs,
        #[command(flatten)]
        json: JsonArgs,
    },
    /// Delete NetworkPolicies by name (in -n NAMESPACE), ClusterPolicies (--cluster), or
    /// what a file defines (-f); all or none.
    Delete {
        #[command(flatten)]
        store: StoreArgs,
        /// The NetworkPolicies' namespace.
        #[arg(short = 'n', long, default_value = "default", conflicts_with_all = ["cluster", "file"])]
        namespace: String,
        /// The names are ClusterPolicies.
        #[arg(long, conflicts_with = "file")]
        cluster: bool,
        /// Delete the policies this file defines (`-` for stdin).
        #[arg(short = 'f', long = "file", conflicts_with = "names")]
        file: Option<PathBuf>,
        /// Skip policies that are not there instead of failing.
        #[arg(long)]
        ignore_not_found: bool,
        /// Names of the policies.
        #[arg(value_name = "NAME", required_unless_present = "file")]
        names: Vec<String>,
    },
    /// Whether a connection is allowed, and which rule of which policy decides (with --json,
    /// the decision).
    Explain {
        #[command(flatten)]
        store: StoreArgs,
        /// `NAMESPACE/POD` or an IP address.
        from: String,
        /// `NAMESPACE/POD` or an IP address.
        to: String,
        /// `PORT[/PROTO]`: PROTO tcp (default), udp, sctp; or `icmp`.
        #[arg(value_name = "PORT[/PROTO]")]
        port: String,
        #[command(flatten)]
        json: JsonArgs,
    },
}

#[derive(Subcommand)]
enum NamespaceCmd {
    /// Set (KEY=VALUE) or remove (KEY-) labels of a namespace.
    Label {
        #[command(flatten)]
        store: StoreArgs,
        /// The namespace.
        name: String,
        /// `KEY=VALUE` sets a label, `KEY-` removes it.
        #[arg(value_name = "KEY=VALUE|KEY-", required = true)]
        labels: Vec<String>,
    },
    /// Namespaces with labels, endpoints or NetworkPolicies.
    List {
        #[command(flatten)]
        store: StoreArgs,
        #[command(flatten)]
        json: JsonArgs,
    },
}

#[derive(Subcommand)]
enum EndpointCmd {
    /// Set (KEY=VALUE) or remove (KEY-) labels of an endpoint, over the runtime's labels.
    Label {
        #[command(flatten)]
        store: StoreArgs,
        /// `NAMESPACE/NAME`.
        #[arg(value_name = "NAMESPACE/NAME")]
        endpoint: String,
        /// `KEY=VALUE` sets a label, `KEY-` removes it.
        #[arg(value_name = "KEY=VALUE|KEY-", required = true)]
        labels: Vec<String>,
    },
    /// Endpoints with their node, addresses and effective labels.
    List {
        #[command(flatten)]
        store: StoreArgs,
        #[command(flatten)]
        json: JsonArgs,
    },
}

fn main() {
    if std::env::var_os("CNI_COMMAND").is_some() {
        std::process::exit(twill_cni::main_with_stdin());
    }
    let cli = Cli::parse();
    let code = match run(cli.command) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("twill: {e:#}");
            1
        }
    };
    std::process::exit(code);
}

fn run(cmd: Cmd) -> anyhow::Result<i32> {
    match cmd {
        Cmd::CniVersions => {
            println!("{}", twill_cni::spec::SUPPORTED_VERSIONS.join(" "));
            Ok(0)
        }
        Cmd::Ipam {
            command: IpamCmd::Repair { network, data_dir },
        } => {
            print!(
                "{}",
                twill_cni::repair::repair(&network, &data_dir.data_dir)
                    .map_err(anyhow::Error::msg)?
            );
            Ok(0)
        }
        Cmd::Lab { command } => {
            let exe = std::env::current_exe()?;
            twill_lab::run(command, &exe)
        }
        Cmd::Agent {
            store,
            node_name,
            public_ip,
            public_ipv6,
            iface,
            data_dir,
            lease_ttl,
            resync,
            no_kernel_path,
        } => {
            init_logging();
            let opts = twill_agent::AgentOptions {
                etcd: store.etcd.auth()?,
                store: store.url,
                node_name: node_name_or_host(node_name)?,
                public_ip,
                public_ipv6,
                iface,
                data_dir: data_dir.data_dir,
                lease_ttl: Duration::from_secs(lease_ttl.max(3)),
                resync: Duration::from_secs(resync.max(1)),
                kernel_path: !no_kernel_path,
            };
            runtime()?.block_on(twill_agent::run(opts))?;
            Ok(0)
        }
        Cmd::Cluster { command } => runtime()?.block_on(async {
            match command {
                ClusterCmd::Init {
                    store,
                    file,
                    force,
                    allow_overlap,
                } => twill_agent::cli::cluster_init(&store, &file, force, allow_overlap).await,
                ClusterCmd::Show { store } => twill_agent::cli::cluster_show(&store).await,
            }
        }),
        Cmd::Node {
            command:
                NodeCmd::Leave {
                    store,
                    node_name,
                    data_dir,
                },
        } => {
            let node = node_name_or_host(node_name)?;
            runtime()?.block_on(twill_agent::cli::node_leave(
                &store,
                &node,
                data_dir.as_deref(),
            ))
        }
        Cmd::Node {
            command: NodeCmd::RotateKey { data_dir, json },
        } => twill_agent::cli::node_rotate_key(&data_dir.data_dir, json.json),
        Cmd::Policy { command } => runtime()?.block_on(policy(command)),
        Cmd::Namespace { command } => runtime()?.block_on(async {
            match command {
                NamespaceCmd::Label {
                    store,
                    name,
                    labels,
                } => pcli::namespace_label(&store, &name, &labels).await,
                NamespaceCmd::List { store, json } => pcli::namespace_list(&store, json.json).await,
            }
        }),
        Cmd::Endpoint { command } => runtime()?.block_on(async {
            match command {
                EndpointCmd::Label {
                    store,
                    endpoint,
                    labels,
                } => pcli::endpoint_label(&store, &endpoint, &labels).await,
                EndpointCmd::List { store, json } => pcli::endpoint_list(&store, json.json).await,
            }
        }),
        Cmd::Bgp { command } => match command {
            BgpCmd::Status { data_dir, json } => {
                twill_agent::cli::bgp_status(&data_dir.data_dir, json.json)
            }
            BgpCmd::Routes { data_dir, json } => {
                twill_agent::cli::bgp_routes(&data_dir.data_dir, json.json)
            }
            BgpCmd::Peer { command } => runtime()?.block_on(async {
                match command {
                    BgpPeerCmd::Add {
                        address,
                        asn,
                        node,
                        password_file,
                        password_env,
                        password_file_on_nodes,
                        password_env_on_nodes,
                        ttl_security,
                        store,
                    } => {
                        let protect = twill_agent::cli::PeerPasswordArgs {
                            file: password_file,
                            env: password_env,
                            node_file: password_file_on_nodes,
                            node_env: password_env_on_nodes,
                            ttl_security,
                        };
                        twill_agent::cli::bgp_peer_add(
                            &store,
                            address,
                            asn,
                            node.as_deref(),
                            &protect,
                        )
                        .await
                    }
                    BgpPeerCmd::Del {
                        address,
                        node,
                        store,
                    } => twill_agent::cli::bgp_peer_del(&store, address, node.as_deref()).await,
                }
            }),
        },
        Cmd::Status {
            data_dir,
            json,
            store,
        } => {
            let store = store.into_store();
            runtime()?.block_on(twill_agent::cli::status(
                &data_dir.data_dir,
                json.json,
                store.as_ref(),
            ))
        }
    }
}

async fn policy(command: PolicyCmd) -> anyhow::Result<i32> {
    match command {
        PolicyCmd::Apply { store, file } => pcli::policy_apply(&store, &file).await,
        PolicyCmd::List { store, json } => pcli::policy_list(&store, json.json).await,
        PolicyCmd::Delete {
            store,
            namespace,
            cluster,
            file,
            ignore_not_found,
            names,
        } => {
            let target = match (file, cluster) {
                (Some(file), _) => pcli::DeleteTarget::File(file),
                (None, true) => pcli::DeleteTarget::Cluster(names),
                (None, false) => pcli::DeleteTarget::Network { namespace, names },
            };
            pcli::policy_delete(&store, &target, ignore_not_found).await
        }
        PolicyCmd::Explain {
            store,
            from,
            to,
            port,
            json,
        } => pcli::policy_explain(&store, &from, &to, &port, json.json).await,
    }
}

/// One thread is plenty: the agent waits on the store and netlink, it does not compute much.
fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?)
}

fn node_name_or_host(name: Option<String>) -> anyhow::Result<String> {
    match name {
        Some(n) if !n.is_empty() => Ok(n),
        _ => {
            let host = std::fs::read_to_string("/proc/sys/kernel/hostname")?;
            Ok(host.trim().to_string())
        }
    }
}

fn init_logging() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_env("TWILL_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
}

#[cfg(test)]
mod tests {
    use super::Cli;
    use clap::CommandFactory;

    /// Every subcommand's flags are well formed (unique names and ids, valid `requires`):
    /// clap checks a subcommand only when it is used, so a clash between a flattened group and
    /// a subcommand's own flag would otherwise show only at run time.
    #[test]
    fn every_command_line_is_well_formed() {
        Cli::command().debug_assert();
    }

    /// The shared flags keep their names and defaults in every command that takes them.
    #[test]
    fn shared_flags_keep_names_and_defaults() {
        use super::{BgpCmd, Cmd};
        use clap::Parser;
        let parse = |args: &[&str]| {
            Cli::try_parse_from(std::iter::once("twill").chain(args.iter().copied()))
                .map(|c| c.command)
        };
        let store_from_env = std::env::var_os("TWILL_STORE").is_some();
        let Ok(Cmd::Status {
            data_dir,
            json,
            store,
        }) = parse(&["status"])
        else {
            panic!("status")
        };
        assert_eq!(data_dir.data_dir, std::path::Path::new("/var/lib/twill"));
        assert!(!json.json);
        assert_eq!(store.into_store().is_some(), store_from_env);
        let Ok(Cmd::Status { json, store, .. }) =
            parse(&["status", "--json", "--store", "embedded"])
        else {
            panic!("status")
        };
        assert!(json.json);
        assert_eq!(store.into_store().unwrap().url, "embedded");
        let Ok(Cmd::Bgp {
            command: BgpCmd::Routes { data_dir, json },
        }) = parse(&["bgp", "routes", "--data-dir", "/d", "--json"])
        else {
            panic!("bgp routes")
        };
        assert_eq!(data_dir.data_dir, std::path::Path::new("/d"));
        assert!(json.json);
        assert_eq!(parse(&["policy", "list", "--json"]).is_ok(), store_from_env);
        assert!(parse(&["policy", "list", "--json", "--store", "embedded"]).is_ok());
        assert!(parse(&["agent", "--store", "embedded", "--data-dir", "/x"]).is_ok());
    }
}
