//! The node's own objects through the one reconciler, against the real kernel in a namespace
//! this test creates: a reconcile writes the sysctl, the TUN-like link's address, the
//! masquerade chain and the host protection table; a second reconcile of the same value plans
//! nothing; what is deleted behind the reconciler's back comes back at the next reconcile; a
//! refused object is in error with the kernel's (or nft's) reason and retried; node leave
//! removes everything twill owns.

mod in_netns;
use in_netns::in_ns;

use std::time::{Duration, Instant};

use twill_dataplane::reconcile::{ObjectKey, ObjectStatus, Reconciler, Rtnl};
use twill_testkit::{Netns, require_root};
use twill_types::desired::host_guard::{Elements, Rules};
use twill_types::desired::{AddressSpec, DesiredState, HostGuardSpec, RouteSpec};

const CHAIN: &str = "masq-_twill_cluster";

/// A namespace with eth0 (10.9.0.1/24, a veth: this kernel has no dummy links) up and a link
/// `twill.tun` standing in for the TUN device (made elsewhere than the reconciler, as the
/// tunnel engine makes it).
fn host_ns(name: &str, tun: bool) -> Netns {
    require_root();
    let ns = Netns::new(name);
    ns.ok(&[
        "ip", "link", "add", "eth0", "type", "veth", "peer", "name", "eth1",
    ]);
    ns.ok(&["ip", "link", "set", "eth1", "up"]);
    ns.ok(&["ip", "link", "set", "eth0", "up"]);
    ns.ok(&["ip", "addr", "add", "10.9.0.1/24", "dev", "eth0"]);
    if tun {
        add_tun(&ns);
    }
    ns
}

fn add_tun(ns: &Netns) {
    ns.ok(&[
        "ip",
        "link",
        "add",
        "twill.tun",
        "type",
        "veth",
        "peer",
        "name",
        "tunpeer",
    ]);
    ns.ok(&["ip", "link", "set", "twill.tun", "up"]);
}

fn guard() -> HostGuardSpec {
    HostGuardSpec {
        rules: Rules {
            pools: vec!["10.244.0.0/16".parse().unwrap()],
            node_subnet: Some("10.244.1.0/24".parse().unwrap()),
            workload_to_host: Default::default(),
            allow_ports: vec!["tcp:22".parse().unwrap()],
            control_tcp: vec![179, 2379, 2380],
            tunnel_udp: vec![8285, 8472],
            vxlan_port: Some(8472),
            pools6: Vec::new(),
            node_subnet6: None,
        },
        elements: Elements {
            control_hosts: ["10.9.0.1".parse().unwrap(), "10.9.0.2".parse().unwrap()].into(),
            vxlan_peers: [(
                "10.9.0.2".parse().unwrap(),
                "10.244.2.0/24".parse().unwrap(),
            )]
            .into(),
            ..Elements::default()
        },
    }
}

fn desired() -> DesiredState {
    DesiredState {
        routes: vec![RouteSpec {
            dst: "10.244.2.0/24".parse().unwrap(),
            via: "10.9.0.2".parse().unwrap(),
            dev: "eth0".into(),
            onlink: false,
        }],
        sysctls: [("net.ipv4.ip_forward".to_string(), "1".to_string())].into(),
        addresses: vec![AddressSpec {
            dev: "twill.tun".into(),
            address: "10.244.1.0/32".parse().unwrap(),
        }],
        masquerade: vec!["10.244.0.0/16".parse().unwrap()],
        host_guard: Some(guard()),
        ..DesiredState::default()
    }
}

/// The IPv4 addresses (`addr/prefix`) of `dev`.
fn ipv4(ns: &Netns, dev: &str) -> Vec<String> {
    let v = ns.ip_json(&["-4", "addr", "show", "dev", dev]);
    v.as_array()
        .into_iter()
        .flatten()
        .flat_map(|link| link["addr_info"].as_array().cloned().unwrap_or_default())
        .map(|a| format!("{}/{}", a["local"].as_str().unwrap_or(""), a["prefixlen"]))
        .collect()
}

fn forwarding(ns: &Netns) -> String {
    ns.ok(&["cat", "/proc/sys/net/ipv4/ip_forward"])
        .trim()
        .to_string()
}

fn masq_chain(ns: &Netns) -> String {
    let out = ns.exec(&["nft", "list", "chain", "inet", "twill", CHAIN]);
    String::from_utf8_lossy(&out.stdout).to_string()
}

#[test]
#[ignore = "needs root"]
fn a_reconcile_writes_the_host_objects_once_and_repairs_what_was_deleted() {
    let ns = host_ns("ho", true);
    assert_eq!(forwarding(&ns), "0", "a new namespace does not forward");
    // Something of the admin's on the link: the link must hold exactly the one address.
    ns.ok(&["ip", "addr", "add", "192.0.2.7/32", "dev", "twill.tun"]);
    let (first, second, second_took) = in_ns(&ns, || async {
        let (reconciler, _) = Reconciler::start(Rtnl::new().unwrap());
        let first = reconciler.reconcile(desired()).await.unwrap();
        let t = Instant::now();
        let second = reconciler.reconcile(desired()).await.unwrap();
        (first, second, t.elapsed())
    });
    let report = first.report.expect("the first reconcile applies");
    assert!(report.is_ok(), "{report}");
    assert_eq!(first.plan.host_changes(), 4, "{}", first.plan);
    assert_eq!(forwarding(&ns), "1");
    assert_eq!(ipv4(&ns, "twill.tun"), vec!["10.244.1.0/32"]);
    let chain = masq_chain(&ns);
    assert!(
        chain.contains(
            "ip saddr 10.244.0.0/16 ip daddr != { 10.244.0.0/16, 224.0.0.0/4 } masquerade"
        ),
        "{chain}"
    );
    let host = ns.nft_table("inet", "twill-host").expect("inet twill-host");
    assert!(host.to_string().contains("vxlan_peers"), "{host}");
    // The same value again: nothing planned, nothing applied.
    assert!(second.plan.is_empty(), "{}", second.plan);
    assert!(second.report.is_none());
    eprintln!("a reconcile that changes nothing: {second_took:?}");

    // Deleted behind the reconciler's back: back at the next reconcile.
    ns.ok(&["nft", "delete", "table", "inet", "twill-host"]);
    ns.ok(&["nft", "delete", "chain", "inet", "twill", CHAIN]);
    ns.ok(&["ip", "addr", "flush", "dev", "twill.tun"]);
    ns.ok(&["sysctl", "-w", "net.ipv4.ip_forward=0"]);
    let repaired = in_ns(&ns, || async {
        let (reconciler, _) = Reconciler::start(Rtnl::new().unwrap());
        let repaired = reconciler.reconcile(desired()).await.unwrap();
        assert!(
            reconciler.snapshot().is_empty(),
            "{:?}",
            reconciler.snapshot()
        );
        repaired
    });
    assert_eq!(repaired.plan.host_changes(), 4, "{}", repaired.plan);
    assert!(repaired.report.unwrap().is_ok());
    assert!(ns.nft_table("inet", "twill-host").is_some());
    assert!(masq_chain(&ns).contains("masquerade"));
    assert_eq!(ipv4(&ns, "twill.tun"), vec!["10.244.1.0/32"]);
    assert_eq!(forwarding(&ns), "1");
}

#[test]
#[ignore = "needs root"]
fn only_the_elements_change_with_peers_and_a_changed_table_is_rewritten_whole() {
    use twill_dataplane::hostguard::Change;
    let ns = host_ns("hp", true);
    let (elements, rewritten) = in_ns(&ns, || async {
        let (reconciler, _) = Reconciler::start(Rtnl::new().unwrap());
        reconciler.reconcile(desired()).await.unwrap();
        let mut more = desired();
        let guard = more.host_guard.as_mut().unwrap();
        guard
            .elements
            .control_hosts
            .insert("10.9.0.3".parse().unwrap());
        let elements = reconciler.reconcile(more.clone()).await.unwrap();
        // Someone adds a rule: the rule count no longer matches what was written.
        let added = std::process::Command::new("nft")
            .args(["add", "rule", "inet", "twill-host", "input", "accept"])
            .status()
            .unwrap();
        assert!(added.success());
        let rewritten = reconciler.reconcile(more).await.unwrap();
        (elements.plan, rewritten.plan)
    });
    assert!(
        matches!(elements.host_guard, Some(Change::Elements(_))),
        "{elements}"
    );
    assert_eq!(elements.host_changes(), 1, "{elements}");
    assert!(
        matches!(rewritten.host_guard, Some(Change::Table(_))),
        "{rewritten}"
    );
    let host = ns.nft_table("inet", "twill-host").unwrap().to_string();
    assert!(host.contains("10.9.0.3"), "{host}");
}

#[test]
#[ignore = "needs root"]
fn a_restarted_reconciler_recognises_its_nft_objects_and_rewrites_edited_ones() {
    use twill_dataplane::hostguard::Change;
    use twill_dataplane::reconcile::MasqueradeChange;
    let ns = host_ns("hs", true);
    // Each reconcile below is by a fresh reconciler (new writers with no record of what was
    // written), as after the agent was killed and restarted.
    let restarted = || {
        in_ns(&ns, || async {
            let (reconciler, _) = Reconciler::start(Rtnl::new().unwrap());
            reconciler.reconcile(desired()).await.unwrap()
        })
    };
    let first = restarted();
    assert!(first.report.expect("the first applies").is_ok());
    let host_before = ns.ok(&["nft", "-a", "list", "table", "inet", "twill-host"]);
    let masq_before = ns.ok(&["nft", "-a", "list", "chain", "inet", "twill", CHAIN]);
    assert!(host_before.contains("comment \"twill:"), "{host_before}");
    assert!(masq_before.contains("comment \"twill:"), "{masq_before}");

    let again = restarted();
    assert!(again.plan.is_empty(), "{}", again.plan);
    assert!(again.report.is_none(), "nothing applied, no nft spawned");
    // Not rewritten: the kernel's handles are the same.
    assert_eq!(
        ns.ok(&["nft", "-a", "list", "table", "inet", "twill-host"]),
        host_before
    );
    assert_eq!(
        ns.ok(&["nft", "-a", "list", "chain", "inet", "twill", CHAIN]),
        masq_before
    );

    // A peer's element deleted by hand: only the elements are written back.
    ns.ok(&[
        "nft",
        "delete",
        "element",
        "inet",
        "twill-host",
        "control_hosts",
        "{ 10.9.0.2 }",
    ]);
    let elements = restarted();
    assert!(
        matches!(elements.plan.host_guard, Some(Change::Elements(_))),
        "{}",
        elements.plan
    );
    assert_eq!(elements.plan.host_changes(), 1, "{}", elements.plan);
    assert!(restarted().plan.is_empty());

    // A rule added by hand to each: both rewritten whole.
    ns.ok(&[
        "nft",
        "add",
        "rule",
        "inet",
        "twill-host",
        "input",
        "accept",
    ]);
    ns.ok(&["nft", "add", "rule", "inet", "twill", CHAIN, "accept"]);
    let edited = restarted();
    assert!(
        matches!(edited.plan.host_guard, Some(Change::Table(_))),
        "{}",
        edited.plan
    );
    assert!(
        matches!(edited.plan.masquerade, Some(MasqueradeChange::Write(_))),
        "{}",
        edited.plan
    );
    assert!(edited.report.unwrap().is_ok());
    assert!(restarted().plan.is_empty());

    // The same rules under another comment (say, written by an older agent): rewritten.
    let host = ns.ok(&["nft", "list", "table", "inet", "twill-host"]);
    let other = host.replacen("comment \"twill:", "comment \"other:", 1);
    let file = std::env::temp_dir().join(format!("twill-host-{}.nft", std::process::id()));
    std::fs::write(&file, other).unwrap();
    ns.ok(&["nft", "delete", "table", "inet", "twill-host"]);
    ns.ok(&["nft", "-f", file.to_str().unwrap()]);
    std::fs::remove_file(&file).unwrap();
    let recommented = restarted();
    assert!(
        matches!(recommented.plan.host_guard, Some(Change::Table(_))),
        "{}",
        recommented.plan
    );
    assert_eq!(recommented.plan.host_changes(), 1, "{}", recommented.plan);
}

#[test]
#[ignore = "needs root"]
fn a_refused_object_is_in_error_with_the_reason_and_retried_until_it_lands() {
    let ns = host_ns("hr", false);
    let key = ObjectKey::Address("twill.tun".into());
    let (first, after) = in_ns(&ns, || async {
        let (reconciler, _) = Reconciler::start(Rtnl::new().unwrap());
        // The link is not there yet (its engine has not made it): refused.
        let reconciled = reconciler.reconcile(desired()).await.unwrap();
        assert_eq!(reconciled.report.unwrap().failures.len(), 1);
        let first = reconciler.snapshot().get(&key).cloned();
        add_tun(&ns);
        // Retries come after 200 ms, 400 ms, 800 ms, ...: well within 10 s.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while tokio::time::Instant::now() < deadline && !reconciler.snapshot().is_empty() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        (first, reconciler.snapshot())
    });
    match first {
        Some(ObjectStatus::Error {
            reason, attempts, ..
        }) => {
            assert_eq!(attempts, 1);
            assert!(
                reason.contains("twill.tun") && reason.contains("No such device"),
                "{reason}"
            );
        }
        other => panic!("expected an error, got {other:?}"),
    }
    assert!(after.is_empty(), "still not done: {after:?}");
    assert_eq!(ipv4(&ns, "twill.tun"), vec!["10.244.1.0/32"]);
}

#[test]
#[ignore = "needs root"]
fn the_policy_table_is_written_in_the_queue_with_a_status_and_retried() {
    let ns = host_ns("hq", false);
    let key = ObjectKey::policy_table();
    let good = "table inet twill-policy {}\ndelete table inet twill-policy\n\
                add table inet twill-policy\n\
                add chain inet twill-policy forward { type filter hook forward priority 0; }\n";
    let (refused, status, fallback, retried) = in_ns(&ns, || async {
        let (reconciler, _) = Reconciler::start(Rtnl::new().unwrap());
        let policy = reconciler.policy_writer();
        // A change nft refuses (the chain is not there), no whole table to fall back on.
        let bad = "add rule inet twill-policy nosuchchain accept\n".to_string();
        let refused = policy.apply(bad.clone(), None).await;
        let status = reconciler.snapshot().get(&key).cloned();
        // The reconciler retries it itself, with backoff (200 ms, then 400 ms, ...).
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        let attempts = |r: &Reconciler| match r.snapshot().get(&key) {
            Some(ObjectStatus::Error { attempts, .. }) => *attempts,
            _ => 0,
        };
        while tokio::time::Instant::now() < deadline && attempts(&reconciler) < 2 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert_eq!(attempts(&reconciler), 2, "retried once within 10 s");
        // A full reconcile leaves the policy table's status alone.
        reconciler.reconcile(DesiredState::default()).await.unwrap();
        assert!(reconciler.snapshot().contains_key(&key));
        // A refused change followed by the whole table: that lands, the error is gone.
        let whole = good.to_string();
        let fallback = policy
            .apply(bad, Some(Box::new(move || whole)))
            .await
            .map_err(|e| e.to_string());
        let retried = reconciler.snapshot();
        (refused, status, fallback, retried)
    });
    let reason = refused.expect_err("nft refuses the rule").to_string();
    assert!(reason.contains("nosuchchain"), "{reason}");
    assert!(
        matches!(&status, Some(ObjectStatus::Error { reason, attempts: 1, .. }) if reason.contains("nosuchchain")),
        "{status:?}"
    );
    assert_eq!(fallback, Ok(()));
    assert!(retried.is_empty(), "{retried:?}");
    assert!(ns.nft_table("inet", "twill-policy").is_some());
}

#[test]
#[ignore = "needs root"]
fn node_leave_removes_everything_twill_owns() {
    let ns = host_ns("hl", true);
    // The CNI plugin's part of inet twill stays: only the agent's chain goes.
    ns.ok(&["nft", "add", "table", "inet", "twill"]);
    ns.ok(&["nft", "add", "chain", "inet", "twill", "antispoof"]);
    let report = in_ns(&ns, || async {
        let (reconciler, _) = Reconciler::start(Rtnl::new().unwrap());
        assert!(
            reconciler
                .reconcile(desired())
                .await
                .unwrap()
                .report
                .unwrap()
                .is_ok()
        );
        let policy = reconciler.policy_writer();
        let table = "add table inet twill-policy\n\
                add chain inet twill-policy forward { type filter hook forward priority 0; }\n";
        policy.apply(table.to_string(), None).await.unwrap();
        let report = reconciler.remove_all().await.unwrap();
        // Nothing left to plan against an empty desired state.
        let after = reconciler.reconcile(DesiredState::default()).await.unwrap();
        assert!(after.plan.is_empty(), "{}", after.plan);
        report
    });
    assert!(report.is_ok(), "{report}");
    assert!(ns.nft_table("inet", "twill-host").is_none());
    assert!(ns.nft_table("inet", "twill-policy").is_none());
    assert_eq!(masq_chain(&ns), "");
    assert!(
        ns.nft_table("inet", "twill").is_some(),
        "the plugin's table stays"
    );
    let routes = ns.ip_json(&["route", "show", "proto", "117"]);
    assert_eq!(routes.as_array().map(Vec::len), Some(0), "{routes}");
}

/// A whole policy table as the policy task hands it over: a set, chains and rules.
const POLICY_TABLE: &str = "table inet twill-policy {
\tset peers {
\t\ttype ipv4_addr
\t}
\tchain forward {
\t\ttype filter hook forward priority filter; policy accept;
\t\tct state established,related accept
\t\tip saddr @peers jump pods
\t}
\tchain pods {
\t\ttcp dport 80 accept
\t\tdrop
\t}
}
";

#[test]
#[ignore = "needs root"]
fn an_unchanged_policy_table_is_not_written_again_and_drift_is_rewritten() {
    use twill_dataplane::reconcile::PolicyWrite::{Unchanged, Written};
    let ns = host_ns("hn", false);
    let nft = |args: &[&str]| {
        let mut cmd = vec!["nft"];
        cmd.extend(args);
        ns.ok(&cmd);
    };
    let (outcomes, elements_after_rewrite, restarted) = in_ns(&ns, || async {
        let (reconciler, _) = Reconciler::start(Rtnl::new().unwrap());
        let policy = reconciler.policy_writer();
        let table = || async { policy.apply_table(POLICY_TABLE.to_string()).await.unwrap() };
        let mut outcomes = vec![("first", table().await), ("same again", table().await)];
        // An incremental change leaves the comment as it was: the next whole table is
        // written, and the one after that is not.
        let add = "add element inet twill-policy peers { 10.0.0.1 }\n";
        policy.apply(add.to_string(), None).await.unwrap();
        outcomes.push(("after an incremental change", table().await));
        let elements_after_rewrite = set_elements(&ns);
        outcomes.push(("same again", table().await));
        nft(&["delete", "table", "inet", "twill-policy"]);
        outcomes.push(("table deleted by hand", table().await));
        nft(&[
            "add",
            "rule",
            "inet",
            "twill-policy",
            "pods",
            "udp",
            "dport",
            "53",
            "accept",
        ]);
        outcomes.push(("rule added by hand", table().await));
        nft(&[
            "delete",
            "rule",
            "inet",
            "twill-policy",
            "pods",
            "handle",
            &last_rule(&ns),
        ]);
        outcomes.push(("rule deleted by hand", table().await));
        outcomes.push(("same again", table().await));
        assert!(
            reconciler.snapshot().is_empty(),
            "{:?}",
            reconciler.snapshot()
        );
        drop((policy, reconciler));
        // A restarted agent has no record of what it wrote: it writes the table once.
        let (reconciler, _) = Reconciler::start(Rtnl::new().unwrap());
        let policy = reconciler.policy_writer();
        let restarted = policy.apply_table(POLICY_TABLE.to_string()).await.unwrap();
        (outcomes, elements_after_rewrite, restarted)
    });
    assert_eq!(
        outcomes,
        vec![
            ("first", Written),
            ("same again", Unchanged),
            ("after an incremental change", Written),
            ("same again", Unchanged),
            ("table deleted by hand", Written),
            ("rule added by hand", Written),
            ("rule deleted by hand", Written),
            ("same again", Unchanged),
        ]
    );
    assert_eq!(
        elements_after_rewrite, 0,
        "the whole table replaced the set"
    );
    assert_eq!(restarted, Written);
    let listed = ns.ok(&["nft", "list", "table", "inet", "twill-policy"]);
    assert!(listed.contains("comment \"twill:"), "{listed}");
    assert!(listed.contains("ip saddr @peers jump pods"), "{listed}");
}

/// Elements of the policy table's set `peers`.
fn set_elements(ns: &Netns) -> usize {
    let out = ns.ok(&["nft", "-j", "list", "set", "inet", "twill-policy", "peers"]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    v["nftables"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|o| o["set"]["elem"].as_array())
        .map(Vec::len)
        .sum()
}

/// The handle of the last rule of the policy table's chain `pods`.
fn last_rule(ns: &Netns) -> String {
    let out = ns.ok(&["nft", "-j", "list", "chain", "inet", "twill-policy", "pods"]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let handles: Vec<u64> = v["nftables"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|o| o["rule"]["handle"].as_u64())
        .collect();
    handles.last().expect("a rule").to_string()
}

/// A dual-stack node's own objects: IPv6 forwarding through the sysctl map and the cluster's
/// masquerade chain with an `ip6 saddr` rule beside the IPv4 one. Real traffic: a pod-like
/// namespace on an IPv6 pool reaches an outside host that has no route back to the pool
/// only once the IPv6 pool is masqueraded; re-applying plans nothing; dropping the IPv6 pool
/// rewrites the chain without its rule.
#[test]
#[ignore = "needs root"]
fn dual_stack_masquerade_and_ipv6_forwarding() {
    use twill_testkit::veth;
    require_root();
    let host = Netns::new("h6");
    let pod = Netns::new("p6");
    let outside = Netns::new("o6");
    veth(&host, "twp", &pod, "eth0");
    veth(&host, "up0", &outside, "eth0");
    let add = |ns: &Netns, addr: &str, dev: &str| {
        ns.ok(&["ip", "-6", "addr", "add", addr, "dev", dev, "nodad"]);
    };
    add(&host, "fd00:244:1::1/64", "twp");
    add(&pod, "fd00:244:1::2/64", "eth0");
    pod.ok(&[
        "ip",
        "-6",
        "route",
        "add",
        "default",
        "via",
        "fd00:244:1::1",
    ]);
    add(&host, "2001:db8:77::1/64", "up0");
    // The outside knows no route to the pool: only masqueraded traffic is answered.
    add(&outside, "2001:db8:77::2/64", "eth0");
    let reaches_outside = || {
        pod.exec(&["ping", "-6", "-c", "1", "-W", "1", "2001:db8:77::2"])
            .status
            .success()
    };
    let state = |pools: &[&str]| DesiredState {
        sysctls: [
            ("net.ipv4.ip_forward".to_string(), "1".to_string()),
            ("net.ipv6.conf.all.forwarding".to_string(), "1".to_string()),
        ]
        .into(),
        masquerade: pools.iter().map(|p| p.parse().unwrap()).collect(),
        ..DesiredState::default()
    };
    let v4_only = state(&["10.244.0.0/16"]);
    let dual = state(&["10.244.0.0/16", "fd00:244::/32"]);

    let masq_rules = |ns: &Netns| {
        masq_chain(ns)
            .lines()
            .map(str::trim)
            .filter(|l| l.contains("masquerade"))
            .map(String::from)
            .collect::<Vec<_>>()
    };
    in_ns(&host, || async {
        let (reconciler, _) = Reconciler::start(Rtnl::new().unwrap());
        let first = reconciler.reconcile(v4_only.clone()).await.unwrap();
        assert!(first.report.expect("applied").is_ok());
        assert_eq!(
            host.ok(&["cat", "/proc/sys/net/ipv6/conf/all/forwarding"])
                .trim(),
            "1"
        );
        assert!(
            !reaches_outside(),
            "control: the IPv6 pool is not masqueraded"
        );

        let dual_round = reconciler.reconcile(dual.clone()).await.unwrap();
        assert_eq!(dual_round.plan.host_changes(), 1, "{}", dual_round.plan);
        assert!(dual_round.report.expect("applied").is_ok());
        assert_eq!(
            masq_rules(&host),
            [
                "ip saddr 10.244.0.0/16 ip daddr != { 10.244.0.0/16, 224.0.0.0/4 } masquerade",
                "ip6 saddr fd00:244::/32 ip6 daddr != { fd00:244::/32, ff00::/8 } masquerade",
            ]
        );
        // A lost first packet (neighbour discovery) is no failure: a few tries.
        assert!(
            (0..5).any(|_| reaches_outside()),
            "the masqueraded IPv6 pod is answered"
        );
        let again = reconciler.reconcile(dual.clone()).await.unwrap();
        assert!(again.plan.is_empty(), "{}", again.plan);

        let back = reconciler.reconcile(v4_only.clone()).await.unwrap();
        assert!(back.report.expect("applied").is_ok());
        assert_eq!(masq_rules(&host).len(), 1, "{:?}", masq_rules(&host));
        assert!(!reaches_outside(), "no longer masqueraded");
    });
}
