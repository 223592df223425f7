//! What a route asks of hub users: whether a key is needed, which service tokens a user must
//! hold, which headers carry the user's identity and tokens upstream, and which tools each
//! group may see and call.

use super::user::HubUser;
use serde::Deserialize;
use std::collections::BTreeMap;

/// A route's auth mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuthMode {
    /// No key is read; the route is open (client `X-MCPHub-*` headers are still removed).
    #[default]
    None,
    /// A key is used when present (and refused when bad); requests without one are anonymous.
    Optional,
    /// Every request needs a valid key.
    Required,
}

/// One piece of a header template.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Text(String),
    UserId,
    UserName,
    UserGroups,
    /// `{user.id}-{first 8 characters of the session id}` (the seeds' User-Session-Id).
    UserSessionId,
    Token(String),
    SessionId,
    RequestId,
    ProtocolVersion,
}

/// `X-MCPHub-GitHub-Token: "{token.GITHUB_TOKEN}"`, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    pub header: http::HeaderName,
    parts: Vec<Part>,
}

/// What a template may refer to, for one request.
pub struct TemplateVars<'a> {
    pub user: Option<&'a HubUser>,
    /// The client-facing session id.
    pub session_id: Option<&'a str>,
    pub request_id: &'a str,
    pub protocol_version: Option<&'a str>,
}

impl Template {
    pub fn parse(header: &str, value: &str) -> Result<Template, String> {
        let name = http::HeaderName::from_bytes(header.as_bytes())
            .map_err(|_| format!("{header:?} is not a valid header name"))?;
        if [
            "host",
            "content-length",
            "transfer-encoding",
            "connection",
            "mcp-session-id",
        ]
        .contains(&name.as_str())
            || name.as_str().starts_with("x-mcp-sidecar-")
        {
            return Err(format!(
                "{header:?} is set by the sidecar and cannot be injected"
            ));
        }
        let mut parts = Vec::new();
        let mut rest = value;
        while let Some(open) = rest.find('{') {
            if open > 0 {
                parts.push(Part::Text(rest[..open].to_string()));
            }
            let close = rest[open..]
                .find('}')
                .ok_or_else(|| format!("unclosed '{{' in {value:?}"))?
                + open;
            let var = &rest[open + 1..close];
            parts.push(match var {
                "user.id" => Part::UserId,
                "user.name" => Part::UserName,
                "user.groups" => Part::UserGroups,
                "user.session_id" => Part::UserSessionId,
                "session.id" => Part::SessionId,
                "request.id" => Part::RequestId,
                "protocol.version" => Part::ProtocolVersion,
                t if t.starts_with("token.") && valid_token_name(&t[6..]) => {
                    Part::Token(t[6..].to_string())
                }
                other => return Err(format!(
                    "unknown placeholder {{{other}}} in {value:?} (use user.id, user.name, user.groups, user.session_id, token.NAME, session.id, request.id, protocol.version)"
                )),
            });
            rest = &rest[close + 1..];
        }
        if rest.contains('}') {
            return Err(format!("unmatched '}}' in {value:?}"));
        }
        if !rest.is_empty() {
            parts.push(Part::Text(rest.to_string()));
        }
        if parts
            .iter()
            .any(|p| matches!(p, Part::Text(t) if t.bytes().any(|b| b.is_ascii_control())))
        {
            return Err(format!("{value:?} contains control characters"));
        }
        Ok(Template {
            header: name,
            parts,
        })
    }

    /// The service tokens the template injects.
    pub fn token_names(&self) -> impl Iterator<Item = &str> {
        self.parts.iter().filter_map(|p| match p {
            Part::Token(name) => Some(name.as_str()),
            _ => None,
        })
    }

    /// Whether the template names a user or a token (it needs an authenticated caller).
    pub fn needs_user(&self) -> bool {
        self.parts.iter().any(|p| {
            matches!(
                p,
                Part::UserId
                    | Part::UserName
                    | Part::UserGroups
                    | Part::UserSessionId
                    | Part::Token(_)
            )
        })
    }

    /// The header value, or `None` when something it names is missing for this request (an
    /// anonymous caller, a token the user lacks, no session yet): then the header is not sent.
    pub fn render(&self, v: &TemplateVars) -> Option<String> {
        let mut out = String::new();
        for p in &self.parts {
            match p {
                Part::Text(t) => out.push_str(t),
                Part::UserId => out.push_str(&v.user?.id),
                Part::UserName => out.push_str(&v.user?.name),
                Part::UserGroups => out.push_str(&v.user?.groups.join(",")),
                Part::UserSessionId => {
                    let sid = v.session_id?;
                    out.push_str(&v.user?.id);
                    out.push('-');
                    out.push_str(sid.get(..8).unwrap_or(sid));
                }
                Part::Token(name) => out.push_str(v.user?.tokens.get(name)?),
                Part::SessionId => out.push_str(v.session_id?),
                Part::RequestId => out.push_str(v.request_id),
                Part::ProtocolVersion => out.push_str(v.protocol_version?),
            }
        }
        // a value that cannot be a header (a token with a newline) is not sent
        (!out.bytes().any(|b| b.is_ascii_control() && b != b'\t')).then_some(out)
    }
}

/// Service token names: letters, digits and `_` (they become Redis hash fields).
pub fn valid_token_name(name: &str) -> bool {
    !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// `*` (any run) and `?` (one character) globs over tool names.
pub fn glob_match(pattern: &str, name: &str) -> bool {
    let (p, n) = (pattern.as_bytes(), name.as_bytes());
    let (mut pi, mut ni) = (0, 0);
    let (mut star, mut mark) = (None, 0);
    while ni < n.len() {
        if pi < p.len() && (p[pi] == b'?' || p[pi] == n[ni]) {
            pi += 1;
            ni += 1;
        } else if pi < p.len() && p[pi] == b'*' {
            star = Some(pi);
            pi += 1;
            mark = ni;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ni = mark;
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&b| b == b'*')
}

/// Group → allowed tool globs. The group `*` applies to every caller, anonymous included.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ToolAccess {
    groups: BTreeMap<String, Vec<String>>,
}

impl ToolAccess {
    pub fn new(groups: BTreeMap<String, Vec<String>>) -> ToolAccess {
        ToolAccess { groups }
    }

    /// Whether a caller (its groups; `None` when anonymous) may see and call `tool`.
    pub fn allows(&self, user: Option<&HubUser>, tool: &str) -> bool {
        let matches = |group: &str| {
            self.groups
                .get(group)
                .is_some_and(|globs| globs.iter().any(|g| glob_match(g, tool)))
        };
        matches("*") || user.is_some_and(|u| u.groups.iter().any(|g| matches(g)))
    }
}

/// A route's hub policy, resolved from its configuration.
#[derive(Debug, Clone, Default)]
pub struct RoutePolicy {
    pub mode: AuthMode,
    pub required_tokens: Vec<String>,
    pub templates: Vec<Template>,
    /// `None`: every tool is visible and callable.
    pub tools: Option<ToolAccess>,
}

impl RoutePolicy {
    /// Whether a template sets this header (then the client's own is replaced, not passed).
    pub fn injects(&self, name: &str) -> bool {
        self.templates.iter().any(|t| t.header == name)
    }

    /// The first required token the user lacks.
    pub fn missing_token<'a>(&'a self, user: &HubUser) -> Option<&'a str> {
        self.required_tokens
            .iter()
            .find(|t| user.tokens.get(*t).is_none_or(|v| v.is_empty()))
            .map(String::as_str)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user() -> HubUser {
        HubUser {
            id: "alice".into(),
            name: "Alice".into(),
            active: true,
            expires_at: None,
            groups: vec!["dev".into()],
            tokens: [("GITHUB_TOKEN".to_string(), "ghp_a".to_string())].into(),
        }
    }

    #[test]
    fn templates_render_or_drop() {
        let u = user();
        let vars = TemplateVars {
            user: Some(&u),
            session_id: Some("0123456789abcdef"),
            request_id: "r-1",
            protocol_version: Some("2025-06-18"),
        };
        let t = Template::parse("Authorization", "Bearer {token.GITHUB_TOKEN}").unwrap();
        assert_eq!(t.render(&vars).as_deref(), Some("Bearer ghp_a"));
        assert!(t.needs_user());
        let t = Template::parse("X-MCPHub-User-Session-Id", "{user.session_id}").unwrap();
        assert_eq!(t.render(&vars).as_deref(), Some("alice-01234567"));
        let t = Template::parse("X-MCPHub-Request-Id", "{request.id}/{protocol.version}").unwrap();
        assert_eq!(t.render(&vars).as_deref(), Some("r-1/2025-06-18"));
        assert!(!t.needs_user());
        let t = Template::parse("X-MCPHub-Jira-Token", "{token.ATLASSIAN_TOKEN}").unwrap();
        assert_eq!(t.render(&vars), None, "a token the user lacks: no header");
        let anon = TemplateVars { user: None, ..vars };
        let t = Template::parse("X-MCPHub-User-Id", "{user.id}").unwrap();
        assert_eq!(t.render(&anon), None);
        for bad in [
            ("X-A", "{nope}"),
            ("X-A", "{user.id"),
            ("X-A", "a}"),
            ("Host", "x"),
            ("bad name", "x"),
            ("X-A", "{token.}"),
        ] {
            assert!(Template::parse(bad.0, bad.1).is_err(), "{bad:?}");
        }
        let mut evil = user();
        evil.tokens
            .insert("GITHUB_TOKEN".into(), "a\r\nX-Evil: 1".into());
        let t = Template::parse("Authorization", "Bearer {token.GITHUB_TOKEN}").unwrap();
        assert_eq!(
            t.render(&TemplateVars {
                user: Some(&evil),
                ..anon
            }),
            None
        );
    }

    #[test]
    fn globs() {
        assert!(glob_match("*", "anything"));
        assert!(glob_match("get_*", "get_issue"));
        assert!(!glob_match("get_*", "create_issue"));
        assert!(glob_match("*_issue", "get_issue"));
        assert!(glob_match("g?t_*e", "get_issue"));
        assert!(!glob_match("get", "get_issue"));
        assert!(glob_match("a*b*c", "aXXbYYc"));
        assert!(!glob_match("a*b*c", "aXXbYY"));
        assert!(glob_match("", ""));
    }

    #[test]
    fn tool_access_by_group() {
        let access = ToolAccess::new(
            [
                ("dev".to_string(), vec!["*".to_string()]),
                ("*".to_string(), vec!["echo".to_string()]),
            ]
            .into(),
        );
        let mut u = user();
        assert!(access.allows(Some(&u), "delete_repo"));
        u.groups = vec!["guest".into()];
        assert!(!access.allows(Some(&u), "delete_repo"));
        assert!(access.allows(Some(&u), "echo"));
        assert!(access.allows(None, "echo"));
        assert!(!access.allows(None, "add"));
    }
}
