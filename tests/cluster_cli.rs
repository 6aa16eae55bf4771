//! `twill cluster init/show` and `twill node leave` against the embedded store (no root, no
//! kernel): bad configs are refused with a message that names the problem and change nothing.

use std::path::Path;
use std::process::{Command, Output};

const TWILL: &str = env!("CARGO_BIN_EXE_twill");

fn twill(args: &[&str]) -> Output {
    Command::new(TWILL).args(args).output().unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn init(store: &str, dir: &Path, name: &str, text: &str, extra: &[&str]) -> Output {
    let file = dir.join(name);
    std::fs::write(&file, text).unwrap();
    let mut args = vec![
        "cluster",
        "init",
        "--store",
        store,
        "-f",
        file.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    twill(&args)
}

#[test]
fn cluster_init_validates_and_protects_the_stored_config() {
    let dir = tempfile::tempdir().unwrap();
    let store = format!("embedded:{}", dir.path().join("store.redb").display());

    let bad = [
        ("broken.json", r#"{"Network": "10.244.0.0/16","#, "line 1"),
        (
            "hostbits.json",
            r#"{"Network":"10.244.0.1/16"}"#,
            "host bits",
        ),
        (
            "backend.json",
            r#"{"Network":"10.244.0.0/16","Backend":{"Type":"alloc"}}"#,
            "alloc",
        ),
        (
            "overlap.toml",
            "[[pools]]\nname = \"a\"\ncidr = \"10.244.0.0/16\"\n[[pools]]\nname = \"b\"\ncidr = \"10.244.128.0/17\"\n",
            "overlaps",
        ),
        (
            "modes.yaml",
            "pools:\n  - name: a\n    cidr: 10.1.0.0/16\n    vxlanMode: Always\n    ipipMode: Always\n",
            "ipipMode",
        ),
    ];
    for (name, text, needle) in bad {
        let out = init(&store, dir.path(), name, text, &[]);
        assert_eq!(out.status.code(), Some(1), "{name} was accepted");
        assert!(
            stderr(&out).contains(needle) && stderr(&out).contains(name),
            "{name}: message {:?} should name the file and mention {needle:?}",
            stderr(&out)
        );
    }
    let show = twill(&["cluster", "show", "--store", &store]);
    assert_eq!(show.status.code(), Some(1));
    assert!(
        stderr(&show).contains("no cluster config"),
        "{}",
        stderr(&show)
    );

    let good = r#"{"Network":"10.244.0.0/16","SubnetLen":24,"Backend":{"Type":"vxlan","DirectRouting":true}}"#;
    let out = init(&store, dir.path(), "good.json", good, &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let show = twill(&["cluster", "show", "--store", &store]);
    let v: serde_json::Value = serde_json::from_slice(&show.stdout).unwrap();
    assert_eq!(v["pools"][0]["cidr"], "10.244.0.0/16");
    assert_eq!(v["backend"]["kind"], "vxlan");
    assert_eq!(v["backend"]["directRouting"], true);

    let again = init(&store, dir.path(), "good.json", good, &[]);
    assert!(String::from_utf8_lossy(&again.stdout).contains("unchanged"));
    let other = r#"{"Network":"10.50.0.0/16","Backend":{"Type":"host-gw"}}"#;
    let out = init(&store, dir.path(), "other.json", other, &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("--force"), "{}", stderr(&out));
    let show = twill(&["cluster", "show", "--store", &store]);
    assert!(String::from_utf8_lossy(&show.stdout).contains("10.244.0.0/16"));
    let out = init(&store, dir.path(), "other.json", other, &["--force"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let show = twill(&["cluster", "show", "--store", &store]);
    assert!(String::from_utf8_lossy(&show.stdout).contains("10.50.0.0/16"));

    let leave = twill(&["node", "leave", "--store", &store, "--node-name", "nobody"]);
    assert!(leave.status.success());
    assert!(String::from_utf8_lossy(&leave.stdout).contains("holds no lease"));
}
