//! The checks behind the fuzz targets, kept in a library so the same code runs under libFuzzer
//! (`fuzz_targets/*.rs`, through `fuzz/run.sh`) and as a plain `cargo test` that replays the
//! checked-in corpus on a stable toolchain (`tests/corpus.rs`).
//!
//! A panic located in `src/*_checks.rs` is an invariant these checks found broken; its message
//! says which.
//!
//! - [`marshal_checks`]: one request through `dpms::marshal::assemble`, with SPEC §5's invariants.
//! - [`dotenv_checks`]: one `.env` text through `dpms::config::parse_dotenv`.

pub mod dotenv_checks;
pub mod marshal_checks;
