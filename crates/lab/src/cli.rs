//! `twill lab ...`: the subcommands and what they print. Everything here is presentation over
//! [`Lab`]; the binary only parses the command line and passes its own path.

use std::path::{Path, PathBuf};
use std::process::ExitStatus;

use anyhow::{Context, Result};
use clap::Subcommand;
use serde_json::{Value, json};

use crate::lab::{Lab, down};
use crate::matrix::Matrix;
use crate::plan::{self, Backend, DEFAULT_NAME, EncryptMode, IpFamily, PodMode, Underlay};
use crate::spec::LabSpec;
use crate::status::AgentStatus;
use crate::sys;

/// The `twill lab` subcommands.
#[derive(Debug, Subcommand)]
pub enum LabCommand {
    /// Build a virtual cluster on this machine: an underlay, hosts running the agent, and pods
    /// attached by the CNI plugin, all in network namespaces; wait until it has converged.
    Up(UpArgs),
    /// Show the hosts, their agents, subnets and peer paths, and the pods.
    Status {
        #[command(flatten)]
        lab: LabName,
        #[command(flatten)]
        output: Output,
    },
    /// Run a command in a host (h1), a pod (h1-p2) or the underlay namespace (underlay).
    Exec {
        #[command(flatten)]
        lab: LabName,
        /// h<i>, h<i>-p<j> or underlay.
        target: String,
        /// The command and its arguments (after `--`).
        #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
        cmd: Vec<String>,
    },
    /// Ping from every pod to every other pod and print the matrix (and `ping -6`'s in a
    /// dual-stack lab); exits 1 when a pod cannot reach one it should.
    Ping {
        #[command(flatten)]
        lab: LabName,
        #[command(flatten)]
        output: Output,
    },
    /// Stop the lab's agents and etcd and remove all its namespaces and files.
    Down {
        #[command(flatten)]
        lab: LabName,
    },
}

/// `--name`, which every subcommand takes.
#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
pub struct LabName {
    /// The lab's name (as given to `up`): several labs with different names can run side by
    /// side.
    #[arg(long, default_value = DEFAULT_NAME)]
    pub name: String,
}

/// `--json`, for the subcommands that print a result.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, clap::Args)]
pub struct Output {
    /// Machine-readable output: JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Options of `twill lab up`.
#[derive(Debug, Clone, clap::Args)]
pub struct UpArgs {
    /// Number of hosts.
    #[arg(long)]
    pub nodes: u32,
    /// How hosts reach each other's pods.
    #[arg(long, value_enum)]
    pub backend: Backend,
    /// Route directly to hosts on the same underlay subnet, encapsulate to the others.
    #[arg(long)]
    pub direct_routing: bool,
    /// Encrypt node-to-node pod traffic with WireGuard on top of the backend (any but
    /// wireguard, which always encrypts): twill's `wireguard: {enabled: true}`.
    #[arg(long)]
    pub encrypt: bool,
    /// Which traffic --encrypt covers: always (all of it) or cross-subnet (only to hosts on
    /// another underlay subnet).
    #[arg(long, value_enum, requires = "encrypt")]
    pub encrypt_mode: Option<EncryptMode>,
    /// l2: one bridge, one subnet. routed: two subnets behind a router (odd and even hosts).
    #[arg(long, value_enum, default_value_t = Underlay::L2)]
    pub underlay: Underlay,
    /// ipv4: IPv4 only. dual: every underlay link and every pod gets an IPv6 address too
    /// (every backend, --encrypt too). ipv6: an IPv6-only cluster: underlay links and pods
    /// have IPv6 addresses alone, the cluster only an IPv6 pool.
    #[arg(long, value_enum, default_value_t = IpFamily::Ipv4)]
    pub ip_family: IpFamily,
    /// How the CNI plugin attaches pods: bridge (Flannel's layout) or routed (Calico's).
    #[arg(long, value_enum, default_value_t = PodMode::Bridge)]
    pub pod_mode: PodMode,
    /// Pods attached on every host.
    #[arg(long, default_value_t = 2)]
    pub pods_per_node: u32,
    #[command(flatten)]
    pub lab: LabName,
    /// The etcd binary the lab's store runs.
    #[arg(long, default_value = "/usr/bin/etcd")]
    pub etcd_bin: PathBuf,
    /// Run etcd on plain HTTP without client certificates (by default it speaks only TLS and
    /// asks every client for a certificate of the lab's own CA).
    #[arg(long)]
    pub plain_etcd: bool,
    /// A YAML file with the body of the cluster config's `bgp` section (asNumber, peers,
    /// ...): the cluster config is then twill's YAML form (required by --backend bgp).
    #[arg(long)]
    pub bgp: Option<PathBuf>,
    /// A file of BIRD 2 protocols to run as a router in the underlay namespace (a
    /// top-of-rack on the routed underlay, a route reflector on l2).
    #[arg(long)]
    pub bird_router: Option<PathBuf>,
}

impl UpArgs {
    pub fn spec(&self) -> LabSpec {
        let spec = LabSpec::new(&self.lab.name)
            .nodes(self.nodes)
            .backend(self.backend)
            .direct_routing(self.direct_routing)
            .underlay(self.underlay)
            .ip_family(self.ip_family)
            .pod_mode(self.pod_mode)
            .pods_per_node(self.pods_per_node)
            .etcd_bin(&self.etcd_bin)
            .etcd_tls(!self.plain_etcd);
        if self.encrypt {
            spec.encrypt(self.encrypt_mode.unwrap_or_default())
        } else {
            spec
        }
    }

    /// [`UpArgs::spec`] with the contents of `--bgp` and `--bird-router`.
    pub fn spec_with_files(&self) -> Result<LabSpec> {
        let read = |p: &PathBuf| {
            std::fs::read_to_string(p).with_context(|| format!("read {}", p.display()))
        };
        let mut spec = self.spec();
        if let Some(p) = &self.bgp {
            spec = spec.bgp(read(p)?);
        }
        if let Some(p) = &self.bird_router {
            spec = spec.bird_router(read(p)?);
        }
        Ok(spec)
    }
}

/// Runs one `twill lab` subcommand; returns the process exit code.
pub fn run(cmd: LabCommand, twill_exe: &Path) -> Result<i32> {
    match cmd {
        LabCommand::Up(args) => {
            let lab = Lab::up(&args.spec_with_files()?.verbose(true), twill_exe)?;
            print!("{}", describe(&lab, &host_statuses(&lab), false));
            let n = &lab.state().name;
            println!("{}", store_hint(&lab));
            println!(
                "next: twill lab ping --name {n} | twill lab exec --name {n} h1-p1 -- ip addr | twill lab down --name {n}"
            );
            Ok(0)
        }
        LabCommand::Status { lab, output } => {
            let lab = Lab::load(&lab.name)?;
            let statuses = host_statuses(&lab);
            if output.json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&status_json(&lab, &statuses))?
                );
            } else {
                print!("{}", describe(&lab, &statuses, true));
            }
            Ok(0)
        }
        LabCommand::Exec { lab, target, cmd } => {
            let lab = Lab::load(&lab.name)?;
            let ns = lab.target_ns(&target)?;
            let status = sys::ns_command(&ns).args(&cmd).status()?;
            Ok(exit_code(status))
        }
        LabCommand::Ping { lab, output } => {
            let lab = Lab::load(&lab.name)?;
            let m = lab.ping_matrix();
            let m6 = lab.ping6_matrix();
            if output.json {
                let json = Matrix::json_of(&m, m6.as_ref());
                println!("{}", serde_json::to_string_pretty(&json)?);
            } else {
                // An IPv6-only lab's IPv4 matrix is empty: only `ping -6` is shown.
                if lab.state().ip_family.has_ipv4() {
                    print!("{}", m.render());
                }
                if let Some(m6) = &m6 {
                    print!("{}", m6.render());
                }
            }
            let ok = m.all_ok() && m6.as_ref().is_none_or(Matrix::all_ok);
            Ok(if ok { 0 } else { 1 })
        }
        LabCommand::Down {
            lab: LabName { name },
        } => {
            if down(&name)? {
                println!("removed lab {name}");
            } else {
                println!("no lab named {name}");
            }
            Ok(0)
        }
    }
}

/// The shell's convention: a command killed by signal N exits 128 + N.
fn exit_code(status: ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    status
        .code()
        .or_else(|| status.signal().map(|s| 128 + s))
        .unwrap_or(1)
}

/// Each host's `twill status --json`, raw (so `--json` passes through fields the lab does not
/// know), or why it could not be read.
fn host_statuses(lab: &Lab) -> Vec<Result<Value, String>> {
    lab.hosts()
        .iter()
        .map(|h| lab.host_status_json(h.index).map_err(|e| format!("{e:#}")))
        .collect()
}

/// How to reach the lab's store from a host namespace: the flags, and the env file.
fn store_hint(lab: &Lab) -> String {
    let n = &lab.state().name;
    format!(
        "store: twill lab exec --name {n} h1 -- twill policy list {}\n   or: twill lab exec --name {n} h1 -- sh -c '. {}; twill policy list; etcdctl get --prefix /twill --keys-only'",
        lab.store_args().join(" "),
        lab.store_env_file().display()
    )
}

/// The human form of `up`'s summary and of `status` (which adds agent liveness and peers).
/// A dual-stack lab says so after the underlay, and adds each host's IPv6 underlay address
/// and subnet and each pod's IPv6 address; an IPv4 lab's text is what it always was.
fn describe(lab: &Lab, statuses: &[Result<Value, String>], full: bool) -> String {
    let st = lab.state();
    let dual = match (st.ip_family.has_ipv4(), st.ip_family.has_ipv6()) {
        (true, true) => format!(" ({}, IPv6 pods in {})", st.ip_family, plan::POD_NETWORK6),
        (false, _) => format!(" (IPv6-only, pods in {})", plan::POD_NETWORK6),
        (true, false) => String::new(),
    };
    let mut out = format!(
        "lab {}: {} hosts, backend {} (DirectRouting {}){}, underlay {}{dual}, {} pods, store {}",
        st.name,
        st.hosts.len(),
        st.backend,
        st.direct_routing,
        plan::encryption_note(st.encrypt),
        st.underlay,
        st.pod_mode.as_str(),
        st.store
    );
    if let Some(e) = &st.etcd {
        match e.pid {
            Some(pid) if lab.etcd_alive() => out += &format!(" (etcd pid {pid} alive)"),
            Some(pid) => out += &format!(" (etcd pid {pid} DEAD)"),
            None => out += " (etcd not started)",
        }
        out += if e.pki.is_some() {
            ", etcd over TLS with client certificates"
        } else {
            ", etcd on plain HTTP"
        };
    }
    out.push('\n');
    for (h, status) in st.hosts.iter().zip(statuses) {
        let parsed = status
            .as_ref()
            .ok()
            .and_then(|v| serde_json::from_value::<AgentStatus>(v.clone()).ok());
        // An IPv6-only lab's hosts have only their IPv6 subnet and underlay address.
        let subnet = parsed
            .as_ref()
            .and_then(|s| match st.ip_family.has_ipv4() {
                true => s.subnet.clone(),
                false => s.subnet6.clone(),
            })
            .unwrap_or_else(|| "?".into());
        out += &format!(
            "{:<4} {:<15} subnet {:<15}",
            h.node,
            h.underlay_ip().to_string(),
            subnet
        );
        if full {
            let agent = match h.agent_pid {
                Some(pid) if lab.agent_alive(h.index) => format!("agent {pid} alive"),
                Some(pid) => format!("agent {pid} DEAD"),
                None => "no agent".to_string(),
            };
            let sync = match &parsed {
                Some(s) if s.in_sync => "in sync",
                Some(_) => "NOT in sync",
                None => "",
            };
            out += &format!("  {agent} {sync}");
        }
        out.push('\n');
        if st.ip_family == IpFamily::Dual {
            let subnet6 = parsed.as_ref().and_then(|s| s.subnet6.as_deref());
            let ip6 = h
                .ip6
                .map_or("none (IPv4 underlay)".into(), |ip| ip.to_string());
            out += &format!("     ipv6 {ip6} subnet6 {}\n", subnet6.unwrap_or("?"));
        }
        match (status, &parsed) {
            (Err(e), _) if full => out += &format!("     status: {e}\n"),
            (Ok(_), None) if full => out += "     status: not in the agent's format\n",
            _ => {}
        }
        match &parsed {
            Some(s) if full && !s.peers.is_empty() => {
                let peers: Vec<String> = s
                    .peers
                    .iter()
                    .map(|p| {
                        let mark = match &p.error {
                            _ if p.programmed || p.path.skipped() => String::new(),
                            Some(e) => format!(" (NOT programmed: {e})"),
                            None => " (NOT programmed)".to_string(),
                        };
                        // A dual-stack peer's IPv6 path, when it is not the IPv4 one.
                        let v6 = match &p.path6 {
                            Some(p6) if *p6 != p.path => format!(" (ipv6 {p6})"),
                            _ => String::new(),
                        };
                        match &p.wireguard {
                            Some(wg) => format!("{} {}{v6}{mark} [{wg}]", p.node, p.path),
                            None => format!("{} {}{v6}{mark}", p.node, p.path),
                        }
                    })
                    .collect();
                out += &format!("     peers: {}\n", peers.join(", "));
            }
            Some(s) if !full => out += &skipped_lines(s),
            _ => {}
        }
        let pods: Vec<String> = lab
            .pods()
            .iter()
            .filter(|p| p.host == h.index)
            .map(|p| match (p.ip, p.ip6) {
                (Some(ip), Some(ip6)) => format!("{} {ip} {ip6}", p.name),
                _ => format!("{} {}", p.name, p.any_ip()),
            })
            .collect();
        if !pods.is_empty() {
            out += &format!("     pods: {}\n", pods.join(", "));
        }
    }
    out
}

/// The summary's view of the peers (status lists them all): skipped ones, grouped by reason,
/// since on a routed underlay every host skips half the others.
fn skipped_lines(s: &AgentStatus) -> String {
    let mut by_reason: Vec<(&str, Vec<&str>)> = Vec::new();
    for p in s.skipped() {
        let reason = p.path.reason.as_deref().unwrap_or("no reason given");
        match by_reason.iter_mut().find(|(r, _)| *r == reason) {
            Some((_, nodes)) => nodes.push(&p.node),
            None => by_reason.push((reason, vec![&p.node])),
        }
    }
    let mut out: String = by_reason
        .iter()
        .map(|(reason, nodes)| format!("     skipped: {} ({reason})\n", nodes.join(", ")))
        .collect();
    for p in s.skipped6() {
        let reason = p.path6.as_ref().and_then(|p| p.reason.as_deref());
        out += &format!(
            "     skipped ipv6: {} ({})\n",
            p.node,
            reason.unwrap_or("no reason given")
        );
    }
    out
}

/// `twill lab status --json`.
fn status_json(lab: &Lab, statuses: &[Result<Value, String>]) -> Value {
    let st = lab.state();
    let hosts: Vec<Value> = st
        .hosts
        .iter()
        .zip(statuses)
        .map(|(h, s)| {
            let mut host = json!({
                "node": h.node,
                "netns": h.netns,
                "ip": h.ip,
                "bridge": h.bridge,
                "dataDir": h.data_dir,
                "agentPid": h.agent_pid,
                "agentAlive": lab.agent_alive(h.index),
                "status": s.as_ref().ok(),
                "statusError": s.as_ref().err(),
            });
            if let Some(ip6) = h.ip6 {
                host["ip6"] = json!(ip6);
            }
            host
        })
        .collect();
    let mut out = json!({
        "name": st.name,
        "backend": st.backend,
        "directRouting": st.direct_routing,
        "underlay": st.underlay,
        "podMode": st.pod_mode,
        "store": st.store,
        "etcd": st.etcd.as_ref().map(|e| json!({
            "pid": e.pid,
            "alive": lab.etcd_alive(),
            "tls": e.pki.is_some(),
            "pki": e.pki,
        })),
        "storeArgs": lab.store_args(),
        "storeEnv": lab.store_env_file(),
        "hosts": hosts,
        "pods": st.pods,
    });
    // Only encrypted labs have the key, so a clear lab's JSON stays what it was.
    if let Some(mode) = st.encrypt {
        out["encrypt"] = json!(mode);
    }
    // Likewise only dual-stack and IPv6-only labs have `ipFamily`.
    if !st.ip_family.is_ipv4() {
        out["ipFamily"] = json!(st.ip_family);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser, Debug)]
    struct Cli {
        #[command(subcommand)]
        lab: LabCommand,
    }

    fn parse(args: &[&str]) -> Result<LabCommand, clap::Error> {
        Cli::try_parse_from(std::iter::once("lab").chain(args.iter().copied())).map(|c| c.lab)
    }

    /// The spec `up` with the whitespace-separated `args` asks for.
    fn up_spec(args: &str) -> LabSpec {
        let argv: Vec<&str> = std::iter::once("up")
            .chain(args.split_whitespace())
            .collect();
        match parse(&argv) {
            Ok(LabCommand::Up(a)) => a.spec(),
            other => panic!("{args}: not up: {other:?}"),
        }
    }

    #[test]
    fn up_flags() {
        assert_eq!(
            up_spec("--nodes 5 --backend host-gw"),
            LabSpec::new("lab").nodes(5).backend(Backend::HostGw)
        );
        assert_eq!(
            up_spec(
                "--nodes 3 --backend vxlan --direct-routing --underlay routed --pods-per-node 1 \
                 --name t1 --etcd-bin /e"
            ),
            LabSpec::new("t1")
                .nodes(3)
                .direct_routing(true)
                .underlay(Underlay::Routed)
                .pods_per_node(1)
                .etcd_bin("/e")
        );
        assert!(parse(&["up", "--nodes", "2", "--backend", "geneve"]).is_err());
        assert_eq!(
            up_spec("--nodes 2 --backend wireguard"),
            LabSpec::new("lab").backend(Backend::Wireguard)
        );
        assert_eq!(
            up_spec("--nodes 2 --backend host-gw --encrypt").encrypt,
            Some(EncryptMode::Always)
        );
        assert_eq!(
            up_spec("--nodes 3 --backend vxlan --encrypt --encrypt-mode cross-subnet").encrypt,
            Some(EncryptMode::CrossSubnet)
        );
        // A mode alone would silently do nothing.
        let mode_alone = "up --nodes 2 --backend vxlan --encrypt-mode always";
        assert!(parse(&mode_alone.split_whitespace().collect::<Vec<_>>()).is_err());
        assert!(parse(&["up", "--backend", "udp"]).is_err());
        assert_eq!(
            up_spec("--nodes 2 --backend vxlan").ip_family,
            IpFamily::Ipv4
        );
        assert_eq!(
            up_spec("--nodes 2 --backend host-gw --ip-family dual"),
            LabSpec::new("lab")
                .backend(Backend::HostGw)
                .ip_family(IpFamily::Dual)
        );
        assert_eq!(
            up_spec("--nodes 2 --backend vxlan --ip-family ipv6").ip_family,
            IpFamily::Ipv6
        );
        assert!(
            parse(&[
                "up",
                "--nodes",
                "2",
                "--backend",
                "vxlan",
                "--ip-family",
                "v6"
            ])
            .is_err()
        );
    }

    #[test]
    fn exec_takes_the_rest() {
        let LabCommand::Exec { lab, target, cmd } = parse(&[
            "exec", "--name", "x", "h1-p2", "--", "ping", "-c", "1", "10.0.0.1",
        ])
        .unwrap() else {
            panic!("not exec")
        };
        assert_eq!((lab.name.as_str(), target.as_str()), ("x", "h1-p2"));
        assert_eq!(cmd, ["ping", "-c", "1", "10.0.0.1"]);
        let LabCommand::Exec { cmd, .. } = parse(&["exec", "underlay", "ip", "-br", "a"]).unwrap()
        else {
            panic!("not exec")
        };
        assert_eq!(cmd, ["ip", "-br", "a"]);
        assert!(parse(&["exec", "h1"]).is_err());
    }

    #[test]
    fn other_subcommands() {
        assert!(matches!(
            parse(&["status", "--json"]).unwrap(),
            LabCommand::Status { output: Output { json: true }, ref lab } if lab.name == "lab"
        ));
        assert!(matches!(
            parse(&["ping", "--name", "q"]).unwrap(),
            LabCommand::Ping { output: Output { json: false }, ref lab } if lab.name == "q"
        ));
        assert!(matches!(
            parse(&["down"]).unwrap(),
            LabCommand::Down { ref lab } if lab.name == "lab"
        ));
    }

    #[test]
    fn skipped_peers_grouped_by_reason() {
        let s = AgentStatus::parse(
            r#"{"node":"h1","inSync":true,"peers":[
              {"node":"h2","path":{"via":"skipped","reason":"other subnet"}},
              {"node":"h3","path":{"via":"direct"},"programmed":true},
              {"node":"h4","path":{"via":"skipped","reason":"other subnet"}},
              {"node":"h5","path":{"via":"skipped"}},
              {"node":"h6","path":{"via":"direct"},"path6":{"via":"skipped","reason":"no IPv6 underlay"}}]}"#,
        )
        .unwrap();
        assert_eq!(
            skipped_lines(&s),
            "     skipped: h2, h4 (other subnet)\n     skipped: h5 (no reason given)\n     \
             skipped ipv6: h6 (no IPv6 underlay)\n"
        );
    }

    #[test]
    fn exit_codes() {
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(exit_code(ExitStatus::from_raw(3 << 8)), 3);
        assert_eq!(exit_code(ExitStatus::from_raw(9)), 137);
    }
}
