//! The contract between governor's eBPF programs and its daemon: map names, keys, values and codes.
//!
//! Every type here is `#[repr(C)]`, has explicit padding and no `bool` or data-carrying enum, so
//! both sides read the same bytes. The `const` asserts beside each type fail the build if a field
//! change moves an offset; change both sides together.
#![no_std]

use core::mem::{offset_of, size_of};

/// Map names, as declared in `governor-ebpf/src/maps.rs`.
pub mod maps {
    /// `HashMap<u64 /* agent cgroup id */, AgentInfo>`: which cgroups are agents.
    pub const AGENTS: &str = "AGENTS";
    /// `LpmTrie<AllowKeyV4, u32 /* endpoint id */>`: IPv4 allowlists of every agent.
    pub const ALLOW_V4: &str = "ALLOW_V4";
    /// `LpmTrie<AllowKeyV6, u32 /* endpoint id */>`: IPv6 allowlists of every agent.
    pub const ALLOW_V6: &str = "ALLOW_V6";
    /// `PerCpuHashMap<StatsKey, ConnCounters>`: connect/sendmsg verdicts.
    pub const CONN_STATS: &str = "CONN_STATS";
    /// `PerCpuHashMap<StatsKey, TrafficCounters>`: bytes and packets.
    pub const TRAFFIC: &str = "TRAFFIC";
    /// `SkStorage<StatsKey>`: the (agent, endpoint) a socket's packets are charged to.
    pub const SOCK_TAGS: &str = "SOCK_TAGS";
    /// `RingBuf` of `DenyEvent`.
    pub const EVENTS: &str = "EVENTS";
    /// `PerCpuArray<u64>` with one slot: events the ring buffer had no room for.
    pub const EVENTS_LOST: &str = "EVENTS_LOST";
}

/// Program names (the Rust function names in `governor-ebpf/src/main.rs`).
pub mod programs {
    pub const CONNECT4: &str = "governor_connect4";
    pub const CONNECT6: &str = "governor_connect6";
    pub const SENDMSG4: &str = "governor_sendmsg4";
    pub const SENDMSG6: &str = "governor_sendmsg6";
    pub const SKB_EGRESS: &str = "governor_skb_egress";
    pub const SKB_INGRESS: &str = "governor_skb_ingress";
}

/// Global set by the loader: the cgroup level of agent cgroups (agents root level + 1).
pub const GLOBAL_AGENT_LEVEL: &str = "AGENT_LEVEL";

/// Agent modes (`AgentInfo::mode`).
pub const MODE_OBSERVE: u32 = 0;
pub const MODE_ENFORCE: u32 = 1;

/// Endpoint id charged for traffic and connections that match no allowlisted endpoint.
pub const ENDPOINT_UNLISTED: u32 = 0;

/// Deny reasons carried by `DenyEvent::reason`. Every verdict other than allow has one.
pub const REASON_NOT_ALLOWLISTED: u8 = 1;

/// `DenyEvent::verdict`: the call failed with EPERM.
pub const VERDICT_DENIED: u8 = 1;
/// `DenyEvent::verdict`: an observe-mode agent would have been denied; the call went through.
pub const VERDICT_WOULD_DENY: u8 = 2;

/// `DenyEvent::hook`.
pub const HOOK_CONNECT: u8 = 1;
pub const HOOK_SENDMSG: u8 = 2;

pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;

/// Address families as in `DenyEvent::family` (the kernel's AF_INET / AF_INET6).
pub const AF_INET: u8 = 2;
pub const AF_INET6: u8 = 10;

/// Bits of an allow key in front of the address: agent id, protocol, padding, port.
pub const ALLOW_KEY_FIXED_BITS: u32 = 64;

/// Value of `AGENTS`: a cgroup that is an agent.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AgentInfo {
    /// Stable id derived from the agent's name (see `governor-userspace` policy ids).
    pub agent_id: u32,
    /// `MODE_OBSERVE` or `MODE_ENFORCE`.
    pub mode: u32,
}
const _: () = assert!(size_of::<AgentInfo>() == 8);

/// Key of the per-(agent, endpoint) counters, and the tag stored on each socket.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StatsKey {
    pub agent_id: u32,
    /// An endpoint id, or `ENDPOINT_UNLISTED`.
    pub endpoint_id: u32,
}
const _: () = assert!(size_of::<StatsKey>() == 8);

/// Connection attempts by verdict. "Connection" means a connect(), or a UDP sendmsg to an address.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConnCounters {
    pub allowed: u64,
    pub denied: u64,
    /// Observe mode: would have been denied, was allowed.
    pub would_deny: u64,
}
const _: () = assert!(size_of::<ConnCounters>() == 24);

/// Bytes (L3 length as the cgroup_skb hook sees it) and packets per direction.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TrafficCounters {
    pub tx_bytes: u64,
    pub tx_packets: u64,
    pub rx_bytes: u64,
    pub rx_packets: u64,
}
const _: () = assert!(size_of::<TrafficCounters>() == 32);

/// LPM trie key for IPv4 allowlists. Multi-byte fields are big-endian byte arrays, so the
/// trie's bit order is the field order. The prefix length is `ALLOW_KEY_FIXED_BITS` plus the
/// address prefix; port 0 means "any port" and is looked up second.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AllowKeyV4 {
    pub agent_id: [u8; 4],
    pub protocol: u8,
    pub _pad: u8,
    pub port: [u8; 2],
    pub addr: [u8; 4],
}
const _: () = assert!(size_of::<AllowKeyV4>() == 12);
const _: () = assert!(offset_of!(AllowKeyV4, addr) * 8 == ALLOW_KEY_FIXED_BITS as usize);

/// LPM trie key for IPv6 allowlists; same layout as `AllowKeyV4` with a 16-byte address.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AllowKeyV6 {
    pub agent_id: [u8; 4],
    pub protocol: u8,
    pub _pad: u8,
    pub port: [u8; 2],
    pub addr: [u8; 16],
}
const _: () = assert!(size_of::<AllowKeyV6>() == 24);
const _: () = assert!(offset_of!(AllowKeyV6, addr) * 8 == ALLOW_KEY_FIXED_BITS as usize);

impl AllowKeyV4 {
    /// `port` and `agent_id` in host order; `addr` as the address's octets.
    pub const fn new(agent_id: u32, protocol: u8, port: u16, addr: [u8; 4]) -> Self {
        Self {
            agent_id: agent_id.to_be_bytes(),
            protocol,
            _pad: 0,
            port: port.to_be_bytes(),
            addr,
        }
    }
}

impl AllowKeyV6 {
    pub const fn new(agent_id: u32, protocol: u8, port: u16, addr: [u8; 16]) -> Self {
        Self {
            agent_id: agent_id.to_be_bytes(),
            protocol,
            _pad: 0,
            port: port.to_be_bytes(),
            addr,
        }
    }
}

/// A refused (or, in observe mode, would-be refused) connect or sendmsg, sent through `EVENTS`.
/// Events may be lost under load; the counters in `CONN_STATS` never are.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DenyEvent {
    /// `bpf_ktime_get_ns()` (CLOCK_MONOTONIC).
    pub timestamp_ns: u64,
    /// The calling task's own cgroup (may be nested below the agent's).
    pub cgroup_id: u64,
    pub agent_id: u32,
    /// Thread group id of the caller.
    pub pid: u32,
    pub reason: u8,
    pub verdict: u8,
    pub protocol: u8,
    pub family: u8,
    /// Destination port, host order.
    pub port: u16,
    pub hook: u8,
    pub _pad: u8,
    /// Destination address: 4 octets then zeros for IPv4 (also for IPv4-mapped IPv6), else 16.
    pub addr: [u8; 16],
}
const _: () = assert!(size_of::<DenyEvent>() == 48);
const _: () = assert!(offset_of!(DenyEvent, reason) == 24);
const _: () = assert!(offset_of!(DenyEvent, port) == 28);
const _: () = assert!(offset_of!(DenyEvent, addr) == 32);

#[cfg(feature = "user")]
mod pod {
    // SAFETY: each type is repr(C), all fields are integers or byte arrays, and the asserts
    // above prove there is no implicit padding.
    unsafe impl aya::Pod for super::AgentInfo {}
    unsafe impl aya::Pod for super::StatsKey {}
    unsafe impl aya::Pod for super::ConnCounters {}
    unsafe impl aya::Pod for super::TrafficCounters {}
    unsafe impl aya::Pod for super::AllowKeyV4 {}
    unsafe impl aya::Pod for super::AllowKeyV6 {}
    unsafe impl aya::Pod for super::DenyEvent {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allow_keys_put_fields_in_trie_bit_order() {
        let k = AllowKeyV4::new(0x0102_0304, IPPROTO_TCP, 443, [10, 0, 0, 1]);
        // SAFETY: AllowKeyV4 is 12 bytes of plain integers with no padding.
        let bytes: [u8; 12] = unsafe { core::mem::transmute(k) };
        assert_eq!(bytes, [1, 2, 3, 4, 6, 0, 1, 187, 10, 0, 0, 1]);
    }

    #[test]
    fn deny_event_has_no_hidden_padding() {
        assert_eq!(offset_of!(DenyEvent, pid), 20);
        assert_eq!(offset_of!(DenyEvent, hook), 30);
        assert_eq!(core::mem::align_of::<DenyEvent>(), 8);
    }
}
