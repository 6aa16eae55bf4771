//! A lab: the virtual cluster itself. [`Lab::up`] builds it step by step (underlay and hosts,
//! store, cluster config, agents, pods through the real plugin, convergence), recording each
//! step in `state.json`; any failure removes everything made so far. The other methods are
//! what `twill lab` subcommands and integration tests do to a running lab.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::Value;
use twill_store::pki::Pki;

use crate::matrix::{ATTEMPTS, MAX_PARALLEL, Matrix};
use crate::plan::{self, Backend, PodMode, Target, Underlay};
use crate::state::{Bird, Etcd, Host, Pod, STATE_VERSION, State};
use crate::status::AgentStatus;
use crate::sys;

/// How long `up` waits for etcd to answer, for every agent's lease, and for convergence.
pub const ETCD_TIMEOUT: Duration = Duration::from_secs(20);
pub const LEASE_TIMEOUT: Duration = Duration::from_secs(30);
pub const CONVERGE_TIMEOUT: Duration = Duration::from_secs(30);
/// A single CLI call (cluster init, plugin, status) that takes longer than this is hung.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a daemon gets between SIGTERM and SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(2);
/// The directory of the etcd CA and certificates, in the state directory.
const PKI_DIR: &str = "etcd-pki";
/// The env file for `twill` and `etcdctl` in the state directory.
pub const STORE_ENV_FILE: &str = "store.env";
/// Lines of a log quoted in an error.
const LOG_LINES: usize = 15;

/// What to build; see [`Lab::up`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabSpec {
    pub name: String,
    pub nodes: u32,
    pub backend: Backend,
    pub direct_routing: bool,
    pub underlay: Underlay,
    pub pod_mode: PodMode,
    pub pods_per_node: u32,
    pub etcd_bin: PathBuf,
    /// etcd speaks only TLS and asks every client for a certificate of the lab's CA (the
    /// default); false runs it on plain HTTP, open to anyone who reaches it.
    pub etcd_tls: bool,
    /// Progress lines on stderr (the CLI turns this on).
    pub verbose: bool,
    /// The `bgp` section (YAML body): the cluster config is then twill's YAML form with it.
    pub bgp: Option<String>,
    /// BIRD protocols (config body) for a BIRD router in the underlay namespace, started
    /// before the agents: a top-of-rack for the routed underlay, a reflector on l2.
    pub bird_router: Option<String>,
}

impl LabSpec {
    /// Two hosts on an L2 underlay, VXLAN, two pods each.
    pub fn new(name: impl Into<String>) -> LabSpec {
        LabSpec {
            name: name.into(),
            nodes: 2,
            backend: Backend::Vxlan,
            direct_routing: false,
            underlay: Underlay::L2,
            pod_mode: PodMode::Bridge,
            pods_per_node: 2,
            etcd_bin: PathBuf::from("/usr/bin/etcd"),
            etcd_tls: true,
            verbose: false,
            bgp: None,
            bird_router: None,
        }
    }

    /// A cluster config with this `bgp` section (YAML body, any indentation).
    pub fn bgp(mut self, section: impl Into<String>) -> LabSpec {
        self.bgp = Some(section.into());
        self
    }

    /// Runs BIRD with these protocols in the underlay namespace (see [`plan::bird_conf`]).
    pub fn bird_router(mut self, protocols: impl Into<String>) -> LabSpec {
        self.bird_router = Some(protocols.into());
        self
    }

    pub fn nodes(mut self, n: u32) -> LabSpec {
        self.nodes = n;
        self
    }

    pub fn backend(mut self, b: Backend) -> LabSpec {
        self.backend = b;
        self
    }

    pub fn direct_routing(mut self, on: bool) -> LabSpec {
        self.direct_routing = on;
        self
    }

    pub fn underlay(mut self, u: Underlay) -> LabSpec {
        self.underlay = u;
        self
    }

    pub fn pod_mode(mut self, m: PodMode) -> LabSpec {
        self.pod_mode = m;
        self
    }

    pub fn pods_per_node(mut self, k: u32) -> LabSpec {
        self.pods_per_node = k;
        self
    }

    pub fn etcd_bin(mut self, path: impl Into<PathBuf>) -> LabSpec {
        self.etcd_bin = path.into();
        self
    }

    /// TLS with client certificates on the lab's etcd (default true).
    pub fn etcd_tls(mut self, on: bool) -> LabSpec {
        self.etcd_tls = on;
        self
    }

    pub fn verbose(mut self, on: bool) -> LabSpec {
        self.verbose = on;
        self
    }

    /// Refuses what cannot be built, before anything is made.
    pub fn validate(&self) -> Result<()> {
        plan::validate_name(&self.name)?;
        ensure!(
            (1..=plan::MAX_NODES).contains(&self.nodes),
            "--nodes must be 1 to {}, not {}",
            plan::MAX_NODES,
            self.nodes
        );
        ensure!(
            self.backend != Backend::Bgp || self.bgp.is_some(),
            "the bgp backend needs a bgp section (LabSpec::bgp, or --bgp FILE)"
        );
        ensure!(
            self.pods_per_node <= plan::MAX_PODS_PER_NODE,
            "--pods-per-node must be at most {}, not {}",
            plan::MAX_PODS_PER_NODE,
            self.pods_per_node
        );
        Ok(())
    }

    /// One node runs on the embedded store; more need etcd.
    pub fn needs_etcd(&self) -> bool {
        self.nodes > 1
    }
}

/// A lab that exists (its state directory does).
#[derive(Debug, Clone)]
pub struct Lab {
    state: State,
    dir: PathBuf,
    verbose: bool,
}

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

    /// The lab called `name`, from its state.json.
    pub fn load(name: &str) -> Result<Lab> {
        plan::validate_name(name)?;
        let dir = plan::state_dir(name);
        ensure!(dir.is_dir(), "no lab named {name}");
        let state = State::load(&dir).with_context(|| {
            format!(
                "lab {name} is incomplete (an interrupted `up`?); \
                 remove it with `twill lab down --name {name}`"
            )
        })?;
        Ok(Lab {
            state,
            dir,
            verbose: false,
        })
    }

    /// Removes the lab: see [`down`].
    pub fn down(self) -> Result<()> {
        down(&self.state.name).map(drop)
    }

    pub fn name(&self) -> &str {
        &self.state.name
    }

    pub fn state(&self) -> &State {
        &self.state
    }

    /// The state directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The arguments that point a `twill` command at this lab's store (`--store URL`, plus the
    /// credentials the store asks for): every test or tool that runs the CLI against a lab
    /// passes these rather than building `--store` itself. With TLS (the default) these are
    /// the CA and the CLI's client certificate (`--etcd-cafile --etcd-certfile
    /// --etcd-keyfile`).
    pub fn store_args(&self) -> Vec<String> {
        plan::store_args(&self.state.store, self.pki_dir(), plan::CLI_CLIENT)
    }

    /// The directory of the lab etcd's CA and certificates (None: embedded store or plain
    /// etcd).
    pub fn pki_dir(&self) -> Option<&Path> {
        self.state.etcd.as_ref().and_then(|e| e.pki.as_deref())
    }

    /// The env file (`. FILE`) that points `twill` and `etcdctl` at the store from a host
    /// namespace: TWILL_STORE, TWILL_ETCD_*, ETCDCTL_*.
    pub fn store_env_file(&self) -> PathBuf {
        self.dir.join(STORE_ENV_FILE)
    }

    /// Runs `etcdctl ARGS` in the underlay namespace against the lab's etcd (over loopback,
    /// with the CLI's certificate when etcd has TLS).
    pub fn etcdctl(&self, args: &[&str]) -> Result<Output> {
        self.etcd()?;
        let mut cmd = sys::ns_command(&self.state.underlay_ns);
        cmd.arg("etcdctl")
            .args(plan::etcdctl_args(self.pki_dir()))
            .args(args);
        sys::run_with_timeout(&mut cmd, b"", CALL_TIMEOUT)
    }

    pub fn hosts(&self) -> &[Host] {
        &self.state.hosts
    }

    pub fn pods(&self) -> &[Pod] {
        &self.state.pods
    }

    /// Host `i`'s namespace name.
    pub fn host_ns(&self, i: u32) -> String {
        plan::host_ns(&self.state.name, i)
    }

    /// The namespace of `underlay`, `h<i>` or `h<i>-p<j>`, which must be part of this lab.
    pub fn target_ns(&self, target: &str) -> Result<String> {
        let t = Target::parse(target)?;
        let exists = match t {
            Target::Underlay => true,
            Target::Host(i) => self.state.host(i).is_some(),
            Target::Pod(i, j) => self.state.pods.iter().any(|p| p.host == i && p.index == j),
        };
        ensure!(exists, "lab {} has no {target}", self.state.name);
        Ok(t.netns(&self.state.name))
    }

    /// Runs `cmd` in the target's namespace and returns its output.
    pub fn exec(&self, target: &str, cmd: &[&str]) -> Result<Output> {
        ensure!(!cmd.is_empty(), "no command to run");
        let ns = self.target_ns(target)?;
        sys::ns_command(&ns)
            .args(cmd)
            .output()
            .with_context(|| format!("run {} in {ns}", cmd.join(" ")))
    }

    /// True while host `i`'s agent runs.
    pub fn agent_alive(&self, i: u32) -> bool {
        self.state
            .host(i)
            .is_some_and(|h| h.agent_pid.is_some_and(|pid| agent_runs(h, pid)))
    }

    /// Sends `signal` to host `i`'s agent; for SIGTERM, SIGINT and SIGKILL also waits (up to
    /// 5 s) until it has exited, so a test can restart it right away.
    pub fn kill_agent(&self, i: u32, signal: Signal) -> Result<()> {
        let host = self.host(i)?;
        let pid = host
            .agent_pid
            .filter(|&pid| agent_runs(host, pid))
            .with_context(|| format!("the agent of {} is not running", host.node))?;
        kill(Pid::from_raw(pid as i32), signal)
            .with_context(|| format!("kill {signal} the agent of {} (pid {pid})", host.node))?;
        if matches!(signal, Signal::SIGTERM | Signal::SIGINT | Signal::SIGKILL) {
            ensure!(
                sys::wait_gone(pid, Duration::from_secs(5)),
                "the agent of {} (pid {pid}) still runs 5 s after {signal}",
                host.node
            );
        }
        Ok(())
    }

    /// Starts host `i`'s agent (the same command line as `up`, appending to its log) and
    /// records its pid. Does not wait for it to be ready: see [`Lab::wait_converged`].
    pub fn start_agent(&mut self, i: u32) -> Result<u32> {
        let host = self.host(i)?.clone();
        if let Some(pid) = host.agent_pid.filter(|&pid| agent_runs(&host, pid)) {
            bail!("the agent of {} already runs (pid {pid})", host.node);
        }
        let twill = self.twill()?.to_path_buf();
        let mut cmd = sys::ns_command(&host.netns);
        let store = plan::store_args(&self.state.store, self.pki_dir(), &host.node);
        cmd.arg(&twill)
            .args(plan::agent_args(&store, i, &host.data_dir));
        let pid = sys::spawn_daemon(&mut cmd, &host.log, &format!("start agent {}", host.node))?;
        self.state.host_mut(i).expect("host exists").agent_pid = Some(pid);
        self.save()?;
        Ok(pid)
    }

    /// Stops etcd (SIGTERM, SIGKILL after 2 s); the agents lose their store.
    pub fn stop_etcd(&mut self) -> Result<()> {
        let etcd = self.etcd()?.clone();
        if let Some(pid) = etcd.pid.filter(|&pid| etcd_runs(&etcd, pid)) {
            sys::stop_all(&[pid], STOP_GRACE);
        }
        Ok(())
    }

    /// Starts etcd again on its data directory and waits until it answers.
    pub fn start_etcd(&mut self) -> Result<()> {
        let etcd = self.etcd()?.clone();
        if let Some(pid) = etcd.pid.filter(|&pid| etcd_runs(&etcd, pid)) {
            bail!("etcd already runs (pid {pid})");
        }
        std::fs::create_dir_all(&etcd.data_dir)?;
        let mut cmd = sys::ns_command(&self.state.underlay_ns);
        cmd.arg(&etcd.bin).args(plan::etcd_args(
            etcd.ip,
            &etcd.data_dir,
            etcd.pki.as_deref(),
        ));
        let pid = sys::spawn_daemon(&mut cmd, &etcd.log, "start etcd")?;
        self.state.etcd.as_mut().expect("etcd recorded").pid = Some(pid);
        self.save()?;
        self.wait_etcd(pid, ETCD_TIMEOUT)
    }

    /// True while the lab's etcd runs (false with the embedded store).
    pub fn etcd_alive(&self) -> bool {
        self.state
            .etcd
            .as_ref()
            .is_some_and(|e| e.pid.is_some_and(|pid| etcd_runs(e, pid)))
    }

    /// `twill status --data-dir D --json` of host `i`, as printed.
    pub fn host_status_json(&self, i: u32) -> Result<Value> {
        let host = self.host(i)?;
        let mut cmd = sys::ns_command(&host.netns);
        cmd.arg(self.twill()?)
            .args(["status", "--data-dir"])
            .arg(&host.data_dir)
            .arg("--json")
            .env_remove("CNI_COMMAND");
        let out = sys::run_with_timeout(&mut cmd, b"", CALL_TIMEOUT)?;
        ensure!(
            out.status.success(),
            "`twill status` on {} failed ({}): {}{}",
            host.node,
            out.status,
            String::from_utf8_lossy(&out.stderr).trim(),
            String::from_utf8_lossy(&out.stdout).trim()
        );
        serde_json::from_slice(&out.stdout).with_context(|| {
            format!(
                "`twill status --json` on {} printed no JSON: {}",
                host.node,
                String::from_utf8_lossy(&out.stdout)
            )
        })
    }

    /// Host `i`'s agent status, parsed.
    pub fn host_status(&self, i: u32) -> Result<AgentStatus> {
        let v = self.host_status_json(i)?;
        serde_json::from_value(v)
            .with_context(|| format!("`twill status --json` on h{i} is not in the agent's format"))
    }

    /// Waits until every agent runs, is in sync and has programmed (or knowingly skipped)
    /// every other host; returns their statuses, in host order.
    pub fn wait_converged(&self, timeout: Duration) -> Result<Vec<AgentStatus>> {
        let deadline = Instant::now() + timeout;
        let nodes = self.state.hosts.len() as u32;
        loop {
            let mut ready = Vec::new();
            let mut waiting = Vec::new();
            for h in &self.state.hosts {
                if !self.agent_alive(h.index) {
                    waiting.push((h, "agent not running".to_string()));
                    continue;
                }
                match self.host_status(h.index) {
                    Ok(s) => match s.converged(h.index, nodes) {
                        Ok(()) => ready.push(s),
                        Err(why) => waiting.push((h, why)),
                    },
                    Err(e) => waiting.push((h, format!("{e:#}"))),
                }
            }
            if waiting.is_empty() {
                return Ok(ready);
            }
            if Instant::now() >= deadline {
                let mut msg = format!("the agents did not converge within {timeout:?}:");
                for (h, why) in &waiting {
                    msg += &format!("\n  {}: {why}", h.node);
                }
                // One log is usually enough to see why; all of them would bury it.
                msg += &format!("\n{}", sys::log_tail(&waiting[0].0.log, LOG_LINES));
                bail!(msg);
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// Pings from every pod to every other pod (see [`Matrix`]); pairs that are not expected
    /// to be reachable (host-gw across the routed underlay's subnets) are not probed.
    pub fn ping_matrix(&self) -> Matrix {
        let (backend, underlay) = (self.state.backend, self.state.underlay);
        Matrix::run(
            &self.state.pods,
            |a, b| plan::expected_reachable(backend, underlay, a.host, b.host),
            |a, b| ping(&a.netns, b.ip),
            MAX_PARALLEL,
            ATTEMPTS,
        )
    }

    // ----- building -----

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
                underlay: spec.underlay,
                pod_mode: spec.pod_mode,
                pods_per_node: spec.pods_per_node,
                twill,
                store: plan::store_url(name, spec.nodes, spec.underlay),
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
    /// host with `eth0` plugged into its segment's bridge.
    fn build_hosts(&mut self, spec: &LabSpec) -> Result<()> {
        let u = self.state.underlay_ns.clone();
        sys::netns_add(&u)?;
        for seg in plan::segments(spec.underlay) {
            let addr = format!("{}/{}", seg.gateway, seg.prefix_len);
            sys::ip(&["-n", &u, "link", "add", seg.bridge, "type", "bridge"])?;
            sys::ip(&["-n", &u, "addr", "add", &addr, "dev", seg.bridge])?;
            sys::ip(&["-n", &u, "link", "set", seg.bridge, "up"])?;
        }
        if spec.underlay == Underlay::Routed {
            sys::sysctl(&u, "net.ipv4.ip_forward=1")?;
        }
        for i in 1..=spec.nodes {
            let a = plan::host_addr(spec.underlay, i);
            let ns = plan::host_ns(&spec.name, i);
            let data_dir = plan::host_dir(&spec.name, i);
            sys::netns_add(&ns)?;
            sys::ip(&[
                "link",
                "add",
                &a.port,
                "netns",
                &u,
                "type",
                "veth",
                "peer",
                "name",
                plan::IFACE,
                "netns",
                &ns,
            ])?;
            sys::ip(&["-n", &u, "link", "set", &a.port, "master", a.bridge, "up"])?;
            let addr = format!("{}/{}", a.ip, a.prefix_len);
            sys::ip(&["-n", &ns, "addr", "add", &addr, "dev", plan::IFACE])?;
            sys::ip(&["-n", &ns, "link", "set", plan::IFACE, "up"])?;
            sys::ip(&[
                "-n",
                &ns,
                "route",
                "add",
                "default",
                "via",
                &a.gateway.to_string(),
            ])?;
            sys::sysctl(&ns, "net.ipv4.ip_forward=1")?;
            std::fs::create_dir_all(&data_dir)
                .with_context(|| format!("create {}", data_dir.display()))?;
            self.state.hosts.push(Host {
                index: i,
                node: plan::node_name(i),
                netns: ns,
                ip: a.ip,
                prefix_len: a.prefix_len,
                gateway: a.gateway,
                bridge: a.bridge.to_string(),
                log: data_dir.join("agent.log"),
                data_dir,
                agent_pid: None,
            });
        }
        self.save()?;
        self.say(&format!(
            "built {} hosts on the {} underlay",
            spec.nodes, spec.underlay
        ));
        Ok(())
    }

    fn start_store(&mut self, spec: &LabSpec) -> Result<()> {
        if !spec.needs_etcd() {
            self.write_store_env()?;
            self.say(&format!("store: {}", self.state.store));
            return Ok(());
        }
        let ip = plan::store_ip(spec.underlay);
        let pki = if spec.etcd_tls {
            let dir = self.dir.join(PKI_DIR);
            let mut clients: Vec<String> =
                self.state.hosts.iter().map(|h| h.node.clone()).collect();
            clients.push(plan::CLI_CLIENT.to_string());
            let clients: Vec<&str> = clients.iter().map(String::as_str).collect();
            Pki::generate(&dir, &plan::etcd_server_names(ip), &clients)
                .with_context(|| format!("make the etcd certificates in {}", dir.display()))?;
            Some(dir)
        } else {
            None
        };
        self.state.etcd = Some(Etcd {
            bin: spec.etcd_bin.clone(),
            pid: None,
            data_dir: self.dir.join("etcd"),
            log: self.dir.join("etcd.log"),
            ip,
            pki,
        });
        self.write_store_env()?;
        self.start_etcd()?;
        self.say(&format!(
            "store: etcd answers at {}{}",
            self.state.store,
            if spec.etcd_tls {
                " (TLS, client certificates required)"
            } else {
                " (plain HTTP, no authentication)"
            }
        ));
        Ok(())
    }

    fn write_store_env(&self) -> Result<()> {
        let etcd = self.state.etcd.as_ref();
        let text = plan::store_env(&self.state.store, etcd.map(|e| e.ip), self.pki_dir());
        let path = self.store_env_file();
        std::fs::write(&path, text).with_context(|| format!("write {}", path.display()))
    }

    fn wait_etcd(&self, pid: u32, timeout: Duration) -> Result<()> {
        let etcd = self.etcd()?;
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, plan::ETCD_METRICS_PORT));
        let deadline = Instant::now() + timeout;
        loop {
            let last = match sys::http_get_in_netns(&self.state.underlay_ns, addr, "/health") {
                Ok(r) if r.contains(r#""health":"true""#) => return Ok(()),
                Ok(r) => r.lines().last().unwrap_or("").to_string(),
                Err(e) => format!("{e:#}"),
            };
            if !sys::alive(pid) {
                bail!(
                    "etcd exited while starting\n{}",
                    sys::log_tail(&etcd.log, LOG_LINES)
                );
            }
            if Instant::now() >= deadline {
                bail!(
                    "etcd did not become healthy at http://{addr} within {timeout:?} (last: {last})\n{}",
                    sys::log_tail(&etcd.log, LOG_LINES)
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Writes the Flannel net-conf.json (or, with a bgp section, twill's YAML) and stores it
    /// with `twill cluster init` from h1.
    fn cluster_init(&mut self, bgp: Option<&str>) -> Result<()> {
        let (file, text) = match bgp {
            None => {
                let conf = plan::net_conf(self.state.backend, self.state.direct_routing);
                (
                    self.dir.join("net-conf.json"),
                    serde_json::to_string_pretty(&conf)? + "\n",
                )
            }
            Some(section) => (
                self.dir.join("cluster.yaml"),
                plan::cluster_yaml(self.state.backend, self.state.direct_routing, section),
            ),
        };
        std::fs::write(&file, text).with_context(|| format!("write {}", file.display()))?;
        let mut cmd = sys::ns_command(&plan::host_ns(&self.state.name, 1));
        cmd.arg(self.twill()?)
            .args(["cluster", "init"])
            .args(self.store_args())
            .arg("-f")
            .arg(&file)
            .env_remove("CNI_COMMAND");
        let out = sys::run_with_timeout(&mut cmd, b"", CALL_TIMEOUT)?;
        ensure!(
            out.status.success(),
            "`{}` failed ({}): {}{}",
            sys::show(&cmd),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim(),
            String::from_utf8_lossy(&out.stdout).trim()
        );
        self.say(&format!(
            "cluster: {POD}, backend {} (DirectRouting {})",
            self.state.backend,
            self.state.direct_routing,
            POD = plan::POD_NETWORK
        ));
        Ok(())
    }

    /// Waits for every agent's node.json: it is written once the agent holds its lease, and
    /// the plugin needs it to ADD pods.
    fn wait_leases(&self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let mut waiting = Vec::new();
            for h in &self.state.hosts {
                if h.data_dir.join("node.json").exists() {
                    continue;
                }
                if !self.agent_alive(h.index) {
                    bail!(
                        "the agent of {} exited before it got a lease ({})\n{}",
                        h.node,
                        h.agent_pid
                            .and_then(sys::how_it_ended)
                            .unwrap_or_else(|| "not a child of this process".into()),
                        sys::log_tail(&h.log, LOG_LINES)
                    );
                }
                waiting.push(h);
            }
            let Some(first) = waiting.first() else {
                return Ok(());
            };
            if Instant::now() >= deadline {
                let nodes: Vec<&str> = waiting.iter().map(|h| h.node.as_str()).collect();
                bail!(
                    "no lease within {timeout:?} for {} (no node.json in their data dirs)\n{}",
                    nodes.join(", "),
                    sys::log_tail(&first.log, LOG_LINES)
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Makes each pod's namespace and ADDs it through the plugin, as a runtime would.
    fn add_pods(&mut self, spec: &LabSpec) -> Result<()> {
        for i in 1..=spec.nodes {
            for j in 1..=spec.pods_per_node {
                let netns = plan::pod_ns(&spec.name, i, j);
                sys::netns_add(&netns)?;
                let (address, ip) = self.cni_add(i, j, &netns, None)?;
                self.state
                    .pods
                    .push(Pod::attached(i, j, netns, (address, ip), None));
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
        let (address, ip) = match added {
            Ok(a) => a,
            Err(e) => {
                let _ = sys::netns_del(&netns);
                return Err(e);
            }
        };
        let pod = Pod::attached(
            i,
            j,
            netns,
            (address, ip),
            Some(format!("{namespace}/{name}")),
        );
        self.state.pods.push(pod.clone());
        self.save()?;
        Ok(pod)
    }

    /// One CNI ADD inside host `i`'s namespace, with a clean environment as a runtime gives.
    fn cni_add(
        &self,
        i: u32,
        j: u32,
        netns: &str,
        identity: Option<(&str, &str, &BTreeMap<String, String>)>,
    ) -> Result<(String, Ipv4Addr)> {
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
        parse_cni_result(&stdout).with_context(|| format!("CNI ADD of pod {pod}"))
    }

    // ----- small helpers -----

    fn host(&self, i: u32) -> Result<&Host> {
        self.state
            .host(i)
            .with_context(|| format!("lab {} has no host h{i}", self.state.name))
    }

    fn etcd(&self) -> Result<&Etcd> {
        self.state.etcd.as_ref().with_context(|| {
            format!(
                "lab {} uses the embedded store (one node): it has no etcd",
                self.state.name
            )
        })
    }

    fn twill(&self) -> Result<&Path> {
        ensure!(
            !self.state.twill.as_os_str().is_empty(),
            "lab {} was built as a bare topology: it has no twill executable",
            self.state.name
        );
        Ok(&self.state.twill)
    }

    fn save(&self) -> Result<()> {
        self.state.save(&self.dir)
    }

    // ----- BIRD -----

    /// Starts BIRD 2 called `name` in namespace `ns` with router ID `ip` and `protocols`
    /// (after [`plan::bird_conf`]'s header); its config, socket and log go to the state
    /// directory, and `down` stops it. Waits until its socket answers.
    pub fn start_bird(
        &mut self,
        name: &str,
        ns: &str,
        ip: Ipv4Addr,
        protocols: &str,
    ) -> Result<()> {
        ensure!(
            !self.state.birds.iter().any(|b| b.name == name),
            "lab {} already has a BIRD called {name}",
            self.state.name
        );
        let conf = self.dir.join(format!("bird-{name}.conf"));
        let socket = self.dir.join(format!("bird-{name}.ctl"));
        let log = self.dir.join(format!("bird-{name}.log"));
        std::fs::write(&conf, plan::bird_conf(ip, protocols))
            .with_context(|| format!("write {}", conf.display()))?;
        // Parse first, so a mistake fails with BIRD's own message.
        let check = Command::new("bird")
            .arg("-p")
            .arg("-c")
            .arg(&conf)
            .output()
            .context("BIRD 2 is needed (apt-get install bird2)")?;
        ensure!(
            check.status.success(),
            "BIRD refuses {}: {}{}",
            conf.display(),
            String::from_utf8_lossy(&check.stdout).trim(),
            String::from_utf8_lossy(&check.stderr).trim()
        );
        let mut cmd = sys::ns_command(ns);
        cmd.args(["bird", "-f", "-c"])
            .arg(&conf)
            .arg("-s")
            .arg(&socket)
            .arg("-P")
            .arg(self.dir.join(format!("bird-{name}.pid")));
        let pid = sys::spawn_daemon(&mut cmd, &log, &format!("start BIRD {name}"))?;
        self.state.birds.push(Bird {
            name: name.to_string(),
            netns: ns.to_string(),
            ip,
            conf,
            socket: socket.clone(),
            log: log.clone(),
            pid: Some(pid),
        });
        self.save()?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self
            .birdc(name, &["show", "status"])?
            .contains("Daemon is up")
        {
            ensure!(
                sys::alive(pid),
                "BIRD {name} exited while starting\n{}",
                sys::log_tail(&log, LOG_LINES)
            );
            ensure!(
                Instant::now() < deadline,
                "BIRD {name} did not answer on {} within 10 s",
                socket.display()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    /// The lab's BIRD called `name`.
    pub fn bird(&self, name: &str) -> Result<&Bird> {
        self.state
            .birds
            .iter()
            .find(|b| b.name == name)
            .with_context(|| format!("lab {} has no BIRD called {name}", self.state.name))
    }

    /// `birdc -s SOCKET ARGS...` of BIRD `name`: its output, whatever its exit status
    /// ("Network not found" exits non-zero).
    pub fn birdc(&self, name: &str, args: &[&str]) -> Result<String> {
        let bird = self.bird(name)?;
        let out = Command::new("birdc")
            .arg("-s")
            .arg(&bird.socket)
            .args(args)
            .output()
            .context("run birdc")?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Sends `signal` to BIRD `name` (SIGSTOP to make a peer die silently, SIGCONT back).
    pub fn signal_bird(&self, name: &str, signal: Signal) -> Result<()> {
        let bird = self.bird(name)?;
        let pid = bird
            .pid
            .filter(|&pid| bird_runs(bird, pid))
            .with_context(|| format!("BIRD {name} is not running"))?;
        kill(Pid::from_raw(pid as i32), signal)
            .with_context(|| format!("kill {signal} BIRD {name} (pid {pid})"))
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
        let k = plan::MAX_NODES - n as u32;
        let seg = &plan::segments(self.state.underlay)[0];
        let [a, b, c, _] = seg.gateway.octets();
        let ip = Ipv4Addr::new(a, b, c, 250 - n as u8);
        let ns = plan::host_ns(&self.state.name, k);
        let u = self.state.underlay_ns.clone();
        let port = format!("b{k}");
        sys::netns_add(&ns)?;
        sys::ip(&[
            "link",
            "add",
            &port,
            "netns",
            &u,
            "type",
            "veth",
            "peer",
            "name",
            plan::IFACE,
            "netns",
            &ns,
        ])?;
        sys::ip(&["-n", &u, "link", "set", &port, "master", seg.bridge, "up"])?;
        let addr = format!("{ip}/{}", seg.prefix_len);
        sys::ip(&["-n", &ns, "addr", "add", &addr, "dev", plan::IFACE])?;
        sys::ip(&["-n", &ns, "link", "set", plan::IFACE, "up"])?;
        sys::ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        sys::ip(&[
            "-n",
            &ns,
            "route",
            "add",
            "default",
            "via",
            &seg.gateway.to_string(),
        ])?;
        if let Some(local) = local {
            sys::ip(&["-n", &ns, "addr", "add", local, "dev", "lo"])?;
        }
        self.start_bird(name, &ns, ip, protocols)?;
        Ok(ip)
    }

    fn say(&self, msg: &str) {
        if self.verbose {
            eprintln!("twill lab {}: {msg}", self.state.name);
        }
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
        let mut pids: Vec<u32> = state
            .hosts
            .iter()
            .filter_map(|h| h.agent_pid.filter(|&pid| agent_runs(h, pid)))
            .collect();
        if let Some(e) = &state.etcd
            && let Some(pid) = e.pid.filter(|&pid| etcd_runs(e, pid))
        {
            pids.push(pid);
        }
        for b in &state.birds {
            if let Some(pid) = b.pid.filter(|&pid| bird_runs(b, pid)) {
                // A stopped BIRD (a test's SIGSTOP) must run again to see SIGTERM.
                let _ = kill(Pid::from_raw(pid as i32), Signal::SIGCONT);
                pids.push(pid);
            }
        }
        sys::stop_all(&pids, STOP_GRACE);
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

/// True when `pid` is host `h`'s agent (its command line names the host's data dir).
fn agent_runs(h: &Host, pid: u32) -> bool {
    sys::runs_with_arg(pid, &h.data_dir.to_string_lossy())
}

fn bird_runs(b: &Bird, pid: u32) -> bool {
    sys::runs_with_arg(pid, &b.conf.to_string_lossy())
}

fn etcd_runs(e: &Etcd, pid: u32) -> bool {
    sys::runs_with_arg(pid, &e.data_dir.to_string_lossy())
}

/// One ICMP echo from namespace `ns`.
fn ping(ns: &str, ip: Ipv4Addr) -> bool {
    sys::ns_command(ns)
        .args(["ping", "-n", "-q", "-c", "1", "-W", "1", &ip.to_string()])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// The pod's IPv4 address from a CNI result: (`addr/prefix` as given, the address).
pub fn parse_cni_result(stdout: &str) -> Result<(String, Ipv4Addr)> {
    let v: Value = serde_json::from_str(stdout)
        .with_context(|| format!("the plugin printed no JSON result: {stdout:?}"))?;
    let ips = v["ips"]
        .as_array()
        .with_context(|| format!("the plugin's result has no \"ips\": {stdout}"))?;
    for entry in ips {
        if let Some(address) = entry["address"].as_str()
            && let Some(ip) = address
                .split('/')
                .next()
                .and_then(|a| a.parse::<Ipv4Addr>().ok())
        {
            return Ok((address.to_string(), ip));
        }
    }
    bail!("the plugin's result has no IPv4 address: {stdout}")
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
        assert!(parse_cni_result(r#"{"code":7,"msg":"bad"}"#).is_err());
        assert!(parse_cni_result("").is_err());
    }

    #[test]
    fn spec_builder_and_validation() {
        let s = LabSpec::new("t1")
            .nodes(5)
            .backend(Backend::HostGw)
            .direct_routing(true)
            .underlay(Underlay::Routed)
            .pods_per_node(3)
            .etcd_bin("/opt/etcd")
            .verbose(true);
        assert_eq!(s.nodes, 5);
        assert_eq!(s.backend, Backend::HostGw);
        assert!(s.direct_routing);
        assert_eq!(s.underlay, Underlay::Routed);
        assert_eq!(s.pods_per_node, 3);
        assert_eq!(s.etcd_bin, Path::new("/opt/etcd"));
        s.validate().unwrap();
        assert!(s.needs_etcd());
        assert!(!LabSpec::new("x").nodes(1).needs_etcd());
        assert!(LabSpec::new("x").nodes(0).validate().is_err());
        assert!(LabSpec::new("x").nodes(241).validate().is_err());
        assert!(LabSpec::new("x").pods_per_node(201).validate().is_err());
        LabSpec::new("x").pods_per_node(0).validate().unwrap();
        assert!(LabSpec::new("a/b").validate().is_err());
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

    #[test]
    fn load_of_unknown_lab() {
        let err = Lab::load("t-none-such").unwrap_err().to_string();
        assert_eq!(err, "no lab named t-none-such");
        assert!(!down("t-none-such").unwrap());
    }
}
