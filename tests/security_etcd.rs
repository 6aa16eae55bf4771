//! "The store is open" (issue 12): a pod tries to reach the lab's etcd and delete the
//! ClusterPolicy that restricts it. The lab's etcd speaks only TLS and asks every client for a
//! certificate of the lab's own CA, so every way in from the pod is refused: plain HTTP
//! (etcdctl, and the v3 JSON gateway from python3), TLS without a client certificate, and TLS
//! with a certificate the pod made itself. The policy stays in the store and stays enforced,
//! the legitimate path (the twill CLI with `lab.store_args()`) works, and every pod reaches
//! every other before and after (root only).

use std::io::BufRead;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use twill_lab::{Lab, LabSpec};
use twill_testkit::{random_suffix, require_root};
use twill_types::keys::{CLUSTER_POLICY_PREFIX, POLICY_PREFIX};

const TWILL: &str = env!("CARGO_BIN_EXE_twill");
const PROBE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/common/netpol_probe.py");

/// The pod that attacks, and the pod whose port 81 the policy closes to it.
const ATTACKER: &str = "h1-p1";
const SERVER: &str = "h2-p1";

struct Guard(String);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = twill_lab::down(&self.0);
    }
}

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn text(out: &Output) -> String {
    format!(
        "{} (stdout {:?}, stderr {:?})",
        out.status,
        String::from_utf8_lossy(&out.stdout).trim(),
        String::from_utf8_lossy(&out.stderr).trim()
    )
}

/// `twill ARGS` in host 1's namespace with the lab's store arguments.
fn twill(lab: &Lab, args: &[&str]) -> Output {
    let store = lab.store_args();
    let mut cmd = vec![TWILL];
    cmd.extend_from_slice(args);
    cmd.extend(store.iter().map(String::as_str));
    lab.exec("h1", &cmd).unwrap()
}

fn assert_full_matrix(lab: &Lab, when: &str) {
    let m = lab.ping_matrix();
    assert!(m.all_ok(), "ping matrix {when}:\n{}", m.render());
}

/// The attacker's TCP connections to the server's ports 80 and 81: (80 answered, 81 answered).
fn probe_80_81(lab: &Lab, server_ip: &str) -> (bool, bool) {
    let (t80, t81) = (format!("{server_ip}:80/tcp"), format!("{server_ip}:81/tcp"));
    let out = lab
        .exec(ATTACKER, &["python3", PROBE, "probe", &t80, &t81])
        .unwrap();
    let v: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("probe output ({e}): {}", text(&out)));
    (v[&t80] == true, v[&t81] == true)
}

/// Waits (deadline ~10x the usual) until the probe gives `want`.
fn wait_probe(lab: &Lab, server_ip: &str, want: (bool, bool), what: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let got = probe_80_81(lab, server_ip);
        if got == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what}: ports (80, 81) answered {got:?}, expected {want:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The Python the attacker runs: the v3 JSON gateway's deleterange of every policy, over plain
/// HTTP and over TLS without a client certificate (not even checking etcd's). Prints one JSON
/// object: how each attempt ended.
const GATEWAY_ATTACK: &str = r#"
import base64, json, ssl, sys, urllib.request
ip, prefix = sys.argv[1], sys.argv[2]
end = prefix[:-1] + chr(ord(prefix[-1]) + 1)
body = json.dumps({"key": base64.b64encode(prefix.encode()).decode(),
                   "range_end": base64.b64encode(end.encode()).decode()}).encode()
ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
out = {}
for name, url, context in (("http", "http://%s:2379" % ip, None),
                           ("https-no-cert", "https://%s:2379" % ip, ctx)):
    try:
        req = urllib.request.Request(url + "/v3/kv/deleterange", data=body,
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=5, context=context) as r:
            out[name] = "answered %d: %s" % (r.status, r.read()[:200].decode(errors="replace"))
    except Exception as e:
        out[name] = "refused: %r" % (e,)
print(json.dumps(out))
"#;

#[test]
#[ignore = "needs root"]
fn a_pod_cannot_reach_the_store_to_delete_its_cluster_policy() {
    require_root();
    let name = format!("se{}", random_suffix(5));
    let _guard = Guard(name.clone());
    let lab = Lab::up(&LabSpec::new(&name).nodes(2), Path::new(TWILL))
        .unwrap_or_else(|e| panic!("lab up: {e:#}"));
    let etcd_ip = lab
        .state()
        .etcd
        .as_ref()
        .expect("a 2-node lab runs etcd")
        .ip;
    assert!(lab.pki_dir().is_some(), "the lab's etcd runs with TLS");
    assert_full_matrix(&lab, "before the policy");

    // A server on ports 80 and 81 in h2-p1; a ClusterPolicy closes TCP 81 to every pod.
    let server_ip = lab
        .pods()
        .iter()
        .find(|p| p.name == SERVER)
        .unwrap()
        .ip4()
        .to_string();
    let mut child = Command::new("ip")
        .args(["netns", "exec", &lab.target_ns(SERVER).unwrap()])
        .args(["python3", PROBE, "serve"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut ready = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut ready)
        .unwrap();
    let _server = Server(child);
    assert_eq!(ready.trim(), "serving");
    wait_probe(&lab, &server_ip, (true, true), "before the policy");

    let policy = lab.dir().join("isolate.yaml");
    std::fs::write(
        &policy,
        "apiVersion: twill.dev/v1\nkind: ClusterPolicy\nmetadata:\n  name: isolate\nspec:\n  \
         order: 1\n  selector: {}\n  egress:\n  - action: Deny\n    destination:\n      \
         ports: [81]\n    protocol: TCP\n",
    )
    .unwrap();
    let out = twill(&lab, &["policy", "apply", "-f", policy.to_str().unwrap()]);
    assert!(out.status.success(), "policy apply: {}", text(&out));
    wait_probe(&lab, &server_ip, (true, false), "the policy closes 81");
    assert_full_matrix(&lab, "with the policy");

    // The attacks, from the pod.
    let key = format!("{CLUSTER_POLICY_PREFIX}isolate");
    let ip = etcd_ip.to_string();
    let etcdctl = |endpoint: &str, extra: &[&str]| {
        let mut cmd = vec![
            "timeout",
            "30",
            "etcdctl",
            "--endpoints",
            endpoint,
            "--dial-timeout=3s",
            "--command-timeout=5s",
        ];
        cmd.extend_from_slice(extra);
        cmd.extend(["del", "--prefix", POLICY_PREFIX]);
        lab.exec(ATTACKER, &cmd).unwrap()
    };
    let plain = etcdctl(&format!("http://{ip}:2379"), &[]);
    eprintln!("plain etcdctl: {}", text(&plain));
    assert!(!plain.status.success(), "plain etcdctl: {}", text(&plain));
    let no_cert = etcdctl(
        &format!("https://{ip}:2379"),
        &["--insecure-transport=false", "--insecure-skip-tls-verify"],
    );
    assert!(
        !no_cert.status.success(),
        "etcdctl over TLS without a client certificate: {}",
        text(&no_cert)
    );
    // A certificate the pod made itself (another CA): refused too.
    let rogue_dir = lab.dir().join("rogue-pki");
    let rogue =
        twill_store::pki::Pki::generate(&rogue_dir, std::slice::from_ref(&ip), &["h1"]).unwrap();
    let rogue_cert = etcdctl(
        &format!("https://{ip}:2379"),
        &[
            "--insecure-transport=false",
            "--insecure-skip-tls-verify",
            &format!("--cert={}", rogue.client_cert("h1").display()),
            &format!("--key={}", rogue.client_key("h1").display()),
        ],
    );
    assert!(
        !rogue_cert.status.success(),
        "etcdctl with a rogue client certificate: {}",
        text(&rogue_cert)
    );
    let out = lab
        .exec(
            ATTACKER,
            &["python3", "-c", GATEWAY_ATTACK, &ip, POLICY_PREFIX],
        )
        .unwrap();
    eprintln!("etcdctl without a client certificate: {}", text(&no_cert));
    eprintln!("etcdctl with a rogue certificate: {}", text(&rogue_cert));
    eprintln!("JSON gateway: {}", text(&out));
    let v: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("gateway attack output ({e}): {}", text(&out)));
    for attempt in ["http", "https-no-cert"] {
        let how = v[attempt].as_str().unwrap_or_default();
        assert!(how.starts_with("refused"), "{attempt}: {how}");
    }
    // The twill CLI itself, from the pod, without the lab's credentials.
    let out = lab
        .exec(
            ATTACKER,
            &[
                TWILL,
                "policy",
                "delete",
                "--cluster",
                "isolate",
                "--store",
                &lab.state().store,
            ],
        )
        .unwrap();
    assert!(
        !out.status.success(),
        "twill without credentials: {}",
        text(&out)
    );

    // The policy is still there, still enforced; the legitimate path works.
    let got = lab.etcdctl(&["get", &key, "--print-value-only"]).unwrap();
    assert!(
        got.status.success() && String::from_utf8_lossy(&got.stdout).contains("isolate"),
        "the policy key after the attacks: {}",
        text(&got)
    );
    let out = twill(&lab, &["policy", "list", "--json"]);
    assert!(out.status.success(), "policy list: {}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("isolate"),
        "{}",
        text(&out)
    );
    assert_eq!(
        probe_80_81(&lab, &server_ip),
        (true, false),
        "the policy is enforced after the attacks"
    );
    assert_full_matrix(&lab, "after the attacks");

    // The CLI without credentials is refused from a host too; with them it deletes.
    let out = lab
        .exec(
            "h1",
            &[TWILL, "policy", "list", "--store", &lab.state().store],
        )
        .unwrap();
    assert!(
        !out.status.success(),
        "twill without credentials on h1: {}",
        text(&out)
    );
    let out = twill(&lab, &["policy", "delete", "--cluster", "isolate"]);
    assert!(out.status.success(), "policy delete: {}", text(&out));
    wait_probe(
        &lab,
        &server_ip,
        (true, true),
        "the policy deleted by the CLI",
    );
    assert_full_matrix(&lab, "at the end");
}

/// The CLI's etcd flags end to end (no root): a TLS etcd with `--client-cert-auth` and etcd's
/// own users (`auth enable`, a root user). `twill cluster init/show` work with the client
/// certificate and the user's password (from a file or TWILL_ETCD_PASSWORD); a wrong password,
/// a missing user or no client certificate are refused with a clear error that never shows the
/// password.
#[test]
fn cli_reaches_a_tls_etcd_with_users_and_only_with_the_right_credentials() {
    let etcd = twill_store::testing::EtcdServer::start_tls();
    let pki = etcd.pki().unwrap();
    let client = twill_store::testing::CLIENT;
    let (ca, cert, key) = (
        pki.ca().display().to_string(),
        pki.client_cert(client).display().to_string(),
        pki.client_key(client).display().to_string(),
    );
    let password = "correct-horse-battery";
    let etcdctl = |args: &[&str]| {
        let out = Command::new("etcdctl")
            .args([
                "--endpoints",
                &format!("https://127.0.0.1:{}", etcd.client_port()),
                &format!("--cacert={ca}"),
                &format!("--cert={cert}"),
                &format!("--key={key}"),
            ])
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "etcdctl {args:?}: {}", text(&out));
    };
    etcdctl(&[
        "user",
        "add",
        "root",
        &format!("--new-user-password={password}"),
    ]);
    etcdctl(&["user", "grant-role", "root", "root"]);
    etcdctl(&["auth", "enable"]);

    let dir = tempfile::tempdir().unwrap();
    let conf = dir.path().join("net-conf.json");
    std::fs::write(
        &conf,
        r#"{"Network":"10.244.0.0/16","Backend":{"Type":"vxlan"}}"#,
    )
    .unwrap();
    let pw_file = dir.path().join("pw");
    std::fs::write(&pw_file, format!("{password}\n")).unwrap();
    let wrong_file = dir.path().join("wrong");
    std::fs::write(&wrong_file, "not-the-password\n").unwrap();
    let url = etcd.url();
    let tls = [
        "--store",
        url.as_str(),
        "--etcd-cafile",
        &ca,
        "--etcd-certfile",
        &cert,
        "--etcd-keyfile",
        &key,
    ];
    let run = |args: &[&str], extra: &[&str], env: Option<&str>| {
        let mut cmd = Command::new(TWILL);
        cmd.args(args).args(extra).env_remove("TWILL_ETCD_PASSWORD");
        if let Some(pw) = env {
            cmd.env("TWILL_ETCD_PASSWORD", pw);
        }
        cmd.output().unwrap()
    };
    let init = ["cluster", "init", "-f", conf.to_str().unwrap()];
    let show = ["cluster", "show"];
    let user = ["--etcd-username", "root"];

    // The password from the environment, then from a file.
    let out = run(&init, &[&tls[..], &user[..]].concat(), Some(password));
    assert!(out.status.success(), "cluster init: {}", text(&out));
    let with_file = [
        &tls[..],
        &user[..],
        &["--etcd-password-file", pw_file.to_str().unwrap()],
    ]
    .concat();
    let out = run(&show, &with_file, None);
    assert!(out.status.success(), "cluster show: {}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("10.244.0.0/16"),
        "{}",
        text(&out)
    );

    // Refused: a wrong password (file or env), no user, no client certificate, plain HTTP.
    let wrong = [
        &tls[..],
        &user[..],
        &["--etcd-password-file", wrong_file.to_str().unwrap()],
    ]
    .concat();
    let refusals: [(&str, Vec<&str>, Option<&str>, &str); 5] = [
        ("wrong password file", wrong, None, "authentication failed"),
        (
            "wrong password env",
            [&tls[..], &user[..]].concat(),
            Some("nope-nope"),
            "authentication failed",
        ),
        ("no user", tls.to_vec(), None, "--etcd-username"),
        (
            "no client certificate",
            vec![
                "--store",
                &url,
                "--etcd-cafile",
                &ca,
                "--etcd-username",
                "root",
            ],
            Some(password),
            "--etcd-certfile",
        ),
        ("plain", vec!["--store", &url], None, "--etcd-cafile"),
    ];
    for (what, extra, env, says) in refusals {
        let out = run(&show, &extra, env);
        let all = text(&out);
        assert!(!out.status.success(), "{what}: {all}");
        assert!(all.contains(says), "{what}: {all}");
        for secret in [password, "not-the-password", "nope-nope"] {
            assert!(!all.contains(secret), "{what} shows a password: {all}");
        }
    }
}
