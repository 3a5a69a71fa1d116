//! See `roomcast_gateway::fuzzing::payloads`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| roomcast_gateway::fuzzing::payloads(data));
