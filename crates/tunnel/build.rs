//! Builds the kernel fast path (`bpf/offload.c`) with clang into a BPF object that the crate
//! embeds. clang-14 and libbpf-dev come from scripts/deps.sh; `CLANG` overrides the compiler.

use std::path::PathBuf;
use std::process::Command;

fn main() {
    let src = "bpf/offload.c";
    println!("cargo:rerun-if-changed={src}");
    println!("cargo:rerun-if-env-changed=CLANG");
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR")).join("offload.bpf.o");
    let candidates = match std::env::var("CLANG") {
        Ok(c) => vec![c],
        Err(_) => vec!["clang-14".to_string(), "clang".to_string()],
    };
    let multiarch = format!(
        "-I/usr/include/{}-linux-gnu",
        std::env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_else(|_| "x86_64".into())
    );
    let mut last_err = String::new();
    for clang in &candidates {
        let status = Command::new(clang)
            .args([
                "-O2", "-g", "-target", "bpf", "-Wall", "-Werror", &multiarch, "-c", src, "-o",
            ])
            .arg(&out)
            .status();
        match status {
            Ok(s) if s.success() => return,
            Ok(s) => last_err = format!("{clang} failed ({s}) on {src}"),
            Err(e) => last_err = format!("{clang}: {e}"),
        }
    }
    panic!(
        "cannot build the BPF fast path: {last_err}. Install clang-14 and libbpf-dev \
         (bash scripts/deps.sh) or set CLANG"
    );
}
