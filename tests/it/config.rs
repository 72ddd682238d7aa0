//! Settings as the binary reads them (SPEC §8).

use std::process::Command;

use crate::support::{binary, TestServer};

#[test]
fn wrong_settings_stop_the_server_with_one_line() {
    for (key, value) in [
        ("NUM_URL_PARMS", "ten"),
        ("ADMIN_ID", "nope"),
        ("plugins", "/no/such/dir"),
    ] {
        let out = Command::new(binary())
            .args(["--port", "0"])
            .env(key, value)
            .output()
            .unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(err.trim().lines().count(), 1, "{err}");
        assert!(err.contains(key), "{err}");
    }
}

#[test]
fn url_parameter_names_come_from_settings() {
    let echo = "from dpms import expose\n@expose.endpoint(API='echo')\ndef echo(**kw):\n    return {k: v for k, v in kw.items() if k != '__request__'}\n";
    let s = TestServer::start(
        &[("echo", echo)],
        &[("NUM_URL_PARMS", "2"), ("URL_PARM1", "first")],
    );
    let r = s.get("/rest/services/echo/a/b/");
    assert_eq!(r.result()["first"], "a");
    assert_eq!(r.result()["parm_2"], "b");
    let r = s.get("/rest/services/echo/a/b/c/");
    assert_eq!(r.error(), (404, "too_many_url_params".into()));
}

#[test]
fn the_example_env_file_loads() {
    // A folder laid out as `.env.example` expects (`plugins = ./plugins`); a server that
    // fails to start closes stdout, so the read below cannot hang.
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("plugins")).unwrap();
    std::fs::write(
        dir.path().join("plugins/hello.py"),
        "from dpms import expose\n@expose.endpoint\ndef hello():\n    return 'hi'\n",
    )
    .unwrap();
    std::fs::copy(
        concat!(env!("CARGO_MANIFEST_DIR"), "/.env.example"),
        dir.path().join(".env"),
    )
    .unwrap();
    let mut child = Command::new(binary())
        .args(["--port", "0"])
        .current_dir(dir.path())
        .env_remove("plugins")
        .env_remove("DPMS_PLUGINS")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    let stdout = child.stdout.take().unwrap();
    std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut first).unwrap();
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        first.starts_with("listening on http://127.0.0.1:"),
        "{first:?}"
    );
}

#[test]
fn readme_settings_table_is_the_one_dpms_prints() {
    let out = std::process::Command::new(crate::support::binary())
        .arg("settings")
        .output()
        .unwrap();
    let table = String::from_utf8(out.stdout).unwrap();
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    assert!(
        readme.contains(table.trim_end()),
        "README.md's settings table is out of date: paste the output of `dpms settings`"
    );
}
