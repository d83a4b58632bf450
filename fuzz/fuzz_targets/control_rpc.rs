//! libFuzzer entry point of the `control_rpc` target (see `sluice_fuzz::control_rpc`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    sluice_fuzz::control_rpc::run(data);
});
