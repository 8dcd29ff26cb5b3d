//! Who the client is, by address: [`ClientIp`], put on each request by the
//! server from the accepted connection, and corrected by [`resolve`] when the
//! connection comes from a trusted proxy (the compose gateway), which names
//! the client in `X-Forwarded-For`. Handlers read it with [`ClientAddr`]; per
//! address abuse limits key on it.

use std::net::IpAddr;
use std::sync::Arc;

use axum::extract::{FromRequestParts, Request, State};
use axum::http::request::Parts;
use axum::middleware::Next;
use axum::response::Response;

/// The client's address (a request extension).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientIp(pub IpAddr);

/// The client's address, if the server knows it (the extractor).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientAddr(pub Option<IpAddr>);

impl<S: Send + Sync> FromRequestParts<S> for ClientAddr {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(ClientAddr(parts.extensions.get::<ClientIp>().map(|c| c.0)))
    }
}

/// Networks whose connections are proxies that may name the client in
/// `X-Forwarded-For` (`--trusted-proxies 10.0.0.0/8,…`). Empty: none, the
/// connection's own address is the client's.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustedProxies(Vec<(IpAddr, u8)>);

impl TrustedProxies {
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        self.0.iter().any(|(net, bits)| in_network(ip, *net, *bits))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl std::str::FromStr for TrustedProxies {
    type Err = String;

    /// A comma-separated list of `ADDRESS[/PREFIX]`; empty for none.
    fn from_str(s: &str) -> Result<Self, String> {
        let mut nets = Vec::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (addr, bits) = match part.split_once('/') {
                Some((a, b)) => (a, Some(b)),
                None => (part, None),
            };
            let ip: IpAddr = addr.parse().map_err(|e| format!("{part:?}: {e}"))?;
            let ip = canonical(ip);
            let max = if ip.is_ipv4() { 32 } else { 128 };
            let bits = match bits {
                Some(b) => b.parse::<u8>().map_err(|e| format!("{part:?}: {e}"))?,
                None => max,
            };
            if bits > max {
                return Err(format!("{part:?}: a prefix of at most {max} bits"));
            }
            nets.push((ip, bits));
        }
        Ok(TrustedProxies(nets))
    }
}

/// IPv4-mapped IPv6 addresses as IPv4.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

fn in_network(ip: IpAddr, net: IpAddr, bits: u8) -> bool {
    match (ip, net) {
        (IpAddr::V4(a), IpAddr::V4(n)) => {
            let mask = u32::MAX.checked_shl(32 - bits as u32).unwrap_or(0);
            u32::from(a) & mask == u32::from(n) & mask
        }
        (IpAddr::V6(a), IpAddr::V6(n)) => {
            let mask = u128::MAX.checked_shl(128 - bits as u32).unwrap_or(0);
            u128::from(a) & mask == u128::from(n) & mask
        }
        _ => false,
    }
}

/// Middleware: a request whose connection comes from a trusted proxy gets
/// as its client the rightmost address of `X-Forwarded-For` that is not a
/// trusted proxy itself (the ones left of it could be forged by the client).
pub async fn resolve(State(trusted): State<Arc<TrustedProxies>>, mut req: Request, next: Next) -> Response {
    if let Some(ClientIp(peer)) = req.extensions().get::<ClientIp>().copied()
        && trusted.contains(peer)
    {
        let forwarded = req
            .headers()
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .filter_map(|a| a.parse::<IpAddr>().ok())
            .collect::<Vec<_>>();
        if let Some(client) = forwarded.into_iter().rev().find(|a| !trusted.contains(*a)) {
            req.extensions_mut().insert(ClientIp(canonical(client)));
        }
    }
    next.run(req).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn networks_parse_and_match() {
        let t: TrustedProxies = "10.0.0.0/8, 192.168.1.7,fd00::/8".parse().unwrap();
        assert!(t.contains("10.1.2.3".parse().unwrap()));
        assert!(t.contains("::ffff:10.1.2.3".parse().unwrap()), "mapped IPv4");
        assert!(t.contains("192.168.1.7".parse().unwrap()));
        assert!(!t.contains("192.168.1.8".parse().unwrap()));
        assert!(t.contains("fd12::1".parse().unwrap()));
        assert!(!t.contains("2001:db8::1".parse().unwrap()));
        assert!("".parse::<TrustedProxies>().unwrap().is_empty());
        assert!(
            "0.0.0.0/0"
                .parse::<TrustedProxies>()
                .unwrap()
                .contains("8.8.8.8".parse().unwrap())
        );
        assert!("10.0.0.0/33".parse::<TrustedProxies>().is_err());
        assert!("nonsense".parse::<TrustedProxies>().is_err());
    }
}
