// SPDX-License-Identifier: Apache-2.0
//! Per-sandbox network slots for Hearth.
//!
//! A *slot* is everything one sandbox needs on the network, built ahead of time in a
//! [`SlotPool`]: a router namespace `<name>-r<i>` joined to the host by a veth pair
//! (`hv<i>` ↔ `eth0`, a /31 from the transit range), and on the guest side the layout
//! E2B uses in every sandbox — `169.254.0.21/30` via `169.254.0.22`, MAC
//! `02:fc:00:00:00:01` — either in a guest namespace `<name>-g<i>` (containers) or
//! behind a persistent `tap0` in the router namespace (microVMs). The host reaches the
//! guest at the slot's own address from the host range (`10.11.x.y`, DNAT to the guest),
//! and the guest's traffic leaves SNATed to that address and masqueraded by the host.
//!
//! Contract:
//! - Every sandbox is denied private, link-local, loopback, multicast and reserved
//!   ranges, other sandboxes, and every port of the host itself; DNS to the host's
//!   nameservers is the one exception. Per-slot [`EgressPolicy`] adds E2B's
//!   `allowOut`/`denyOut` on top and can be replaced while the sandbox runs.
//! - Traffic the host starts towards a slot (the proxy reaching envd) and its replies
//!   always work.
//! - A released slot is reused only after its policy is removed, its conntrack state
//!   flushed and its layout verified; otherwise it is destroyed.
//! - [`SlotPool::shutdown`] removes everything the pool created; a pool dropped without
//!   it (a crash) is cleaned up by the next [`SlotPool::start`], which re-adopts the
//!   slots its caller names. Slot state is derivable from names: nothing is persisted
//!   beyond the host-wide forwarding bookkeeping in `/run/hearth-net`.
//!
//! Limits: IPv4 only (slots have IPv6 disabled and the host drops IPv6 from them);
//! policies are CIDR lists (no domain rules); needs root, the `nft` binary and kernel
//! support for network namespaces, veth, tun, nf_tables and conntrack.

mod cidr;
mod config;
mod conntrack;
mod host;
mod netlink;
mod nft;
mod policy;
mod pool;
mod resolv;
mod rtnl;
mod slot;

pub use cidr::{CidrError, Ipv4Cidr};
pub use config::{
    ConfigError, GATEWAY_ADDR, GATEWAY_MAC, GUEST_ADDR, GUEST_MAC, GUEST_PREFIX, PoolConfig,
    SlotKind,
};
pub use host::HostError;
pub use netlink::NetlinkError;
pub use policy::EgressPolicy;
pub use pool::{Adopt, AdoptReport, PoolError, PoolStats, SlotPool};
pub use slot::{Slot, SlotError};
