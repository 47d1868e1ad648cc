//! Node addresses as people write them: `127.0.0.1:7501`, `[::1]:7501` or
//! `localhost:7501`.
//!
//! A host name is resolved when the address is used (a command's `--node`
//! when it runs, a topology's address when it is applied or read at a
//! node's start). A name with several addresses resolves to its first IPv4
//! one if it has any: nodes are usually started on `127.0.0.1` or
//! `0.0.0.0`, and `localhost` often lists `::1` first.

use std::net::{SocketAddr, ToSocketAddrs};

/// Why an address could not be used.
#[derive(Debug, thiserror::Error)]
pub enum AddrError {
    #[error("{text:?} is not host:port (for example 127.0.0.1:7501 or localhost:7501)")]
    Syntax { text: String },
    #[error("cannot resolve {text:?}: {source}")]
    Resolve {
        text: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{text:?} resolves to no address")]
    Nothing { text: String },
}

/// Resolves `text` (host:port) to one socket address.
pub fn resolve(text: &str) -> Result<SocketAddr, AddrError> {
    let text = text.trim();
    if let Ok(a) = text.parse::<SocketAddr>() {
        return Ok(a);
    }
    // host:port with a non-empty host and a numeric port; anything else is
    // a typo, not a name to look up.
    let port_ok = text
        .rsplit_once(':')
        .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok());
    if !port_ok {
        return Err(AddrError::Syntax { text: text.into() });
    }
    let all: Vec<SocketAddr> = text
        .to_socket_addrs()
        .map_err(|source| AddrError::Resolve {
            text: text.into(),
            source,
        })?
        .collect();
    all.iter()
        .find(|a| a.is_ipv4())
        .or(all.first())
        .copied()
        .ok_or_else(|| AddrError::Nothing { text: text.into() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literal_addresses_and_host_names_resolve() {
        assert_eq!(
            resolve("127.0.0.1:7501").expect("literal"),
            "127.0.0.1:7501".parse().expect("addr")
        );
        assert_eq!(
            resolve("[::1]:7501").expect("v6"),
            "[::1]:7501".parse().expect("addr")
        );
        let l = resolve("localhost:7501").expect("localhost resolves");
        assert!(l.ip().is_loopback() && l.port() == 7501, "{l}");
        assert!(l.is_ipv4(), "an IPv4 address is preferred: {l}");
    }

    #[test]
    fn malformed_addresses_name_the_text() {
        for bad in ["7501", "localhost", ":7501", "host:port", "localhost:99999"] {
            let e = resolve(bad).expect_err(bad).to_string();
            assert!(e.contains(bad), "{e}");
        }
    }
}
