//! See `roomcast_gateway::fuzzing::room`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| roomcast_gateway::fuzzing::room(data));
