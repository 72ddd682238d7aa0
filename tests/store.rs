//! The registry's change counter across processes: a write by `dpms tenant` (another process)
//! is seen by this process's `Registry::generation()` and by a snapshot read after it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::process::Command;

use dpms::store::Registry;

struct TempDir(PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn cli(dir: &TempDir, args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_dpms"))
        .arg("tenant")
        .args(args)
        .current_dir(&dir.0)
        .env("DPMS_DATA_DIR", dir.0.join("data"))
        .env_remove("ADMIN_ID")
        .output()
        .expect("run dpms")
}

#[test]
fn a_cli_write_bumps_the_generation_seen_here() {
    let dir = TempDir(std::env::temp_dir().join(format!("dpms-store-it-{}", uuid::Uuid::new_v4())));
    std::fs::create_dir_all(&dir.0).unwrap();
    let registry = Registry::open(&dir.0.join("data")).unwrap();
    let before = registry.generation();
    let snap = registry.snapshot().unwrap();
    assert!(snap.tenants.is_empty());

    let out = cli(&dir, &["add", "alice"]);
    assert!(out.status.success(), "{out:?}");
    let printed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let uuid: uuid::Uuid = printed["uuid"].as_str().unwrap().parse().unwrap();

    let after = registry.generation();
    assert!(after > before, "generation {before} -> {after}");
    let snap = registry.snapshot().unwrap();
    assert!(snap.generation >= after);
    assert!(snap.is_enabled(&uuid));

    let out = cli(&dir, &["disable", &uuid.to_string()]);
    assert!(out.status.success(), "{out:?}");
    assert!(registry.generation() > after);
    assert!(!registry.snapshot().unwrap().is_enabled(&uuid));
}
