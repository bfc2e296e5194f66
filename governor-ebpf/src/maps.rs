//! Every map the programs use, declared in one place. Sizes are ceilings the daemon may lower.

use aya_ebpf::{
    btf_maps::{Array, HashMap, LpmTrie, PerCpuArray, PerCpuHashMap, RingBuf, SkStorage},
    macros::btf_map,
};
use governor_common::{
    AgentInfo, AllowKeyV4, AllowKeyV6, ConnCounters, Control, DenyEvent, EndpointLimits, EndpointUse, HostEgress,
    InboundKey, MAX_RESOLVERS, Resolver, ResolverSlot, Rule, SLOTS, SockTag, Spend, StatsKey, TRAFFIC_SLOTS,
    TrafficCounters,
};

#[btf_map]
pub static AGENTS: HashMap<u64, AgentInfo, 4096> = HashMap::new();

#[btf_map]
pub static ALLOW_V4: LpmTrie<AllowKeyV4, Rule, 1_048_576> = LpmTrie::new();

#[btf_map]
pub static ALLOW_V6: LpmTrie<AllowKeyV6, Rule, 1_048_576> = LpmTrie::new();

#[btf_map]
pub static CONN_STATS: PerCpuHashMap<StatsKey, ConnCounters, 65_536> = PerCpuHashMap::new();

/// By the socket tag's traffic slot: an index, inlined by the verifier, on every packet's path.
#[btf_map]
pub static TRAFFIC: PerCpuArray<TrafficCounters, { TRAFFIC_SLOTS as usize }> = PerCpuArray::new();

/// Which (agent, endpoint) a socket's packets are charged to and at what price: set on
/// connect/sendmsg, or on the first packet of a socket those hooks never saw.
#[btf_map]
pub static SOCK_TAGS: SkStorage<SockTag> = SkStorage::new();

/// Budget ceilings and generations by slot; the daemon writes, the programs read.
#[btf_map]
pub static CONTROL: Array<Control, { SLOTS as usize }> = Array::new();

/// Spend by slot; the programs write (atomically), the daemon reads.
#[btf_map]
pub static SPEND: Array<Spend, { SLOTS as usize }> = Array::new();

#[btf_map]
pub static EVENTS: RingBuf<DenyEvent, { 256 * 1024 }> = RingBuf::new();

#[btf_map]
pub static EVENTS_LOST: PerCpuArray<u64, 1> = PerCpuArray::new();

/// Verdicts `CONN_STATS` had no room for (a new key in a full map): counted here, so the
/// daemon can say how many went uncounted rather than lose them without a word.
#[btf_map]
pub static COUNTS_LOST: PerCpuArray<u64, 1> = PerCpuArray::new();

/// Host egress by sending cgroup id; the daemon creates key 0 for socketless packets and
/// for cgroups the map has no room for.
#[btf_map]
pub static HOST_EGRESS: PerCpuHashMap<u64, HostEgress, 65_536> = PerCpuHashMap::new();

/// The resolvers agents may send DNS to, by address (IPv6 or IPv4-mapped).
#[btf_map]
pub static RESOLVERS: HashMap<[u8; 16], Resolver, { MAX_RESOLVERS as usize }> = HashMap::new();

/// Resolver addresses by index, to show agents the resolver in place of the proxy.
#[btf_map]
pub static RESOLVER_SLOTS: Array<ResolverSlot, { MAX_RESOLVERS as usize }> = Array::new();

/// Per (agent, endpoint) limits, from `[[endpoint]] limits`; the daemon writes, programs read.
#[btf_map]
pub static ENDPOINT_LIMITS: HashMap<StatsKey, EndpointLimits, 65_536> = HashMap::new();

/// Their state; the programs write (atomically). The daemon creates entries beside the limits.
#[btf_map]
pub static ENDPOINT_USE: HashMap<StatsKey, EndpointUse, 65_536> = HashMap::new();

/// A value type's all-zero value, in global data: inserting it passes a pointer to it instead
/// of building the value on the 512-byte stack (a `ConnCounters` is 96 bytes).
pub trait Zero: 'static + Sized {
    fn zero() -> &'static Self;
}

static ZERO_CONN: ConnCounters =
    ConnCounters { allowed: 0, flows: 0, denied: [0; governor_common::REASONS], would_deny: 0 };
static ZERO_EGRESS: HostEgress = HostEgress { bytes: 0, packets: 0 };

impl Zero for ConnCounters {
    fn zero() -> &'static Self {
        &ZERO_CONN
    }
}

impl Zero for HostEgress {
    fn zero() -> &'static Self {
        &ZERO_EGRESS
    }
}

/// Local ports agents may take traffic on (`[[agent]] inbound`); the daemon writes, programs
/// read (at bind, and on the first packet of a socket nothing admitted).
#[btf_map]
pub static INBOUND: HashMap<InboundKey, u8, 65_536> = HashMap::new();

/// Whether `agent_id` may take `protocol` traffic on local `port`.
#[inline(always)]
pub fn inbound_allowed(agent_id: u32, protocol: u8, port: u16) -> bool {
    let key = InboundKey { agent_id, port, protocol, _pad: 0 };
    // SAFETY: only tested for presence; no pointer kept.
    unsafe { INBOUND.get(&key).is_some() }
}

/// Adds `f(value)` to this CPU's slot of `map[key]`, creating the slot (zeroed) on first use.
/// Returns false, and counts it in `COUNTS_LOST`, if the map had no room for a new key.
#[inline(always)]
pub fn per_cpu_add<K, V: Zero, const N: usize>(map: &PerCpuHashMap<K, V, N>, key: &K, f: impl Fn(&mut V)) -> bool {
    if let Some(v) = map.get_ptr_mut(key) {
        // SAFETY: a per-CPU slot is only touched by this CPU, and programs do not nest here.
        f(unsafe { &mut *v });
        return true;
    }
    // BPF_NOEXIST: if another CPU created the key meanwhile, this fails and we add to our own
    // (zeroed) slot of it below.
    let _ = map.insert(key, V::zero(), 1);
    match map.get_ptr_mut(key) {
        Some(v) => {
            // SAFETY: as above.
            f(unsafe { &mut *v });
            true
        }
        None => {
            if let Some(lost) = COUNTS_LOST.get_ptr_mut(0) {
                // SAFETY: this CPU's slot of a per-CPU array.
                unsafe { *lost += 1 };
            }
            false
        }
    }
}
