//! Shared set-up for the plugin's integration tests: a "host" namespace with an uplink to an
//! "outside" namespace (so the host has a default route, as a real one does), the plugin
//! installed in a CNI_PATH, pods, and configuration builders.

#![allow(dead_code)]

use serde_json::{Value, json};
use twill_testkit::{Call, Cni, CniOutput, Netns, TempDir};

/// The host's address on its uplink, and the outside world's.
pub const HOST_UPLINK: &str = "192.0.2.2";
pub const OUTSIDE: &str = "192.0.2.1";

pub struct Host {
    pub ns: Netns,
    pub outside: Netns,
    pub cni: Cni,
    pub data: TempDir,
    _cni_dir: TempDir,
}

impl Host {
    pub fn new(tag: &str) -> Host {
        twill_testkit::require_root();
        let ns = Netns::new(&format!("{tag}-h"));
        let outside = Netns::new(&format!("{tag}-o"));
        twill_testkit::veth(&ns, "uplink", &outside, "wan");
        ns.ok(&[
            "ip",
            "addr",
            "add",
            &format!("{HOST_UPLINK}/24"),
            "dev",
            "uplink",
        ]);
        ns.ok(&["ip", "route", "add", "default", "via", OUTSIDE]);
        outside.ok(&["ip", "addr", "add", &format!("{OUTSIDE}/24"), "dev", "wan"]);
        let (cni, cni_dir) = Cni::new(std::path::Path::new(env!("CARGO_BIN_EXE_twill")), &ns);
        Host {
            ns,
            outside,
            cni,
            data: TempDir::new(&format!("{tag}-data")),
            _cni_dir: cni_dir,
        }
    }

    /// A twill plugin configuration (one plugin of a list, as the runtime hands it over).
    pub fn conf(&self, version: &str, extra: Value) -> Value {
        let mut c = json!({
            "cniVersion": version,
            "name": "twillnet",
            "type": "twill",
            "bridge": format!("tbr{}", &self.ns.name()[self.ns.name().len() - 6..]),
            "ranges": ["10.88.0.0/16", "fd88::/64"],
            "dataDir": self.data.path(),
        });
        for (k, v) in extra.as_object().cloned().unwrap_or_default() {
            c[k] = v;
        }
        c
    }

    pub fn call(
        &self,
        plugin: &str,
        command: &str,
        id: &str,
        pod: Option<&Netns>,
        conf: &Value,
    ) -> CniOutput {
        let path = pod.map(|p| p.path());
        self.cni.call(&Call {
            plugin,
            command,
            container_id: id,
            netns: path.as_deref(),
            ifname: "eth0",
            args: None,
            config: conf,
            path: None,
        })
    }

    pub fn add(&self, id: &str, pod: &Netns, conf: &Value) -> CniOutput {
        self.call("twill", "ADD", id, Some(pod), conf)
    }

    pub fn del(&self, id: &str, pod: Option<&Netns>, conf: &Value) -> CniOutput {
        self.call("twill", "DEL", id, pod, conf)
    }

    /// Number of attachments recorded in the network's IPAM state.
    pub fn allocations(&self) -> Vec<(String, String)> {
        let path = self.data.path().join("ipam/twillnet/state.json");
        let Ok(text) = std::fs::read_to_string(&path) else {
            return vec![];
        };
        let v: Value = serde_json::from_str(&text).expect("state.json is JSON");
        v["allocations"]
            .as_object()
            .map(|m| {
                m.iter()
                    .map(|(ip, owner)| {
                        (
                            ip.clone(),
                            owner["container_id"].as_str().unwrap_or("").to_string(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// The container's first address of the family of `v4`, from an ADD result.
pub fn result_ip(result: &Value, v4: bool) -> String {
    result["ips"]
        .as_array()
        .expect("ips")
        .iter()
        .map(|ip| {
            ip["address"]
                .as_str()
                .unwrap()
                .split('/')
                .next()
                .unwrap()
                .to_string()
        })
        .find(|a| a.contains('.') == v4)
        .expect("address of the family")
}
