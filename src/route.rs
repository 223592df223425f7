//! Path-prefix routing: which local MCP server a request goes to, and the path it gets there.

use crate::config::{normalize_prefix, Config, UpstreamUrl};
use crate::hub::policy::RoutePolicy;
use std::net::SocketAddr;
use std::sync::Arc;

/// One configured route, resolved.
#[derive(Debug)]
pub struct Route {
    /// Without trailing slash; the root route is "".
    pub prefix: String,
    pub server_name: String,
    pub upstream_addr: SocketAddr,
    /// Sent as `Host` upstream.
    pub upstream_authority: String,
    /// Replaces `prefix` in the upstream path.
    pub upstream_path: String,
    /// Hub auth, token injection and tool filtering for this route.
    pub policy: RoutePolicy,
    /// `session_mode: shared`: clients share one upstream session per context (`crate::shared`).
    pub shared: bool,
    /// The server's era when configured (`None`: `era: auto`, probed).
    pub era: Option<crate::bridge::Era>,
}

impl Route {
    /// The upstream path and query for a request path that matched this route.
    pub fn upstream_path_and_query(&self, path: &str, query: Option<&str>) -> String {
        let rest = &path[self.prefix.len()..];
        let mut out = String::with_capacity(self.upstream_path.len() + rest.len() + 1);
        out.push_str(&self.upstream_path);
        out.push_str(rest);
        if out.is_empty() {
            out.push('/');
        }
        if let Some(q) = query {
            out.push('?');
            out.push_str(q);
        }
        out
    }

    /// The reverse of [`Route::upstream_path_and_query`]: the path a client uses for an
    /// upstream path (as the legacy SSE `endpoint` event names it). `None` when the upstream
    /// path lies outside this route.
    pub fn client_path(&self, upstream: &str) -> Option<String> {
        let rest = upstream.strip_prefix(self.upstream_path.as_str())?;
        if !(rest.is_empty() || rest.starts_with(['/', '?'])) {
            return None;
        }
        let mut out = String::with_capacity(self.prefix.len() + rest.len() + 1);
        out.push_str(&self.prefix);
        if out.is_empty() && !rest.starts_with('/') {
            out.push('/');
        }
        out.push_str(rest);
        Some(out)
    }
}

/// All routes, longest prefix first.
#[derive(Debug, Clone)]
pub struct RouteTable {
    routes: Vec<Arc<Route>>,
}

impl RouteTable {
    pub fn from_config(config: &Config) -> Result<RouteTable, String> {
        let mut routes = Vec::with_capacity(config.routes.len());
        for r in &config.routes {
            let up = UpstreamUrl::parse(&r.upstream)?;
            routes.push(Arc::new(Route {
                prefix: normalize_prefix(&r.prefix),
                server_name: r.server_name.clone(),
                upstream_addr: up.addr,
                upstream_authority: up.authority,
                upstream_path: up.path,
                policy: r.policy()?,
                shared: r.session_mode == crate::config::SessionMode::Shared,
                era: match r.era {
                    crate::config::EraMode::Auto => None,
                    crate::config::EraMode::Legacy => Some(crate::bridge::Era::Legacy),
                    crate::config::EraMode::Modern => Some(crate::bridge::Era::Modern),
                },
            }));
        }
        routes.sort_by_key(|r| std::cmp::Reverse(r.prefix.len()));
        Ok(RouteTable { routes })
    }

    /// The route for a request path, matching on segment boundaries.
    pub fn find(&self, path: &str) -> Option<&Arc<Route>> {
        self.routes.iter().find(|r| {
            path.starts_with(&r.prefix)
                && matches!(path.as_bytes().get(r.prefix.len()), None | Some(b'/'))
        })
    }

    pub fn iter(&self) -> impl Iterator<Item = &Arc<Route>> {
        self.routes.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn table(routes: &[(&str, &str)]) -> RouteTable {
        let mut yaml = String::from("routes:\n");
        for (i, (prefix, up)) in routes.iter().enumerate() {
            yaml.push_str(&format!(
                "  - {{prefix: '{prefix}', upstream: '{up}', server_name: s{i}}}\n"
            ));
        }
        let c = Config::from_yaml(Path::new("t"), &yaml, &|_| None).unwrap();
        RouteTable::from_config(&c).unwrap()
    }

    #[test]
    fn longest_prefix_on_segment_boundaries() {
        let t = table(&[
            ("/", "http://127.0.0.1:1"),
            ("/mcp", "http://127.0.0.1:2/mcp"),
            ("/mcp/github", "http://127.0.0.1:3/mcp"),
        ]);
        assert_eq!(t.find("/mcp").unwrap().server_name, "s1");
        assert_eq!(t.find("/mcp/").unwrap().server_name, "s1");
        assert_eq!(t.find("/mcp/github/x").unwrap().server_name, "s2");
        assert_eq!(t.find("/mcpx").unwrap().server_name, "s0");
        assert_eq!(t.find("/sse").unwrap().server_name, "s0");
    }

    #[test]
    fn no_root_route_means_no_match() {
        let t = table(&[("/mcp", "http://127.0.0.1:2/mcp")]);
        assert!(t.find("/other").is_none());
        assert!(t.find("/mcpx").is_none());
    }

    #[test]
    fn prefix_is_replaced_by_upstream_path() {
        let t = table(&[
            ("/gh", "http://127.0.0.1:2/mcp"),
            ("/", "http://127.0.0.1:1"),
        ]);
        let gh = t.find("/gh").unwrap();
        assert_eq!(gh.upstream_path_and_query("/gh", None), "/mcp");
        assert_eq!(gh.upstream_path_and_query("/gh/", Some("a=1")), "/mcp/?a=1");
        let root = t.find("/messages/").unwrap();
        assert_eq!(
            root.upstream_path_and_query("/messages/", Some("session_id=ab")),
            "/messages/?session_id=ab"
        );
        assert_eq!(root.upstream_path_and_query("/", None), "/");
        assert_eq!(gh.upstream_authority, "127.0.0.1:2");
    }

    #[test]
    fn upstream_paths_map_back_to_client_paths() {
        let t = table(&[
            ("/gh", "http://127.0.0.1:2/mcp"),
            ("/py", "http://127.0.0.1:3"),
            ("/", "http://127.0.0.1:1"),
        ]);
        let gh = t.find("/gh").unwrap();
        assert_eq!(
            gh.client_path("/mcp/messages?sessionId=1").as_deref(),
            Some("/gh/messages?sessionId=1")
        );
        assert_eq!(gh.client_path("/mcp?x").as_deref(), Some("/gh?x"));
        assert_eq!(gh.client_path("/mcpx/messages"), None);
        assert_eq!(gh.client_path("/messages"), None);
        let py = t.find("/py/sse").unwrap();
        assert_eq!(
            py.client_path("/messages/?session_id=ab").as_deref(),
            Some("/py/messages/?session_id=ab")
        );
        let root = t.find("/sse").unwrap();
        assert_eq!(
            root.client_path("/messages/?session_id=ab").as_deref(),
            Some("/messages/?session_id=ab")
        );
        for (r, p) in [(gh, "/gh/messages"), (py, "/py/messages/"), (root, "/x")] {
            let up = r.upstream_path_and_query(p, Some("a=1"));
            assert_eq!(r.client_path(&up).unwrap(), format!("{p}?a=1"));
        }
    }
}
