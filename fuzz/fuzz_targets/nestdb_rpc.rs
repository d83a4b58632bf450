//! libFuzzer entry point of the `nestdb_rpc` target (see `sluice_fuzz::nestdb_rpc`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    sluice_fuzz::nestdb_rpc::run(data);
});
