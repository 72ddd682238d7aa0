//! Prints how input files decode and what the parser makes of them, then runs the checks and
//! prints the first invariant each file breaks:
//! `cargo run --manifest-path fuzz/Cargo.toml --example show -- marshal FILE…` (or `dotenv`).
//! Handy for reading a seed or a crash artifact. `--brief` prints only the failures.

use std::panic;

fn main() {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let brief = args.iter().any(|a| a == "--brief");
    args.retain(|a| a != "--brief");
    let mut args = args.into_iter();
    let target = args.next().unwrap_or_default();
    let check: fn(&[u8]) = match target.as_str() {
        "marshal" => dpms_fuzz::marshal_checks::run,
        "dotenv" => dpms_fuzz::dotenv_checks::run,
        other => panic!("unknown target `{other}`: marshal or dotenv"),
    };
    panic::set_hook(Box::new(|_| {}));
    let mut failed = 0;
    for path in args {
        let data = std::fs::read(&path).unwrap_or_else(|e| panic!("cannot read {path}: {e}"));
        if !brief {
            println!("== {path}");
            if target == "marshal" {
                print!("{}", dpms_fuzz::marshal_checks::explain(&data));
            } else {
                let text = String::from_utf8_lossy(&data);
                println!("{:#?}", dpms::config::parse_dotenv(&text));
            }
        }
        if let Err(payload) = panic::catch_unwind(|| check(&data)) {
            failed += 1;
            let msg = payload
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| payload.downcast_ref::<&str>().copied())
                .unwrap_or("(no message)");
            println!("FAILED {path}: {msg}");
        }
    }
    if failed > 0 {
        std::process::exit(1);
    }
}
