//! `${VAR}` / `${VAR:-default}` expansion over every string scalar of the YAML tree.
//! Expanding after parsing (not on the raw text) means a secret containing `#` or `: `
//! cannot change the shape of the document.

use serde_yaml::Value;
use std::fmt;

/// An expansion that could not be completed, with the YAML path of the value that asked for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExpandError {
    pub path: String,
    pub reason: String,
}

impl fmt::Display for ExpandError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.path, self.reason)
    }
}

/// Expands in place. `lookup` is the environment (a parameter so tests need not touch the
/// process environment).
pub fn expand_tree(
    value: &mut Value,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<(), ExpandError> {
    walk(value, String::new(), lookup)
}

fn walk(
    value: &mut Value,
    path: String,
    lookup: &dyn Fn(&str) -> Option<String>,
) -> Result<(), ExpandError> {
    match value {
        Value::String(s) => {
            if s.contains('$') {
                let expanded = expand_str(s, lookup).map_err(|reason| ExpandError {
                    path: display_path(&path),
                    reason,
                })?;
                *s = expanded;
            }
        }
        Value::Sequence(items) => {
            for (i, item) in items.iter_mut().enumerate() {
                walk(item, format!("{path}[{i}]"), lookup)?;
            }
        }
        Value::Mapping(map) => {
            for (k, v) in map.iter_mut() {
                let key = match k {
                    Value::String(s) => s.clone(),
                    other => serde_yaml::to_string(other)
                        .unwrap_or_default()
                        .trim()
                        .to_string(),
                };
                let child = if path.is_empty() {
                    key
                } else {
                    format!("{path}.{key}")
                };
                walk(v, child, lookup)?;
            }
        }
        Value::Tagged(tagged) => walk(&mut tagged.value, path, lookup)?,
        Value::Null | Value::Bool(_) | Value::Number(_) => {}
    }
    Ok(())
}

fn display_path(path: &str) -> String {
    if path.is_empty() {
        "(document)".to_string()
    } else {
        path.to_string()
    }
}

/// Expands one string. `$$` is a literal `$`; a `$` not followed by `{` stays as it is.
/// Errors name the variable, never the value around it: it may be a secret.
pub fn expand_str(input: &str, lookup: &dyn Fn(&str) -> Option<String>) -> Result<String, String> {
    let mut out = String::with_capacity(input.len());
    let mut rest = input;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let after = &rest[pos + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(body) = after.strip_prefix('{') {
            let end = body
                .find('}')
                .ok_or("unterminated `${` (write $$ for a literal $)")?;
            let expr = &body[..end];
            let (name, default) = match expr.split_once(":-") {
                Some((n, d)) => (n, Some(d)),
                None => (expr, None),
            };
            if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
                return Err(
                    "`${` is not followed by a variable name (letters, digits, '_') and `}` (write $$ for a literal $)".into(),
                );
            }
            match (lookup(name).filter(|v| !v.is_empty()), default) {
                (Some(v), _) => out.push_str(&v),
                (None, Some(d)) => out.push_str(d),
                (None, None) => {
                    return Err(format!(
                        "environment variable {name} is not set (write ${{{name}:-default}} to allow that)"
                    ))
                }
            }
            rest = &body[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(name: &str) -> Option<String> {
        match name {
            "POD_IP" => Some("10.0.0.7".into()),
            "EMPTY" => Some(String::new()),
            _ => None,
        }
    }

    #[test]
    fn expands_set_default_and_literal() {
        assert_eq!(expand_str("${POD_IP}:8080", &env).unwrap(), "10.0.0.7:8080");
        assert_eq!(expand_str("${NOPE:-x}", &env).unwrap(), "x");
        assert_eq!(expand_str("${NOPE:-}", &env).unwrap(), "");
        assert_eq!(expand_str("${EMPTY:-d}", &env).unwrap(), "d");
        assert_eq!(expand_str("a$$b $x", &env).unwrap(), "a$b $x");
    }

    #[test]
    fn missing_variable_is_an_error_naming_it() {
        let err = expand_str("${REDIS_URL}", &env).unwrap_err();
        assert!(err.contains("REDIS_URL"), "{err}");
        assert!(expand_str("${bad-name}", &env).is_err());
        assert!(expand_str("${OPEN", &env).is_err());
    }

    #[test]
    fn errors_never_quote_the_value() {
        for secret in ["s3cr3t-${oops", "s3cr3t-${not-a-name}-x"] {
            let err = expand_str(secret, &env).unwrap_err();
            assert!(!err.contains("s3cr3t") && !err.contains("oops"), "{err}");
            assert!(!err.contains("not-a-name"), "{err}");
        }
    }

    #[test]
    fn tree_errors_carry_the_yaml_path() {
        let mut v: Value =
            serde_yaml::from_str("routes:\n  - prefix: /a\n    upstream: ${UP}\n").unwrap();
        let err = expand_tree(&mut v, &env).unwrap_err();
        assert_eq!(err.path, "routes[0].upstream");
    }

    #[test]
    fn expanded_values_cannot_change_document_shape() {
        let mut v: Value = serde_yaml::from_str("a: ${X}\n").unwrap();
        let lookup = |_: &str| Some("x # y: z".to_string());
        expand_tree(&mut v, &lookup).unwrap();
        assert_eq!(v["a"].as_str(), Some("x # y: z"));
    }
}
