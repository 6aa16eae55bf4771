//! Building and removing a lab: claiming its name, the underlay and host namespaces with
//! their links, the sequence of `up` (store, cluster config, agents, pods, convergence), pods
//! attached through the real CNI plugin as a runtime attaches them, BIRD hosts on the underlay,
//! and `down`, which removes every namespace, process and file of a lab.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use serde_json::Value;

use super::{CALL_TIMEOUT, Lab, daemons};
use crate::plan::{self, Underlay};
use crate::spec::LabSpec;
use crate::state::{Host, Pod, STATE_VERSION, State};
use crate::sys;

/// How long `up` waits for every agent's lease, and for convergence.
const LEASE_TIMEOUT: Duration = Duration::from_secs(30);
const CONVERGE_TIMEOUT: Duration = Duration::from_secs(30);

impl Lab {
    /// Builds the whole lab and waits until every agent has programmed every peer. On failure
    /// everything made so far is removed and the error says what failed.
    pub fn up(spec: &LabSpec, twill_exe: &Path) -> Result<Lab> {
        let start = Instant::now();
        spec.validate()?;
        let twill = std::path::absolute(twill_exe)
            .with_context(|| format!("twill executable {}", twill_exe.display()))?;
        ensure!(
            twill.is_file(),
            "twill executable {} does not exist",
            twill.display()
        );
        if spec.needs_etcd() && !spec.etcd_bin.is_file() {
            bail!(
                "etcd not found at {}: a lab of more than one node needs etcd \
                 (install etcd-server, e.g. `apt-get install etcd-server`, or pass --etcd-bin)",
                spec.etcd_bin.display()
            );
        }
        let mut lab = Lab::create(spec, twill)?;
        let built = lab.build(spec);
        lab.cleanup_on_error(built)?;
        lab.say(&format!("ready in {:.1} s", start.elapsed().as_secs_f64()));
        Ok(lab)
    }

    /// Builds only the underlay and the hosts (no store, agents or pods): for testing the
    /// topology itself. Removed again on failure.
    pub fn build_topology(spec: &LabSpec) -> Result<Lab> {
        spec.validate()?;
        let mut lab = Lab::create(spec, PathBuf::new())?;
        let built = lab.build_hosts(spec);
        lab.cleanup_on_error(built)?;
        Ok(lab)
    }

    /// Removes the lab: see [`down`].
    pub fn down(self) -> Result<()> {
        down(&self.state.name).map(drop)
    }

    /// Claims the name: refuses an existing lab (without touching it), then creates the state
    /// directory and a first state.json.
    fn create(spec: &LabSpec, twill: PathBuf) -> Result<Lab> {
        ensure!(
            sys::is_root(),
            "twill lab needs root: it creates network namespaces"
        );
        let name = &spec.name;
        let dir = plan::state_dir(name);
        let exists = || {
            anyhow::anyhow!(
                "a lab named {name} already exists ({}); remove it with `twill lab down --name {name}`",
                dir.display()
            )
        };
        if dir.exists() {
            return Err(exists());
        }
        let leftovers: Vec<String> = sys::netns_list()?
            .into_iter()
            .filter(|ns| plan::belongs_to(name, ns))
            .collect();
        if !leftovers.is_empty() {
            bail!(
                "namespaces of an earlier lab named {name} are still there ({}); \
                 remove them with `twill lab down --name {name}`",
                leftovers.join(" ")
            );
        }
        std::fs::create_dir_all(plan::STATE_ROOT)
            .with_context(|| format!("create {}", plan::STATE_ROOT))?;
        // create_dir, not create_dir_all: it is what makes two concurrent `up`s of one name
        // safe, since exactly one of them creates the directory.
        match std::fs::create_dir(&dir) {
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => return Err(exists()),
            r => r.with_context(|| format!("create {}", dir.display()))?,
        }
        let lab = Lab {
            state: State {
                version: STATE_VERSION,
                name: name.clone(),
                backend: spec.backend,
                direct_routing: spec.direct_routing,
                encrypt: spec.encrypt,
                underlay: spec.underlay,
                ip_family: spec.ip_family,
                pod_mode: spec.pod_mode,
                pods_per_node: spec.pods_per_node,
                twill,
                store: plan::store_url(name, spec.nodes, spec.underlay, spec.ip_family),
                underlay_ns: plan::underlay_ns(name),
                etcd: None,
                hosts: Vec::new(),
                pods: Vec::new(),
                birds: Vec::new(),
            },
            dir,
            verbose: spec.verbose,
        };
        lab.cleanup_on_error(lab.save())?;
        Ok(lab)
    }

    /// Passes `r` through; on error first removes the whole lab.
    fn cleanup_on_error<T>(&self, r: Result<T>) -> Result<T> {
        r.map_err(|e| {
            let name = &self.state.name;
            match down(name) {
                Ok(_) => e.context(format!(
                    "lab {name} was not created (everything it had made is removed)"
                )),
                Err(d) => e.context(format!(
                    "lab {name} was not created, and removing its parts failed too ({d:#}); \
                     retry `twill lab down --name {name}`"
                )),
            }
        })
    }

    /// The steps of `up`, in order.
    fn build(&mut self, spec: &LabSpec) -> Result<()> {
        self.build_hosts(spec)?;
        if let Some(protocols) = &spec.bird_router {
            let ns = self.state.underlay_ns.clone();
            let ip = plan::segments(spec.underlay)[0].gateway;
            self.start_bird("router", &ns, ip, protocols)?;
            self.say("BIRD runs in the underlay namespace");
        }
        self.start_store(spec)?;
        self.cluster_init(spec.bgp.as_deref())?;
        for i in 1..=spec.nodes {
            self.start_agent(i)?;
        }
        self.say(&format!("started {} agents", spec.nodes));
        self.wait_leases(LEASE_TIMEOUT)?;
        self.say("every agent has its lease");
        self.add_pods(spec)?;
        self.say(&format!("attached {} pods", self.state.pods.len()));
        self.wait_converged(CONVERGE_TIMEOUT)?;
        self.say("every agent has programmed its peers");
        Ok(())
    }

    /// The underlay namespace (bridges, and the router's forwarding) and one namespace per
    /// host with `eth0` plugged into its segment's bridge. In a dual-stack lab every one of
    /// these links has an IPv6 address too, and the router forwards IPv6; in an IPv6-only lab
    /// they have only their IPv6 addresses (loopback keeps 127.0.0.1, as on any host).
    fn build_hosts(&mut self, spec: &LabSpec) -> Result<()> {
        let u = self.state.underlay_ns.clone();
        let (v4, v6) = (spec.ip_family.has_ipv4(), spec.ip_family.has_ipv6());
        sys::netns_add(&u)?;
        for seg in plan::segments(spec.underlay) {
            sys::ip(&["-n", &u, "link", "add", seg.bridge, "type", "bridge"])?;
            if v4 {
                let addr = format!("{}/{}", seg.gateway, seg.prefix_len);
                sys::ip(&["-n", &u, "addr", "add", &addr, "dev", seg.bridge])?;
            }
            if v6 {
                no_dad(&u, seg.bridge)?;
                add_addr6(&u, seg.bridge, seg.gateway6)?;
            }
            sys::ip(&["-n", &u, "link", "set", seg.bridge, "up"])?;
        }
        if spec.underlay == Underlay::Routed {
            if v4 {
                sys::sysctl(&u, "net.ipv4.ip_forward=1")?;
            }
            if v6 {
                sys::sysctl(&u, "net.ipv6.conf.all.forwarding=1")?;
            }
        }
        for i in 1..=spec.nodes {
            let a = plan::host_addr(spec.underlay, i);
            let ns = plan::host_ns(&spec.name, i);
            let data_dir = plan::host_dir(&spec.name, i);
            let addr = v4.then(|| format!("{}/{}", a.ip, a.prefix_len));
            attach_host(&ns, &u, &a.port, a.bridge, addr.as_deref())?;
            let underlay6 = spec.has_underlay6(i);
            if underlay6 {
                no_dad(&ns, plan::IFACE)?;
            }
            sys::ip(&["-n", &ns, "link", "set", plan::IFACE, "up"])?;
            if v4 {
                let gateway = a.gateway.to_string();
                sys::ip(&["-n", &ns, "route", "add", "default", "via", &gateway])?;
                sys::sysctl(&ns, "net.ipv4.ip_forward=1")?;
            }
            if underlay6 {
                add_addr6(&ns, plan::IFACE, a.ip6)?;
                add_default6(&ns, a.gateway6)?;
            }
            if v6 {
                sys::sysctl(&ns, "net.ipv6.conf.all.forwarding=1")?;
            }
            std::fs::create_dir_all(&data_dir)
                .with_context(|| format!("create {}", data_dir.display()))?;
            self.state.hosts.push(Host {
                index: i,
                node: plan::node_name(i),
                netns: ns,
                ip: v4.then_some(a.ip),
                prefix_len: v4.then_some(a.prefix_len),
                gateway: v4.then_some(a.gateway),
                bridge: a.bridge.to_string(),
                log: data_dir.join("agent.log"),
                data_dir,
                agent_pid: None,
                ip6: underlay6.then_some(a.ip6),
                gateway6: underlay6.then_some(a.gateway6),
            });
        }
        self.save()?;
        self.say(&format!(
            "built {} hosts on the {} underlay",
            spec.nodes, spec.underlay
        ));
        Ok(())
    }

    /// Makes each pod's namespace and ADDs it through the plugin, as a runtime would.
    fn add_pods(&mut self, spec: &LabSpec) -> Result<()> {
        for i in 1..=spec.nodes {
            for j in 1..=spec.pods_per_node {
                let netns = plan::pod_ns(&spec.name, i, j);
                sys::netns_add(&netns)?;
                let (v4, v6) = self.cni_add(i, j, &netns, None)?;
                self.state
                    .pods
                    .push(Pod::attached(i, j, netns, v4, None).with_ipv6(v6));
            }
        }
        self.save()
    }

    /// Adds one more pod on host `i` as the Kubernetes pod `namespace/name` with `labels`,
    /// attached by the plugin the way a Kubernetes runtime calls it (CNI_ARGS
    /// `K8S_POD_NAMESPACE`/`K8S_POD_NAME`, `runtimeConfig.labels`).
    pub fn add_pod(
        &mut self,
        i: u32,
        namespace: &str,
        name: &str,
        labels: &BTreeMap<String, String>,
    ) -> Result<Pod> {
        let j = self
            .state
            .pods
            .iter()
            .filter(|p| p.host == i)
            .map(|p| p.index)
            .max()
            .unwrap_or(0)
            + 1;
        let netns = plan::pod_ns(&self.state.name, i, j);
        sys::netns_add(&netns)?;
        let added = self.cni_add(i, j, &netns, Some((namespace, name, labels)));
        let (v4, v6) = match added {
            Ok(a) => a,
            Err(e) => {
                let _ = sys::netns_del(&netns);
                return Err(e);
            }
        };
        let pod = Pod::attached(i, j, netns, v4, Some(format!("{namespace}/{name}"))).with_ipv6(v6);
        self.state.pods.push(pod.clone());
        self.save()?;
        Ok(pod)
    }

    /// One CNI ADD inside host `i`'s namespace, with a clean environment as a runtime gives;
    /// the pod's IPv4 address and its IPv6 address: each must be there exactly when the lab
    /// has that family (IPv4 and dual-stack labs: IPv4; dual-stack and IPv6-only: IPv6).
    fn cni_add(
        &self,
        i: u32,
        j: u32,
        netns: &str,
        identity: Option<(&str, &str, &BTreeMap<String, String>)>,
    ) -> Result<PodAddresses> {
        let host = self.host(i)?;
        let twill = self.twill()?;
        let cni_path = twill.parent().unwrap_or(Path::new("/"));
        let mut conf = plan::cni_conf(&host.data_dir, self.state.pod_mode);
        let mut args = String::new();
        if let Some((namespace, name, labels)) = identity {
            conf["runtimeConfig"] = serde_json::json!({ "labels": labels });
            args = format!("K8S_POD_NAMESPACE={namespace};K8S_POD_NAME={name}");
        }
        let conf = conf.to_string();
        let mut cmd = sys::ns_command(&host.netns);
        cmd.arg(twill)
            .env_clear()
            .env("PATH", sys::SYSTEM_PATH)
            .env("CNI_COMMAND", "ADD")
            .env("CNI_CONTAINERID", netns)
            .env("CNI_NETNS", format!("/run/netns/{netns}"))
            .env("CNI_IFNAME", plan::IFACE)
            .env("CNI_ARGS", args)
            .env("CNI_PATH", cni_path);
        let out = sys::run_with_timeout(&mut cmd, conf.as_bytes(), CALL_TIMEOUT)?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        let pod = plan::pod_name(i, j);
        ensure!(
            out.status.success(),
            "CNI ADD of pod {pod} on {} failed ({}): {} {}",
            host.node,
            out.status,
            stdout.trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
        let family = self.state.ip_family;
        let v4 = if family.has_ipv4() {
            Some(parse_cni_result(&stdout).with_context(|| format!("CNI ADD of pod {pod}"))?)
        } else {
            None
        };
        let v6 = parse_cni_result6(&stdout);
        ensure!(
            v6.is_some() || !family.has_ipv6(),
            "CNI ADD of pod {pod}: the plugin's result has no IPv6 address in a{} lab \
             (does {}'s node.json have an IPv6 subnet?): {}",
            if family.has_ipv4() {
                " dual-stack"
            } else {
                "n IPv6-only"
            },
            host.node,
            stdout.trim()
        );
        ensure!(
            family.has_ipv4() || parse_cni_result(&stdout).is_err(),
            "CNI ADD of pod {pod}: the plugin gave an IPv4 address in an IPv6-only lab: {}",
            stdout.trim()
        );
        Ok((v4, v6))
    }

    /// A namespace on the first underlay segment running BIRD `name` with `protocols`: an
    /// outside router such as a route-reflector client. Its address is `.250` of the segment
    /// for the lab's first BIRD host, `.249` for the second, ... (so configs can name it
    /// before; a BIRD router in the underlay does not count);
    /// default route via the segment's gateway; `local` (`ADDR/LEN`) on its loopback when
    /// given (this kernel has no dummy links), a destination inside the router for pings.
    /// Returns the address.
    pub fn add_bird_host(
        &mut self,
        name: &str,
        local: Option<&str>,
        protocols: &str,
    ) -> Result<Ipv4Addr> {
        // Host indices above the agents' range: `down` removes the namespace like a host's.
        let n = self
            .state
            .birds
            .iter()
            .filter(|b| b.netns != self.state.underlay_ns)
            .count();
        ensure!(n < 10, "at most 10 BIRD hosts per lab");
        let (ns, ip) = self.attach_outside_host(plan::MAX_NODES - n as u32, 250 - n as u8)?;
        if let Some(local) = local {
            sys::ip(&["-n", &ns, "addr", "add", local, "dev", "lo"])?;
        }
        self.start_bird(name, &ns, ip, protocols)?;
        Ok(ip)
    }

    /// A plain namespace on the first underlay segment, outside the cluster (no agent): a
    /// standard WireGuard peer, an attacker, a client, the world. The `n`-th one (from 0, at
    /// most 10) is at `.240 - n` of the segment with `eth0` up and a default route via the
    /// gateway (in a dual-stack lab also at [`Lab::outside_host_ip6`], with an IPv6 default
    /// route; in an IPv6-only lab only there); `down` removes it. Returns its namespace and
    /// the IPv4 address of its place (not on its link in an IPv6-only lab, whose outside
    /// hosts are reached at [`Lab::outside_host_ip6`]).
    pub fn add_outside_host(&mut self, n: u32) -> Result<(String, Ipv4Addr)> {
        ensure!(n < 10, "at most 10 outside hosts per lab");
        // Indices and addresses below the BIRD hosts' (240..231, .240 to .231).
        self.attach_outside_host(plan::MAX_NODES - 10 - n, 240 - n as u8)
    }

    /// The IPv6 address of the `n`-th outside host in a dual-stack lab (the twin of its IPv4
    /// address, [`plan::underlay6`]); None in an IPv4 lab.
    pub fn outside_host_ip6(&self, n: u32) -> Option<Ipv6Addr> {
        let seg = &plan::segments(self.state.underlay)[0];
        let [a, b, c, _] = seg.gateway.octets();
        let last = 240u32.checked_sub(n).filter(|_| n < 10)? as u8;
        self.state
            .ip_family
            .has_ipv6()
            .then(|| plan::underlay6(Ipv4Addr::new(a, b, c, last)))
    }

    /// Host namespace `k` (an index above the agents' range) on the first segment at
    /// `.last` with its default route (and its IPv6 twin in a dual-stack lab; only that in an
    /// IPv6-only lab).
    fn attach_outside_host(&mut self, k: u32, last: u8) -> Result<(String, Ipv4Addr)> {
        let seg = &plan::segments(self.state.underlay)[0];
        let [a, b, c, _] = seg.gateway.octets();
        let ip = Ipv4Addr::new(a, b, c, last);
        let ns = plan::host_ns(&self.state.name, k);
        let u = self.state.underlay_ns.clone();
        let port = format!("b{k}");
        let v4 = self.state.ip_family.has_ipv4();
        let addr = v4.then(|| format!("{ip}/{}", seg.prefix_len));
        attach_host(&ns, &u, &port, seg.bridge, addr.as_deref())?;
        let dual = self.state.ip_family.has_ipv6();
        if dual {
            no_dad(&ns, plan::IFACE)?;
        }
        sys::ip(&["-n", &ns, "link", "set", plan::IFACE, "up"])?;
        sys::ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        if v4 {
            let gateway = seg.gateway.to_string();
            sys::ip(&["-n", &ns, "route", "add", "default", "via", &gateway])?;
        }
        if dual {
            add_addr6(&ns, plan::IFACE, plan::underlay6(ip))?;
            add_default6(&ns, seg.gateway6)?;
        }
        Ok((ns, ip))
    }
}

/// Removes lab `name` completely: stops its agents and etcd (SIGTERM, SIGKILL after 2 s),
/// kills whatever else runs in its namespaces, deletes every `twl-<name>-*` namespace (also
/// ones state.json does not list, so an interrupted `up` is cleaned too) and its state
/// directory. Returns false when there was nothing to remove.
pub fn down(name: &str) -> Result<bool> {
    plan::validate_name(name)?;
    let dir = plan::state_dir(name);
    let mut namespaces: Vec<String> = sys::netns_list()?
        .into_iter()
        .filter(|ns| plan::belongs_to(name, ns))
        .collect();
    if !dir.exists() && namespaces.is_empty() {
        return Ok(false);
    }
    if let Ok(state) = State::load(&dir) {
        daemons::stop_recorded(&state);
    }
    // Reverse order of creation: pods, hosts, underlay (longest names first does that).
    namespaces.sort_by_key(|ns| std::cmp::Reverse(ns.len()));
    let mut errors = Vec::new();
    for ns in &namespaces {
        if let Err(e) = sys::netns_del(ns) {
            errors.push(format!("{e:#}"));
        }
    }
    if dir.exists()
        && let Err(e) = std::fs::remove_dir_all(&dir)
    {
        errors.push(format!("remove {}: {e}", dir.display()));
    }
    ensure!(
        errors.is_empty(),
        "removing lab {name}: {}",
        errors.join("; ")
    );
    Ok(true)
}

/// A pod address from a CNI result: `addr/prefix` as given, and the address.
pub type CniAddress<A> = (String, A);

/// A pod's IPv4 and IPv6 addresses from its CNI result, each when the lab has the family.
type PodAddresses = (Option<CniAddress<Ipv4Addr>>, Option<CniAddress<Ipv6Addr>>);

/// The pod's IPv4 address from a CNI result.
pub fn parse_cni_result(stdout: &str) -> Result<CniAddress<Ipv4Addr>> {
    let v: Value = serde_json::from_str(stdout)
        .with_context(|| format!("the plugin printed no JSON result: {stdout:?}"))?;
    let ips = v["ips"]
        .as_array()
        .with_context(|| format!("the plugin's result has no \"ips\": {stdout}"))?;
    match first_address(ips) {
        Some(a) => Ok(a),
        None => bail!("the plugin's result has no IPv4 address: {stdout}"),
    }
}

/// The pod's IPv6 address from a CNI result, if it has one (a result that is no JSON has
/// none: [`parse_cni_result`] reports that).
pub fn parse_cni_result6(stdout: &str) -> Option<CniAddress<Ipv6Addr>> {
    let v: Value = serde_json::from_str(stdout).ok()?;
    first_address(v["ips"].as_array()?)
}

/// The first entry of a result's `ips` whose address parses as an `A`.
fn first_address<A: std::str::FromStr>(ips: &[Value]) -> Option<CniAddress<A>> {
    ips.iter().find_map(|entry| {
        let address = entry["address"].as_str()?;
        let ip = address.split('/').next()?.parse::<A>().ok()?;
        Some((address.to_string(), ip))
    })
}

/// Turns duplicate address detection off on the underlay link `dev` in `ns` (before it is
/// up, so its link-local address is not tentative either): the lab made every address on its
/// links, and a tentative one would be unusable for a second or two. Only the lab's own
/// underlay links: what the agent and the plugin make keeps the kernel's defaults.
fn no_dad(ns: &str, dev: &str) -> Result<()> {
    sys::sysctl(ns, &format!("net.ipv6.conf.{dev}.accept_dad=0"))
}

/// Adds IPv6 `ip`/[`plan::UNDERLAY_PREFIX6`] to `dev` in `ns`, usable at once (`nodad`, see
/// [`no_dad`]).
fn add_addr6(ns: &str, dev: &str, ip: Ipv6Addr) -> Result<()> {
    let addr = format!("{ip}/{}", plan::UNDERLAY_PREFIX6);
    sys::ip(&["-n", ns, "addr", "add", &addr, "dev", dev, "nodad"])
}

/// The IPv6 default route of namespace `ns` via `gateway`.
fn add_default6(ns: &str, gateway: Ipv6Addr) -> Result<()> {
    sys::ip(&[
        "-n",
        ns,
        "-6",
        "route",
        "add",
        "default",
        "via",
        &gateway.to_string(),
    ])
}

/// Makes host namespace `ns` and plugs it into the underlay: a veth whose `port` end sits in
/// the underlay namespace `u` on `bridge`, and whose `eth0` end in `ns` gets `addr` (an IPv4
/// `ADDR/LEN`; none in an IPv6-only lab, whose callers add the IPv6 address).
fn attach_host(ns: &str, u: &str, port: &str, bridge: &str, addr: Option<&str>) -> Result<()> {
    sys::netns_add(ns)?;
    sys::ip(&[
        "link",
        "add",
        port,
        "netns",
        u,
        "type",
        "veth",
        "peer",
        "name",
        plan::IFACE,
        "netns",
        ns,
    ])?;
    sys::ip(&["-n", u, "link", "set", port, "master", bridge, "up"])?;
    if let Some(addr) = addr {
        sys::ip(&["-n", ns, "addr", "add", addr, "dev", plan::IFACE])?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cni_results() {
        let r = r#"{"cniVersion":"1.1.0","interfaces":[{"name":"eth0"}],
            "ips":[{"address":"10.244.3.2/24","gateway":"10.244.3.1","interface":0}]}"#;
        assert_eq!(
            parse_cni_result(r).unwrap(),
            ("10.244.3.2/24".to_string(), Ipv4Addr::new(10, 244, 3, 2))
        );
        let v6_first = r#"{"ips":[{"address":"fd00::2/64"},{"address":"10.244.1.5/24"}]}"#;
        assert_eq!(
            parse_cni_result(v6_first).unwrap().1,
            Ipv4Addr::new(10, 244, 1, 5)
        );
        assert!(parse_cni_result(r#"{"ips":[]}"#).is_err());
        assert_eq!(
            parse_cni_result6(v6_first),
            Some(("fd00::2/64".to_string(), "fd00::2".parse().unwrap()))
        );
        assert_eq!(parse_cni_result6(r), None);
        assert_eq!(parse_cni_result6("garbage"), None);
        assert!(parse_cni_result(r#"{"code":7,"msg":"bad"}"#).is_err());
        assert!(parse_cni_result("").is_err());
    }

    #[test]
    fn missing_etcd_is_refused_before_anything_is_made() {
        let name = format!("t{}", twill_testkit::random_suffix(5));
        let spec = LabSpec::new(&name).nodes(2).etcd_bin("/nonexistent/etcd");
        let err = Lab::up(&spec, Path::new("/bin/sh"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("install etcd-server"), "{err}");
        assert!(!plan::state_dir(&name).exists());
    }
}
