//! The 2026-07-28 ("modern") era of MCP as the sidecar reads and writes it: telling a modern
//! request from a legacy one, validating its headers against its body exactly as the
//! Streamable HTTP transport page says, and the shapes of what a modern client gets back
//! (`server/discover`, `resultType`, cache hints, input requests, subscription notifications).
//! Pure JSON: nothing here knows of Pingora, Redis or the legacy server behind the bridge.

use base64::Engine;
use serde_json::{json, Map, Value};

/// The modern protocol versions the sidecar speaks to clients.
pub const MODERN_VERSIONS: &[&str] = &["2026-07-28"];
/// The newest modern version.
pub const MODERN_VERSION: &str = "2026-07-28";
/// Legacy (session-based) versions, newest first.
pub const LEGACY_VERSIONS: &[&str] = &["2025-11-25", "2025-06-18", "2025-03-26", "2024-11-05"];

pub const MCP_METHOD: &str = "mcp-method";
pub const MCP_NAME: &str = "mcp-name";

/// `_meta` keys of the modern era.
pub mod meta {
    pub const PROTOCOL_VERSION: &str = "io.modelcontextprotocol/protocolVersion";
    pub const CLIENT_CAPABILITIES: &str = "io.modelcontextprotocol/clientCapabilities";
    pub const CLIENT_INFO: &str = "io.modelcontextprotocol/clientInfo";
    pub const LOG_LEVEL: &str = "io.modelcontextprotocol/logLevel";
    pub const SERVER_INFO: &str = "io.modelcontextprotocol/serverInfo";
    pub const SUBSCRIPTION_ID: &str = "io.modelcontextprotocol/subscriptionId";
    /// The prefix of every key the era reserves (stripped before a legacy server sees params).
    pub const PREFIX: &str = "io.modelcontextprotocol/";
}

/// Error codes the modern era adds.
pub mod code {
    pub const HEADER_MISMATCH: i64 = -32020;
    pub const MISSING_CAPABILITY: i64 = -32021;
    pub const UNSUPPORTED_VERSION: i64 = -32022;
    pub const METHOD_NOT_FOUND: i64 = -32601;
    /// A legacy server's "resource not found".
    pub const LEGACY_RESOURCE_NOT_FOUND: i64 = -32002;
}

/// Requests a modern client may send, and what the bridge does with them.
pub const MODERN_METHODS: &[&str] = &[
    "server/discover",
    "tools/list",
    "tools/call",
    "resources/list",
    "resources/read",
    "resources/templates/list",
    "prompts/list",
    "prompts/get",
    "completion/complete",
    "subscriptions/listen",
    "offerings/list",
];

/// Requests that may end in an `InputRequiredResult` (MRTR).
pub const INPUT_METHODS: &[&str] = &["tools/call", "resources/read", "prompts/get"];

/// Results that carry `ttlMs` and `cacheScope`.
const CACHEABLE: &[&str] = &[
    "server/discover",
    "tools/list",
    "resources/list",
    "resources/templates/list",
    "prompts/list",
    "resources/read",
];

/// Server-to-client requests a legacy server may send during a call, carried to a modern
/// client as input requests, with the client capability each needs.
pub const INPUT_REQUESTS: &[(&str, &str)] = &[
    ("elicitation/create", "elicitation"),
    ("sampling/createMessage", "sampling"),
    ("roots/list", "roots"),
];

pub fn is_legacy_version(v: &str) -> bool {
    LEGACY_VERSIONS.contains(&v)
}

pub fn is_modern_version(v: &str) -> bool {
    MODERN_VERSIONS.contains(&v)
}

/// Whether a request's head says it is of the modern era: it names no session, and its
/// `MCP-Protocol-Version` is not a legacy version, or it carries `Mcp-Method` (which no
/// legacy client sends). A version the sidecar does not know counts as modern, so its
/// client gets the modern "unsupported version" error listing what is supported.
pub fn is_modern_head(version: Option<&[u8]>, has_session: bool, has_method: bool) -> bool {
    if has_session {
        return false;
    }
    match version {
        Some(v) => has_method || std::str::from_utf8(v).map_or(true, |v| !is_legacy_version(v)),
        None => has_method,
    }
}

/// What a modern request's head says, for checking against its body.
#[derive(Debug, Default, Clone)]
pub struct Head<'a> {
    pub version: Option<&'a [u8]>,
    pub method: Option<&'a [u8]>,
    pub name: Option<&'a [u8]>,
}

/// Why a modern request is refused, with the status and code the transport page gives.
#[derive(Debug, Clone, PartialEq)]
pub enum Refused {
    /// `400`, `-32020`.
    HeaderMismatch(String),
    /// `400`, `-32022`, with `data.supported`.
    UnsupportedVersion(String),
    /// `404`, `-32601`.
    UnknownMethod(String),
    /// `400`, `-32600`: not a single JSON-RPC request or notification.
    Invalid(String),
    /// `400`, `-32602`.
    Params(String),
}

impl Refused {
    pub fn status(&self) -> u16 {
        match self {
            Refused::UnknownMethod(_) => 404,
            _ => 400,
        }
    }

    pub fn code(&self) -> i64 {
        match self {
            Refused::HeaderMismatch(_) => code::HEADER_MISMATCH,
            Refused::UnsupportedVersion(_) => code::UNSUPPORTED_VERSION,
            Refused::UnknownMethod(_) => code::METHOD_NOT_FOUND,
            Refused::Invalid(_) => crate::protocol::jsonrpc::code::INVALID_REQUEST,
            Refused::Params(_) => crate::protocol::jsonrpc::code::INVALID_PARAMS,
        }
    }

    pub fn message(&self) -> String {
        match self {
            Refused::HeaderMismatch(m) => format!("Header mismatch: {m}"),
            Refused::UnsupportedVersion(v) => format!(
                "Unsupported protocol version \"{}\"",
                crate::protocol::shown(v, 32)
            ),
            Refused::UnknownMethod(m) => {
                format!("Method not found: {}", crate::protocol::shown(m, 64))
            }
            Refused::Invalid(m) | Refused::Params(m) => m.clone(),
        }
    }

    /// The error's `data` member, if it has one.
    pub fn data(&self) -> Option<Value> {
        match self {
            Refused::UnsupportedVersion(v) => Some(json!({
                "supported": MODERN_VERSIONS,
                "requested": v,
            })),
            _ => None,
        }
    }
}

/// A modern message, checked against its head.
#[derive(Debug, Clone)]
pub struct Request {
    /// The JSON-RPC id (absent for a notification).
    pub id: Option<Value>,
    pub method: String,
    /// `params.name` or `params.uri` of the methods that name something.
    pub name: Option<String>,
    /// The params without the era's `_meta` keys, `inputResponses` and `requestState`.
    pub params: Map<String, Value>,
    pub client_capabilities: Value,
    pub client_info: Option<Value>,
    pub log_level: Option<LogLevel>,
    /// MRTR: the client's answers to input requests, and the state it echoes.
    pub input_responses: Option<Map<String, Value>>,
    pub request_state: Option<String>,
}

impl Request {
    pub fn is_notification(&self) -> bool {
        self.id.is_none()
    }

    /// Whether the client declared a capability (`elicitation`, `sampling`, `roots`).
    pub fn declares(&self, capability: &str) -> bool {
        self.client_capabilities
            .get(capability)
            .is_some_and(|c| !c.is_null())
    }

    /// A digest of what identifies the original request of an MRTR round: its method and
    /// its params (without `_meta` and the round's own fields). `_meta` is the request's own
    /// (its progress token, trace context), not the request's identity: a retry is a new
    /// request, and clients give it a new progress token (the official SDKs use the request
    /// id). serde_json keeps object keys sorted, so equal params give equal digests.
    pub fn digest(&self) -> [u8; 32] {
        use sha2::{Digest, Sha256};
        let mut params = self.params.clone();
        params.remove("_meta");
        let mut h = Sha256::new();
        h.update(self.method.as_bytes());
        h.update([0]);
        h.update(serde_json::to_vec(&params).unwrap_or_default());
        h.finalize().into()
    }
}

/// Log levels of `notifications/message`, in order of severity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum LogLevel {
    Debug,
    Info,
    Notice,
    Warning,
    Error,
    Critical,
    Alert,
    Emergency,
}

impl LogLevel {
    pub fn parse(s: &str) -> Option<LogLevel> {
        Some(match s {
            "debug" => LogLevel::Debug,
            "info" => LogLevel::Info,
            "notice" => LogLevel::Notice,
            "warning" => LogLevel::Warning,
            "error" => LogLevel::Error,
            "critical" => LogLevel::Critical,
            "alert" => LogLevel::Alert,
            "emergency" => LogLevel::Emergency,
            _ => return None,
        })
    }
}

/// Decodes a header value that may use the Base64 sentinel form `=?base64?…?=`.
pub fn decode_header_value(raw: &[u8]) -> Result<String, String> {
    let text = std::str::from_utf8(raw).map_err(|_| "header value is not ASCII".to_string())?;
    if let Some(inner) = text
        .strip_prefix("=?base64?")
        .and_then(|t| t.strip_suffix("?="))
    {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(inner)
            .map_err(|_| "header value has an invalid Base64 sentinel".to_string())?;
        return String::from_utf8(bytes)
            .map_err(|_| "Base64 header value is not UTF-8".to_string());
    }
    if text
        .bytes()
        .any(|b| !(0x20..=0x7e).contains(&b) && b != b'\t')
    {
        return Err("header value has invalid characters".to_string());
    }
    Ok(text.to_string())
}

/// Reads a modern message and checks it against its head, in the order the transport page
/// gives: the version (header against `_meta`), then the method, then the name. The body
/// has passed the strict reading (`protocol::strict`) already: one message, no duplicate
/// keys.
pub fn read(head: &Head, body: &[u8]) -> Result<Request, Refused> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|_| Refused::Invalid("request body is not JSON".into()))?;
    let Value::Object(mut msg) = value else {
        return Err(Refused::Invalid(
            "a modern request is a single JSON-RPC request or notification".into(),
        ));
    };
    let Some(Value::String(method)) = msg.remove("method") else {
        return Err(Refused::Invalid(
            "a client may not send JSON-RPC responses".into(),
        ));
    };
    let id = msg.remove("id");
    let mut params = match msg.remove("params") {
        None | Some(Value::Null) => Map::new(),
        Some(Value::Object(p)) => p,
        Some(_) => return Err(Refused::Invalid("params must be an object".into())),
    };
    let mut meta = match params.remove("_meta") {
        None => Map::new(),
        Some(Value::Object(m)) => m,
        Some(_) => return Err(Refused::Params("_meta must be an object".into())),
    };

    // the version: the header is required, and must match _meta when that names one
    let header_version = match head.version {
        Some(v) => std::str::from_utf8(v)
            .map_err(|_| Refused::HeaderMismatch("MCP-Protocol-Version is not ASCII".into()))?,
        None => {
            return Err(Refused::HeaderMismatch(
                "the MCP-Protocol-Version header is required".into(),
            ))
        }
    };
    let body_version = match meta.remove(meta::PROTOCOL_VERSION) {
        Some(Value::String(v)) => Some(v),
        None => None,
        Some(_) => {
            return Err(Refused::Params(format!(
                "{} must be a string",
                meta::PROTOCOL_VERSION
            )))
        }
    };
    if let Some(bv) = body_version.as_deref().filter(|bv| *bv != header_version) {
        return Err(Refused::HeaderMismatch(format!(
            "MCP-Protocol-Version header value '{}' does not match body value '{}'",
            crate::protocol::shown(header_version, 32),
            crate::protocol::shown(bv, 32)
        )));
    }
    if !is_modern_version(header_version) {
        return Err(Refused::UnsupportedVersion(header_version.to_string()));
    }

    // the method: Mcp-Method is required on requests (notifications have no header rules)
    let is_notification = id.is_none();
    match head.method {
        Some(m) if m != method.as_bytes() => {
            return Err(Refused::HeaderMismatch(format!(
                "Mcp-Method header value '{}' does not match body value '{}'",
                crate::protocol::shown(&String::from_utf8_lossy(m), 64),
                crate::protocol::shown(&method, 64)
            )))
        }
        None if !is_notification => {
            return Err(Refused::HeaderMismatch(
                "the Mcp-Method header is required".into(),
            ))
        }
        _ => {}
    }
    if !is_notification && !MODERN_METHODS.contains(&method.as_str()) {
        return Err(Refused::UnknownMethod(method));
    }
    if let Some(id) = &id {
        if !(id.is_string() || id.is_i64() || id.is_u64()) {
            return Err(Refused::Invalid("id must be a string or an integer".into()));
        }
    }

    // the name: required for the methods that name a tool, resource or prompt
    let name_field = match method.as_str() {
        "tools/call" | "prompts/get" => Some("name"),
        "resources/read" => Some("uri"),
        _ => None,
    };
    let name = match name_field {
        Some(field) => {
            let Some(Value::String(body_name)) = params.get(field) else {
                return Err(Refused::Params(format!("params.{field} must be a string")));
            };
            let Some(raw) = head.name else {
                return Err(Refused::HeaderMismatch(
                    "the Mcp-Name header is required".into(),
                ));
            };
            let header_name = decode_header_value(raw).map_err(Refused::HeaderMismatch)?;
            if &header_name != body_name {
                return Err(Refused::HeaderMismatch(format!(
                    "Mcp-Name header value '{}' does not match body value '{}'",
                    crate::protocol::shown(&header_name, 64),
                    crate::protocol::shown(body_name, 64)
                )));
            }
            Some(body_name.clone())
        }
        None => None,
    };

    let client_capabilities = meta
        .remove(meta::CLIENT_CAPABILITIES)
        .unwrap_or_else(|| json!({}));
    if !client_capabilities.is_object() {
        return Err(Refused::Params(format!(
            "{} must be an object",
            meta::CLIENT_CAPABILITIES
        )));
    }
    let client_info = meta.remove(meta::CLIENT_INFO);
    let log_level = match meta.remove(meta::LOG_LEVEL) {
        None => None,
        Some(Value::String(l)) => Some(
            LogLevel::parse(&l).ok_or_else(|| Refused::Params(format!("unknown log level {l}")))?,
        ),
        Some(_) => return Err(Refused::Params("logLevel must be a string".into())),
    };
    meta.retain(|k, _| !k.starts_with(meta::PREFIX));
    if !meta.is_empty() {
        params.insert("_meta".into(), Value::Object(meta));
    }
    let (input_responses, request_state) = if INPUT_METHODS.contains(&method.as_str()) {
        let responses = match params.remove("inputResponses") {
            None | Some(Value::Null) => None,
            Some(Value::Object(r)) => Some(r),
            Some(_) => return Err(Refused::Params("inputResponses must be an object".into())),
        };
        let state = match params.remove("requestState") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s),
            Some(_) => return Err(Refused::Params("requestState must be a string".into())),
        };
        (responses, state)
    } else {
        (None, None)
    };
    Ok(Request {
        id,
        method,
        name,
        params,
        client_capabilities,
        client_info,
        log_level,
        input_responses,
        request_state,
    })
}

/// The legacy request a modern one becomes: the same method and params (without the era's
/// metadata), under the bridge's own id, with the progress token replaced when the client
/// gave one (`token`), since many clients share one legacy session.
pub fn legacy_request(req: &Request, id: &str, token: Option<&str>) -> Vec<u8> {
    let mut params = req.params.clone();
    if let Some(token) = token {
        if let Some(Value::Object(meta)) = params.get_mut("_meta") {
            meta.insert("progressToken".into(), Value::String(token.to_string()));
        }
    }
    let msg = json!({"jsonrpc": "2.0", "id": id, "method": req.method, "params": params});
    serde_json::to_vec(&msg).unwrap_or_default()
}

/// The client's progress token, if it asked for progress.
pub fn progress_token(req: &Request) -> Option<&Value> {
    req.params.get("_meta")?.get("progressToken")
}

/// Legacy client capabilities declared to the legacy server for a modern client's
/// capabilities: the same names (`roots`, `sampling`, `elicitation`), nothing else.
pub fn legacy_capabilities(modern: &Value) -> Value {
    let mut out = Map::new();
    for (_, cap) in INPUT_REQUESTS {
        if let Some(v) = modern.get(*cap).filter(|v| !v.is_null()) {
            out.insert((*cap).to_string(), v.clone());
        }
    }
    Value::Object(out)
}

/// How long and for whom a modern client may cache an answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheHint {
    pub ttl_ms: u64,
    /// `private` when the answer depends on the caller (injected tokens, tool filtering).
    pub private: bool,
}

impl CacheHint {
    fn scope(&self) -> &'static str {
        if self.private {
            "private"
        } else {
            "public"
        }
    }
}

/// The `server/discover` result for a legacy server, from its InitializeResult.
pub fn discover_result(init_result: &Value, legacy_version: &str, hint: CacheHint) -> Value {
    let mut versions: Vec<&str> = MODERN_VERSIONS.to_vec();
    // the legacy versions the server speaks: the one it negotiated and the older ones
    versions.extend(
        LEGACY_VERSIONS
            .iter()
            .filter(|v| **v <= legacy_version)
            .copied(),
    );
    let server_info = init_result
        .get("serverInfo")
        .cloned()
        .unwrap_or_else(|| json!({"name": "unknown", "version": "0"}));
    let mut out = json!({
        "resultType": "complete",
        "supportedVersions": versions,
        "capabilities": server_capabilities(init_result),
        "serverInfo": server_info,
        "ttlMs": hint.ttl_ms,
        "cacheScope": hint.scope(),
        "_meta": {meta::SERVER_INFO: server_info},
    });
    if let Some(instructions) = init_result.get("instructions").filter(|i| i.is_string()) {
        out["instructions"] = instructions.clone();
    }
    out
}

/// A legacy server's capabilities as a modern client reads them: without what the modern
/// era removed (`logging` stays: log messages flow per request; `subscribe` maps onto
/// `subscriptions/listen`).
fn server_capabilities(init_result: &Value) -> Value {
    init_result
        .get("capabilities")
        .cloned()
        .filter(Value::is_object)
        .unwrap_or_else(|| json!({}))
}

/// Makes a legacy result a modern one: `resultType`, the cache hints of list results and
/// `resources/read`, and the server's identity in `_meta`.
pub fn complete_result(method: &str, result: &mut Value, hint: CacheHint, server_info: &Value) {
    let Value::Object(obj) = result else {
        return;
    };
    obj.insert("resultType".into(), json!("complete"));
    if CACHEABLE.contains(&method) {
        obj.entry("ttlMs").or_insert(json!(hint.ttl_ms));
        obj.insert("cacheScope".into(), json!(hint.scope()));
    }
    let meta = obj.entry("_meta").or_insert_with(|| json!({}));
    if let Value::Object(meta) = meta {
        meta.insert(meta::SERVER_INFO.into(), server_info.clone());
    }
}

/// Maps a legacy error to its modern code: resource not found became `-32602` (legacy
/// servers said `-32002`, or FastMCP 1.x `0` with "Unknown resource").
pub fn modern_error(method: &str, mut error: Value) -> Value {
    let code = error.get("code").and_then(Value::as_i64);
    let unknown_resource = method == "resources/read"
        && code == Some(0)
        && error
            .get("message")
            .and_then(Value::as_str)
            .is_some_and(|m| m.starts_with("Unknown resource"));
    if code == Some(code::LEGACY_RESOURCE_NOT_FOUND) || unknown_resource {
        error["code"] = json!(crate::protocol::jsonrpc::code::INVALID_PARAMS);
    }
    error
}

/// Whether a `notifications/message` reaches a client that asked for `wanted` (none: it
/// asked for no log messages, and gets none).
pub fn log_passes(params: &Value, wanted: Option<LogLevel>) -> bool {
    let Some(wanted) = wanted else {
        return false;
    };
    params
        .get("level")
        .and_then(Value::as_str)
        .and_then(LogLevel::parse)
        .is_some_and(|level| level >= wanted)
}

/// An `InputRequiredResult`.
pub fn input_required(input_requests: Map<String, Value>, request_state: &str) -> Value {
    json!({
        "resultType": "input_required",
        "inputRequests": input_requests,
        "requestState": request_state,
    })
}

/// The opt-ins of a `subscriptions/listen`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Listen {
    pub tools: bool,
    pub prompts: bool,
    pub resources: bool,
    pub resource_uris: Vec<String>,
}

impl Listen {
    /// Reads `params.notifications`; unknown opt-ins are not honoured (and not acknowledged).
    pub fn read(params: &Map<String, Value>) -> Result<Listen, Refused> {
        let Some(Value::Object(n)) = params.get("notifications") else {
            return Err(Refused::Params(
                "subscriptions/listen needs params.notifications".into(),
            ));
        };
        let flag = |k: &str| n.get(k).and_then(Value::as_bool).unwrap_or(false);
        let mut uris = Vec::new();
        match n.get("resourceSubscriptions") {
            None | Some(Value::Null) => {}
            Some(Value::Array(a)) => {
                for u in a {
                    let Some(u) = u.as_str() else {
                        return Err(Refused::Params(
                            "resourceSubscriptions must be a list of URIs".into(),
                        ));
                    };
                    if !uris.iter().any(|x| x == u) {
                        uris.push(u.to_string());
                    }
                }
            }
            Some(_) => {
                return Err(Refused::Params(
                    "resourceSubscriptions must be a list of URIs".into(),
                ))
            }
        }
        Ok(Listen {
            tools: flag("toolsListChanged"),
            prompts: flag("promptsListChanged"),
            resources: flag("resourcesListChanged"),
            resource_uris: uris,
        })
    }

    /// Keeps only what the server can deliver (`listChanged` / `subscribe` capabilities are
    /// not trusted: some servers send list changes without declaring them).
    pub fn honoured(&self) -> Value {
        let mut n = Map::new();
        if self.tools {
            n.insert("toolsListChanged".into(), json!(true));
        }
        if self.prompts {
            n.insert("promptsListChanged".into(), json!(true));
        }
        if self.resources {
            n.insert("resourcesListChanged".into(), json!(true));
        }
        if !self.resource_uris.is_empty() {
            n.insert("resourceSubscriptions".into(), json!(self.resource_uris));
        }
        Value::Object(n)
    }

    /// Whether a server notification is one this listener opted in to.
    pub fn wants(&self, method: &str, params: &Value) -> bool {
        match method {
            "notifications/tools/list_changed" => self.tools,
            "notifications/prompts/list_changed" => self.prompts,
            "notifications/resources/list_changed" => self.resources,
            "notifications/resources/updated" => params
                .get("uri")
                .and_then(Value::as_str)
                .is_some_and(|u| self.resource_uris.iter().any(|x| x == u)),
            _ => false,
        }
    }
}

/// The acknowledgement a listen stream starts with.
pub fn acknowledged(subscription_id: &Value, listen: &Listen) -> Value {
    json!({
        "jsonrpc": "2.0",
        "method": "notifications/subscriptions/acknowledged",
        "params": {
            "_meta": {meta::SUBSCRIPTION_ID: subscription_id},
            "notifications": listen.honoured(),
        },
    })
}

/// A server notification as a listener gets it: tagged with its subscription.
pub fn tagged(method: &str, params: &Value, subscription_id: &Value) -> Value {
    let mut params = match params {
        Value::Object(p) => p.clone(),
        _ => Map::new(),
    };
    let meta = params.entry("_meta").or_insert_with(|| json!({}));
    if let Value::Object(meta) = meta {
        meta.insert(meta::SUBSCRIPTION_ID.into(), subscription_id.clone());
    }
    json!({"jsonrpc": "2.0", "method": method, "params": params})
}

/// A JSON-RPC response with `result` for `id`.
pub fn response(id: &Value, result: Value) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "result": result})
}

/// A JSON-RPC error response for `id`.
pub fn error_response(id: Option<&Value>, error: Value) -> Value {
    json!({"jsonrpc": "2.0", "id": id.cloned().unwrap_or(Value::Null), "error": error})
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head<'a>(version: &'a str, method: &'a str, name: Option<&'a str>) -> Head<'a> {
        Head {
            version: Some(version.as_bytes()),
            method: Some(method.as_bytes()),
            name: name.map(str::as_bytes),
        }
    }

    fn call(name: &str, meta_version: &str) -> Vec<u8> {
        serde_json::to_vec(&json!({
            "jsonrpc": "2.0", "id": 1, "method": "tools/call",
            "params": {"name": name, "arguments": {"a": 1}, "_meta": {
                "io.modelcontextprotocol/protocolVersion": meta_version,
                "io.modelcontextprotocol/clientCapabilities": {"elicitation": {}},
                "io.modelcontextprotocol/logLevel": "info",
                "progressToken": 7
            }}
        }))
        .unwrap()
    }

    #[test]
    fn a_retry_with_its_own_progress_token_and_trace_has_the_same_digest() {
        let read_call = |name: &str, args: Value, meta: Value| {
            let body = json!({"jsonrpc": "2.0", "id": 2, "method": "tools/call",
                "params": {"name": name, "arguments": args, "_meta": meta}});
            read(
                &head(MODERN_VERSION, "tools/call", Some(name)),
                &serde_json::to_vec(&body).unwrap(),
            )
            .unwrap()
        };
        let first = read_call("ask", json!({"a": 1}), json!({"progressToken": 1}));
        let retry = read_call(
            "ask",
            json!({"a": 1}),
            json!({"progressToken": 2, "traceparent": "00-ab-cd-01"}),
        );
        assert_eq!(first.digest(), retry.digest());
        let other = read_call("ask", json!({"a": 2}), json!({"progressToken": 1}));
        assert_ne!(first.digest(), other.digest());
        let other = read_call("tell", json!({"a": 1}), json!({"progressToken": 1}));
        assert_ne!(first.digest(), other.digest());
    }

    #[test]
    fn heads_tell_the_eras_apart() {
        assert!(is_modern_head(Some(b"2026-07-28"), false, true));
        assert!(is_modern_head(Some(b"2026-07-28"), false, false));
        assert!(is_modern_head(Some(b"2031-01-01"), false, false));
        assert!(!is_modern_head(Some(b"2025-06-18"), false, false));
        assert!(!is_modern_head(Some(b"2026-07-28"), true, true));
        assert!(!is_modern_head(None, false, false));
        assert!(is_modern_head(None, false, true));
    }

    #[test]
    fn a_valid_call_is_read_and_stripped_of_the_eras_metadata() {
        let r = read(
            &head("2026-07-28", "tools/call", Some("echo")),
            &call("echo", "2026-07-28"),
        )
        .unwrap();
        assert_eq!(r.method, "tools/call");
        assert_eq!(r.name.as_deref(), Some("echo"));
        assert_eq!(r.log_level, Some(LogLevel::Info));
        assert!(r.declares("elicitation") && !r.declares("sampling"));
        assert_eq!(progress_token(&r), Some(&json!(7)));
        let legacy: Value =
            serde_json::from_slice(&legacy_request(&r, "b-1", Some("bt-1"))).unwrap();
        assert_eq!(legacy["id"], "b-1");
        assert_eq!(legacy["params"]["_meta"], json!({"progressToken": "bt-1"}));
        assert_eq!(legacy["params"]["arguments"], json!({"a": 1}));
    }

    #[test]
    fn mismatches_are_refused_with_the_transport_codes() {
        let body = call("echo", "2026-07-28");
        let e = read(&head("2026-07-28", "tools/list", Some("echo")), &body).unwrap_err();
        assert_eq!((e.status(), e.code()), (400, -32020));
        let e = read(&head("2026-07-28", "tools/call", Some("other")), &body).unwrap_err();
        assert_eq!((e.status(), e.code()), (400, -32020));
        let e = read(&head("2026-07-28", "tools/call", None), &body).unwrap_err();
        assert_eq!(e.code(), -32020);
        let e = read(
            &Head {
                version: Some(b"2026-07-28"),
                method: None,
                name: Some(b"echo"),
            },
            &body,
        )
        .unwrap_err();
        assert_eq!(e.code(), -32020);
        let e = read(
            &head("2026-07-28", "tools/call", Some("echo")),
            &call("echo", "2025-06-18"),
        )
        .unwrap_err();
        assert_eq!(e.code(), -32020);
        let e = read(
            &head("2030-01-01", "tools/call", Some("echo")),
            &call("echo", "2030-01-01"),
        )
        .unwrap_err();
        assert_eq!((e.status(), e.code()), (400, -32022));
        assert_eq!(e.data().unwrap()["supported"], json!(["2026-07-28"]));
        let unknown = json!({"jsonrpc":"2.0","id":1,"method":"ping","params":{}});
        let e = read(
            &head("2026-07-28", "ping", None),
            &serde_json::to_vec(&unknown).unwrap(),
        )
        .unwrap_err();
        assert_eq!((e.status(), e.code()), (404, -32601));
    }

    #[test]
    fn base64_sentinel_names_are_decoded_before_comparing() {
        let name = "héllo wörld";
        let encoded = format!(
            "=?base64?{}?=",
            base64::engine::general_purpose::STANDARD.encode(name)
        );
        let body = call(name, "2026-07-28");
        assert!(read(&head("2026-07-28", "tools/call", Some(&encoded)), &body).is_ok());
        let bad = read(
            &head("2026-07-28", "tools/call", Some("=?base64?!!?=")),
            &body,
        )
        .unwrap_err();
        assert_eq!(bad.code(), -32020);
        // a literal sentinel-looking name must itself be encoded
        let literal = "=?base64?aGk=?=";
        let body = call(literal, "2026-07-28");
        assert!(read(&head("2026-07-28", "tools/call", Some(literal)), &body).is_err());
    }

    #[test]
    fn results_become_modern() {
        let info = json!({"name": "s", "version": "1"});
        let mut r = json!({"tools": []});
        let hint = CacheHint {
            ttl_ms: 1000,
            private: true,
        };
        complete_result("tools/list", &mut r, hint, &info);
        assert_eq!(r["resultType"], "complete");
        assert_eq!(r["cacheScope"], "private");
        assert_eq!(r["ttlMs"], 1000);
        assert_eq!(r["_meta"][meta::SERVER_INFO], info);
        let mut c = json!({"content": []});
        complete_result("tools/call", &mut c, hint, &info);
        assert!(c.get("ttlMs").is_none());
        let e = modern_error(
            "resources/read",
            json!({"code": -32002, "message": "Resource not found"}),
        );
        assert_eq!(e["code"], -32602);
        let e = modern_error(
            "resources/read",
            json!({"code": 0, "message": "Unknown resource: x"}),
        );
        assert_eq!(e["code"], -32602);
        let e = modern_error("tools/call", json!({"code": 0, "message": "boom"}));
        assert_eq!(e["code"], 0);
    }

    #[test]
    fn discover_lists_modern_and_the_servers_legacy_versions() {
        let init = json!({"protocolVersion": "2025-06-18", "capabilities": {"tools": {}},
            "serverInfo": {"name": "fast", "version": "1.30"}, "instructions": "be nice"});
        let d = discover_result(
            &init,
            "2025-06-18",
            CacheHint {
                ttl_ms: 60000,
                private: false,
            },
        );
        assert_eq!(
            d["supportedVersions"],
            json!(["2026-07-28", "2025-06-18", "2025-03-26", "2024-11-05"])
        );
        assert_eq!(d["instructions"], "be nice");
        assert_eq!(d["_meta"][meta::SERVER_INFO]["name"], "fast");
        assert_eq!(d["cacheScope"], "public");
    }

    #[test]
    fn log_messages_pass_only_at_or_above_the_asked_level() {
        let warn = json!({"level": "warning", "data": "x"});
        assert!(!log_passes(&warn, None));
        assert!(log_passes(&warn, Some(LogLevel::Info)));
        assert!(!log_passes(&warn, Some(LogLevel::Error)));
    }

    #[test]
    fn listeners_get_what_they_opted_in_to() {
        let p: Map<String, Value> = serde_json::from_value(json!({"notifications": {
            "toolsListChanged": true, "resourceSubscriptions": ["a://1", "a://1"]}}))
        .unwrap();
        let l = Listen::read(&p).unwrap();
        assert_eq!(l.resource_uris, vec!["a://1"]);
        assert!(l.wants("notifications/tools/list_changed", &json!({})));
        assert!(!l.wants("notifications/prompts/list_changed", &json!({})));
        assert!(l.wants("notifications/resources/updated", &json!({"uri": "a://1"})));
        assert!(!l.wants("notifications/resources/updated", &json!({"uri": "a://2"})));
        let ack = acknowledged(&json!(5), &l);
        assert_eq!(ack["params"]["_meta"][meta::SUBSCRIPTION_ID], 5);
        let t = tagged("notifications/tools/list_changed", &Value::Null, &json!(5));
        assert_eq!(t["params"]["_meta"][meta::SUBSCRIPTION_ID], 5);
    }
}
