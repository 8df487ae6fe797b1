//! Link settings for the gateway binary. With `panic = "abort"` (the release
//! profile) nothing ever unwinds, so the unwinder's lookup table
//! (`.eh_frame_hdr`, about 100 KiB of a 3 MiB flash budget on aarch64) is
//! dead weight: leave it out. A panic still prints its message and aborts;
//! only a `RUST_BACKTRACE` trace would come out empty.

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    let cfg = |name: &str| std::env::var(name).unwrap_or_default();
    // PROFILE is "release" for the release profile and those inheriting it
    // (cargo does not tell build scripts the panic strategy: CARGO_CFG_PANIC
    // is the target's default). `link-arg-bins`: the binary only, never the
    // tests nor the OpenVPN plugin (another crate, which unwinds).
    if cfg("PROFILE") == "release" && cfg("CARGO_CFG_TARGET_OS") == "linux" {
        println!("cargo:rustc-link-arg-bins=-Wl,--no-eh-frame-hdr");
    }
}
