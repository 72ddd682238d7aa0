//! Refuses to build against any interpreter but Debian's `/usr/bin/python3.11` (SPEC §10,
//! "Linking"): a wrong choice links without complaint and fails only on another machine.

fn main() {
    println!("cargo:rerun-if-env-changed=PYO3_PYTHON");
    let config = pyo3_build_config::get();
    let version_ok = config.version().major == 3 && config.version().minor == 11;
    let exe = config.executable().unwrap_or("");
    if !version_ok || exe != "/usr/bin/python3.11" || !config.shared() {
        panic!(
            "dpms must be built against Debian's shared /usr/bin/python3.11, \
             but pyo3 found `{exe}` (Python {}.{}, shared: {}). \
             Run cargo from the repository root so .cargo/config.toml sets PYO3_PYTHON.",
            config.version().major,
            config.version().minor,
            config.shared()
        );
    }
    pyo3_build_config::use_pyo3_cfgs();
}
