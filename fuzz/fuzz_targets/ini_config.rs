//! libFuzzer entry point of the `ini_config` target (see `sluice_fuzz::ini_config`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    sluice_fuzz::ini_config::run(data);
});
