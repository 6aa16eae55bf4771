//! Test support: a throwaway single-member etcd server on free loopback ports, for this
//! crate's tests and other crates' (`twill_store::testing::EtcdServer::start()`, or
//! `start_tls()` for one that speaks only TLS and asks every client for a certificate).
//!
//! The server is started through a small `sh` wrapper that holds the read end of a pipe from
//! the test process: when the test process ends in any way (even SIGKILL, where no `Drop`
//! runs) the pipe closes and the wrapper stops etcd, so no etcd outlives its test.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::time::{Duration, Instant};

use crate::EtcdAuth;
use crate::pki::Pki;

/// Environment variable naming the etcd binary, for machines where it is not at
/// [`DEFAULT_ETCD_BIN`].
pub const ETCD_BIN_ENV: &str = "TWILL_ETCD_BIN";
/// Where Debian's etcd-server package installs etcd.
pub const DEFAULT_ETCD_BIN: &str = "/usr/bin/etcd";

const READY_WAIT: Duration = Duration::from_secs(20);
const STOP_WAIT: Duration = Duration::from_secs(15);

/// Starts etcd (`$@`) and waits for it; a line on stdin says how to stop it ("kill" for
/// SIGKILL, anything else or end of input for SIGTERM). Exits when etcd does.
/// (A background job's stdin is /dev/null in sh, hence the pipe is passed on as fd 3.)
const WRAPPER: &str = r#"
exec 3<&0
"$@" 3<&- &
etcd=$!
( read how <&3; if [ "$how" = kill ]; then kill -9 "$etcd"; else kill -15 "$etcd"; fi ) &
watcher=$!
wait "$etcd"
status=$?
kill "$watcher" 2>/dev/null
exit "$status"
"#;

/// A running etcd server. Dropping it kills etcd and deletes its data.
pub struct EtcdServer {
    bin: PathBuf,
    dir: tempfile::TempDir,
    /// The loopback address of the client port: 127.0.0.1, or ::1 ([`EtcdServer::start_ipv6`]).
    client_host: IpAddr,
    client_port: u16,
    peer_port: u16,
    /// Plain HTTP on loopback for `/health` (etcd's `--listen-metrics-urls`), whatever the
    /// client port speaks.
    metrics_port: u16,
    /// With TLS: the CA, etcd's certificate and the client certificate of [`CLIENT`].
    pki: Option<Pki>,
    running: Option<Running>,
}

/// The client certificate's name (common name) in a TLS server's PKI.
pub const CLIENT: &str = "client";

struct Running {
    wrapper: Child,
    stop: ChildStdin,
}

/// The etcd binary to run, or why there is none.
fn etcd_binary(configured: Option<std::ffi::OsString>) -> Result<PathBuf, String> {
    let bin = configured.map_or_else(|| PathBuf::from(DEFAULT_ETCD_BIN), PathBuf::from);
    if bin.is_file() {
        Ok(bin)
    } else {
        Err(format!(
            "the etcd tests need the etcd server binary, and {} does not exist: install it \
             (Debian: apt-get install etcd-server) or point {ETCD_BIN_ENV} at one",
            bin.display()
        ))
    }
}

fn free_port(host: IpAddr) -> u16 {
    TcpListener::bind((host, 0))
        .and_then(|l| l.local_addr())
        .expect("binding a loopback port")
        .port()
}

impl EtcdServer {
    /// Starts etcd on free loopback ports with a fresh data directory and waits until it
    /// serves. Blocks the calling thread (about a second). Panics, saying why, when etcd is
    /// not installed or does not come up.
    pub fn start() -> EtcdServer {
        Self::start_with(false, Ipv4Addr::LOCALHOST.into())
    }

    /// [`EtcdServer::start`] with the client port on the IPv6 loopback address: the store URL
    /// is `etcd://[::1]:PORT`, as a node of an IPv6-only underlay names its etcd.
    pub fn start_ipv6() -> EtcdServer {
        Self::start_with(false, Ipv6Addr::LOCALHOST.into())
    }

    /// [`EtcdServer::start`] with TLS on the client port and `--client-cert-auth`: a CA made
    /// for this server signs its certificate and one client certificate ([`EtcdServer::auth`]).
    pub fn start_tls() -> EtcdServer {
        Self::start_with(true, Ipv4Addr::LOCALHOST.into())
    }

    fn start_with(tls: bool, client_host: IpAddr) -> EtcdServer {
        let bin = etcd_binary(std::env::var_os(ETCD_BIN_ENV)).unwrap_or_else(|e| panic!("{e}"));
        let mut last_error = String::new();
        // Another process may grab a port between our probe and etcd's bind: try new ones.
        for _ in 0..3 {
            let dir = tempfile::Builder::new()
                .prefix("twill-etcd-")
                .tempdir()
                .expect("creating a temporary directory");
            let pki = tls.then(|| {
                Pki::generate(
                    dir.path().join("pki"),
                    &["127.0.0.1".into(), "localhost".into()],
                    &[CLIENT],
                )
                .expect("making the test etcd's certificates")
            });
            let mut server = EtcdServer {
                bin: bin.clone(),
                dir,
                client_host,
                client_port: free_port(client_host),
                peer_port: free_port(Ipv4Addr::LOCALHOST.into()),
                metrics_port: free_port(Ipv4Addr::LOCALHOST.into()),
                pki,
                running: None,
            };
            let ports = [server.client_port, server.peer_port, server.metrics_port];
            if ports[0] == ports[1] || ports[1] == ports[2] || ports[0] == ports[2] {
                continue;
            }
            match server.launch() {
                Ok(()) => return server,
                Err(e) if e.contains("address already in use") => last_error = e,
                Err(e) => panic!("{e}"),
            }
        }
        panic!("{last_error}");
    }

    /// The store URL of this server, `etcd://127.0.0.1:PORT` (or `etcd://[::1]:PORT`; TLS or
    /// not: see [`EtcdServer::auth`]).
    pub fn url(&self) -> String {
        format!("etcd://{}", self.client_addr())
    }

    fn client_addr(&self) -> SocketAddr {
        SocketAddr::new(self.client_host, self.client_port)
    }

    /// The credentials a client needs: the CA and client certificate with TLS, nothing
    /// without.
    pub fn auth(&self) -> EtcdAuth {
        self.pki
            .as_ref()
            .map_or_else(EtcdAuth::default, |p| p.client_auth(CLIENT))
    }

    /// The certificates of a TLS server.
    pub fn pki(&self) -> Option<&Pki> {
        self.pki.as_ref()
    }

    /// Opens a store on this server with [`EtcdServer::auth`].
    pub async fn connect(&self) -> crate::Result<crate::Store> {
        crate::Store::connect_with(&self.url(), &self.auth()).await
    }

    pub fn client_port(&self) -> u16 {
        self.client_port
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Stops etcd gracefully (SIGTERM) and waits for it to exit. The data stays.
    pub fn stop(&mut self) {
        if let Some(running) = self.running.take() {
            running.finish("term", STOP_WAIT);
        }
    }

    /// Starts etcd again on the same ports and data directory (stopping it first if it
    /// runs) and waits until it serves.
    pub fn restart(&mut self) {
        self.stop();
        if let Err(e) = self.launch() {
            panic!("{e}");
        }
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("etcd.log")
    }

    fn launch(&mut self) -> Result<(), String> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())
            .map_err(|e| format!("opening the etcd log: {e}"))?;
        let log2 = log.try_clone().map_err(|e| format!("etcd log: {e}"))?;
        let scheme = if self.pki.is_some() { "https" } else { "http" };
        let client = format!("{scheme}://{}", self.client_addr());
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let data = self.data_dir();
        let tls_args: Vec<String> = match &self.pki {
            Some(pki) => vec![
                "--client-cert-auth".into(),
                format!("--trusted-ca-file={}", pki.ca().display()),
                format!("--cert-file={}", pki.server_cert().display()),
                format!("--key-file={}", pki.server_key().display()),
            ],
            None => Vec::new(),
        };
        let mut wrapper = Command::new("/bin/sh")
            .arg("-c")
            .arg(WRAPPER)
            .arg("twill-etcd")
            .arg(&self.bin)
            .arg("--name=default")
            .arg(format!("--data-dir={}", data.display()))
            .arg(format!("--listen-client-urls={client}"))
            .arg(format!("--advertise-client-urls={client}"))
            .arg(format!("--listen-peer-urls={peer}"))
            .arg(format!("--initial-advertise-peer-urls={peer}"))
            .arg(format!("--initial-cluster=default={peer}"))
            .arg(format!(
                "--listen-metrics-urls=http://127.0.0.1:{}",
                self.metrics_port
            ))
            .args(&tls_args)
            .stdin(Stdio::piped())
            .stdout(log)
            .stderr(log2)
            .spawn()
            .map_err(|e| format!("starting {}: {e}", self.bin.display()))?;
        let stop = wrapper.stdin.take().expect("stdin is piped");
        let mut running = Running { wrapper, stop };
        let deadline = Instant::now() + READY_WAIT;
        loop {
            if healthy(self.metrics_port) {
                self.running = Some(running);
                return Ok(());
            }
            let exited = matches!(running.wrapper.try_wait(), Ok(Some(_)));
            if exited || Instant::now() > deadline {
                running.finish("kill", STOP_WAIT);
                return Err(format!(
                    "etcd ({}) on {} {}; its log ends:\n{}",
                    self.bin.display(),
                    self.client_addr(),
                    if exited {
                        "exited during startup".to_string()
                    } else {
                        format!("was not healthy within {}s", READY_WAIT.as_secs())
                    },
                    log_tail(&self.log_path())
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Running {
    fn finish(mut self, how: &str, wait: Duration) {
        let _ = writeln!(self.stop, "{how}");
        drop(self.stop);
        let deadline = Instant::now() + wait;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.wrapper.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.wrapper.kill();
        let _ = self.wrapper.wait();
    }
}

impl Drop for EtcdServer {
    fn drop(&mut self) {
        if let Some(running) = self.running.take() {
            running.finish("kill", STOP_WAIT);
        }
    }
}

/// True when etcd's `/health` (on its plain metrics port) says it has a leader and serves.
fn healthy(port: u16) -> bool {
    let probe = || -> std::io::Result<String> {
        let mut s = TcpStream::connect_timeout(
            &(Ipv4Addr::LOCALHOST, port).into(),
            Duration::from_millis(500),
        )?;
        s.set_read_timeout(Some(Duration::from_secs(2)))?;
        s.write_all(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        Ok(out)
    };
    probe().is_ok_and(|answer| answer.contains(r#""health":"true""#))
}

fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_binary_is_explained() {
        let err = etcd_binary(Some("/nonexistent/etcd".into())).unwrap_err();
        assert!(err.contains("/nonexistent/etcd"), "{err}");
        assert!(err.contains("apt-get install etcd-server"), "{err}");
    }

    #[test]
    fn start_stop_restart() {
        let mut etcd = EtcdServer::start();
        assert!(healthy(etcd.metrics_port));
        etcd.stop();
        assert!(!healthy(etcd.metrics_port));
        etcd.restart();
        assert!(healthy(etcd.metrics_port));
        let port = etcd.metrics_port;
        let dir = etcd.dir.path().to_path_buf();
        drop(etcd);
        assert!(!healthy(port));
        assert!(!dir.exists());
    }
}
