//! The `.env` reader: any text, lossy UTF-8. Invariants: `src/dotenv_checks.rs`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| dpms_fuzz::dotenv_checks::run(data));
