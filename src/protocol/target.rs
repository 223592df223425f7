//! What a request's params say beyond its method, for traces and the audit log: the target it
//! acts on (the tool a `tools/call` runs, the prompt a `prompts/get` renders, the resource a
//! `resources/read` reads) and the W3C trace context a client put in `params._meta` (the
//! 2026-07-28 convention). Read with a borrowed, skip-everything-else deserialisation; the
//! arguments are never looked at.

use serde::Deserialize;
use std::borrow::Cow;

/// Longest target kept; a longer one is cut (it names a span and fills an audit field).
const MAX_TARGET: usize = 256;

/// The facts of one JSON-RPC request's params.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Facts {
    /// The tool, prompt or resource the request acts on. A resource URI loses its query and
    /// fragment (they may carry credentials).
    pub target: Option<String>,
    /// `params._meta.traceparent` and `tracestate`, unvalidated.
    pub traceparent: Option<String>,
    pub tracestate: Option<String>,
}

#[derive(Deserialize)]
struct Message<'a> {
    #[serde(borrow, default)]
    params: Option<Params<'a>>,
}

#[derive(Deserialize)]
struct Params<'a> {
    #[serde(borrow, default)]
    name: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    uri: Option<Cow<'a, str>>,
    #[serde(rename = "_meta", borrow, default)]
    meta: Option<Meta<'a>>,
}

#[derive(Deserialize)]
struct Meta<'a> {
    #[serde(borrow, default)]
    traceparent: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    tracestate: Option<Cow<'a, str>>,
}

/// What a request for `method` acts on: a tool or prompt by name, a resource by URI.
pub fn target_kind(method: &str) -> Option<TargetKind> {
    match method {
        "tools/call" => Some(TargetKind::Tool),
        "prompts/get" => Some(TargetKind::Prompt),
        "resources/read" | "resources/subscribe" | "resources/unsubscribe" => {
            Some(TargetKind::Resource)
        }
        _ => None,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetKind {
    Tool,
    Prompt,
    Resource,
}

/// The facts of a single-message body whose method is `method`; `None` for a body that is
/// not one JSON object (a batch, not JSON), or whose params are not an object.
pub fn facts(body: &[u8], method: &str) -> Option<Facts> {
    // a derived struct would also read an array (a batch) field by field
    if body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return None;
    }
    let message: Message = serde_json::from_slice(body).ok()?;
    let Some(params) = message.params else {
        return Some(Facts::default());
    };
    let target = match target_kind(method) {
        Some(TargetKind::Tool | TargetKind::Prompt) => params.name.map(|n| cut(&n)),
        Some(TargetKind::Resource) => params.uri.map(|u| cut(without_query(&u))),
        None => None,
    };
    let (traceparent, tracestate) = params.meta.map_or((None, None), |m| {
        (
            m.traceparent.map(Cow::into_owned),
            m.tracestate.map(Cow::into_owned),
        )
    });
    Some(Facts {
        target,
        traceparent,
        tracestate,
    })
}

/// One request of a batch: its method, raw JSON id and target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    pub method: String,
    pub id: Option<String>,
    pub target: Option<String>,
}

#[derive(Deserialize)]
struct BatchMessage<'a> {
    #[serde(borrow, default)]
    method: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    id: Option<&'a serde_json::value::RawValue>,
    #[serde(borrow, default)]
    params: Option<Params<'a>>,
}

/// The messages of a batch that have a method (requests and notifications), each with its
/// target; empty for anything that is not a batch of objects.
pub fn batch(body: &[u8]) -> Vec<Item> {
    let Ok(messages) = serde_json::from_slice::<Vec<BatchMessage>>(body) else {
        return Vec::new();
    };
    messages
        .into_iter()
        .filter_map(|m| {
            let method = m.method?.into_owned();
            let target = m.params.and_then(|p| match target_kind(&method)? {
                TargetKind::Tool | TargetKind::Prompt => p.name.map(|n| cut(&n)),
                TargetKind::Resource => p.uri.map(|u| cut(without_query(&u))),
            });
            Some(Item {
                id: m.id.map(|r| r.get().to_string()),
                method,
                target,
            })
        })
        .collect()
}

fn without_query(uri: &str) -> &str {
    uri.split(['?', '#']).next().unwrap_or_default()
}

fn cut(text: &str) -> String {
    match text.char_indices().nth(MAX_TARGET) {
        Some((i, _)) => text[..i].to_string(),
        None => text.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_by_method() {
        let call = br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"add","arguments":{"a":1,"token":"s3cret"}}}"#;
        let f = facts(call, "tools/call").unwrap();
        assert_eq!(f.target.as_deref(), Some("add"));
        assert_eq!(f.traceparent, None);
        let read = br#"{"jsonrpc":"2.0","id":2,"method":"resources/read","params":{"uri":"file:///a/b.txt?key=mcphub_x#frag"}}"#;
        assert_eq!(
            facts(read, "resources/read").unwrap().target.as_deref(),
            Some("file:///a/b.txt")
        );
        let prompt =
            br#"{"jsonrpc":"2.0","id":3,"method":"prompts/get","params":{"name":"greet"}}"#;
        assert_eq!(
            facts(prompt, "prompts/get").unwrap().target.as_deref(),
            Some("greet")
        );
        // a name on another method is no target
        let list = br#"{"jsonrpc":"2.0","id":4,"method":"tools/list","params":{"name":"x"}}"#;
        assert_eq!(facts(list, "tools/list").unwrap().target, None);
        let long = format!(
            r#"{{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{{"name":"{}"}}}}"#,
            "é".repeat(300)
        );
        let cut_to = facts(long.as_bytes(), "tools/call")
            .unwrap()
            .target
            .unwrap();
        assert_eq!(cut_to.chars().count(), MAX_TARGET);
    }

    #[test]
    fn trace_context_from_meta() {
        let body = br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"_meta":{"traceparent":"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01","tracestate":"k=v","progressToken":1},"name":"add"}}"#;
        let f = facts(body, "tools/call").unwrap();
        assert_eq!(
            f.traceparent.as_deref(),
            Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
        );
        assert_eq!(f.tracestate.as_deref(), Some("k=v"));
        assert_eq!(f.target.as_deref(), Some("add"));
    }

    #[test]
    fn batches_name_each_target() {
        let body = br#"[{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"a"}},{"jsonrpc":"2.0","method":"notifications/initialized"},{"jsonrpc":"2.0","id":"x","result":{}},{"jsonrpc":"2.0","id":2,"method":"resources/read","params":{"uri":"u://r?t=1"}}]"#;
        let items = batch(body);
        assert_eq!(items.len(), 3);
        assert_eq!(items[0].target.as_deref(), Some("a"));
        assert_eq!(items[0].id.as_deref(), Some("1"));
        assert_eq!(items[1].method, "notifications/initialized");
        assert_eq!(items[2].target.as_deref(), Some("u://r"));
        assert!(batch(b"{}").is_empty());
    }

    #[test]
    fn odd_bodies() {
        assert_eq!(facts(b"[]", "batch"), None);
        assert_eq!(facts(b"not json", "x"), None);
        assert_eq!(
            facts(br#"{"jsonrpc":"2.0","method":"ping"}"#, "ping"),
            Some(Facts::default())
        );
        // params of the wrong shape: nothing is made up
        let odd = br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":[1]}"#;
        assert!(facts(odd, "tools/call").is_none_or(|f| f == Facts::default()));
        // escaped text is decoded
        let esc = br#"{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":"a\u0062"}}"#;
        assert_eq!(
            facts(esc, "tools/call").unwrap().target.as_deref(),
            Some("ab")
        );
    }
}
