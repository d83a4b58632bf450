//! Generates bindings to the system DPDK at build time.
//!
//! DPDK is found with pkg-config (`libdpdk` >= 22.11, Debian's
//! `libdpdk-dev`). Static-inline fast-path functions (`rte_eth_rx_burst`,
//! `rte_pktmbuf_alloc`, ...) get C wrappers from bindgen's
//! `wrap_static_fns`, compiled here with `cc` together with `helpers.c`.
//! Only `rte_*` items (and our `sluice_*` helpers) are bound: without an
//! allowlist bindgen also wraps compiler intrinsics and the build breaks.

use std::env;
use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-changed=wrapper.h");
    println!("cargo:rerun-if-changed=helpers.c");
    println!("cargo:rerun-if-env-changed=PKG_CONFIG_PATH");

    let lib = match pkg_config::Config::new()
        .atleast_version("22.11")
        .cargo_metadata(true)
        .probe("libdpdk")
    {
        Ok(lib) => lib,
        Err(e) => {
            eprintln!(
                "dpdk-sys: DPDK >= 22.11 not found with pkg-config ({e}).\n\
                 Install it with: apt-get install libdpdk-dev libclang-dev pkg-config"
            );
            std::process::exit(1);
        }
    };

    let out = PathBuf::from(env::var("OUT_DIR").expect("OUT_DIR"));
    let mut clang_args: Vec<String> = lib
        .include_paths
        .iter()
        .map(|p| format!("-I{}", p.display()))
        .collect();
    // DPDK headers need the SSE4.2 baseline the library was built with.
    clang_args.push("-march=corei7".into());
    clang_args.push("-include".into());
    clang_args.push("rte_config.h".into());

    let wrap_path = out.join("static_fns");
    let bindings = bindgen::Builder::default()
        .header("wrapper.h")
        .clang_args(&clang_args)
        .allowlist_function("rte_.*")
        .allowlist_function("sluice_.*")
        .allowlist_type("rte_.*")
        .allowlist_type("sluice_.*")
        .allowlist_var("RTE_.*")
        .allowlist_var("rte_.*")
        // The fast path is inline in DPDK; wrap it.
        .wrap_static_fns(true)
        .wrap_static_fns_path(&wrap_path)
        .wrap_unsafe_ops(true)
        .derive_default(true)
        .layout_tests(false)
        .generate_comments(false)
        // Packed/aligned unions in rte_mbuf and friends: keep them opaque
        // where bindgen cannot lay them out.
        .opaque_type("rte_arp_ipv4")
        .opaque_type("rte_arp_hdr")
        .opaque_type("rte_l2tpv2_combined_msg_hdr")
        .opaque_type("rte_gtp_psc_.*")
        .blocklist_function("rte_.*_vprintf")
        .blocklist_function("rte_vlog")
        .blocklist_function("rte_.*va_list.*")
        .parse_callbacks(Box::new(bindgen::CargoCallbacks::new()))
        .generate()
        .unwrap_or_else(|e| {
            eprintln!("dpdk-sys: bindgen failed: {e}");
            std::process::exit(1);
        });
    bindings
        .write_to_file(out.join("bindings.rs"))
        .expect("write bindings.rs");

    let mut build = cc::Build::new();
    build
        .file(wrap_path.with_extension("c"))
        .file("helpers.c")
        .include(env::var("CARGO_MANIFEST_DIR").expect("manifest dir"))
        .flag("-march=corei7")
        .flag("-include")
        .flag("rte_config.h")
        .flag("-Wno-deprecated-declarations")
        .flag("-Wno-unused-parameter")
        .flag("-Wno-duplicate-decl-specifier")
        .opt_level(2);
    for p in &lib.include_paths {
        build.include(p);
    }
    build.compile("dpdk_sys_wrappers");
    // `rte_eth_from_rings` lives in the net_ring driver library, which is
    // not in libdpdk's pkg-config link line (drivers load as plugins). The
    // plugin directory holds a symlink to the same file, so the dynamic
    // loader maps it once.
    println!("cargo:rustc-link-lib=dylib=rte_net_ring");
}
