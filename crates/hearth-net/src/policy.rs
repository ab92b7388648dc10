// SPDX-License-Identifier: Apache-2.0
//! A sandbox's egress policy: E2B's `allowOut` / `denyOut` lists plus DNS.

use crate::cidr::{Ipv4Cidr, collapse};

/// What a sandbox may reach beyond the always-denied ranges.
///
/// Evaluation for a new outbound flow, first match wins:
/// 1. DNS (udp/tcp 53) to the host's nameservers: allowed when `allow_dns`.
/// 2. Private, link-local, loopback, multicast and reserved ranges, other sandboxes and
///    the host itself: always denied.
/// 3. A destination in `allow_out`: allowed (allow beats deny, as in E2B).
/// 4. A destination in `deny_out`: denied.
/// 5. Anything else: allowed.
///
/// E2B's `allow_internet_access: false` is `deny_out = [0.0.0.0/0]`
/// ([`EgressPolicy::from_e2b`]).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct EgressPolicy {
    /// Destinations allowed even when `deny_out` covers them.
    pub allow_out: Vec<Ipv4Cidr>,
    /// Destinations denied.
    pub deny_out: Vec<Ipv4Cidr>,
    /// Whether DNS to the host's nameservers works. It stays on when internet access is
    /// off, as in E2B (names still resolve; connections do not), so domain-based rules
    /// can be layered on later; turning it off also closes DNS as an exfiltration channel.
    pub allow_dns: bool,
}

impl Default for EgressPolicy {
    /// Internet allowed, no lists, DNS on: the policy that needs no nftables state.
    fn default() -> Self {
        Self {
            allow_out: Vec::new(),
            deny_out: Vec::new(),
            allow_dns: true,
        }
    }
}

impl EgressPolicy {
    /// The policy for E2B's create/update fields: `allow_internet_access: false` adds
    /// `0.0.0.0/0` to the deny list.
    pub fn from_e2b(
        allow_internet_access: bool,
        allow_out: Vec<Ipv4Cidr>,
        deny_out: Vec<Ipv4Cidr>,
    ) -> Self {
        let mut p = Self {
            allow_out,
            deny_out,
            allow_dns: true,
        };
        if !allow_internet_access {
            p.deny_out
                .push(Ipv4Cidr::new(std::net::Ipv4Addr::UNSPECIFIED, 0).expect("/0 is valid"));
        }
        p
    }

    /// No internet at all (DNS still resolves; see [`EgressPolicy::allow_dns`]).
    pub fn no_internet() -> Self {
        Self::from_e2b(false, Vec::new(), Vec::new())
    }

    /// Whether this policy needs no per-slot nftables elements.
    pub fn is_default(&self) -> bool {
        self.allow_out.is_empty() && self.deny_out.is_empty() && self.allow_dns
    }

    /// The same policy with both lists sorted and free of overlaps.
    pub(crate) fn normalized(mut self) -> Self {
        collapse(&mut self.allow_out);
        collapse(&mut self.deny_out);
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_internet_denies_everything() {
        let p = EgressPolicy::no_internet();
        assert_eq!(p.deny_out, vec!["0.0.0.0/0".parse().unwrap()]);
        assert!(p.allow_dns);
        assert!(!p.is_default());
    }

    #[test]
    fn default_needs_no_state() {
        assert!(EgressPolicy::default().is_default());
        assert!(EgressPolicy::from_e2b(true, vec![], vec![]).is_default());
    }

    #[test]
    fn normalized_collapses_lists() {
        let p = EgressPolicy::from_e2b(
            false,
            vec![],
            vec!["1.2.3.4".parse().unwrap(), "1.2.0.0/16".parse().unwrap()],
        )
        .normalized();
        assert_eq!(p.deny_out, vec!["0.0.0.0/0".parse().unwrap()]);
    }
}
