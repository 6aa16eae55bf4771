//! The lab's store as its clients see it: one node runs on the embedded store, more on a real
//! etcd in the underlay namespace (with its own CA and one client certificate per node and one
//! for the CLI, unless TLS is off). Here are its record and certificates, the env file and CLI
//! arguments that point `twill` and `etcdctl` at it, and the cluster config `up` stores in it.

use std::path::{Path, PathBuf};
use std::process::Output;

use anyhow::{Context, Result, ensure};
use twill_store::pki::Pki;

use super::{CALL_TIMEOUT, Lab};
use crate::plan;
use crate::spec::LabSpec;
use crate::state::Etcd;
use crate::sys;

/// The directory of the etcd CA and certificates, in the state directory.
const PKI_DIR: &str = "etcd-pki";
/// The env file for `twill` and `etcdctl` in the state directory.
const STORE_ENV_FILE: &str = "store.env";

impl Lab {
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

    /// The store step of `up`: for one node only the env file (the embedded store); for more,
    /// etcd's certificates (unless TLS is off), its record in state.json, the env file, and
    /// etcd itself, answering.
    pub(super) fn start_store(&mut self, spec: &LabSpec) -> Result<()> {
        if !spec.needs_etcd() {
            self.write_store_env()?;
            self.say(&format!("store: {}", self.state.store));
            return Ok(());
        }
        let ip = plan::store_addr(spec.underlay, spec.ip_family);
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

    /// Writes the Flannel net-conf.json (or, with a bgp section or encryption, twill's YAML)
    /// and stores it with `twill cluster init` from h1.
    pub(super) fn cluster_init(&mut self, bgp: Option<&str>) -> Result<()> {
        let (file, text) = match (bgp, self.state.encrypt) {
            (None, None) => {
                let conf = plan::net_conf(
                    self.state.backend,
                    self.state.direct_routing,
                    self.state.ip_family,
                );
                (
                    self.dir.join("net-conf.json"),
                    serde_json::to_string_pretty(&conf)? + "\n",
                )
            }
            (bgp, encrypt) => (
                self.dir.join("cluster.yaml"),
                plan::twill_yaml(
                    self.state.backend,
                    self.state.direct_routing,
                    encrypt,
                    bgp,
                    self.state.ip_family,
                ),
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
        let family = self.state.ip_family;
        let pools = match (family.has_ipv4(), family.has_ipv6()) {
            (true, true) => format!("{} and {}", plan::POD_NETWORK, plan::POD_NETWORK6),
            (false, _) => format!("{} (IPv6-only)", plan::POD_NETWORK6),
            (true, false) => plan::POD_NETWORK.to_string(),
        };
        self.say(&format!(
            "cluster: {pools}, backend {} (DirectRouting {}){}",
            self.state.backend,
            self.state.direct_routing,
            plan::encryption_note(self.state.encrypt),
        ));
        Ok(())
    }
}
