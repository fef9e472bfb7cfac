//! Arbitrary Lua values (built from the bytes) through the host-side argument conversions:
//! never a panic, never a metamethod.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| rivet_sandbox::fuzzing::convert(data));
