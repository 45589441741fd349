#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| derper::fuzzing::config_file(data));
