//! A container's own inbound firewall (`--allow-in PORT[/tcp|udp]`): one
//! nftables table inside the container's network namespace, so it needs no
//! cleanup (the kernel drops a namespace's rules with it) and never sees
//! the host's traffic or another container's.
//!
//! Without `--allow-in` there is no table and everything is accepted; with
//! any, inbound traffic is dropped except replies to the container's own
//! connections, loopback, and the ports allowed.

use std::fmt;
use std::os::fd::BorrowedFd;
use std::str::FromStr;

use super::error::{Error, Result};
use super::network;
use super::spec::Proto;

/// The table's name (family inet: IPv4 and IPv6 alike).
pub const TABLE: &str = "uvm_firewall";

/// One `--allow-in`: a port and its protocol (tcp unless said).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Allow {
    pub port: u16,
    pub proto: Proto,
}

impl FromStr for Allow {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let bad = |why: &str| Error::invalid("--allow-in", s, why.to_string());
        let (port, proto) =
            Proto::split_suffix(s).ok_or_else(|| bad("expected PORT, PORT/tcp or PORT/udp"))?;
        let port = port
            .parse::<u16>()
            .ok()
            .filter(|p| *p > 0)
            .ok_or_else(|| bad("the port is a number from 1 to 65535"))?;
        Ok(Allow { port, proto })
    }
}

impl fmt::Display for Allow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.port, self.proto)
    }
}

/// The nft script of the table for `allow` (not empty).
pub fn ruleset(allow: &[Allow]) -> String {
    let ports = |proto: Proto| {
        let list: Vec<String> = allow
            .iter()
            .filter(|a| a.proto == proto)
            .map(|a| a.port.to_string())
            .collect();
        match list.is_empty() {
            true => String::new(),
            false => format!("    {proto} dport {{ {} }} accept\n", list.join(", ")),
        }
    };
    format!(
        "table inet {TABLE} {{
  chain input {{
    type filter hook input priority filter; policy drop;
    ct state established,related accept
    iif \"lo\" accept
{}{}  }}
}}
",
        ports(Proto::Tcp),
        ports(Proto::Udp)
    )
}

/// Loads the table into the network namespace `netns` (a container's,
/// before its workload starts). Nothing to do without `allow`.
pub fn apply(netns: BorrowedFd, allow: &[Allow]) -> Result<()> {
    if allow.is_empty() {
        return Ok(());
    }
    network::nft_in(&ruleset(allow), Some(netns))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_rules() {
        assert_eq!(
            "80".parse::<Allow>().unwrap(),
            Allow {
                port: 80,
                proto: Proto::Tcp
            }
        );
        assert_eq!("53/udp".parse::<Allow>().unwrap().proto, Proto::Udp);
        assert_eq!("443/tcp".parse::<Allow>().unwrap().to_string(), "443/tcp");
        for bad in ["", "0", "65536", "80/sctp", "x", "80/", "-1", "80:81"] {
            let e = bad.parse::<Allow>().unwrap_err().to_string();
            assert!(e.starts_with("invalid --allow-in"), "{bad}: {e}");
        }
        let r = ruleset(&[
            "80".parse().unwrap(),
            "53/udp".parse().unwrap(),
            "443".parse().unwrap(),
        ]);
        assert!(r.contains("policy drop;"), "{r}");
        assert!(r.contains("ct state established,related accept"), "{r}");
        assert!(r.contains("iif \"lo\" accept"), "{r}");
        assert!(r.contains("tcp dport { 80, 443 } accept"), "{r}");
        assert!(r.contains("udp dport { 53 } accept"), "{r}");
        let tcp_only = ruleset(&["80".parse().unwrap()]);
        assert!(!tcp_only.contains("udp"), "{tcp_only}");
    }
}
