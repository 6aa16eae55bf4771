//! Pods as network-policy endpoints (cluster mode, when the node file says the agent enforces
//! policy): ADD records the attachment in `<dataDir>/endpoints/<container id>@<ifname>.json`
//! and then waits on the agent socket until the agent has put the pod's policy in force, so
//! the pod's first packet is already policed; DEL removes the record and tells the agent.
//!
//! A record is keyed by the attachment, (container ID, interface name): a DEL for an interface
//! that was never added touches nothing of the pod's other attachments. The key is the file
//! name without `.json` and is what the agent socket's `containerId` carries; container IDs
//! never hold `@`, so it splits unambiguously. Records written before the key included the
//! interface (`<container id>.json`) are still honoured: DEL removes one only when its
//! `interface` is this attachment's host veth.
//!
//! The directory is 0700 and the records 0600 whatever the umask: a record's labels decide
//! the pod's policy, so nobody but root may write one.
//!
//! The pod's identity is what Kubernetes runtimes pass in `CNI_ARGS` (`K8S_POD_NAMESPACE`,
//! `K8S_POD_NAME`), else namespace `default` and the container id as name; its labels come
//! from `runtimeConfig.labels`.

use std::io::{BufRead, BufReader, Write};
use std::net::IpAddr;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use twill_policy::Endpoint;
use twill_types::node::{self, AgentReply, AgentRequest, NodeFile};

use crate::config::{Env, NetConf};
use crate::spec::{CniError, code};

/// How long ADD waits for the agent (an agent restart takes well under a second).
const ADD_WAIT: Duration = Duration::from_secs(10);
/// DEL only informs; the agent also rescans the records periodically.
const DEL_WAIT: Duration = Duration::from_secs(2);

/// The key of an attachment's record: `<container id>@<ifname>`.
pub fn record_key(container_id: &str, ifname: &str) -> String {
    format!("{container_id}@{ifname}")
}

fn record_path(data_dir: &Path, key: &str) -> PathBuf {
    node::endpoints_dir(data_dir).join(format!("{key}.json"))
}

/// The endpoint ADD is about to create.
pub fn endpoint(
    env: &Env,
    conf: &NetConf,
    node: &NodeFile,
    host_ifname: &str,
    ips: &[IpAddr],
) -> Endpoint {
    let arg = |k: &str| env.args.get(k).filter(|v| !v.is_empty()).cloned();
    Endpoint {
        namespace: arg("K8S_POD_NAMESPACE").unwrap_or_else(|| "default".into()),
        name: arg("K8S_POD_NAME").unwrap_or_else(|| env.container_id.clone()),
        labels: conf.labels.clone(),
        addresses: ips.to_vec(),
        node: node.node.clone(),
        interface: host_ifname.to_string(),
        named_ports: Vec::new(),
    }
}

/// Records the endpoint and waits until the agent enforces its policy.
pub fn register(conf: &NetConf, env: &Env, ep: &Endpoint) -> Result<(), CniError> {
    let state = |msg: String| CniError::new(code::STATE, msg);
    let dir = node::endpoints_dir(&conf.data_dir);
    twill_types::fs::private_dir(&dir).map_err(|e| state(e.to_string()))?;
    let key = record_key(&env.container_id, &env.ifname);
    let path = record_path(&conf.data_dir, &key);
    let bytes = serde_json::to_vec(ep).expect("endpoints serialize");
    twill_types::fs::write_atomic(&path, &bytes, 0o600).map_err(|e| state(e.to_string()))?;
    let request = AgentRequest::Add { container_id: key };
    ask(&conf.data_dir, &request, ADD_WAIT).inspect_err(|_| {
        // ADD fails and undoes everything: the agent must forget the pod too.
        unregister(conf, env, &ep.interface);
    })
}

/// Removes this attachment's record and tells the agent (best effort: the agent rescans the
/// records). Only this attachment's: a record of another interface of the same container is
/// left alone, and so is a record in the old per-container format unless its interface is
/// `host_ifname` (this attachment's host veth).
pub fn unregister(conf: &NetConf, env: &Env, host_ifname: &str) {
    let key = record_key(&env.container_id, &env.ifname);
    let mut removed = Vec::new();
    if std::fs::remove_file(record_path(&conf.data_dir, &key)).is_ok() {
        removed.push(key);
    }
    let legacy = record_path(&conf.data_dir, &env.container_id);
    if let Ok(bytes) = std::fs::read(&legacy)
        && let Ok(ep) = serde_json::from_slice::<Endpoint>(&bytes)
        && ep.interface == host_ifname
        && std::fs::remove_file(&legacy).is_ok()
    {
        removed.push(env.container_id.clone());
    }
    for container_id in removed {
        let _ = ask(
            &conf.data_dir,
            &AgentRequest::Del { container_id },
            DEL_WAIT,
        );
    }
}

/// Every endpoint record of `dataDir` as `(key, endpoint)` (for `twill ipam repair`); records
/// that cannot be read are skipped.
pub fn records(data_dir: &Path) -> Vec<(String, Endpoint)> {
    let Ok(dir) = std::fs::read_dir(node::endpoints_dir(data_dir)) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for entry in dir.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(key) = name.strip_suffix(".json") else {
            continue;
        };
        if let Ok(bytes) = std::fs::read(entry.path())
            && let Ok(ep) = serde_json::from_slice::<Endpoint>(&bytes)
        {
            out.push((key.to_string(), ep));
        }
    }
    out
}

/// Sends one request line and waits for the agent's answer, retrying the connection while the
/// agent is (re)starting, for at most `wait`.
fn ask(data_dir: &Path, request: &AgentRequest, wait: Duration) -> Result<(), CniError> {
    let mut line = serde_json::to_vec(request).expect("requests serialize");
    line.push(b'\n');
    let socket = node::agent_socket(data_dir);
    let deadline = Instant::now() + wait;
    let late = || {
        CniError::new(
            code::TRY_AGAIN_LATER,
            format!(
                "the node agent did not confirm the pod's network policy within {} s \
                 (socket {}): is `twill agent` running?",
                wait.as_secs(),
                socket.display()
            ),
        )
    };
    loop {
        match UnixStream::connect(&socket) {
            Ok(mut stream) => {
                let left = deadline.saturating_duration_since(Instant::now());
                stream
                    .set_read_timeout(Some(left.max(Duration::from_millis(10))))
                    .map_err(|_| late())?;
                stream.write_all(&line).map_err(|_| late())?;
                let mut answer = String::new();
                BufReader::new(stream)
                    .read_line(&mut answer)
                    .map_err(|_| late())?;
                let reply: AgentReply = serde_json::from_str(&answer).map_err(|_| late())?;
                if reply.ok {
                    return Ok(());
                }
                return Err(CniError::new(
                    code::FIREWALL,
                    format!(
                        "the node agent could not enforce the pod's network policy: {}",
                        reply.error.as_deref().unwrap_or("no reason given")
                    ),
                ));
            }
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(50)),
            Err(_) => return Err(late()),
        }
    }
}
