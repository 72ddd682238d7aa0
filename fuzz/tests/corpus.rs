//! Replays the checked-in seed corpus through the same checks the fuzz targets run, on a
//! stable toolchain without libFuzzer: `cargo test --manifest-path fuzz/Cargo.toml`.
//! Reproducers of fixed crashes go in `fuzz/regressions/<target>/` and are replayed too.

use std::path::Path;

fn replay(target: &str, run: fn(&[u8])) {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut count = 0;
    for dir in [
        root.join("corpus").join(target),
        root.join("regressions").join(target),
    ] {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        let mut paths: Vec<_> = entries.map(|e| e.expect("read_dir entry").path()).collect();
        paths.sort();
        for path in paths {
            let data = std::fs::read(&path).expect("read a corpus file");
            eprintln!("{}", path.display());
            run(&data);
            count += 1;
        }
    }
    assert!(count > 0, "no {target} corpus under {}", root.display());
}

#[test]
fn marshal_corpus() {
    replay("marshal", dpms_fuzz::marshal_checks::run);
}

#[test]
fn dotenv_corpus() {
    replay("dotenv", dpms_fuzz::dotenv_checks::run);
}
