//! The `scylla://` URL: contact points, keyspace, replication, connect timeout.
//!
//! `scylla://[user:password@]host[:port][,host[:port]…][/keyspace][?option&…]`
//! (credentials for the cluster's password authenticator) with options
//! - `rf=N`: `NetworkTopologyStrategy` with N replicas in every datacenter
//!   (the default, N = 1, is for development);
//! - `dc.NAME=N` (repeatable): `NetworkTopologyStrategy` with N replicas in datacenter NAME;
//! - `simple_rf=N`: `SimpleStrategy`, only for old clusters without the
//!   `replication_factor` shorthand of `NetworkTopologyStrategy`;
//! - `local_dc=NAME`: the datacenter this process is in. LOCAL_QUORUM and
//!   the driver's routing take "local" from it; without it the driver treats
//!   every node as local, so a "local" quorum may span datacenters and lose
//!   read-your-writes. Required when `dc.NAME` names more than one
//!   datacenter, and must be one of them;
//! - `tls=true`: TLS to every node, verified against the system's root
//!   certificates; `tls_ca=PATH` (implies `tls`): against the CA
//!   certificates in that PEM file instead; `tls_verify_name=false`: check
//!   the chain but not that the certificate names the node's address (the
//!   driver connects to nodes by IP, which node certificates often omit);
//! - `connect_timeout_ms=N`: how long connecting may take (default 10 s).
//!
//! `SimpleStrategy` is not the development default because ScyllaDB
//! deprecated it and, with tablets on by default (2026.2 and later), refuses
//! it outright ("SimpleStrategy doesn't support tablet replication").
//!
//! A bare `host:port[,…]` (no scheme) is accepted too, for `SCYLLA_URI=127.0.0.1:9042`.

use std::fmt::Write as _;
use std::time::Duration;

/// Where the view store lives and how its keyspace is created.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScyllaConfig {
    /// Contact points, `host:port`.
    pub nodes: Vec<String>,
    /// Created if missing; lowercase letters, digits and `_`, at most 48.
    pub keyspace: String,
    pub replication: Replication,
    pub connect_timeout: Duration,
    /// The datacenter whose replicas are local (`local_dc`).
    pub local_dc: Option<String>,
    /// User and password for the cluster's authenticator.
    pub credentials: Option<Credentials>,
    /// TLS to the nodes (`tls`, `tls_ca`, `tls_verify_name`).
    pub tls: Option<TlsOptions>,
}

/// How the nodes' certificates are verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsOptions {
    /// PEM file of the CA certificates to trust; `None`: the system's roots.
    pub ca: Option<std::path::PathBuf>,
    /// Whether the certificate must name the node's address.
    pub verify_name: bool,
}

/// A user and password; `Debug` never shows the password.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub user: String,
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("user", &self.user)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// The URL as it may be shown: the password replaced.
fn redacted(url: &str) -> String {
    let (scheme, rest) = match url.split_once("://") {
        Some((scheme, rest)) => (format!("{scheme}://"), rest),
        None => (String::new(), url),
    };
    match rest.rsplit_once('@') {
        Some((userinfo, hosts)) => {
            let user = userinfo.split_once(':').map_or(userinfo, |(user, _)| user);
            format!("{scheme}{user}:<redacted>@{hosts}")
        }
        None => url.to_owned(),
    }
}

/// The keyspace's replication, used only when the keyspace is created.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Replication {
    /// `NetworkTopologyStrategy` with the same factor in every datacenter.
    Uniform { factor: u32 },
    /// `NetworkTopologyStrategy` with replicas per named datacenter.
    PerDatacenter { datacenters: Vec<(String, u32)> },
    /// `SimpleStrategy`, for old clusters only.
    Simple { factor: u32 },
}

/// A `scylla://` URL that cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid scylla URL {url:?}: {reason}")]
pub struct BadScyllaUrl {
    pub url: String,
    pub reason: String,
}

pub const DEFAULT_PORT: u16 = 9042;
pub const DEFAULT_KEYSPACE: &str = "emosation";
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

impl ScyllaConfig {
    pub fn parse(url: &str) -> Result<ScyllaConfig, BadScyllaUrl> {
        let bad = |reason: &str| BadScyllaUrl {
            url: redacted(url),
            reason: reason.to_owned(),
        };
        let rest = match url.split_once("://") {
            Some(("scylla", rest)) => rest,
            Some(_) => return Err(bad("the scheme must be scylla://")),
            None => url,
        };
        let (rest, query) = match rest.split_once('?') {
            Some((r, q)) => (r, Some(q)),
            None => (rest, None),
        };
        let (credentials, rest) = match rest.rsplit_once('@') {
            Some((userinfo, hosts)) => {
                let (user, password) = userinfo
                    .split_once(':')
                    .ok_or_else(|| bad("credentials are user:password@"))?;
                if user.is_empty() {
                    return Err(bad("the user must not be empty"));
                }
                (
                    Some(Credentials {
                        user: user.to_owned(),
                        password: password.to_owned(),
                    }),
                    hosts,
                )
            }
            None => (None, rest),
        };
        let (hosts, keyspace) = match rest.split_once('/') {
            Some((h, k)) if !k.is_empty() => (h, k),
            Some((h, _)) => (h, DEFAULT_KEYSPACE),
            None => (rest, DEFAULT_KEYSPACE),
        };
        if !is_identifier(keyspace) {
            return Err(bad(
                "the keyspace must be 1-48 lowercase letters, digits or '_', starting with a letter",
            ));
        }
        let mut nodes = Vec::new();
        for host in hosts.split(',') {
            nodes.push(node_with_port(host).ok_or_else(|| bad("each node must be host or host:port"))?);
        }
        let mut config = ScyllaConfig {
            nodes,
            keyspace: keyspace.to_owned(),
            replication: Replication::Uniform { factor: 1 },
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            local_dc: None,
            credentials,
            tls: None,
        };
        let mut tls = false;
        let mut tls_ca = None;
        let mut verify_name = true;
        let mut uniform = None;
        let mut simple = None;
        let mut datacenters = Vec::new();
        for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (name, value) = pair.split_once('=').ok_or_else(|| bad("options are name=value"))?;
            let number = || value.parse::<u32>().ok().filter(|n| *n > 0);
            if name == "rf" {
                uniform = Some(number().ok_or_else(|| bad("rf must be a positive number"))?);
            } else if name == "simple_rf" {
                simple = Some(number().ok_or_else(|| bad("simple_rf must be a positive number"))?);
            } else if let Some(dc) = name.strip_prefix("dc.") {
                if dc.is_empty() || !dc.bytes().all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b)) {
                    return Err(bad("a datacenter name is letters, digits, '_', '-' or '.'"));
                }
                let n = number().ok_or_else(|| bad("a datacenter's replica count must be a positive number"))?;
                datacenters.push((dc.to_owned(), n));
            } else if name == "local_dc" {
                if value.is_empty() || !value.bytes().all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b)) {
                    return Err(bad("local_dc is letters, digits, '_', '-' or '.'"));
                }
                config.local_dc = Some(value.to_owned());
            } else if name == "tls" {
                tls = parse_bool(value).ok_or_else(|| bad("tls is true or false"))?;
            } else if name == "tls_ca" {
                if value.is_empty() {
                    return Err(bad("tls_ca is the path of a PEM file"));
                }
                tls_ca = Some(std::path::PathBuf::from(value));
            } else if name == "tls_verify_name" {
                verify_name = parse_bool(value).ok_or_else(|| bad("tls_verify_name is true or false"))?;
            } else if name == "connect_timeout_ms" {
                let ms = number().ok_or_else(|| bad("connect_timeout_ms must be a positive number"))?;
                config.connect_timeout = Duration::from_millis(ms.into());
            } else {
                return Err(bad(
                    "unknown option (known: rf, dc.NAME, simple_rf, local_dc, tls, tls_ca, tls_verify_name, connect_timeout_ms)",
                ));
            }
        }
        config.replication = match (uniform, simple, datacenters.is_empty()) {
            (None, None, true) => Replication::Uniform { factor: 1 },
            (Some(factor), None, true) => Replication::Uniform { factor },
            (None, Some(factor), true) => Replication::Simple { factor },
            (None, None, false) => Replication::PerDatacenter { datacenters },
            _ => return Err(bad("rf, simple_rf and dc.NAME exclude each other")),
        };
        if tls || tls_ca.is_some() {
            config.tls = Some(TlsOptions {
                ca: tls_ca,
                verify_name,
            });
        } else if !verify_name {
            return Err(bad("tls_verify_name applies to tls=true or tls_ca"));
        }
        if let Replication::PerDatacenter { datacenters } = &config.replication {
            match &config.local_dc {
                Some(local) if !datacenters.iter().any(|(dc, _)| dc == local) => {
                    return Err(bad("local_dc must be one of the dc.NAME datacenters"));
                }
                None if datacenters.len() > 1 => {
                    return Err(bad(
                        "with several datacenters, local_dc must name this process's (LOCAL_QUORUM would otherwise span them)",
                    ));
                }
                _ => {}
            }
        }
        Ok(config)
    }
}

impl Replication {
    /// The CQL map of `CREATE KEYSPACE … WITH replication = …`. Names were
    /// checked by the parser, so nothing here needs quoting beyond the quotes.
    pub fn to_cql(&self) -> String {
        match self {
            Replication::Uniform { factor } => {
                format!("{{'class': 'NetworkTopologyStrategy', 'replication_factor': {factor}}}")
            }
            Replication::Simple { factor } => {
                format!("{{'class': 'SimpleStrategy', 'replication_factor': {factor}}}")
            }
            Replication::PerDatacenter { datacenters } => {
                let mut s = String::from("{'class': 'NetworkTopologyStrategy'");
                for (dc, n) in datacenters {
                    let _ = write!(s, ", '{}': {n}", dc.replace('\'', "''"));
                }
                s.push('}');
                s
            }
        }
    }
}

fn parse_bool(v: &str) -> Option<bool> {
    match v {
        "true" | "1" => Some(true),
        "false" | "0" => Some(false),
        _ => None,
    }
}

/// Unquoted CQL identifiers are case-insensitive and folded to lowercase;
/// allowing only lowercase keeps the name in the URL the name in the cluster.
pub(crate) fn is_identifier(s: &str) -> bool {
    (1..=48).contains(&s.len())
        && s.starts_with(|c: char| c.is_ascii_lowercase())
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

fn node_with_port(host: &str) -> Option<String> {
    if host.is_empty() {
        return None;
    }
    // `[v6]:port`, `[v6]`, `name:port`, `name`.
    let (name, port) = if let Some(rest) = host.strip_prefix('[') {
        let (addr, after) = rest.split_once(']')?;
        match after {
            "" => (format!("[{addr}]"), None),
            p => (format!("[{addr}]"), Some(p.strip_prefix(':')?)),
        }
    } else {
        match host.split_once(':') {
            Some((n, p)) => (n.to_owned(), Some(p)),
            None => (host.to_owned(), None),
        }
    };
    if name.is_empty() || name == "[]" {
        return None;
    }
    let port = match port {
        Some(p) => p.parse::<u16>().ok().filter(|p| *p > 0)?,
        None => DEFAULT_PORT,
    };
    Some(format!("{name}:{port}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_nodes_keyspace_and_defaults() {
        let c = ScyllaConfig::parse("scylla://a:9042,b,[::1]:19042/views").unwrap();
        assert_eq!(c.nodes, ["a:9042", "b:9042", "[::1]:19042"]);
        assert_eq!(c.keyspace, "views");
        assert_eq!(c.replication, Replication::Uniform { factor: 1 });
        assert_eq!(
            c.replication.to_cql(),
            "{'class': 'NetworkTopologyStrategy', 'replication_factor': 1}"
        );
        assert_eq!(c.connect_timeout, DEFAULT_CONNECT_TIMEOUT);

        let bare = ScyllaConfig::parse("127.0.0.1:9042").unwrap();
        assert_eq!(bare.nodes, ["127.0.0.1:9042"]);
        assert_eq!(bare.keyspace, DEFAULT_KEYSPACE);
        assert_eq!(ScyllaConfig::parse("scylla://h/").unwrap().keyspace, DEFAULT_KEYSPACE);
    }

    #[test]
    fn parses_replication_and_timeout() {
        let c = ScyllaConfig::parse("scylla://h/ks?rf=3&connect_timeout_ms=2500").unwrap();
        assert_eq!(c.replication, Replication::Uniform { factor: 3 });
        assert_eq!(c.connect_timeout, Duration::from_millis(2500));

        let s = ScyllaConfig::parse("scylla://h/ks?simple_rf=2").unwrap();
        assert_eq!(s.replication, Replication::Simple { factor: 2 });
        assert_eq!(
            s.replication.to_cql(),
            "{'class': 'SimpleStrategy', 'replication_factor': 2}"
        );

        let n = ScyllaConfig::parse("scylla://h/ks?dc.eu-west=3&dc.us_east=2&local_dc=us_east").unwrap();
        assert_eq!(
            n.replication,
            Replication::PerDatacenter {
                datacenters: vec![("eu-west".into(), 3), ("us_east".into(), 2)]
            }
        );
        assert_eq!(
            n.replication.to_cql(),
            "{'class': 'NetworkTopologyStrategy', 'eu-west': 3, 'us_east': 2}"
        );
    }

    #[test]
    fn parses_the_local_datacenter_and_credentials() {
        let c = ScyllaConfig::parse("scylla://app:s3cr:et@h1,h2/ks?dc.eu=3&dc.us=3&local_dc=eu").unwrap();
        assert_eq!(c.local_dc.as_deref(), Some("eu"));
        assert_eq!(c.nodes, ["h1:9042", "h2:9042"]);
        let creds = c.credentials.clone().unwrap();
        assert_eq!((creds.user.as_str(), creds.password.as_str()), ("app", "s3cr:et"));
        assert!(!format!("{c:?}").contains("s3cr"), "Debug hides the password");
        // One datacenter: local_dc is optional.
        assert_eq!(ScyllaConfig::parse("scylla://h/ks?dc.eu=3").unwrap().local_dc, None);
        assert_eq!(
            ScyllaConfig::parse("scylla://h/ks?rf=3&local_dc=dc1")
                .unwrap()
                .local_dc
                .as_deref(),
            Some("dc1")
        );
        // Several without local_dc, or a local_dc not among them, are refused.
        for url in [
            "scylla://h/ks?dc.eu=3&dc.us=3",
            "scylla://h/ks?dc.eu=3&dc.us=3&local_dc=ap",
        ] {
            assert!(ScyllaConfig::parse(url).is_err(), "{url}");
        }
        // A refused URL never shows its password.
        let err = ScyllaConfig::parse("scylla://app:hunter2@h/ks?colour=blue").unwrap_err();
        assert!(!err.to_string().contains("hunter2"), "{err}");
        assert!(ScyllaConfig::parse("scylla://:pw@h").is_err());
        assert!(ScyllaConfig::parse("scylla://nopassword@h").is_err());
    }

    #[test]
    fn parses_tls_options() {
        assert_eq!(ScyllaConfig::parse("scylla://h").unwrap().tls, None);
        assert_eq!(
            ScyllaConfig::parse("scylla://h?tls=true").unwrap().tls,
            Some(TlsOptions {
                ca: None,
                verify_name: true
            })
        );
        assert_eq!(
            ScyllaConfig::parse("scylla://h?tls_ca=/etc/scylla/ca.pem&tls_verify_name=false")
                .unwrap()
                .tls,
            Some(TlsOptions {
                ca: Some("/etc/scylla/ca.pem".into()),
                verify_name: false
            })
        );
        for url in [
            "scylla://h?tls=yes",
            "scylla://h?tls_ca=",
            "scylla://h?tls_verify_name=false",
        ] {
            assert!(ScyllaConfig::parse(url).is_err(), "{url}");
        }
    }

    #[test]
    fn refuses_what_it_cannot_use() {
        for url in [
            "kafka://h",
            "scylla://",
            "scylla://h:notaport",
            "scylla://h:0",
            "scylla://a,,b",
            "scylla://h/Views",
            "scylla://h/drop table",
            "scylla://h/ks?rf=0",
            "scylla://h/ks?rf=3&dc.a=3",
            "scylla://h/ks?rf=3&simple_rf=3",
            "scylla://h/ks?dc.a'b=3",
            "scylla://h/ks?colour=blue",
            "scylla://h/ks?rf",
        ] {
            assert!(ScyllaConfig::parse(url).is_err(), "{url} should be refused");
        }
    }
}
