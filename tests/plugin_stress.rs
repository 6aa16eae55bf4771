//! Address management under load and under crashes: 200 ADDs running 8 at a time, and plugins
//! killed with SIGKILL part-way through ADD. Needs root.

mod common;

use std::collections::{HashMap, HashSet};
use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use common::{Host, result_ip};
use serde_json::{Value, json};
use twill_testkit::Netns;

/// Runs `f` over `items` with `parallel` worker threads.
fn parallel_map<T: Sync, R: Send>(
    items: &[T],
    parallel: usize,
    f: impl Fn(&T) -> R + Sync,
) -> Vec<R> {
    let next = Mutex::new(0usize);
    let out: Mutex<Vec<(usize, R)>> = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..parallel {
            s.spawn(|| {
                loop {
                    let i = {
                        let mut n = next.lock().unwrap();
                        let i = *n;
                        *n += 1;
                        i
                    };
                    if i >= items.len() {
                        break;
                    }
                    let r = f(&items[i]);
                    out.lock().unwrap().push((i, r));
                }
            });
        }
    });
    let mut v = out.into_inner().unwrap();
    v.sort_by_key(|(i, _)| *i);
    v.into_iter().map(|(_, r)| r).collect()
}

/// The IPv4 address on each pod's eth0 (pods without eth0 are skipped).
fn configured_addresses(pods: &[(String, Netns)]) -> HashMap<String, String> {
    let mut out = HashMap::new();
    for (id, pod) in pods {
        if pod.link("eth0").is_none() {
            continue;
        }
        if let Some(a) = pod.addresses("eth0").into_iter().find(|a| a.contains('.')) {
            out.insert(id.clone(), a.split('/').next().unwrap().to_string());
        }
    }
    out
}

#[test]
#[ignore = "needs root"]
fn two_hundred_concurrent_adds_get_distinct_addresses() {
    let host = Host::new("conc");
    let conf = host.conf("1.1.0", json!({"ranges": ["10.66.0.0/24"], "ipMasq": true}));
    let pods: Vec<(String, Netns)> = (0..200)
        .map(|i| (format!("conc{i:03}"), Netns::new("conc-p")))
        .collect();
    let results = parallel_map(&pods, 8, |(id, pod)| host.add(id, pod, &conf));
    let failures: Vec<&str> = results
        .iter()
        .filter(|r| r.code != 0)
        .map(|r| r.stdout.as_str())
        .collect();
    assert!(
        failures.is_empty(),
        "{} of 200 ADDs failed, first: {:?}",
        failures.len(),
        failures.first()
    );
    let ips: HashSet<String> = results.iter().map(|r| result_ip(&r.json(), true)).collect();
    assert_eq!(ips.len(), 200, "addresses handed out twice");
    assert_eq!(host.allocations().len(), 200);
    // What the kernel has matches what was handed out, pod by pod.
    let configured = configured_addresses(&pods);
    for ((id, _), r) in pods.iter().zip(&results) {
        assert_eq!(
            configured.get(id),
            Some(&result_ip(&r.json(), true)),
            "{id}"
        );
    }
    let dels = parallel_map(&pods, 8, |(id, pod)| host.del(id, Some(pod), &conf));
    assert!(dels.iter().all(|d| d.code == 0));
    assert!(host.allocations().is_empty());
    assert!(!host.ns.link_names().iter().any(|n| n.starts_with("tw")));
}

#[test]
#[ignore = "needs root"]
fn sigkill_during_add_never_double_allocates_and_gc_reclaims() {
    let host = Host::new("kill");
    let conf = host.conf("1.1.0", json!({"ranges": ["10.67.0.0/24"]}));
    let pods: Vec<(String, Netns)> = (0..48)
        .map(|i| (format!("kill{i:02}"), Netns::new("kill-p")))
        .collect();
    let bin = host.cni.cni_path.join("twill");
    // One complete ADD first, so the kills land in the steady state (bridge and firewall base
    // exist) as well as in the first-time set-up.
    let warm = Netns::new("kill-w");
    host.add("warm", &warm, &conf).ok();

    // Start ADDs and kill each after a different delay: some die before allocating, some
    // between allocation and plumbing, some after finishing.
    parallel_map(&pods, 4, |(id, pod)| {
        let delay_us = (id[4..].parse::<u64>().unwrap() * 523) % 40000;
        let mut child = Command::new("ip")
            .args(["netns", "exec", host.ns.name()])
            .arg(&bin)
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("CNI_COMMAND", "ADD")
            .env("CNI_CONTAINERID", id)
            .env("CNI_NETNS", pod.path())
            .env("CNI_IFNAME", "eth0")
            .env("CNI_PATH", &host.cni.cni_path)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(conf.to_string().as_bytes())
            .unwrap();
        std::thread::sleep(Duration::from_micros(delay_us));
        let _ = child.kill();
        let _ = child.wait();
    });

    // Invariants: the state file is intact; no address is configured on two pods; every
    // configured address is recorded as owned by that pod.
    let state: Value = serde_json::from_str(
        &std::fs::read_to_string(host.data.path().join("ipam/twillnet/state.json"))
            .unwrap_or_else(|_| "{\"allocations\":{}}".into()),
    )
    .expect("state.json intact");
    let owners: HashMap<String, String> = state["allocations"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(ip, o)| (ip.clone(), o["container_id"].as_str().unwrap().to_string()))
        .collect();
    let configured = configured_addresses(&pods);
    let distinct: HashSet<&String> = configured.values().collect();
    assert_eq!(
        distinct.len(),
        configured.len(),
        "one address on two pods: {configured:?}"
    );
    for (id, ip) in &configured {
        assert_eq!(
            owners.get(ip),
            Some(id),
            "{ip} on {id} is not recorded as {id}'s"
        );
    }
    eprintln!(
        "killed ADDs: {} pods got an address, {} allocations recorded",
        configured.len(),
        owners.len()
    );

    // Fresh ADDs still work and never reuse a held address.
    let fresh: Vec<(String, Netns)> = (0..8)
        .map(|i| (format!("fresh{i}"), Netns::new("kill-f")))
        .collect();
    for (id, pod) in &fresh {
        let ip = result_ip(&host.add(id, pod, &conf).ok(), true);
        assert!(
            !owners.contains_key(&ip) || owners[&ip] == *id,
            "{ip} was still held by {}",
            owners[&ip]
        );
    }

    // GC with only the fresh (and warm-up) pods valid reclaims every leak (addresses and veths).
    let mut gc = conf.clone();
    let valid: Vec<Value> = fresh
        .iter()
        .map(|(id, _)| id.as_str())
        .chain(["warm"])
        .map(|id| json!({"containerID": id, "ifname": "eth0"}))
        .collect();
    gc["cni.dev/valid-attachments"] = json!(valid);
    host.call("twill", "GC", "", None, &gc).ok();
    let left: HashSet<String> = host.allocations().into_iter().map(|(_, c)| c).collect();
    let mut expected: HashSet<String> = fresh.iter().map(|(id, _)| id.clone()).collect();
    expected.insert("warm".to_string());
    assert_eq!(left, expected);
    let veths = host
        .ns
        .link_names()
        .into_iter()
        .filter(|n| n.starts_with("tw"))
        .count();
    assert_eq!(veths, fresh.len() + 1, "leaked veths survived GC");
}
