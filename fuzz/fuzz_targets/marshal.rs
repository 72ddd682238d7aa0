//! Request → call marshalling (SPEC §5). Input format and invariants: `src/marshal_checks.rs`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| dpms_fuzz::marshal_checks::run(data));
