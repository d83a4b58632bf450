//! libFuzzer entry point of the `packet_path` target (see `sluice_fuzz::packet_path`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    sluice_fuzz::packet_path::run(data);
});
