//! Arbitrary Lua source through the definition checker: problems or a spec, never a panic,
//! never past the definition limits.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| rivet_sandbox::fuzzing::definition(data));
