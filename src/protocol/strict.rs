//! The one strict reading of a request body, used wherever the sidecar decides something by a
//! message's method or tool name. A body is read as exactly one JSON-RPC message or one batch
//! of them, or refused: anything a lenient parser on the MCP server could read differently
//! (a byte order mark, a duplicated key at any depth, a lone surrogate, a number out of range,
//! trailing bytes) is an error here, so the sidecar never judges one message while the server
//! runs another.

use super::jsonrpc::code;
use serde::de::{self, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::{Map, Value};
use std::fmt;

/// What one message of a body is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    Request,
    Notification,
    Response,
}

/// The facts the sidecar decides by, for one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    pub kind: Kind,
    pub method: Option<String>,
    /// The raw JSON id (requests and responses).
    pub id: Option<String>,
    /// The tool a `tools/call` names (`""` when it names none, so only `*` allows it).
    pub tool: Option<String>,
}

/// A body read strictly: its messages, and whether they came as a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reading {
    pub messages: Vec<Message>,
    pub batch: bool,
}

impl Reading {
    /// The tools this body calls.
    pub fn called_tools(&self) -> impl Iterator<Item = &str> {
        self.messages.iter().filter_map(|m| m.tool.as_deref())
    }

    /// Whether any message is a request for this method.
    pub fn requests(&self, method: &str) -> bool {
        self.messages
            .iter()
            .any(|m| m.kind == Kind::Request && m.method.as_deref() == Some(method))
    }
}

/// Why a body was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StrictError {
    /// Not JSON as the sidecar reads it (-32700).
    NotJson(String),
    /// JSON, but not one JSON-RPC message or batch, or readable in more than one way (-32600).
    Invalid(String),
}

impl StrictError {
    pub fn code(&self) -> i64 {
        match self {
            StrictError::NotJson(_) => code::PARSE_ERROR,
            StrictError::Invalid(_) => code::INVALID_REQUEST,
        }
    }

    pub fn message(&self) -> &str {
        match self {
            StrictError::NotJson(m) | StrictError::Invalid(m) => m,
        }
    }
}

/// Methods the sidecar answers itself; they make no sense inside a batch, and `initialize`
/// must not be batched (2025-03-26).
const NEVER_BATCHED: &[&str] = &["initialize", "offerings/list"];

/// Reads `body` strictly. `max_batch` bounds how many messages a batch may hold.
pub fn read(body: &[u8], max_batch: usize) -> Result<Reading, StrictError> {
    if body.starts_with(b"\xEF\xBB\xBF") {
        return Err(StrictError::NotJson(
            "a byte order mark before the JSON is not accepted".into(),
        ));
    }
    let value = parse_unique(body)?;
    match value {
        Value::Array(items) => {
            if items.is_empty() {
                return Err(StrictError::Invalid("an empty batch".into()));
            }
            if items.len() > max_batch {
                return Err(StrictError::Invalid(format!(
                    "a batch of {} messages exceeds the limit of {max_batch}",
                    items.len()
                )));
            }
            let messages = items
                .iter()
                .enumerate()
                .map(|(i, m)| {
                    let msg = message(m).map_err(|e| {
                        StrictError::Invalid(format!("batch message {}: {e}", i + 1))
                    })?;
                    match msg.method.as_deref() {
                        Some(m) if NEVER_BATCHED.contains(&m) => Err(StrictError::Invalid(
                            format!("{m} must not be sent in a batch"),
                        )),
                        _ => Ok(msg),
                    }
                })
                .collect::<Result<_, _>>()?;
            Ok(Reading {
                messages,
                batch: true,
            })
        }
        v => Ok(Reading {
            messages: vec![message(&v).map_err(StrictError::Invalid)?],
            batch: false,
        }),
    }
}

/// A full parse that refuses duplicated keys at any depth.
fn parse_unique(body: &[u8]) -> Result<Value, StrictError> {
    let mut de = serde_json::Deserializer::from_slice(body);
    let parsed = Unique::deserialize(&mut de).and_then(|v| de.end().map(|()| v.0));
    parsed.map_err(|e| {
        let text = e.to_string();
        if e.is_data() {
            StrictError::Invalid(text)
        } else {
            StrictError::NotJson(text)
        }
    })
}

/// Reads one message object.
fn message(v: &Value) -> Result<Message, String> {
    let Value::Object(o) = v else {
        return Err("a message must be a JSON object".into());
    };
    if o.get("jsonrpc").and_then(Value::as_str) != Some("2.0") {
        return Err("\"jsonrpc\" must be \"2.0\"".into());
    }
    let method = match o.get("method") {
        None => None,
        Some(Value::String(m)) => Some(m.clone()),
        Some(_) => return Err("\"method\" must be a string".into()),
    };
    let id = match o.get("id") {
        None => None,
        Some(id @ (Value::String(_) | Value::Number(_))) => Some(id.to_string()),
        // (a null id answers a request its reader could not parse: no server sends a client
        // one it could answer, and the envelope reader would not see an id there)
        Some(_) => return Err("\"id\" must be a string or a number".into()),
    };
    let kind = match (&method, &id) {
        (Some(_), Some(_)) => Kind::Request,
        (Some(_), None) => Kind::Notification,
        (None, Some(_)) => {
            if o.contains_key("result") == o.contains_key("error") {
                return Err("a response must carry exactly one of \"result\" and \"error\"".into());
            }
            Kind::Response
        }
        (None, None) => return Err("neither a request, a notification nor a response".into()),
    };
    if kind != Kind::Response && (o.contains_key("result") || o.contains_key("error")) {
        return Err("a request or notification must not carry \"result\" or \"error\"".into());
    }
    let params = o.get("params");
    if params.is_some_and(|p| !p.is_object() && !p.is_array()) {
        return Err("\"params\" must be an object or an array".into());
    }
    let tool = (kind == Kind::Request && method.as_deref() == Some("tools/call")).then(|| {
        params
            .and_then(|p| p.get("name"))
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string()
    });
    Ok(Message {
        kind,
        method,
        id,
        tool,
    })
}

/// A JSON value whose objects have no duplicated keys (serde_json alone keeps the last).
struct Unique(Value);

impl<'de> Deserialize<'de> for Unique {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(UniqueVisitor)
    }
}

struct UniqueVisitor;

impl<'de> Visitor<'de> for UniqueVisitor {
    type Value = Unique;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Unique, E> {
        Ok(Unique(Value::Bool(v)))
    }

    fn visit_i64<E>(self, v: i64) -> Result<Unique, E> {
        Ok(Unique(v.into()))
    }

    fn visit_u64<E>(self, v: u64) -> Result<Unique, E> {
        Ok(Unique(v.into()))
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Unique, E> {
        serde_json::Number::from_f64(v)
            .map(|n| Unique(Value::Number(n)))
            .ok_or_else(|| E::custom("a number out of range"))
    }

    fn visit_str<E>(self, v: &str) -> Result<Unique, E> {
        Ok(Unique(Value::String(v.to_string())))
    }

    fn visit_string<E>(self, v: String) -> Result<Unique, E> {
        Ok(Unique(Value::String(v)))
    }

    fn visit_unit<E>(self) -> Result<Unique, E> {
        Ok(Unique(Value::Null))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Unique, A::Error> {
        let mut items = Vec::new();
        while let Some(Unique(v)) = seq.next_element()? {
            items.push(v);
        }
        Ok(Unique(Value::Array(items)))
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Unique, A::Error> {
        let mut out = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            let Unique(v) = map.next_value()?;
            if out.contains_key(&key) {
                return Err(de::Error::custom(format_args!(
                    "the key \"{}\" appears twice in one object",
                    super::shown(&key, 64)
                )));
            }
            out.insert(key, v);
        }
        Ok(Unique(Value::Object(out)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(body: &str) -> Reading {
        read(body.as_bytes(), 100).unwrap()
    }

    fn invalid(body: &[u8]) -> String {
        match read(body, 100) {
            Err(StrictError::Invalid(m)) => m,
            other => panic!("expected Invalid for {:?}, got {other:?}", body),
        }
    }

    fn not_json(body: &[u8]) -> String {
        match read(body, 100) {
            Err(StrictError::NotJson(m)) => m,
            other => panic!("expected NotJson for {:?}, got {other:?}", body),
        }
    }

    #[test]
    fn reads_every_kind_of_message() {
        let r = ok(r#"{"jsonrpc":"2.0","id":7,"method":"tools/call","params":{"name":"x"}}"#);
        assert_eq!(
            r.messages,
            vec![Message {
                kind: Kind::Request,
                method: Some("tools/call".into()),
                id: Some("7".into()),
                tool: Some("x".into()),
            }]
        );
        assert!(!r.batch);
        let n = ok(r#"{"jsonrpc":"2.0","method":"notifications/initialized"}"#);
        assert_eq!(n.messages[0].kind, Kind::Notification);
        let resp = ok(r#"{"jsonrpc":"2.0","id":"a","result":{}}"#);
        assert_eq!(resp.messages[0].kind, Kind::Response);
        assert_eq!(resp.messages[0].id.as_deref(), Some("\"a\""));
        let b = ok(
            r#"[{"jsonrpc":"2.0","id":1,"method":"tools/list"},{"jsonrpc":"2.0","id":2,"method":"tools/call","params":{"name":"d"}}]"#,
        );
        assert!(b.batch);
        assert!(b.requests("tools/list"));
        assert_eq!(b.called_tools().collect::<Vec<_>>(), vec!["d"]);
        let nameless = ok(r#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{}}"#);
        assert_eq!(nameless.called_tools().collect::<Vec<_>>(), vec![""]);
    }

    #[test]
    fn readings_a_lenient_parser_could_differ_on_are_refused() {
        // the bypasses a security review found: a BOM and duplicated keys
        not_json(b"\xEF\xBB\xBF{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"tools/list\"}");
        assert!(invalid(
            br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"ok","name":"denied"}}"#
        )
        .contains("appears twice"));
        invalid(br#"{"jsonrpc":"2.0","id":1,"method":"ping","method":"tools/list"}"#);
        // the same key spelled with an escape is the same key
        invalid(br#"{"jsonrpc":"2.0","id":1,"method":"ping","\u006dethod":"tools/list"}"#);
        // a duplicate deep inside arguments is refused too
        invalid(br#"{"jsonrpc":"2.0","id":1,"method":"x","params":{"a":{"b":1,"b":2}}}"#);
        not_json(br#"{"jsonrpc":"2.0","id":1,"method":"x","params":{"s":"\ud800"}}"#);
        not_json(br#"{"jsonrpc":"2.0","id":1e400,"method":"x"}"#);
        not_json(br#"{"jsonrpc":"2.0","id":1,"method":"x"} {"jsonrpc":"2.0","id":2,"method":"y"}"#);
        not_json(br#"{"jsonrpc":"2.0","id":NaN,"method":"x"}"#);
        not_json(b"{\"jsonrpc\":\"2.0\",\"id\":1,\"method\":\"x\xff\"}");
        not_json(b"");
        not_json(b"plain text");
    }

    #[test]
    fn what_is_not_one_message_or_batch_is_refused() {
        invalid(br#"{"id":1,"method":"x"}"#);
        invalid(br#"{"jsonrpc":"1.0","id":1,"method":"x"}"#);
        invalid(br#"{"jsonrpc":"2.0","id":1,"method":5}"#);
        invalid(br#"{"jsonrpc":"2.0","id":{},"method":"x"}"#);
        // found by fuzzing: the envelope reader takes a null id for none
        invalid(br#"{"jsonrpc":"2.0","id":null,"error":{"code":-32700,"message":"x"}}"#);
        invalid(br#"{"jsonrpc":"2.0","id":1}"#);
        invalid(br#"{"jsonrpc":"2.0","id":1,"result":1,"error":{}}"#);
        invalid(br#"{"jsonrpc":"2.0","id":1,"method":"x","result":1}"#);
        invalid(br#"{"jsonrpc":"2.0","id":1,"method":"x","params":"s"}"#);
        invalid(br#"{"jsonrpc":"2.0"}"#);
        invalid(b"[]");
        invalid(b"5");
        invalid(br#"[{"jsonrpc":"2.0","id":1,"method":"x"},7]"#);
        // a batch is judged message by message
        assert!(invalid(
            br#"[{"jsonrpc":"2.0","id":1,"method":"x"},{"jsonrpc":"2.0","id":2,"method":"y","params":{"n":1,"n":2}}]"#
        )
        .contains("appears twice"));
        assert!(
            invalid(br#"[{"jsonrpc":"2.0","id":1,"method":"initialize","params":{}}]"#)
                .contains("initialize must not be sent in a batch")
        );
    }

    #[test]
    fn batches_are_capped() {
        let one = r#"{"jsonrpc":"2.0","method":"n"}"#;
        let body = format!("[{}]", [one; 3].join(","));
        assert!(read(body.as_bytes(), 3).is_ok());
        match read(body.as_bytes(), 2) {
            Err(StrictError::Invalid(m)) => assert!(m.contains("limit of 2")),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn deep_nesting_is_refused_not_overflowed() {
        let mut deep = br#"{"jsonrpc":"2.0","id":1,"method":"x","params":"#.to_vec();
        deep.extend(std::iter::repeat_n(b'[', 100_000));
        assert!(read(&deep, 100).is_err());
    }

    #[test]
    fn refusals_carry_the_right_codes() {
        assert_eq!(StrictError::NotJson("x".into()).code(), code::PARSE_ERROR);
        assert_eq!(
            StrictError::Invalid("x".into()).code(),
            code::INVALID_REQUEST
        );
        // a key in an error is shown escaped and bounded
        let key = "k\n".repeat(100);
        let body = format!(
            r#"{{"jsonrpc":"2.0","id":1,"method":"x","params":{{"{0}":1,"{0}":2}}}}"#,
            key.replace('\n', "\\n")
        );
        let m = invalid(body.as_bytes());
        assert!(!m.contains('\n'));
        assert!(m.len() < 200);
    }
}
