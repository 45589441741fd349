#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| derper::fuzzing::admission_response(data));
