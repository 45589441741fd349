#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| derp_proto::fuzzing::stun_response(data));
