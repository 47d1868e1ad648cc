#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| etp_fuzzing::topology(data));
