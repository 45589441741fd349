#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| derp_proto::fuzzing::presence_frames(data));
