//! What the sidecar accepts from the clients in front of it: which `Host` and `Origin` values
//! (the sidecar rewrites `Host` for its MCP server, so the server's own DNS rebinding check
//! can no longer see an attacker's name: the sidecar applies it instead), and whose
//! forwarding headers (`X-Forwarded-For`, `X-Forwarded-Proto`, `Forwarded`) are believed.

use crate::config::ClientsSection;
use std::net::IpAddr;

/// An IP network: an address and how many leading bits must match.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Network {
    addr: IpAddr,
    prefix: u8,
}

impl Network {
    fn parse(s: &str) -> Option<Network> {
        let (addr, prefix) = match s.split_once('/') {
            Some((a, p)) => (a.parse::<IpAddr>().ok()?, Some(p.parse::<u8>().ok()?)),
            None => (s.parse::<IpAddr>().ok()?, None),
        };
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = prefix.unwrap_or(max);
        (prefix <= max).then_some(Network { addr, prefix })
    }

    fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        let (net, ip, bits) = match (self.addr, ip) {
            (IpAddr::V4(n), IpAddr::V4(i)) => (u32::from(n) as u128, u32::from(i) as u128, 32),
            (IpAddr::V6(n), IpAddr::V6(i)) => (u128::from(n), u128::from(i), 128),
            _ => return false,
        };
        let shift = bits - u32::from(self.prefix);
        shift >= bits || (net >> shift) == (ip >> shift)
    }
}

/// The checks, built once from the `clients` section.
#[derive(Debug, Clone)]
pub struct Clients {
    hosts: Vec<String>,
    ip_hosts: bool,
    single_label_hosts: bool,
    origins: Vec<String>,
    trusted: Vec<Network>,
}

/// The forwarding headers to send upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Forwarded {
    pub forwarded_for: String,
    pub proto: String,
    /// The client's own `Forwarded` header, kept only from a trusted proxy.
    pub keep_forwarded: bool,
}

impl Clients {
    /// `Err` names the field and what is wrong with it.
    pub fn new(c: &ClientsSection) -> Result<Clients, (&'static str, String)> {
        let trusted = c
            .trusted_proxies
            .iter()
            .map(|s| {
                Network::parse(s.trim()).ok_or_else(|| {
                    (
                        "clients.trusted_proxies",
                        format!("{s:?} is not an IP address or CIDR such as 10.0.0.0/8"),
                    )
                })
            })
            .collect::<Result<_, _>>()?;
        for h in &c.allowed_hosts {
            let name = h.strip_prefix("*.").unwrap_or(h);
            if name.is_empty() || name.contains(['/', ':', ' ']) && h != "*" {
                return Err((
                    "clients.allowed_hosts",
                    format!("{h:?} is not a host name, *.suffix or *"),
                ));
            }
        }
        Ok(Clients {
            hosts: c
                .allowed_hosts
                .iter()
                .map(|h| h.to_ascii_lowercase())
                .collect(),
            ip_hosts: c.allow_ip_hosts,
            single_label_hosts: c.allow_single_label_hosts,
            origins: c
                .allowed_origins
                .iter()
                .map(|o| o.trim_end_matches('/').to_ascii_lowercase())
                .collect(),
            trusted,
        })
    }

    /// Whether a `Host` header value (with or without its port) names this sidecar.
    pub fn host_allowed(&self, host: &str) -> bool {
        let name = host_name(host).to_ascii_lowercase();
        if name.is_empty() {
            return false;
        }
        if name.parse::<IpAddr>().is_ok() {
            return self.ip_hosts;
        }
        if self.single_label_hosts && !name.contains('.') && is_dns_label(&name) {
            return true;
        }
        self.hosts.iter().any(|h| match h.strip_prefix("*.") {
            _ if h == "*" => true,
            Some(suffix) => name
                .strip_suffix(suffix)
                .is_some_and(|rest| rest.ends_with('.') && rest.len() > 1),
            None => *h == name,
        })
    }

    /// Whether a request's `Origin` may reach the MCP server.
    pub fn origin_allowed(&self, origin: &str) -> bool {
        let origin = origin.trim_end_matches('/').to_ascii_lowercase();
        if !self.origins.is_empty() {
            return self.origins.iter().any(|o| o == "*" || *o == origin);
        }
        // "null" (a sandboxed page or a file) and anything without a scheme have no host
        match origin.split_once("://") {
            Some(("http" | "https", authority)) => self.host_allowed(authority),
            _ => false,
        }
    }

    /// The forwarding headers for a request from `peer` that carried `client_for` and
    /// `client_proto`: a trusted proxy's are extended, anyone else's replaced.
    pub fn forwarded(
        &self,
        peer: IpAddr,
        client_for: Option<&str>,
        client_proto: Option<&str>,
    ) -> Forwarded {
        let trusted = self.trusted.iter().any(|n| n.contains(peer));
        let peer = canonical(peer);
        match (trusted, client_for.filter(|v| is_forwarding_value(v))) {
            (true, Some(chain)) => Forwarded {
                forwarded_for: format!("{chain}, {peer}"),
                proto: client_proto
                    .filter(|p| matches!(*p, "http" | "https"))
                    .unwrap_or("http")
                    .to_string(),
                keep_forwarded: true,
            },
            (trusted, _) => Forwarded {
                forwarded_for: peer.to_string(),
                proto: match (trusted, client_proto) {
                    (true, Some(p @ ("http" | "https"))) => p.to_string(),
                    _ => "http".to_string(),
                },
                keep_forwarded: trusted,
            },
        }
    }
}

fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// The host of a `Host` value: `name`, `name:port`, `[v6]`, `[v6]:port`.
fn host_name(host: &str) -> &str {
    let host = host.trim();
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split_once(']').map_or("", |(h, _)| h);
    }
    match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => host,
    }
    .trim_end_matches('.')
}

fn is_dns_label(s: &str) -> bool {
    s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// A forwarded-for chain a trusted proxy sent: addresses and commas, nothing that could end
/// a header or forge another.
fn is_forwarding_value(v: &str) -> bool {
    v.len() <= 1024
        && v.bytes()
            .all(|b| b.is_ascii_hexdigit() || matches!(b, b'.' | b':' | b',' | b' ' | b'[' | b']'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn clients(f: impl FnOnce(&mut ClientsSection)) -> Clients {
        let mut c = ClientsSection::default();
        f(&mut c);
        Clients::new(&c).unwrap()
    }

    #[test]
    fn default_hosts_keep_kubernetes_services_working_and_refuse_foreign_names() {
        let c = clients(|_| {});
        for ok in [
            "localhost:8080",
            "127.0.0.1:8080",
            "[::1]:8080",
            "10.1.2.3",
            "mcp-server",
            "mcp-server:8080",
            "mcp-server.team-a.svc",
            "mcp-server.team-a.svc.cluster.local:8080",
            "MCP-Server.Team-A.SVC.cluster.local.",
        ] {
            assert!(c.host_allowed(ok), "{ok}");
        }
        for bad in [
            "attacker.example",
            "attacker.example:8080",
            "evil-svc.cluster.local.attacker.example",
            "svc.attacker.example",
            ".svc",
            "",
            "[::1",
        ] {
            assert!(!c.host_allowed(bad), "{bad}");
        }
    }

    #[test]
    fn hosts_are_configurable() {
        let c = clients(|c| {
            c.allowed_hosts = vec!["mcp.example.com".into()];
            c.allow_ip_hosts = false;
            c.allow_single_label_hosts = false;
        });
        assert!(c.host_allowed("mcp.example.com:443"));
        assert!(!c.host_allowed("127.0.0.1"));
        assert!(!c.host_allowed("mcp-server"));
        assert!(!c.host_allowed("localhost"));
        assert!(clients(|c| c.allowed_hosts = vec!["*".into()]).host_allowed("any.where"));
    }

    #[test]
    fn origins_follow_hosts_unless_listed() {
        let c = clients(|_| {});
        assert!(c.origin_allowed("http://localhost:6274"));
        assert!(c.origin_allowed("https://mcp.team.svc.cluster.local/"));
        assert!(!c.origin_allowed("https://attacker.example"));
        assert!(!c.origin_allowed("null"));
        assert!(!c.origin_allowed("file://"));
        let listed = clients(|c| c.allowed_origins = vec!["https://app.example.com".into()]);
        assert!(listed.origin_allowed("https://APP.example.com"));
        assert!(!listed.origin_allowed("http://localhost:6274"));
    }

    #[test]
    fn forwarding_headers_are_believed_only_from_trusted_proxies() {
        let c = clients(|c| c.trusted_proxies = vec!["10.0.0.0/8".into(), "::1".into()]);
        let proxy: IpAddr = "10.2.3.4".parse().unwrap();
        let stranger: IpAddr = "192.0.2.7".parse().unwrap();
        let f = c.forwarded(proxy, Some("203.0.113.9"), Some("https"));
        assert_eq!(f.forwarded_for, "203.0.113.9, 10.2.3.4");
        assert_eq!(f.proto, "https");
        assert!(f.keep_forwarded);
        let f = c.forwarded(stranger, Some("1.1.1.1"), Some("https"));
        assert_eq!(f.forwarded_for, "192.0.2.7");
        assert_eq!(f.proto, "http");
        assert!(!f.keep_forwarded);
        // a trusted proxy's garbage is not passed on
        let f = c.forwarded(proxy, Some("1.1.1.1\r\nX-Evil: 1"), Some("gopher"));
        assert_eq!(f.forwarded_for, "10.2.3.4");
        assert_eq!(f.proto, "http");
        // IPv4-mapped IPv6 peers match IPv4 networks
        let mapped: IpAddr = "::ffff:10.9.9.9".parse().unwrap();
        assert_eq!(c.forwarded(mapped, None, None).forwarded_for, "10.9.9.9");
        assert!(c.forwarded(mapped, None, None).keep_forwarded);
        assert!(
            c.forwarded("::1".parse().unwrap(), None, None)
                .keep_forwarded
        );
    }

    #[test]
    fn networks_parse_and_match() {
        let n = Network::parse("10.0.0.0/8").unwrap();
        assert!(n.contains("10.255.0.1".parse().unwrap()));
        assert!(!n.contains("11.0.0.1".parse().unwrap()));
        assert!(Network::parse("0.0.0.0/0")
            .unwrap()
            .contains("8.8.8.8".parse().unwrap()));
        assert!(Network::parse("10.0.0.0/33").is_none());
        assert!(Network::parse("fd00::/8")
            .unwrap()
            .contains("fd12::1".parse().unwrap()));
        assert!(Network::parse("nope").is_none());
        let bad = ClientsSection {
            trusted_proxies: vec!["10.0.0.0/99".into()],
            ..Default::default()
        };
        assert_eq!(Clients::new(&bad).unwrap_err().0, "clients.trusted_proxies");
    }
}
