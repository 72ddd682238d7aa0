//! The original framework's samples and client expectations, through the real server.

use crate::support::TestServer;

const SAMPLES: &[(&str, &str)] = &[
    ("module1", include_str!("../../plugins/module1.py")),
    ("module2", include_str!("../../plugins/module2.py")),
    ("echo_helper", include_str!("../../plugins/echo_helper.py")),
];

const BODY: &str =
    r#"{"args":[1,2,3,4,5,6],"name1":"one","name2":"two","name3":"three","name4":"four"}"#;

fn kwargs_count(reply: &crate::support::Reply) -> usize {
    reply.result()["kwargs"].as_object().map_or(0, |m| m.len())
}

#[test]
fn original_client_counts() {
    let s = TestServer::start(SAMPLES, &[]);
    let params = "1/2/3/4/5/6/7/8/9/10/?a=1&b=2&c=3&d=4";
    let get = s.get(&format!("/rest/services/hello-world/{params}"));
    assert_eq!(get.status, 200, "{}", get.text);
    assert_eq!(
        get.json()["response"]["module1.foo"]["response"],
        "hello-world"
    );
    assert_eq!(kwargs_count(&get), 15);
    assert_eq!(
        kwargs_count(&s.get(&format!("/rest/services/module1/hello-world/{params}"))),
        16
    );
    for (method, api, count) in [
        ("POST", "sample-one", 20),
        ("PUT", "sample-one2", 20),
        ("DELETE", "sample-one2a", 20),
        ("POST", "module1/sample-one", 21),
        ("PUT", "v1/sample-one2", 21),
        ("DELETE", "module1/sample-one2a", 21),
    ] {
        let r = s.request(
            method,
            &format!("/rest/services/{api}/{params}"),
            Some(("application/json", BODY.as_bytes())),
        );
        assert_eq!(r.status, 200, "{method} {api}: {}", r.text);
        assert_eq!(kwargs_count(&r), count, "{method} {api}: {}", r.text);
        assert_eq!(r.result()["args"]["5"], 6);
    }
}

#[test]
fn directory_and_undefined_methods() {
    let s = TestServer::start(SAMPLES, &[]);
    let dir = s.get("/rest/services/__dir__/").json();
    assert_eq!(dir["status"], "OK");
    assert_eq!(dir["has_plugins"], true);
    assert_eq!(dir["endpoints"]["GET"]["hello-world"]["func"], "foo");
    assert_eq!(dir["aliases"]["v1"], "module1");
    assert!(dir["modules"]["module1"]
        .as_array()
        .unwrap()
        .iter()
        .any(|n| n == "private_function"));

    let r = s.post_json("/rest/services/bar-none/", "{}");
    assert_eq!(r.status, 404);
    assert_eq!(r.json()["status"], "bar-none is undefined for POST.");
    assert_eq!(r.json()["error"], "method_undefined");
    assert_eq!(r.header("allow"), Some("GET, HEAD, OPTIONS"));
    assert!(r.header("x-request-id").is_some());

    let bar = s.get("/rest/services/bar2-none/?ignored=1");
    assert_eq!(bar.status, 200, "{}", bar.text);
    assert_eq!(bar.result(), "bar-none again");
}

#[test]
fn binary_works_outside_the_source_tree() {
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("dpms");
    std::fs::copy(crate::support::binary(), &copy).unwrap();
    let s = TestServer::start_with(copy.to_str().unwrap(), SAMPLES, &[]);
    let r = s.get("/rest/services/hello-world/");
    assert_eq!(r.status, 200, "{}", r.text);
}
