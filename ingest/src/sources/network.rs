//! Where a source may connect. Sources are fetched by the server (the API
//! pod in a cluster), so a source aimed at the server's own network could
//! have it read cloud metadata (169.254.169.254), a sidecar on loopback or
//! the node's own services, and then ingest and serve what it read. By
//! default a source may not reach loopback, link-local or unspecified
//! addresses; private ranges stay open, because internal wikis live there.
//! A source opens a range explicitly (`--allow-network CIDR`).
//!
//! The check is on every resolved address of every connection (the web
//! client's resolver, [`Guarded`]), so a name that resolves to an allowed
//! address once and to loopback the next time (DNS rebinding) is refused
//! the second time too; an address written in a URL is checked before the
//! request ([`Network::check_url`]).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use ipnet::IpNet;
use rag_core::{Error, Result};

/// The addresses a source may reach: any but loopback, link-local and
/// unspecified ones, unless a listed network holds them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Network {
    allowed: Vec<IpNet>,
}

impl Network {
    /// From `--allow-network` values; a value that is not a CIDR (or an
    /// address) is refused with what to write instead.
    pub fn new(allowed: &[String]) -> Result<Self> {
        let allowed = allowed
            .iter()
            .map(|text| {
                let text = text.trim();
                text.parse::<IpNet>()
                    .or_else(|_| text.parse::<IpAddr>().map(IpNet::from))
                    .map_err(|_| {
                        Error::invalid(format!(
                            "--allow-network {text:?}: give a network as CIDR, like \
                             127.0.0.0/8 or fd00::/8"
                        ))
                    })
            })
            .collect::<Result<_>>()?;
        Ok(Self { allowed })
    }

    pub fn permits(&self, ip: IpAddr) -> bool {
        let ip = embedded_v4(ip);
        self.allowed.iter().any(|net| net.contains(&ip)) || !reserved(ip)
    }

    /// Refuses `url` when its host is an address this source may not reach
    /// (a name is checked when it is resolved).
    pub fn check_url(&self, url: &reqwest::Url) -> Result<()> {
        let host = url.host_str().unwrap_or("");
        let Ok(ip) = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>()
        else {
            return Ok(());
        };
        if self.permits(ip) {
            Ok(())
        } else {
            Err(refused(&ip.to_string(), ip))
        }
    }

    /// The addresses of `host`, refused when any may not be reached (a
    /// blocking lookup, for code that runs git, which may connect to any
    /// of them).
    pub fn check_host(&self, host: &str, port: u16) -> Result<Vec<IpAddr>> {
        use std::net::ToSocketAddrs;
        if let Ok(ip) = host.parse::<IpAddr>() {
            return if self.permits(ip) {
                Ok(vec![ip])
            } else {
                Err(refused(host, ip))
            };
        }
        let found: Vec<IpAddr> = (host, port)
            .to_socket_addrs()
            .map_err(|e| Error::unavailable(format!("cannot resolve {host}")).with_source(e))?
            .map(|a| a.ip())
            .collect();
        match found.iter().find(|ip| !self.permits(**ip)) {
            Some(ip) => Err(refused(host, *ip)),
            None => Ok(found),
        }
    }

    /// The addresses of `host` this source may reach; an error naming the
    /// first refused one when none is left.
    pub async fn resolve(&self, host: &str, port: u16) -> Result<Vec<SocketAddr>> {
        let found: Vec<SocketAddr> = tokio::net::lookup_host((host, port))
            .await
            .map_err(|e| Error::unavailable(format!("cannot resolve {host}")).with_source(e))?
            .collect();
        let (allowed, refused_addrs): (Vec<_>, Vec<_>) =
            found.into_iter().partition(|a| self.permits(a.ip()));
        match (allowed.is_empty(), refused_addrs.first()) {
            (true, Some(addr)) => Err(refused(host, addr.ip())),
            (true, None) => Err(Error::unavailable(format!("{host} has no address"))),
            (false, _) => Ok(allowed),
        }
    }
}

fn refused(host: &str, ip: IpAddr) -> Error {
    Error::invalid(format!(
        "{host} is {ip}, an address sources may not reach (loopback, link-local such as cloud \
         metadata, or unspecified); to sync from it on purpose, add the source with \
         --allow-network {}",
        IpNet::from(ip).trunc()
    ))
}

/// The IPv4 address an IPv6 one carries, where it carries one that a
/// connection may reach: mapped (`::ffff:a.b.c.d`), compatible
/// (`::a.b.c.d`), NAT64 (`64:ff9b::/96`) and 6to4 (`2002:AABB:CCDD::/48`).
fn embedded_v4(ip: IpAddr) -> IpAddr {
    let IpAddr::V6(v6) = ip else {
        return ip;
    };
    let s = v6.segments();
    let v4 = |hi: u16, lo: u16| {
        IpAddr::V4(std::net::Ipv4Addr::new(
            (hi >> 8) as u8,
            hi as u8,
            (lo >> 8) as u8,
            lo as u8,
        ))
    };
    if let Some(mapped) = v6.to_ipv4_mapped() {
        IpAddr::V4(mapped)
    } else if (s[..6] == [0; 6] && !(v6.is_loopback() || v6.is_unspecified()))
        || s[..6] == [0x64, 0xff9b, 0, 0, 0, 0]
    {
        v4(s[6], s[7])
    } else if s[0] == 0x2002 {
        v4(s[1], s[2])
    } else {
        ip
    }
}

/// Cloud metadata services outside the link-local range: Alibaba's, and
/// AWS's and Oracle's IPv6 and IPv4 ones.
const METADATA: &[&str] = &["100.100.100.200", "192.0.0.192", "fd00:ec2::254"];

/// Loopback, link-local and unspecified addresses, and cloud metadata:
/// the machine's own services and the cloud's, never a document server.
fn reserved(ip: IpAddr) -> bool {
    let metadata = METADATA.iter().any(|m| m.parse() == Ok(ip));
    metadata
        || match ip {
            IpAddr::V4(v4) => {
                v4.is_loopback() || v4.is_link_local() || v4.is_unspecified() || v4.octets()[0] == 0
            }
            IpAddr::V6(v6) => {
                v6.is_loopback() || v6.is_unspecified() || (v6.segments()[0] & 0xffc0) == 0xfe80
            }
        }
}

/// The web client's resolver: each name resolved, and only the addresses
/// the source may reach kept.
pub(crate) struct Guarded(pub Arc<Network>);

impl reqwest::dns::Resolve for Guarded {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let network = self.0.clone();
        Box::pin(async move {
            let addrs = network
                .resolve(name.as_str(), 0)
                .await
                .map_err(|e| Box::new(e) as Box<dyn std::error::Error + Send + Sync>)?;
            Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_machines_own_addresses_are_refused_unless_allowed() {
        let default = Network::default();
        for ip in [
            "127.0.0.1",
            "127.0.0.2",
            "169.254.169.254",
            "0.0.0.0",
            "::1",
            "::",
            "fe80::1",
            "::ffff:127.0.0.1",
            "::7f00:1",
            "64:ff9b::a9fe:a9fe",
            "2002:a9fe:a9fe::1",
            "100.100.100.200",
            "fd00:ec2::254",
        ] {
            assert!(!default.permits(ip.parse().unwrap()), "{ip}");
        }
        for ip in [
            "10.0.0.5",
            "192.168.1.20",
            "172.16.0.1",
            "93.184.216.34",
            "fd00::1",
        ] {
            assert!(default.permits(ip.parse().unwrap()), "{ip}");
        }
        let loopback = Network::new(&["127.0.0.0/8".into()]).unwrap();
        assert!(loopback.permits("127.0.0.2".parse().unwrap()));
        assert!(!loopback.permits("169.254.169.254".parse().unwrap()));
        let one = Network::new(&["::1".into()]).unwrap();
        assert!(one.permits("::1".parse().unwrap()));
        let err = Network::new(&["localhost".into()]).unwrap_err();
        assert!(err.to_string().contains("CIDR"), "{err}");
    }

    #[test]
    fn addresses_in_urls_are_checked_and_the_message_says_what_to_do() {
        let default = Network::default();
        let url = reqwest::Url::parse("http://169.254.169.254/latest/meta-data/").unwrap();
        let err = default.check_url(&url).unwrap_err().to_string();
        assert!(err.contains("--allow-network 169.254.169.254/32"), "{err}");
        let url = reqwest::Url::parse("http://[::1]:8080/").unwrap();
        assert!(default.check_url(&url).is_err());
        let named = reqwest::Url::parse("http://wiki.internal/").unwrap();
        assert!(
            default.check_url(&named).is_ok(),
            "names are checked when resolved"
        );
    }

    #[tokio::test]
    async fn names_are_checked_on_every_resolved_address() {
        let default = Network::default();
        let err = default
            .resolve("localhost", 80)
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("may not reach"), "{err}");
        let allowed = Network::new(&["127.0.0.0/8".into(), "::1/128".into()]).unwrap();
        assert!(!allowed.resolve("localhost", 80).await.unwrap().is_empty());
    }
}
