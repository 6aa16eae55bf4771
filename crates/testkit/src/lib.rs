//! Test kit for twill's integration tests.
//!
//! - [`Netns`]: a network namespace with a unique name, removed (with every process in it) when
//!   the guard drops, including on panic. Tests build hosts, pods and routers out of these and
//!   never touch the root namespace.
//! - [`Cni`]: runs the real plugin binary exactly as a runtime does: a clean environment with
//!   the `CNI_*` variables, the configuration on stdin, inside the host's namespace.
//! - Helpers that read kernel state as JSON (`ip -j`, `nft -j`).
//!
//! Tests that need root are marked `#[ignore = "needs root"]` and run with `--include-ignored`;
//! [`require_root`] makes them fail loudly rather than pass vacuously when run without root.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// True when running as root.
pub fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

/// Panics with a clear message unless running as root.
pub fn require_root() {
    assert!(
        is_root(),
        "this test needs root (network namespaces); run the suite as root with --include-ignored"
    );
}

/// A short random hex string for unique names.
pub fn random_suffix(len: usize) -> String {
    let mut bytes = vec![0u8; len.div_ceil(2)];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .expect("read /dev/urandom");
    bytes.iter().map(|b| format!("{b:02x}")).collect::<String>()[..len].to_string()
}

/// Runs a command, returning its output; panics only if it cannot be started.
pub fn run(program: &str, args: &[&str]) -> Output {
    Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"))
}

/// Runs a command and returns stdout; panics with stderr if it fails.
pub fn run_ok(program: &str, args: &[&str]) -> String {
    let out = run(program, args);
    assert!(
        out.status.success(),
        "{program} {} failed: {}{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A network namespace owned by a test.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates `tw-<tag>-<random>` with its loopback up.
    pub fn new(tag: &str) -> Netns {
        let name = format!("tw-{tag}-{}", random_suffix(6));
        run_ok("ip", &["netns", "add", &name]);
        let ns = Netns { name };
        ns.ok(&["ip", "link", "set", "lo", "up"]);
        ns
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The path a runtime passes as `CNI_NETNS`.
    pub fn path(&self) -> String {
        format!("/var/run/netns/{}", self.name)
    }

    /// Runs a command inside the namespace.
    pub fn exec(&self, cmd: &[&str]) -> Output {
        let mut args = vec!["netns", "exec", &self.name];
        args.extend_from_slice(cmd);
        run("ip", &args)
    }

    /// Runs a command inside the namespace; panics with its stderr if it fails.
    pub fn ok(&self, cmd: &[&str]) -> String {
        let out = self.exec(cmd);
        assert!(
            out.status.success(),
            "in {}: {} failed: {}{}",
            self.name,
            cmd.join(" "),
            String::from_utf8_lossy(&out.stderr),
            String::from_utf8_lossy(&out.stdout)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs a shell command line inside the namespace.
    pub fn sh(&self, line: &str) -> Output {
        self.exec(&["sh", "-c", line])
    }

    /// `ip -j ARGS` inside the namespace, parsed.
    pub fn ip_json(&self, args: &[&str]) -> Value {
        let mut cmd = vec!["ip", "-j"];
        cmd.extend_from_slice(args);
        let out = self.ok(&cmd);
        if out.trim().is_empty() {
            Value::Array(vec![])
        } else {
            serde_json::from_str(&out).expect("ip -j output is JSON")
        }
    }

    /// The link called `name` (`ip -j -d link show`), or None.
    pub fn link(&self, name: &str) -> Option<Value> {
        let out = self.exec(&["ip", "-j", "-d", "link", "show", "dev", name]);
        if !out.status.success() {
            return None;
        }
        serde_json::from_slice::<Value>(&out.stdout)
            .ok()?
            .as_array()?
            .first()
            .cloned()
    }

    /// Names of all links in the namespace.
    pub fn link_names(&self) -> Vec<String> {
        self.ip_json(&["link", "show"])
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|l| l["ifname"].as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Addresses (`addr/prefix`) on `dev`.
    pub fn addresses(&self, dev: &str) -> Vec<String> {
        let v = self.ip_json(&["addr", "show", "dev", dev]);
        let mut out = Vec::new();
        for link in v.as_array().into_iter().flatten() {
            for a in link["addr_info"].as_array().into_iter().flatten() {
                out.push(format!(
                    "{}/{}",
                    a["local"].as_str().unwrap_or(""),
                    a["prefixlen"]
                ));
            }
        }
        out
    }

    /// `nft -j list table FAMILY NAME` inside the namespace, or None when there is no such table.
    pub fn nft_table(&self, family: &str, name: &str) -> Option<Value> {
        let out = self.exec(&["nft", "-j", "list", "table", family, name]);
        if !out.status.success() {
            return None;
        }
        serde_json::from_slice(&out.stdout).ok()
    }

    /// Pings `dst` from this namespace (`count` packets, short interval); true if all came back.
    pub fn ping(&self, dst: &str, count: u32) -> bool {
        let c = count.to_string();
        self.exec(&["ping", "-q", "-c", &c, "-i", "0.05", "-W", "1", dst])
            .status
            .success()
    }

    /// Starts a long-running process inside the namespace; it is killed when the returned
    /// guard drops (and with the namespace, at the latest).
    pub fn spawn(&self, cmd: &[&str]) -> Background {
        let mut args = vec!["netns", "exec", &self.name];
        args.extend_from_slice(cmd);
        let child = Command::new("ip")
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn in netns");
        Background(child)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Processes first: a namespace with live processes outlives `ip netns del`.
        if let Ok(out) = Command::new("ip")
            .args(["netns", "pids", &self.name])
            .output()
        {
            for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                let _ = Command::new("kill").args(["-9", pid]).output();
            }
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

/// A background process of a test, killed and reaped on drop.
#[derive(Debug)]
pub struct Background(pub std::process::Child);

impl Drop for Background {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Joins two namespaces with a veth pair (both ends up).
pub fn veth(a: &Netns, a_if: &str, b: &Netns, b_if: &str) {
    run_ok(
        "ip",
        &[
            "link",
            "add",
            a_if,
            "netns",
            a.name(),
            "type",
            "veth",
            "peer",
            "name",
            b_if,
            "netns",
            b.name(),
        ],
    );
    a.ok(&["ip", "link", "set", a_if, "up"]);
    b.ok(&["ip", "link", "set", b_if, "up"]);
}

/// The outcome of one plugin call.
#[derive(Debug)]
pub struct CniOutput {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
    pub elapsed: Duration,
}

impl CniOutput {
    /// stdout parsed as JSON (Null when empty).
    pub fn json(&self) -> Value {
        if self.stdout.trim().is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&self.stdout).unwrap_or(Value::Null)
        }
    }

    /// Panics unless the call succeeded; returns stdout as JSON.
    pub fn ok(&self) -> Value {
        assert_eq!(
            self.code, 0,
            "plugin failed: stdout={} stderr={}",
            self.stdout, self.stderr
        );
        self.json()
    }

    /// Panics unless the call failed with CNI error `code`; returns the error JSON.
    pub fn err(&self, code: u64) -> Value {
        assert_ne!(
            self.code, 0,
            "plugin succeeded, expected error {code}: {}",
            self.stdout
        );
        let v = self.json();
        assert_eq!(
            v["code"].as_u64(),
            Some(code),
            "expected CNI error code {code}, got {}",
            self.stdout
        );
        assert!(
            v["msg"].as_str().is_some_and(|m| !m.is_empty()),
            "error without a message: {}",
            self.stdout
        );
        v
    }
}

/// Runs CNI plugins inside a host namespace the way a runtime does.
#[derive(Debug, Clone)]
pub struct Cni {
    /// Directory holding the plugins (`CNI_PATH`).
    pub cni_path: PathBuf,
    /// Namespace name the plugin runs in (the "host").
    pub host: String,
}

/// One plugin invocation.
#[derive(Debug, Clone)]
pub struct Call<'a> {
    pub plugin: &'a str,
    pub command: &'a str,
    pub container_id: &'a str,
    pub netns: Option<&'a str>,
    pub ifname: &'a str,
    pub args: Option<&'a str>,
    pub config: &'a Value,
    /// `PATH` for the plugin, when not the usual system one.
    pub path: Option<&'a str>,
}

impl Cni {
    /// A CNI_PATH directory holding `twill_bin` (as `twill`) and the reference plugins of
    /// `/usr/lib/cni`, both symlinked; removed by the returned guard.
    pub fn new(twill_bin: &Path, host: &Netns) -> (Cni, TempDir) {
        let dir = TempDir::new("cni-path");
        std::os::unix::fs::symlink(twill_bin, dir.path().join("twill")).expect("link twill");
        for plugin in [
            "portmap",
            "bandwidth",
            "tuning",
            "bridge",
            "host-local",
            "loopback",
        ] {
            let src = Path::new("/usr/lib/cni").join(plugin);
            if src.exists() {
                let _ = std::os::unix::fs::symlink(&src, dir.path().join(plugin));
            }
        }
        (
            Cni {
                cni_path: dir.path().to_path_buf(),
                host: host.name().to_string(),
            },
            dir,
        )
    }

    /// Runs one plugin with a clean CNI environment in the host namespace.
    pub fn call(&self, call: &Call<'_>) -> CniOutput {
        let bin = self.cni_path.join(call.plugin);
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.host]).arg(&bin);
        cmd.env_clear()
            .env(
                "PATH",
                call.path
                    .unwrap_or("/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"),
            )
            .env("CNI_COMMAND", call.command)
            .env("CNI_CONTAINERID", call.container_id)
            .env("CNI_IFNAME", call.ifname)
            .env("CNI_PATH", &self.cni_path);
        if let Some(ns) = call.netns {
            cmd.env("CNI_NETNS", ns);
        }
        if let Some(a) = call.args {
            cmd.env("CNI_ARGS", a);
        }
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let start = Instant::now();
        let mut child = cmd.spawn().expect("spawn plugin");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(call.config.to_string().as_bytes())
            .expect("write config");
        let out = child.wait_with_output().expect("wait plugin");
        CniOutput {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            elapsed: start.elapsed(),
        }
    }
}

/// A temporary directory removed on drop.
#[derive(Debug)]
pub struct TempDir {
    path: PathBuf,
}

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        let path = std::env::temp_dir().join(format!("twill-{tag}-{}", random_suffix(8)));
        std::fs::create_dir_all(&path).expect("create temp dir");
        TempDir { path }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// Compares `value` as pretty JSON with the golden file `dir/name`; `TWILL_BLESS=1` rewrites
/// the file instead (then check the diff by hand before committing it).
pub fn golden_json(dir: &std::path::Path, name: &str, value: &impl serde::Serialize) {
    let actual = serde_json::to_string_pretty(value).unwrap() + "\n";
    let path = dir.join(name);
    if std::env::var_os("TWILL_BLESS").is_some() {
        std::fs::write(&path, &actual).unwrap();
        return;
    }
    let expected = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (TWILL_BLESS=1 writes it)", path.display()));
    assert_eq!(
        actual,
        expected,
        "{} differs (TWILL_BLESS=1 rewrites it)",
        path.display()
    );
}
