//! Embeds the eBPF object. `cargo xtask build` builds it first and passes its path in
//! GOVERNOR_EBPF_OBJECT; a plain `cargo build`/`clippy` falls back to the path xtask writes,
//! and without that to an empty stub, so the daemon then refuses to start with a clear error.

use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-env-changed=GOVERNOR_EBPF_OBJECT");
    let manifest = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let default = manifest.join("../target/ebpf/bpfel-unknown-none/release/governor-ebpf");
    let object = std::env::var_os("GOVERNOR_EBPF_OBJECT").map(PathBuf::from).unwrap_or(default);
    println!("cargo:rerun-if-changed={}", object.display());
    let embedded = if object.is_file() {
        object
    } else {
        println!(
            "cargo:warning=eBPF object {} not found; embedding an empty stub (build with `cargo xtask build`)",
            object.display()
        );
        let stub = PathBuf::from(std::env::var_os("OUT_DIR").expect("set by cargo")).join("governor-ebpf-stub.o");
        std::fs::write(&stub, b"").expect("write stub object");
        stub
    };
    println!("cargo:rustc-env=GOVERNOR_EBPF_OBJECT={}", embedded.display());
}
