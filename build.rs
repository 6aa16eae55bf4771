//! Build script of the `twill` binary: lays out the CNI plugin's code together.
//!
//! The plugin runs ~1.3 MiB of the binary's 16 MiB of text, spread all over it by default. Each
//! spot it touches maps a fault-around window or a whole large folio of the file (64-128 KiB),
//! so one ADD's peak RSS carried ~3 MiB of code it never ran. `build/plugin-code-order.txt`
//! (from `build/plugin-code-order.sh`) lists the functions an ADD and DEL run; the linker puts
//! them first. Only for x86_64 Linux GNU, where rustc links with its bundled lld (which knows
//! `--symbol-ordering-file`); names it does not find are skipped, so a stale list costs only
//! part of the gain.

fn main() {
    let order = "build/plugin-code-order.txt";
    println!("cargo:rerun-if-changed={order}");
    println!("cargo:rerun-if-changed=build.rs");
    if std::env::var("TARGET").as_deref() == Ok("x86_64-unknown-linux-gnu") {
        let path = std::path::Path::new(&std::env::var("CARGO_MANIFEST_DIR").unwrap()).join(order);
        println!(
            "cargo:rustc-link-arg-bin=twill=-Wl,--symbol-ordering-file={}",
            path.display()
        );
        println!("cargo:rustc-link-arg-bin=twill=-Wl,--no-warn-symbol-ordering");
    }
}
