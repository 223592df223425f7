//! `mcp-sidecar -t -c FILE` checks a configuration and exits; errors name file and field.

use crate::harness::*;
use std::fs;
use std::process::Command;

fn check(path: &std::path::Path, env: &[(&str, &str)]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_mcp-sidecar"))
        .arg("-t")
        .arg("-c")
        .arg(path)
        .envs(env.iter().copied())
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code().unwrap_or(-1), text)
}

#[test]
fn shipped_configuration_is_valid() {
    let (code, out) = check(&repo().join("conf/sidecar.yaml"), &[]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("is valid"), "{out}");
}

#[test]
fn errors_name_the_file_the_field_and_the_problem() {
    let dir = test_dir("config-check");
    let cases = [
        (
            "routes:\n  - {prefix: /mcp, upstream: 'ftp://x:1', server_name: a}\n",
            "routes[0].upstream",
            "http://",
        ),
        (
            "server: {listen: nowhere}\nroutes:\n  - {prefix: /mcp, upstream: 'http://127.0.0.1:1', server_name: a}\n",
            "server.listen",
            "ip:port",
        ),
        (
            "timeouts: {connect: forever}\nroutes:\n  - {prefix: /mcp, upstream: 'http://127.0.0.1:1', server_name: a}\n",
            "timeouts.connect",
            "duration",
        ),
        (
            "routes:\n  - {prefix: /mcp, upstream: '${SIDECAR_TEST_UNSET_VAR}', server_name: a}\n",
            "routes[0].upstream",
            "SIDECAR_TEST_UNSET_VAR",
        ),
        (
            "limits: {max_body: lots}\nroutes:\n  - {prefix: /mcp, upstream: 'http://127.0.0.1:1', server_name: a}\n",
            "limits.max_body",
            "size",
        ),
        ("routes: [\n", "", "did not find expected"),
    ];
    for (i, (yaml, field, problem)) in cases.iter().enumerate() {
        let path = dir.join(format!("bad-{i}.yaml"));
        fs::write(&path, yaml).unwrap();
        let (code, out) = check(&path, &[]);
        assert_eq!(code, 2, "case {i} should fail: {out}");
        assert!(
            out.contains(&path.display().to_string()),
            "case {i} names no file: {out}"
        );
        assert!(
            out.contains(field),
            "case {i} names no field {field}: {out}"
        );
        assert!(
            out.contains(problem),
            "case {i} does not say {problem:?}: {out}"
        );
    }
    let (code, out) = check(&dir.join("missing.yaml"), &[]);
    assert_eq!(code, 2);
    assert!(
        out.contains("missing.yaml") && out.contains("cannot read"),
        "{out}"
    );
}

#[test]
fn configurations_that_cannot_work_are_refused_without_quoting_secrets() {
    let dir = test_dir("config-unworkable");
    let route = |name: &str| {
        format!("  - {{prefix: /{name}, upstream: 'http://127.0.0.1:1', server_name: a}}\n")
    };
    let redis = "redis: {url: 'redis://:redis-password-1234@127.0.0.1:6379'}\npeer: {secret: '${SIDECAR_TEST_SECRET}'}\n";
    let cases = [
        (
            format!(
                "server: {{advertise_address: 'sidecar-0.mcp.svc:8081'}}\nroutes:\n{}",
                route("mcp")
            ),
            "server.advertise_address",
            "ip:port",
        ),
        (
            format!("{redis}routes:\n{}", route("mcp")),
            "server.advertise_address",
            "redis.url",
        ),
        (
            format!("routes:\n{}{}", route("a"), route("b")),
            "routes[1].server_name",
            "another route",
        ),
        (
            format!(
                "admin: {{token: 'admin-${{BROKEN'}}\nroutes:\n{}",
                route("mcp")
            ),
            "admin.token",
            "unterminated",
        ),
        (
            format!(
                "peer: {{secret: 12345678901234567}}\nroutes:\n{}",
                route("mcp")
            ),
            "peer.secret",
            "string",
        ),
    ];
    let env = [("SIDECAR_TEST_SECRET", "peer-secret-value-0123456789")];
    for (i, (yaml, field, problem)) in cases.iter().enumerate() {
        let path = dir.join(format!("unworkable-{i}.yaml"));
        fs::write(&path, yaml).unwrap();
        let (code, out) = check(&path, &env);
        assert_eq!(code, 2, "case {i} should fail: {out}");
        assert!(
            out.contains(field),
            "case {i} names no field {field}: {out}"
        );
        assert!(
            out.contains(problem),
            "case {i} does not say {problem:?}: {out}"
        );
        for secret in [
            "redis-password",
            "peer-secret-value",
            "admin-",
            "12345678901234567",
        ] {
            assert!(!out.contains(secret), "case {i} quotes a secret: {out}");
        }
    }
    let path = dir.join("workable.yaml");
    fs::write(
        &path,
        format!(
            "{redis}server: {{advertise_address: '10.0.0.7:8081'}}\nroutes:\n{}",
            route("mcp")
        ),
    )
    .unwrap();
    let (code, out) = check(&path, &env);
    assert_eq!(code, 0, "{out}");
}

#[test]
fn environment_variables_fill_the_file() {
    let dir = test_dir("config-env");
    let path = dir.join("env.yaml");
    fs::write(
        &path,
        "routes:\n  - {prefix: /mcp, upstream: '${SIDECAR_TEST_UP}', server_name: '${SIDECAR_TEST_NAME:-demo}'}\n",
    )
    .unwrap();
    let (code, out) = check(&path, &[("SIDECAR_TEST_UP", "http://127.0.0.1:9")]);
    assert_eq!(code, 0, "{out}");
    let (code, out) = check(
        &path,
        &[
            ("SIDECAR_TEST_UP", "http://127.0.0.1:9"),
            ("SIDECAR_TEST_NAME", "bad name"),
        ],
    );
    assert_eq!(code, 2, "{out}");
    assert!(out.contains("routes[0].server_name"), "{out}");
}
