//! libFuzzer entry point of the `ofctl_flow` target (see `sluice_fuzz::ofctl_flow`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    sluice_fuzz::ofctl_flow::run(data);
});
