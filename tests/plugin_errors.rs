//! The plugin's answers to bad input: every error is CNI error JSON on stdout with the spec's
//! code and a message a person can act on. These fail before touching the kernel, so they need
//! no root and run everywhere.

use std::io::Write;
use std::process::{Command, Stdio};

use serde_json::{Value, json};

fn plugin(env: &[(&str, &str)], stdin: &str) -> (i32, Value) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_twill"));
    cmd.env_clear().env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let v = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
    (out.status.code().unwrap(), v)
}

fn add_env() -> Vec<(&'static str, &'static str)> {
    vec![
        ("CNI_COMMAND", "ADD"),
        ("CNI_CONTAINERID", "c1"),
        ("CNI_NETNS", "/var/run/netns/does-not-exist-twill"),
        ("CNI_IFNAME", "eth0"),
        ("CNI_PATH", "/usr/lib/cni"),
    ]
}

fn conf(extra: Value) -> String {
    let mut c = json!({"cniVersion": "1.1.0", "name": "n", "type": "twill", "ranges": ["10.88.0.0/16"], "dataDir": "/nonexistent/twill-test"});
    for (k, v) in extra.as_object().cloned().unwrap_or_default() {
        c[k] = v;
    }
    c.to_string()
}

fn assert_error(result: (i32, Value), code: u64, needle: &str) {
    let (exit, v) = result;
    assert_ne!(exit, 0, "expected failure, got {v}");
    assert_eq!(v["code"].as_u64(), Some(code), "wrong code in {v}");
    let msg = v["msg"].as_str().unwrap_or("");
    assert!(
        msg.contains(needle),
        "message {msg:?} should mention {needle:?}"
    );
    assert!(
        v["cniVersion"].is_string(),
        "error JSON carries cniVersion: {v}"
    );
}

#[test]
fn version_lists_every_supported_version() {
    let (exit, v) = plugin(&[("CNI_COMMAND", "VERSION")], r#"{"cniVersion":"1.1.0"}"#);
    assert_eq!(exit, 0);
    assert_eq!(v["cniVersion"], "1.1.0");
    let versions: Vec<&str> = v["supportedVersions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_str().unwrap())
        .collect();
    assert_eq!(versions, ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"]);
}

#[test]
fn unsupported_version_is_code_1() {
    assert_error(
        plugin(&add_env(), &conf(json!({"cniVersion": "0.2.0"}))),
        1,
        "0.2.0",
    );
    assert_error(
        plugin(&add_env(), &conf(json!({"cniVersion": "9.9.9"}))),
        1,
        "supports",
    );
}

#[test]
fn bad_environment_is_code_4() {
    let mut env = add_env();
    env.retain(|(k, _)| *k != "CNI_CONTAINERID");
    assert_error(plugin(&env, &conf(json!({}))), 4, "CNI_CONTAINERID");
    let mut env = add_env();
    env.retain(|(k, _)| *k != "CNI_NETNS");
    assert_error(plugin(&env, &conf(json!({}))), 4, "CNI_NETNS");
    let mut env = add_env();
    env[0] = ("CNI_COMMAND", "REBOOT");
    assert_error(plugin(&env, &conf(json!({}))), 4, "REBOOT");
    let mut env = add_env();
    env[3] = ("CNI_IFNAME", "this-name-is-too-long");
    assert_error(plugin(&env, &conf(json!({}))), 4, "15");
    // The netns path is checked before anything is allocated.
    assert_error(
        plugin(&add_env(), &conf(json!({}))),
        4,
        "does-not-exist-twill",
    );
}

#[test]
fn undecodable_config_is_code_6() {
    assert_error(plugin(&add_env(), "{this is not json"), 6, "decode");
    assert_error(
        plugin(&add_env(), &conf(json!({"ranges": "10.0.0.0/8"}))),
        6,
        "decode",
    );
}

#[test]
fn invalid_config_is_code_7() {
    assert_error(
        plugin(&add_env(), &conf(json!({"ranges": ["10.88.0.1/16"]}))),
        7,
        "10.88.0.0/16",
    );
    assert_error(
        plugin(&add_env(), &conf(json!({"ranges": ["banana"]}))),
        7,
        "CIDR",
    );
    assert_error(
        plugin(&add_env(), &conf(json!({"mode": "teleport"}))),
        7,
        "teleport",
    );
    assert_error(
        plugin(&add_env(), &conf(json!({"name": "bad name"}))),
        7,
        "network name",
    );
    assert_error(
        plugin(&add_env(), &conf(json!({"ranges": []}))),
        7,
        "ranges",
    );
    assert_error(
        plugin(
            &add_env(),
            &conf(json!({"bridge": "a-bridge-name-too-long"})),
        ),
        7,
        "bridge",
    );
    assert_error(plugin(&add_env(), &conf(json!({"mtu": 100}))), 7, "mtu");
}

#[test]
fn check_before_0_4_0_and_status_gc_before_1_1_0_are_refused() {
    let mut env = add_env();
    env[0] = ("CNI_COMMAND", "CHECK");
    assert_error(
        plugin(&env, &conf(json!({"cniVersion": "0.3.1"}))),
        1,
        "CHECK",
    );
    assert_error(
        plugin(
            &[("CNI_COMMAND", "STATUS")],
            &conf(json!({"cniVersion": "1.0.0"})),
        ),
        1,
        "STATUS",
    );
    assert_error(
        plugin(
            &[("CNI_COMMAND", "GC")],
            &conf(json!({"cniVersion": "1.0.0"})),
        ),
        1,
        "GC",
    );
}

/// Cluster mode (no `ranges`): until the agent has written the node file, ADD and CHECK say
/// "try again later" (11) and STATUS says "unavailable" (50); a corrupt node file is code 7.
#[test]
fn cluster_mode_waits_for_the_agent() {
    let dir = tempfile::tempdir().unwrap();
    let conf = json!({"cniVersion": "1.1.0", "name": "n", "type": "twill",
        "dataDir": dir.path().to_str().unwrap()})
    .to_string();
    assert_error(plugin(&add_env(), &conf), 11, "twill agent");
    let mut status_env = add_env();
    status_env[0] = ("CNI_COMMAND", "STATUS");
    assert_error(plugin(&status_env, &conf), 50, "node.json");
    assert!(
        std::fs::read_dir(dir.path()).unwrap().next().is_none(),
        "a refused call must leave nothing behind"
    );

    std::fs::write(dir.path().join("node.json"), b"{not json").unwrap();
    assert_error(plugin(&add_env(), &conf), 7, "node file");

    std::fs::write(
        dir.path().join("node.json"),
        json!({"node": "n1", "subnet": "10.244.7.0/24", "mtu": 1450, "backend": "vxlan",
               "clusterNetworks": ["10.244.0.0/16"]})
        .to_string(),
    )
    .unwrap();
    let (code, v) = plugin(&status_env, &conf);
    assert_eq!(code, 0, "STATUS with a node file: {v}");
}
