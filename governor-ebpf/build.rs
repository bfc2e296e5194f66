//! Rebuild the programs when the linker changes (a different LLVM emits different code).
fn main() {
    println!("cargo:rerun-if-env-changed=BPF_LINKER");
}
