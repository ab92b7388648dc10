// SPDX-License-Identifier: Apache-2.0
//! IPv4 CIDR blocks: parsing, containment and collapsing overlapping lists.

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

/// An IPv4 network `addr/len` with the host bits cleared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Ipv4Cidr {
    addr: Ipv4Addr,
    len: u8,
}

/// A string that is not an IPv4 address or CIDR block.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CidrError {
    /// The text could not be parsed.
    #[error("invalid IPv4 address or CIDR {input:?}")]
    Parse {
        /// What was given.
        input: String,
    },
}

impl Ipv4Cidr {
    /// The block of length `len` containing `addr` (host bits are cleared); `None` when
    /// `len > 32`.
    pub fn new(addr: Ipv4Addr, len: u8) -> Option<Self> {
        (len <= 32).then(|| Self {
            addr: Ipv4Addr::from(u32::from(addr) & mask(len)),
            len,
        })
    }

    /// A single address as a /32.
    pub fn host(addr: Ipv4Addr) -> Self {
        Self { addr, len: 32 }
    }

    /// The network address.
    pub fn addr(&self) -> Ipv4Addr {
        self.addr
    }

    /// The prefix length.
    pub fn prefix_len(&self) -> u8 {
        self.len
    }

    /// Number of addresses in the block.
    pub fn size(&self) -> u64 {
        1u64 << (32 - u32::from(self.len))
    }

    /// Whether `ip` lies in this block.
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & mask(self.len) == u32::from(self.addr)
    }

    /// Whether `other` lies entirely in this block.
    pub fn covers(&self, other: &Self) -> bool {
        self.len <= other.len && self.contains(other.addr)
    }

    /// Whether the two blocks share any address.
    pub fn overlaps(&self, other: &Self) -> bool {
        self.covers(other) || other.covers(self)
    }

    /// The `n`th address of the block, if it exists.
    pub fn nth(&self, n: u64) -> Option<Ipv4Addr> {
        (n < self.size()).then(|| {
            let n = u32::try_from(n).expect("n < 2^32 because size() <= 2^32");
            Ipv4Addr::from(u32::from(self.addr) + n)
        })
    }
}

fn mask(len: u8) -> u32 {
    if len == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(len))
    }
}

impl fmt::Display for Ipv4Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

impl FromStr for Ipv4Cidr {
    type Err = CidrError;

    /// Parses `a.b.c.d` (a /32) or `a.b.c.d/len`; host bits are cleared, as E2B accepts
    /// blocks like `1.2.3.4/24`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || CidrError::Parse {
            input: s.to_owned(),
        };
        let s = s.trim();
        let (ip, len) = match s.split_once('/') {
            Some((ip, len)) => (ip, len.parse::<u8>().map_err(|_| err())?),
            None => (s, 32),
        };
        let ip: Ipv4Addr = ip.parse().map_err(|_| err())?;
        Self::new(ip, len).ok_or_else(err)
    }
}

impl serde::Serialize for Ipv4Cidr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Ipv4Cidr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Sorts `list` and drops every block covered by another, so no two remaining blocks
/// overlap (nftables refuses overlapping interval elements).
pub fn collapse(list: &mut Vec<Ipv4Cidr>) {
    // Shorter prefixes first at equal addresses, so a covering block precedes what it covers.
    list.sort_by_key(|c| (u32::from(c.addr), c.len));
    let mut out: Vec<Ipv4Cidr> = Vec::with_capacity(list.len());
    for c in list.drain(..) {
        if out.last().is_some_and(|last| last.covers(&c)) {
            continue;
        }
        out.push(c);
    }
    *list = out;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(s: &str) -> Ipv4Cidr {
        s.parse().unwrap()
    }

    #[test]
    fn bare_address_is_a_host_block() {
        assert_eq!(c("8.8.8.8").to_string(), "8.8.8.8/32");
    }

    #[test]
    fn host_bits_are_cleared() {
        assert_eq!(c("1.2.3.4/24").to_string(), "1.2.3.0/24");
        assert_eq!(c("9.9.9.9/0").to_string(), "0.0.0.0/0");
    }

    #[test]
    fn garbage_and_ipv6_are_rejected() {
        for bad in ["", "1.2.3", "1.2.3.4/33", "::1", "1.2.3.4/x", "example.com"] {
            assert!(bad.parse::<Ipv4Cidr>().is_err(), "{bad}");
        }
    }

    #[test]
    fn collapse_drops_covered_blocks_and_duplicates() {
        let mut l = vec![
            c("10.1.2.3"),
            c("10.0.0.0/8"),
            c("8.8.8.8"),
            c("8.8.8.8"),
            c("8.8.0.0/16"),
            c("1.1.1.1"),
        ];
        collapse(&mut l);
        let s: Vec<String> = l.iter().map(ToString::to_string).collect();
        assert_eq!(s, ["1.1.1.1/32", "8.8.0.0/16", "10.0.0.0/8"]);
    }

    #[test]
    fn everything_covers_everything() {
        let mut l = vec![c("1.2.3.4"), c("0.0.0.0/0")];
        collapse(&mut l);
        assert_eq!(l, vec![c("0.0.0.0/0")]);
    }

    #[test]
    fn nth_stays_inside_the_block() {
        let b = c("10.11.0.0/16");
        assert_eq!(b.nth(257), Some("10.11.1.1".parse().unwrap()));
        assert_eq!(b.nth(65536), None);
    }
}
