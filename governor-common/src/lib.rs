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
    /// `LpmTrie<AllowKeyV4, Rule>`: IPv4 allowlists of every agent, with prices.
    pub const ALLOW_V4: &str = "ALLOW_V4";
    /// `LpmTrie<AllowKeyV6, Rule>`: IPv6 allowlists of every agent, with prices.
    pub const ALLOW_V6: &str = "ALLOW_V6";
    /// `PerCpuHashMap<StatsKey, ConnCounters>`: connect/sendmsg verdicts.
    pub const CONN_STATS: &str = "CONN_STATS";
    /// `PerCpuArray<TrafficCounters>` by traffic slot (`TRAFFIC_SLOTS`): bytes and packets.
    pub const TRAFFIC: &str = "TRAFFIC";
    /// `SkStorage<SockTag>`: the (agent, endpoint) a socket's packets are charged to, and at what price.
    pub const SOCK_TAGS: &str = "SOCK_TAGS";
    /// `Array<Control>` by agent slot (slot 0: the host): written by the daemon only.
    pub const CONTROL: &str = "CONTROL";
    /// `Array<Spend>` by agent slot (slot 0: the host): written by the kernel only (atomic adds).
    pub const SPEND: &str = "SPEND";
    /// `RingBuf` of `DenyEvent`.
    pub const EVENTS: &str = "EVENTS";
    /// `PerCpuArray<u64>` with one slot: events the ring buffer had no room for.
    pub const EVENTS_LOST: &str = "EVENTS_LOST";
    /// `PerCpuHashMap<u64 /* cgroup id */, HostEgress>`: the host's egress on its uplinks, by
    /// sending cgroup, agents or not. Key 0: packets with no socket, and overflow.
    pub const HOST_EGRESS: &str = "HOST_EGRESS";
    /// `HashMap<[u8; 16] /* IPv6 or IPv4-mapped */, Resolver>`: the DNS resolvers agents may use.
    pub const RESOLVERS: &str = "RESOLVERS";
    /// `Array<ResolverSlot>` by resolver index: turns a proxy address back into the resolver's.
    pub const RESOLVER_SLOTS: &str = "RESOLVER_SLOTS";
    /// `HashMap<StatsKey, EndpointLimits>`: per (agent, endpoint) limits; written by the daemon only.
    pub const ENDPOINT_LIMITS: &str = "ENDPOINT_LIMITS";
    /// `HashMap<StatsKey, EndpointUse>`: their state; written by the kernel (atomically).
    pub const ENDPOINT_USE: &str = "ENDPOINT_USE";
    /// `HashMap<InboundKey, u8>`: the (agent, protocol, local port) an agent may bind and take
    /// connections or datagrams on (`[[agent]] inbound`); written by the daemon.
    pub const INBOUND: &str = "INBOUND";
    /// `PerCpuArray<u64>` with one slot: verdicts `CONN_STATS` had no room to count.
    pub const COUNTS_LOST: &str = "COUNTS_LOST";

    /// Every map, for pinning.
    pub const ALL: [&str; 17] = [
        AGENTS,
        ALLOW_V4,
        ALLOW_V6,
        CONN_STATS,
        TRAFFIC,
        SOCK_TAGS,
        CONTROL,
        SPEND,
        EVENTS,
        EVENTS_LOST,
        HOST_EGRESS,
        RESOLVERS,
        RESOLVER_SLOTS,
        ENDPOINT_LIMITS,
        ENDPOINT_USE,
        INBOUND,
        COUNTS_LOST,
    ];
}

/// Program names (the Rust function names in `governor-ebpf/src/main.rs`).
pub mod programs {
    pub const CONNECT4: &str = "governor_connect4";
    pub const CONNECT6: &str = "governor_connect6";
    pub const SENDMSG4: &str = "governor_sendmsg4";
    pub const SENDMSG6: &str = "governor_sendmsg6";
    pub const SKB_EGRESS: &str = "governor_skb_egress";
    pub const SKB_INGRESS: &str = "governor_skb_ingress";
    pub const TC_EGRESS: &str = "governor_tc_egress";
    pub const SOCK_CREATE: &str = "governor_sock_create";
    pub const SOCK_RELEASE: &str = "governor_sock_release";
    pub const RECVMSG4: &str = "governor_recvmsg4";
    pub const RECVMSG6: &str = "governor_recvmsg6";
    pub const GETPEERNAME4: &str = "governor_getpeername4";
    pub const GETPEERNAME6: &str = "governor_getpeername6";
    pub const SETSOCKOPT: &str = "governor_setsockopt";
    pub const BIND4: &str = "governor_bind4";
    pub const BIND6: &str = "governor_bind6";
}

/// Global set by the loader: the cgroup level of agent cgroups (agents root level + 1).
pub const GLOBAL_AGENT_LEVEL: &str = "AGENT_LEVEL";

/// Agent modes (`AgentInfo::mode`).
pub const MODE_OBSERVE: u32 = 0;
pub const MODE_ENFORCE: u32 = 1;

/// Endpoint id charged for traffic and connections that match no allowlisted endpoint.
pub const ENDPOINT_UNLISTED: u32 = 0;

/// Entries of `TRAFFIC`: one per (agent, endpoint) pair the daemon has seen, in the order it
/// first saw them, never reused. Slot 0 counts what has no slot (the map was full); the daemon
/// reports it nowhere. An array index rather than a hash: it is on every packet's path.
pub const TRAFFIC_SLOTS: u32 = 65_536;
pub const TRAFFIC_UNCOUNTED: u32 = 0;

/// Deny reasons carried by `DenyEvent::reason` and indexing `ConnCounters::denied`.
/// Every verdict other than allow has one.
pub const REASON_NOT_ALLOWLISTED: u8 = 1;
/// The agent's (or the host's) budget ceiling is reached: the agent is suspended.
pub const REASON_BUDGET: u8 = 2;
/// An operator paused the agent, or it waits at an oversight checkpoint.
pub const REASON_PAUSED: u8 = 3;
/// More new connections than `connections_per_minute` (with `burst`) allow.
pub const REASON_RATE_LIMIT: u8 = 4;
/// More live connections than `max_concurrent`.
pub const REASON_CONCURRENCY: u8 = 5;
/// A socket agents may not create: raw, packet, ICMP, or a protocol other than TCP and UDP.
pub const REASON_SOCKET_TYPE: u8 = 6;
/// DNS to a resolver that is not configured (`[dns] resolvers`).
pub const REASON_DNS_RESOLVER: u8 = 7;
/// The agent reached an oversight checkpoint (connections, spend or time since the last
/// acknowledgement) and waits for `governor ack`.
pub const REASON_CHECKPOINT: u8 = 8;
/// A socket option that would route packets past the admitted destination (IPv6 routing
/// headers, IPv4 source routes).
pub const REASON_SOCKET_OPTION: u8 = 9;
/// A bind to a port, or a packet of a socket nothing admitted (an accepted connection, a listener,
/// a datagram received before any was sent), that `[[agent]] inbound` does not name.
pub const REASON_INBOUND: u8 = 10;
/// The socket's tag (socket-local storage) could not be created: without it the socket could
/// neither be charged nor give a concurrent place back, so it is refused (fail closed).
pub const REASON_SOCKET_STORAGE: u8 = 11;
/// A sendmsg to another endpoint on a UDP socket that already sends to one: re-tagged, the
/// socket's later send()s to its connected peer would pass no hook at the other's price.
pub const REASON_SECOND_ENDPOINT: u8 = 12;
/// Size of `ConnCounters::denied`: reason codes are 1..REASONS.
pub const REASONS: usize = 13;

/// Slots of the `CONTROL` and `SPEND` arrays: 0 is the host-wide budget, agents use 1..=MAX_AGENTS.
pub const HOST_SLOT: u32 = 0;
pub const MAX_AGENTS: u32 = 4095;
pub const SLOTS: u32 = MAX_AGENTS + 1;

/// `Control::flags`: refuse and drop once the ceiling is reached (`on_exhausted = "suspend"`).
/// Without it the ceiling is not enforced (`"alert"`, or no budget).
pub const CONTROL_ENFORCE_CEILING: u32 = 1;
/// `Control::flags`: paused by an operator or a checkpoint: refuse connects, drop packets.
pub const CONTROL_PAUSED: u32 = 2;
/// `Control::flags`: some endpoint of this agent has its own limits (`ENDPOINT_LIMITS`); without
/// it connects skip that lookup.
pub const CONTROL_ENDPOINT_LIMITS: u32 = 4;
/// `Control::flags`: the agent has checkpoints: new connections are counted in
/// `Spend::connections`, and the `checkpoint_*` gates of `Control` hold.
pub const CONTROL_CHECKPOINT: u32 = 8;

/// `DenyEvent::verdict`: the call failed with EPERM.
pub const VERDICT_DENIED: u8 = 1;
/// `DenyEvent::verdict`: an observe-mode agent would have been denied; the call went through.
pub const VERDICT_WOULD_DENY: u8 = 2;

/// `DenyEvent::hook`.
pub const HOOK_CONNECT: u8 = 1;
pub const HOOK_SENDMSG: u8 = 2;
pub const HOOK_EGRESS: u8 = 3;
pub const HOOK_INGRESS: u8 = 4;
pub const HOOK_SOCK_CREATE: u8 = 5;
pub const HOOK_SETSOCKOPT: u8 = 6;
pub const HOOK_BIND: u8 = 7;

/// `SockTag::flags`: the socket holds one of its agent's `max_concurrent` places.
pub const TAG_COUNTED: u32 = 1;
/// `SockTag::flags`: the socket holds one of its (agent, endpoint)'s `max_concurrent` places.
pub const TAG_ENDPOINT_COUNTED: u32 = 2;
/// `SockTag::flags`: a UDP socket (tagged by connect or sendmsg): while it is not connected,
/// what it receives must come from a source its agent may reach (or the DNS proxy).
pub const TAG_UDP: u32 = 4;

pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;

/// Address families as in `DenyEvent::family` (the kernel's AF_INET / AF_INET6).
pub const AF_INET: u8 = 2;
pub const AF_INET6: u8 = 10;

/// The endpoint id DNS traffic to the configured resolvers is counted under: `name_id("dns")`,
/// a name endpoints may not take.
pub const ENDPOINT_DNS: u32 = 0xda6a_e8bc;

/// Destination port that makes a connect or sendmsg a DNS query.
pub const DNS_PORT: u16 = 53;
/// Resolvers an agent may use, at most (indexes 0..MAX_RESOLVERS).
pub const MAX_RESOLVERS: u32 = 64;
/// Agent DNS is sent to the daemon's proxy at 127.(PROXY_OCTET + resolver).(slot >> 8).(slot & 255):
/// the address alone tells the proxy which agent asked and which resolver it meant.
pub const PROXY_OCTET: u8 = 64;

/// Value of `RESOLVERS`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Resolver {
    /// Index into `RESOLVER_SLOTS`, below MAX_RESOLVERS.
    pub index: u32,
    /// The daemon's DNS proxy port (TCP and UDP on loopback); 0: no proxy, queries go straight
    /// to the resolver.
    pub proxy_port: u32,
}
const _: () = assert!(size_of::<Resolver>() == 8);

/// Value of `RESOLVER_SLOTS`: the resolver an index stands for.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ResolverSlot {
    /// IPv6, or IPv4-mapped (`::ffff:a.b.c.d`).
    pub addr: [u8; 16],
    /// As in `Resolver`; 0 marks an unused slot.
    pub proxy_port: u32,
    pub _pad: u32,
}
const _: () = assert!(size_of::<ResolverSlot>() == 24);

/// Bits of an allow key in front of the address: agent id, protocol, padding, port.
pub const ALLOW_KEY_FIXED_BITS: u32 = 64;

/// Value of `AGENTS`: a cgroup that is an agent.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AgentInfo {
    /// Stable id derived from the agent's name (see `governor-userspace` policy ids).
    pub agent_id: u32,
    /// `MODE_OBSERVE` or `MODE_ENFORCE` (of the allowlist; budgets follow `Control::flags`).
    pub mode: u32,
    /// The agent's slot in `CONTROL` and `SPEND` (1..=MAX_AGENTS).
    pub slot: u32,
    /// First field of the agent's allowlist keys: its id, with `RULE_GENERATION_BIT` flipped on
    /// alternate policy generations, so a reload writes the new rules beside the old ones and
    /// switches the agent to them with one atomic update of this value.
    pub rule_id: u32,
    /// `TRAFFIC` slots of the agent's unlisted traffic and of its DNS to the configured resolvers.
    pub traffic_unlisted: u32,
    pub traffic_dns: u32,
}

/// Flipped in `AgentInfo::rule_id` between policy generations.
pub const RULE_GENERATION_BIT: u32 = 1 << 31;
const _: () = assert!(size_of::<AgentInfo>() == 24);

/// Prices in pico-units of the configured currency (1e-12): per connection (or UDP flow), and
/// per byte in each direction.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Prices {
    pub connection: u64,
    pub tx_byte: u64,
    pub rx_byte: u64,
}
const _: () = assert!(size_of::<Prices>() == 24);

/// Value of `ALLOW_V4`/`ALLOW_V6`: the endpoint a destination belongs to, and its prices.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Rule {
    pub endpoint_id: u32,
    /// 0 for configured addresses. For addresses admitted from DNS answers: CLOCK_BOOTTIME
    /// seconds of the last allowed connect (the kernel updates it at most once a second), so
    /// the daemon expires them by last use rather than by last lookup.
    pub last_use_s: u32,
    pub prices: Prices,
    /// The `TRAFFIC` slot of (the key's agent, `endpoint_id`). The daemon's map layer fills it
    /// in when it writes the rule; policy compilation leaves it 0.
    pub traffic: u32,
    pub _pad: u32,
}
const _: () = assert!(size_of::<Rule>() == 40);
const _: () = assert!(offset_of!(Rule, prices) == 8);
const _: () = assert!(offset_of!(Rule, traffic) == 32);

/// A socket's tag (socket-local storage): who pays for its packets, and how much per byte.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SockTag {
    pub agent_id: u32,
    pub endpoint_id: u32,
    pub slot: u32,
    /// `TAG_*` flags.
    pub flags: u32,
    pub tx_byte: u64,
    pub rx_byte: u64,
    /// Where its packets are counted in `TRAFFIC`.
    pub traffic: u32,
    pub _pad: u32,
}
const _: () = assert!(size_of::<SockTag>() == 40);

/// Daemon-owned budget state of one slot. The kernel only reads it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Control {
    /// Charges are refused once `Spend::spent` would pass this (pico-units, absolute).
    pub ceiling: u64,
    /// `Spend::spent` when the current budget window began: window spend = spent - base.
    pub window_base: u64,
    /// Bumped by the daemon to lift a suspension (new window, raised budget).
    pub generation: u32,
    /// `CONTROL_*` flags.
    pub flags: u32,
    /// Rate limit (GCRA): nanoseconds between connections at the sustained rate; 0 = no limit.
    pub rate_interval_ns: u64,
    /// How far ahead of now the schedule may run: (burst - 1) intervals.
    pub rate_tolerance_ns: u64,
    /// Live connections allowed at once; 0 = no limit.
    pub max_concurrent: u64,
    /// Checkpoint gates (with `CONTROL_CHECKPOINT`), each 0 when unset: the `Spend::connections`
    /// count past which a new connection is refused; the `Spend::spent` total a charge may not
    /// pass; the boot-clock time (ns) from which everything is refused.
    pub checkpoint_connections: u64,
    pub checkpoint_spend: u64,
    pub checkpoint_deadline_ns: u64,
    /// The slot waits at a checkpoint while `Spend::checkpoint_generation` equals this (never 0);
    /// the daemon bumps it, with new gates, when an operator acknowledges.
    pub checkpoint_generation: u32,
    pub _pad: u32,
}
const _: () = assert!(size_of::<Control>() == 80);
const _: () = assert!(offset_of!(Control, checkpoint_connections) == 48);

/// Kernel-owned spend of one slot. The daemon only reads it (and seeds it before attaching).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Spend {
    /// Pico-units ever charged to this slot and let through. Only grows (atomic adds; a charge
    /// that would pass the ceiling is refunded at once).
    pub spent: u64,
    /// The `Control::generation` in force when the ceiling was reached: the slot is suspended
    /// while the two are equal.
    pub exhausted_generation: u32,
    pub _pad: u32,
    /// Rate limit state (GCRA theoretical arrival time, ktime ns); compare-and-swapped.
    pub tat_ns: u64,
    /// Live connections now (atomic; taken at connect, given back at socket release).
    pub live: u64,
    /// New connections (connects, new UDP flows) let through while `CONTROL_CHECKPOINT` is set
    /// (atomic): what the connections checkpoint counts.
    pub connections: u64,
    /// The `Control::checkpoint_generation` in force when a gate closed: the slot waits at its
    /// checkpoint while the two are equal.
    pub checkpoint_generation: u32,
    pub _pad2: u32,
}
const _: () = assert!(size_of::<Spend>() == 48);
const _: () = assert!(offset_of!(Spend, connections) == 32);
const _: () = assert!(offset_of!(Spend, spent) == 0);

/// Value of `ENDPOINT_LIMITS`: an endpoint's limits for one agent, as in `Control`; 0 = none.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EndpointLimits {
    pub rate_interval_ns: u64,
    pub rate_tolerance_ns: u64,
    pub max_concurrent: u64,
}
const _: () = assert!(size_of::<EndpointLimits>() == 24);

/// Value of `ENDPOINT_USE`: the kernel's state for `EndpointLimits` (as in `Spend`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct EndpointUse {
    /// GCRA theoretical arrival time (ktime ns); compare-and-swapped.
    pub tat_ns: u64,
    /// Live connections to the endpoint now (taken at connect, given back at socket release).
    pub live: u64,
}
const _: () = assert!(size_of::<EndpointUse>() == 16);

/// Key of `INBOUND`: a local port an agent may take traffic on, per protocol.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct InboundKey {
    pub agent_id: u32,
    /// Host byte order.
    pub port: u16,
    /// `IPPROTO_TCP` or `IPPROTO_UDP`.
    pub protocol: u8,
    pub _pad: u8,
}
const _: () = assert!(size_of::<InboundKey>() == 8);

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
    /// Connection prices charged: one per connect, one per (UDP socket, endpoint) flow.
    pub flows: u64,
    /// Observe mode: would have been denied as not allowlisted, was allowed.
    pub would_deny: u64,
    /// Refusals by reason code (index 0 unused).
    pub denied: [u64; REASONS],
}
const _: () = assert!(size_of::<ConnCounters>() == 128);

/// Value of `TRAFFIC` (each CPU's copy): bytes (L3 length as the cgroup_skb hook sees it) and
/// packets per direction, and the pair they belong to. The daemon writes `key` into every
/// CPU's copy when it gives the slot out (so a restarted daemon finds its slots again); the
/// kernel only adds to the counters.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TrafficCounters {
    pub tx_bytes: u64,
    pub tx_packets: u64,
    pub rx_bytes: u64,
    pub rx_packets: u64,
    /// `agent_id` 0 (no agent has it): a slot not given out yet.
    pub key: StatsKey,
}
const _: () = assert!(size_of::<TrafficCounters>() == 40);
const _: () = assert!(offset_of!(TrafficCounters, key) == 32);

/// Value of `HOST_EGRESS`: what one cgroup sent out of the host's uplinks.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HostEgress {
    /// L3 bytes plus link-layer header, as TC sees them (what a provider bills).
    pub bytes: u64,
    pub packets: u64,
}
const _: () = assert!(size_of::<HostEgress>() == 16);

/// LPM trie key for IPv4 allowlists. Multi-byte fields are big-endian byte arrays, so the
/// trie's bit order is the field order. The prefix length is `ALLOW_KEY_FIXED_BITS` plus the
/// address prefix; port 0 means "any port" and is looked up second. `_tail` is never reached by
/// a prefix: it pads the key to a multiple of 8, where the trie stores the 8-aligned `Rule`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AllowKeyV4 {
    pub agent_id: [u8; 4],
    pub protocol: u8,
    pub _pad: u8,
    pub port: [u8; 2],
    pub addr: [u8; 4],
    pub _tail: [u8; 4],
}
const _: () = assert!(size_of::<AllowKeyV4>() == 16);
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
    pub _tail: [u8; 8],
}
const _: () = assert!(size_of::<AllowKeyV6>() == 32);
const _: () = assert!(offset_of!(AllowKeyV6, addr) * 8 == ALLOW_KEY_FIXED_BITS as usize);

impl AllowKeyV4 {
    /// `port` and `agent_id` in host order; `addr` as the address's octets.
    pub const fn new(agent_id: u32, protocol: u8, port: u16, addr: [u8; 4]) -> Self {
        Self { agent_id: agent_id.to_be_bytes(), protocol, _pad: 0, port: port.to_be_bytes(), addr, _tail: [0; 4] }
    }
}

impl AllowKeyV6 {
    pub const fn new(agent_id: u32, protocol: u8, port: u16, addr: [u8; 16]) -> Self {
        Self { agent_id: agent_id.to_be_bytes(), protocol, _pad: 0, port: port.to_be_bytes(), addr, _tail: [0; 8] }
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
    unsafe impl aya::Pod for super::InboundKey {}
    unsafe impl aya::Pod for super::Prices {}
    unsafe impl aya::Pod for super::Rule {}
    unsafe impl aya::Pod for super::SockTag {}
    unsafe impl aya::Pod for super::Control {}
    unsafe impl aya::Pod for super::Spend {}
    unsafe impl aya::Pod for super::HostEgress {}
    unsafe impl aya::Pod for super::StatsKey {}
    unsafe impl aya::Pod for super::ConnCounters {}
    unsafe impl aya::Pod for super::TrafficCounters {}
    unsafe impl aya::Pod for super::AllowKeyV4 {}
    unsafe impl aya::Pod for super::AllowKeyV6 {}
    unsafe impl aya::Pod for super::DenyEvent {}
    unsafe impl aya::Pod for super::Resolver {}
    unsafe impl aya::Pod for super::ResolverSlot {}
    unsafe impl aya::Pod for super::EndpointLimits {}
    unsafe impl aya::Pod for super::EndpointUse {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allow_keys_put_fields_in_trie_bit_order() {
        let k = AllowKeyV4::new(0x0102_0304, IPPROTO_TCP, 443, [10, 0, 0, 1]);
        // SAFETY: AllowKeyV4 is 16 bytes of plain integers with no padding.
        let bytes: [u8; 16] = unsafe { core::mem::transmute(k) };
        assert_eq!(bytes, [1, 2, 3, 4, 6, 0, 1, 187, 10, 0, 0, 1, 0, 0, 0, 0]);
    }

    #[test]
    fn deny_event_has_no_hidden_padding() {
        assert_eq!(offset_of!(DenyEvent, pid), 20);
        assert_eq!(offset_of!(DenyEvent, hook), 30);
        assert_eq!(core::mem::align_of::<DenyEvent>(), 8);
    }
}
