//! The configuration loader (`config::Config::from_yaml`) on arbitrary YAML text; the seed
//! corpus is built from `conf/sidecar.yaml` and the configs the e2e tests write, with marker
//! secrets (`FUZZSECRET...`) in `peer.secret`, `admin.token` and `auth.token_encryption_key`.
//!
//! Properties: never panics; an error's Display never contains the value of `peer.secret`,
//! `admin.token` or `auth.token_encryption_key` (any value holding the marker, read from the
//! same text with `serde_yaml`, that occurs once in the text, so no other field echoes it
//! legitimately); an accepted config's secrets are the ones written (or expanded).
#![no_main]
use libfuzzer_sys::fuzz_target;
use mcp_sidecar::config::Config;
use serde_yaml::Value;
use std::path::Path;

const SECRET_PATHS: [(&str, &str); 3] = [
    ("peer", "secret"),
    ("admin", "token"),
    ("auth", "token_encryption_key"),
];

fn env(name: &str) -> Option<String> {
    match name {
        "POD_IP" => Some("10.0.0.7".into()),
        "PEER_SECRET" => Some("env-peer-secret-0123456789".into()),
        "EMPTY" => Some(String::new()),
        _ => None,
    }
}

/// The secret values written in the text (strings holding the marker).
fn secrets(text: &str) -> Vec<String> {
    if !(text.contains("secret") || text.contains("token")) {
        return Vec::new();
    }
    let Ok(tree) = serde_yaml::from_str::<Value>(text) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for (section, key) in SECRET_PATHS {
        let mut v = tree.get(section).and_then(|s| s.get(key));
        while let Some(Value::Tagged(t)) = v {
            v = Some(&t.value);
        }
        let s = match v {
            Some(Value::String(s)) if s.contains("FUZZSECRET") => s.clone(),
            // a secret written as a number is a secret all the same
            Some(Value::Number(n)) if n.to_string().len() >= 8 => n.to_string(),
            _ => continue,
        };
        if text.matches(s.as_str()).count() == 1 {
            out.push(s);
        }
    }
    out
}

fn has_digit_run(text: &str, n: usize) -> bool {
    let mut run = 0;
    text.bytes().any(|b| {
        run = if b.is_ascii_digit() { run + 1 } else { 0 };
        run >= n
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match Config::from_yaml(Path::new("fuzz.yaml"), text, &env) {
        Ok(config) => {
            if !text.contains("FUZZSECRET") {
                return;
            }
            for s in secrets(text) {
                if !s.contains('$') && s.contains("FUZZSECRET") {
                    let set = [
                        config.peer_secret(),
                        config.admin_token(),
                        config.token_encryption_key(),
                    ];
                    assert!(
                        set.iter().any(|v| v.is_some_and(|v| v.trim() == s.trim())),
                        "secret {s:?} not kept: {set:?}"
                    );
                }
            }
        }
        Err(e) => {
            let shown = e.to_string();
            // cheap first: a secret is a marked string or a number of 8+ digits
            if !shown.contains("FUZZSECRET") && !has_digit_run(&shown, 8) {
                return;
            }
            for s in secrets(text) {
                assert!(
                    !shown.contains(&s),
                    "the error shows the secret {s:?}: {shown}"
                );
            }
        }
    }
});
