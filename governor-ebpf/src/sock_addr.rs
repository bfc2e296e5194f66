//! connect() and sendmsg() verdicts: match the destination against the calling agent's
//! allowlist, then charge the connection's price to its budget.
//!
//! Per call: the agent (one hash lookup), at most two LPM lookups (the exact port, then "any
//! port"), the slot's budget and limits (array entries, inlined), the endpoint's own limits only
//! for agents the daemon marked as having some, the socket's tag, one counter update, and an
//! event only when the verdict is not allow. Port 53 takes the DNS path instead (one hash
//! lookup of the resolver). Processes that are not in an agent pass untouched.

use core::ptr::{addr_of, addr_of_mut, read_volatile, write_volatile};

use aya_ebpf::{
    bindings::{BPF_SK_STORAGE_GET_F_CREATE, bpf_sock, bpf_sock_addr},
    btf_maps::lpm_trie::Key,
    helpers::{bpf_ktime_get_boot_ns, bpf_sk_storage_get},
    programs::SockAddrContext,
};
use governor_common::{
    AF_INET, AF_INET6, ALLOW_KEY_FIXED_BITS, AgentInfo, AllowKeyV4, AllowKeyV6, ConnCounters, DNS_PORT, ENDPOINT_DNS,
    ENDPOINT_UNLISTED, HOOK_BIND, HOOK_SENDMSG, IPPROTO_TCP, IPPROTO_UDP, MODE_ENFORCE, REASON_CHECKPOINT,
    REASON_CONCURRENCY, REASON_DNS_RESOLVER, REASON_INBOUND, REASON_NOT_ALLOWLISTED, REASON_RATE_LIMIT,
    REASON_SECOND_ENDPOINT, REASON_SOCKET_STORAGE, Rule, SockTag, StatsKey, TAG_COUNTED, TAG_ENDPOINT_COUNTED, TAG_UDP,
    TRAFFIC_UNCOUNTED, VERDICT_DENIED, VERDICT_WOULD_DENY,
};

use crate::{
    agent::{self, NO_AGENT},
    budget, dns, events, limits,
    maps::{ALLOW_V4, ALLOW_V6, CONN_STATS, SOCK_TAGS, per_cpu_add},
};

pub const ALLOW: i32 = 1;
pub const DENY: i32 = 0;

/// A destination as the hooks see it; IPv4-mapped IPv6 is already folded into `V4`.
#[derive(Clone, Copy)]
pub enum Dest {
    V4([u8; 4]),
    V6([u8; 16]),
}

/// The verdict for a connect (`hook` = HOOK_CONNECT) or sendmsg (HOOK_SENDMSG) to an IPv4
/// (`v6` false) or IPv6 destination.
#[inline(always)]
pub fn verdict(ctx: &SockAddrContext, hook: u8, v6: bool) -> i32 {
    let agent = agent::of_current_task();
    if agent.agent_id == NO_AGENT {
        return ALLOW;
    }
    let sa = ctx.sock_addr;
    // SAFETY: 32-bit reads of context fields, one at a time, as the verifier requires.
    let (protocol, port, dest) = unsafe {
        let protocol = read_volatile(addr_of!((*sa).protocol)) as u8;
        // user_port holds a network-order u16 in a u32.
        let port = u16::from_be(read_volatile(addr_of!((*sa).user_port)) as u16);
        let dest = if v6 { read_ip6(sa) } else { Dest::V4(read_volatile(addr_of!((*sa).user_ip4)).to_ne_bytes()) };
        (protocol, port, dest)
    };
    if port == DNS_PORT && (protocol == IPPROTO_UDP || protocol == IPPROTO_TCP) {
        return dns_verdict(ctx, &agent, hook, protocol, port, dest, v6);
    }

    let rule = match dest {
        Dest::V4(addr) => lookup_v4(agent.rule_id, protocol, port, addr),
        Dest::V6(addr) => lookup_v6(agent.rule_id, protocol, port, addr),
    };
    let key = StatsKey { agent_id: agent.agent_id, endpoint_id: rule.endpoint_id };
    let deny = |reason: u8| {
        per_cpu_add(&CONN_STATS, &key, |c: &mut ConnCounters| c.denied[reason as usize] += 1);
        report(&agent, hook, reason, VERDICT_DENIED, protocol, port, dest);
        DENY
    };

    let listed = rule.endpoint_id != ENDPOINT_UNLISTED;
    // A connected UDP socket's send with ancillary data (IP_TOS for ECN, IP_TTL, ...) runs this
    // hook with no address (0.0.0.0:0 or [::]:0): the kernel sends to the socket's peer, which
    // its connect admitted (the kernel refuses such a send on an unconnected socket before any
    // hook). It goes on under the socket's tag, as its plain sends do.
    if !listed && hook == HOOK_SENDMSG && port == 0 && unspecified(&dest) && sent_by(ctx, agent.agent_id) {
        let blocked = budget::agent_blocked(agent.slot);
        return if blocked != 0 { deny(blocked) } else { ALLOW };
    }
    if !listed && agent.mode == MODE_ENFORCE {
        return deny(REASON_NOT_ALLOWLISTED);
    }
    let blocked = budget::agent_blocked(agent.slot);
    if blocked != 0 {
        return deny(blocked);
    }
    let tag = socket_tag(ctx);
    // Without a tag the socket could be neither charged nor give a concurrent place back
    // (observe mode lets it through, uncharged, as it refuses nothing).
    if tag.is_null() {
        if agent.mode == MODE_ENFORCE {
            return deny(REASON_SOCKET_STORAGE);
        }
        return ALLOW;
    }
    // A UDP socket keeps the endpoint it sends to: a sendmsg elsewhere would re-tag it, and its
    // later send()s to its connected peer would pass no hook, at the other endpoint's price and
    // outside its concurrency place.
    if hook == HOOK_SENDMSG && agent.mode == MODE_ENFORCE && second_endpoint(tag, agent.agent_id, rule.endpoint_id) {
        return deny(REASON_SECOND_ENDPOINT);
    }
    // A UDP socket pays the connection price, takes a token and a concurrent place once per
    // endpoint it sends to (a "flow"); a connect always does.
    // SAFETY: `tag` is a non-null storage slot of the right type (checked above).
    let (same_flow, counted, old_flags, old_endpoint) = unsafe {
        let same = (*tag).agent_id == agent.agent_id && (*tag).endpoint_id == rule.endpoint_id;
        (hook == HOOK_SENDMSG && same, (*tag).flags & TAG_COUNTED != 0, (*tag).flags, (*tag).endpoint_id)
    };
    let enforce = agent.mode == MODE_ENFORCE;
    if !same_flow && enforce && !limits::rate_ok(agent.slot) {
        return deny(REASON_RATE_LIMIT);
    }
    let take_place = !counted && !same_flow;
    if take_place && !limits::acquire(agent.slot, enforce) {
        return deny(REASON_CONCURRENCY);
    }
    let flags = if counted || take_place { TAG_COUNTED } else { 0 };
    if !listed {
        per_cpu_add(&CONN_STATS, &key, |c: &mut ConnCounters| c.would_deny += 1);
        report(&agent, hook, REASON_NOT_ALLOWLISTED, VERDICT_WOULD_DENY, protocol, port, dest);
        set_tag(tag, &agent, &rule, flags | (old_flags & TAG_ENDPOINT_COUNTED) | udp_flag(protocol));
        return ALLOW;
    }
    // The endpoint's own limits for this agent, if it has any (`[[endpoint]] limits`).
    let ep = if same_flow { limits::NO_ENDPOINT_LIMITS } else { limits::of_endpoint(agent.slot, &key) };
    let undo = |reason: u8| {
        if take_place {
            limits::release(agent.slot);
        }
        deny(reason)
    };
    if ep.rate_interval_ns != 0 && enforce && !limits::endpoint_rate_ok(&key, &ep) {
        return undo(REASON_RATE_LIMIT);
    }
    let ep_held = old_flags & TAG_ENDPOINT_COUNTED != 0 && old_endpoint == rule.endpoint_id;
    let ep_take = if ep.max_concurrent != 0 && !ep_held {
        limits::endpoint_acquire(&key, ep.max_concurrent, enforce)
    } else {
        limits::NOT_TAKEN
    };
    if ep_take == limits::REFUSED {
        return undo(REASON_CONCURRENCY);
    }
    // A new connection counts toward the connections checkpoint; past it, refused.
    if !same_flow && !budget::count_connection(agent.slot) {
        if ep_take == limits::TAKEN {
            limits::endpoint_release(&key);
        }
        return undo(REASON_CHECKPOINT);
    }
    let cost = if same_flow { 0 } else { rule.prices.connection };
    let refused = budget::charge_agent(agent.slot, cost);
    if refused != 0 {
        if !same_flow {
            budget::uncount_connection(agent.slot);
        }
        if ep_take == limits::TAKEN {
            limits::endpoint_release(&key);
        }
        return undo(refused);
    }
    let flow = u64::from(!same_flow);
    per_cpu_add(&CONN_STATS, &key, |c: &mut ConnCounters| {
        c.allowed += 1;
        c.flows += flow;
    });
    // A socket holds one endpoint place at most: moving to another endpoint gives the old back.
    let mut flags = flags;
    if ep_held || ep_take == limits::TAKEN {
        flags |= TAG_ENDPOINT_COUNTED;
    }
    if old_flags & TAG_ENDPOINT_COUNTED != 0 && !ep_held {
        limits::endpoint_release(&StatsKey { agent_id: agent.agent_id, endpoint_id: old_endpoint });
    }
    set_tag(tag, &agent, &rule, flags | udp_flag(protocol));
    ALLOW
}

/// DNS: only to a configured resolver, and then through the daemon's proxy. Counted under the
/// `dns` endpoint at no price, outside the rate and concurrency limits (the proxy bounds it),
/// and refused like everything else while the agent is paused or suspended.
#[inline(always)]
fn dns_verdict(
    ctx: &SockAddrContext,
    agent: &AgentInfo,
    hook: u8,
    protocol: u8,
    port: u16,
    dest: Dest,
    v6: bool,
) -> i32 {
    let route = dns::route(dest);
    let listed = route.index != dns::NOT_A_RESOLVER;
    let key = StatsKey { agent_id: agent.agent_id, endpoint_id: if listed { ENDPOINT_DNS } else { ENDPOINT_UNLISTED } };
    let deny = |reason: u8| {
        per_cpu_add(&CONN_STATS, &key, |c: &mut ConnCounters| c.denied[reason as usize] += 1);
        report(agent, hook, reason, VERDICT_DENIED, protocol, port, dest);
        DENY
    };
    if !listed {
        if agent.mode == MODE_ENFORCE {
            return deny(REASON_DNS_RESOLVER);
        }
        per_cpu_add(&CONN_STATS, &key, |c: &mut ConnCounters| c.would_deny += 1);
        report(agent, hook, REASON_DNS_RESOLVER, VERDICT_WOULD_DENY, protocol, port, dest);
        return ALLOW;
    }
    let blocked = budget::agent_blocked(agent.slot);
    if blocked != 0 {
        return deny(blocked);
    }
    let tag = socket_tag(ctx);
    if tag.is_null() && agent.mode == MODE_ENFORCE {
        return deny(REASON_SOCKET_STORAGE);
    }
    if !tag.is_null()
        && hook == HOOK_SENDMSG
        && agent.mode == MODE_ENFORCE
        && second_endpoint(tag, agent.agent_id, ENDPOINT_DNS)
    {
        return deny(REASON_SECOND_ENDPOINT);
    }
    // SAFETY: `tag` is null or a storage slot of the right type.
    let (counted, old_flags, old_endpoint) = if tag.is_null() {
        (false, 0, ENDPOINT_UNLISTED)
    } else {
        unsafe { ((*tag).flags & TAG_COUNTED != 0, (*tag).flags, (*tag).endpoint_id) }
    };
    if old_flags & TAG_ENDPOINT_COUNTED != 0 {
        limits::endpoint_release(&StatsKey { agent_id: agent.agent_id, endpoint_id: old_endpoint });
    }
    per_cpu_add(&CONN_STATS, &key, |c: &mut ConnCounters| {
        c.allowed += 1;
        c.flows += 1;
    });
    // Keep a place the socket already holds, so sock_release still gives it back.
    set_tag(tag, agent, &DNS_RULE, if counted { TAG_COUNTED } else { 0 } | udp_flag(protocol));
    dns::redirect(ctx, route, agent, v6);
    ALLOW
}

/// Whether the (non-null) `tag` already sends for this agent to an endpoint other than
/// `endpoint` (the unlisted endpoint of a socket first seen at a packet does not count).
#[inline(always)]
fn second_endpoint(tag: *mut SockTag, agent_id: u32, endpoint: u32) -> bool {
    // SAFETY: a non-null storage slot of the right type.
    let (tagged_agent, tagged) = unsafe { ((*tag).agent_id, (*tag).endpoint_id) };
    tagged_agent == agent_id && tagged != ENDPOINT_UNLISTED && tagged != endpoint
}

const DNS_RULE: Rule = Rule {
    endpoint_id: ENDPOINT_DNS,
    last_use_s: 0,
    prices: governor_common::Prices { connection: 0, tx_byte: 0, rx_byte: 0 },
    traffic: TRAFFIC_UNCOUNTED,
    _pad: 0,
};

/// Reads `user_ip6` one 32-bit word at a time and folds `::ffff:a.b.c.d` into IPv4.
#[inline(always)]
pub unsafe fn read_ip6(sa: *mut bpf_sock_addr) -> Dest {
    // SAFETY: 32-bit context reads, as in `verdict`.
    let w = unsafe {
        [
            read_volatile(addr_of!((*sa).user_ip6[0])).to_ne_bytes(),
            read_volatile(addr_of!((*sa).user_ip6[1])).to_ne_bytes(),
            read_volatile(addr_of!((*sa).user_ip6[2])).to_ne_bytes(),
            read_volatile(addr_of!((*sa).user_ip6[3])).to_ne_bytes(),
        ]
    };
    if w[0] == [0; 4] && w[1] == [0; 4] && w[2] == [0, 0, 0xff, 0xff] {
        return Dest::V4(w[3]);
    }
    let mut a = [0u8; 16];
    let mut i = 0;
    while i < 4 {
        a[i * 4..i * 4 + 4].copy_from_slice(&w[i]);
        i += 1;
    }
    Dest::V6(a)
}

// The lookups return a plain `Rule` (endpoint ENDPOINT_UNLISTED, prices 0, when nothing
// matches) rather than an Option: LLVM lowers `Option<T>` to registers left undefined on the
// None path, and the verifier refuses to read them ("R1 !read_ok") even where they are dead.

const NO_RULE: Rule = Rule {
    endpoint_id: ENDPOINT_UNLISTED,
    last_use_s: 0,
    prices: governor_common::Prices { connection: 0, tx_byte: 0, rx_byte: 0 },
    traffic: TRAFFIC_UNCOUNTED,
    _pad: 0,
};

/// The rule allowing (protocol, port, addr) for the agent: exact port first, then any port.
#[inline(always)]
fn lookup_v4(rule_id: u32, protocol: u8, port: u16, addr: [u8; 4]) -> Rule {
    let exact = Key::new(ALLOW_KEY_FIXED_BITS + 32, AllowKeyV4::new(rule_id, protocol, port, addr));
    if let Some(rule) = ALLOW_V4.get(&exact) {
        return used(rule);
    }
    let any_port = Key::new(ALLOW_KEY_FIXED_BITS + 32, AllowKeyV4::new(rule_id, protocol, 0, addr));
    match ALLOW_V4.get(&any_port) {
        Some(rule) => used(rule),
        None => NO_RULE,
    }
}

#[inline(always)]
fn lookup_v6(rule_id: u32, protocol: u8, port: u16, addr: [u8; 16]) -> Rule {
    let exact = Key::new(ALLOW_KEY_FIXED_BITS + 128, AllowKeyV6::new(rule_id, protocol, port, addr));
    if let Some(rule) = ALLOW_V6.get(&exact) {
        return used(rule);
    }
    let any_port = Key::new(ALLOW_KEY_FIXED_BITS + 128, AllowKeyV6::new(rule_id, protocol, 0, addr));
    match ALLOW_V6.get(&any_port) {
        Some(rule) => used(rule),
        None => NO_RULE,
    }
}

/// Whether `dest` is the unspecified address (a send with no address of its own).
#[inline(always)]
fn unspecified(dest: &Dest) -> bool {
    match dest {
        Dest::V4(a) => *a == [0; 4],
        Dest::V6(a) => *a == [0; 16],
    }
}

/// Whether the socket carries a tag of `agent_id` naming an endpoint: a connect or sendmsg of
/// this agent admitted its destination.
#[inline(always)]
fn sent_by(ctx: &SockAddrContext, agent_id: u32) -> bool {
    let tag = socket_tag(ctx);
    // SAFETY: null or a storage slot of the right type.
    !tag.is_null() && unsafe { (*tag).agent_id == agent_id && (*tag).endpoint_id != ENDPOINT_UNLISTED }
}

/// `TAG_UDP` for every UDP tag, by connect or sendmsg: a connected socket can be
/// disconnected (connect to AF_UNSPEC runs no hook) and keep its tag, so the ingress check
/// must know it is UDP; while it stays connected, the check stops at its peer port.
#[inline(always)]
fn udp_flag(protocol: u8) -> u32 {
    if protocol == IPPROTO_UDP { TAG_UDP } else { 0 }
}

/// Whether the agent's allowlist (`rule_id`) admits UDP from `addr`:`port`: presence only,
/// without stamping a DNS-admitted entry as used (receiving is not a use).
#[inline(always)]
pub fn admits_v4(rule_id: u32, port: u16, addr: [u8; 4]) -> bool {
    let exact = Key::new(ALLOW_KEY_FIXED_BITS + 32, AllowKeyV4::new(rule_id, IPPROTO_UDP, port, addr));
    let any_port = Key::new(ALLOW_KEY_FIXED_BITS + 32, AllowKeyV4::new(rule_id, IPPROTO_UDP, 0, addr));
    ALLOW_V4.get(&exact).is_some() || ALLOW_V4.get(&any_port).is_some()
}

#[inline(always)]
pub fn admits_v6(rule_id: u32, port: u16, addr: [u8; 16]) -> bool {
    let exact = Key::new(ALLOW_KEY_FIXED_BITS + 128, AllowKeyV6::new(rule_id, IPPROTO_UDP, port, addr));
    let any_port = Key::new(ALLOW_KEY_FIXED_BITS + 128, AllowKeyV6::new(rule_id, IPPROTO_UDP, 0, addr));
    ALLOW_V6.get(&exact).is_some() || ALLOW_V6.get(&any_port).is_some()
}

/// Copies a matched rule out and, for an address admitted from a DNS answer (`last_use_s` not
/// 0), stamps the rule with the time of this use, at most once a second.
#[inline(always)]
fn used(rule: &Rule) -> Rule {
    let copy = *rule;
    if copy.last_use_s != 0 {
        // SAFETY: a helper with no arguments.
        let now = (unsafe { bpf_ktime_get_boot_ns() } / 1_000_000_000) as u32;
        if now != copy.last_use_s {
            // The value lives in map memory the program may write; a racing update from the
            // daemon can only replace the whole node, which loses one stamp at most.
            let p = core::ptr::from_ref(rule).cast_mut();
            // SAFETY: a 32-bit write into the map value the lookup returned, read no more here.
            unsafe { write_volatile(addr_of_mut!((*p).last_use_s), now.max(1)) };
        }
    }
    copy
}

/// The socket's tag slot, created (zeroed) if it has none; null when the kernel refuses.
#[inline(always)]
fn socket_tag(ctx: &SockAddrContext) -> *mut SockTag {
    // SAFETY: `sk` is the context's own socket; the helper returns null or a valid value slot.
    unsafe {
        let sk: *mut bpf_sock = (*ctx.sock_addr).__bindgen_anon_1.sk;
        bpf_sk_storage_get(
            addr_of!(SOCK_TAGS).cast_mut().cast(),
            sk.cast(),
            core::ptr::null_mut(),
            BPF_SK_STORAGE_GET_F_CREATE.into(),
        )
        .cast::<SockTag>()
    }
}

/// Remembers on the socket who pays for its packets, at what price per byte, and whether it
/// holds a concurrent place (given back by `sock_release`).
#[inline(always)]
fn set_tag(tag: *mut SockTag, agent: &AgentInfo, rule: &Rule, flags: u32) {
    if tag.is_null() {
        return;
    }
    // The unlisted and DNS rules are constants here; their slots are the agent's.
    let traffic = match rule.endpoint_id {
        ENDPOINT_UNLISTED => agent.traffic_unlisted,
        ENDPOINT_DNS => agent.traffic_dns,
        _ => rule.traffic,
    };
    // SAFETY: non-null storage slot of the right type.
    unsafe {
        *tag = SockTag {
            agent_id: agent.agent_id,
            endpoint_id: rule.endpoint_id,
            slot: agent.slot,
            flags,
            tx_byte: rule.prices.tx_byte,
            rx_byte: rule.prices.rx_byte,
            traffic,
            _pad: 0,
        };
    }
}

#[inline(always)]
pub fn report(agent: &AgentInfo, hook: u8, reason: u8, verdict: u8, protocol: u8, port: u16, dest: Dest) {
    let (family, addr) = family_addr(dest);
    events::deny(agent, hook, reason, verdict, protocol, family, port, &addr);
}

/// A destination as an event carries it: the family, and the address in 16 bytes.
#[inline(always)]
fn family_addr(dest: Dest) -> (u8, [u8; 16]) {
    match dest {
        Dest::V4(a) => {
            let mut addr = [0u8; 16];
            addr[..4].copy_from_slice(&a);
            (AF_INET, addr)
        }
        Dest::V6(a) => (AF_INET6, a),
    }
}

/// bind() for agents: a port other than 0 (the ephemeral ports clients bind) only if
/// `[[agent]] inbound` names it for the socket's protocol; otherwise EPERM, reason `inbound`
/// (observe mode: counted as would_deny). Nothing else can take connections or datagrams in:
/// the packet hooks drop what arrives on a socket nothing admitted.
#[inline(always)]
pub fn bind(ctx: &SockAddrContext, v6: bool) -> i32 {
    let sa = ctx.sock_addr;
    // SAFETY: 32-bit reads of context fields, one at a time.
    let (protocol, port) = unsafe {
        (read_volatile(addr_of!((*sa).protocol)) as u8, u16::from_be(read_volatile(addr_of!((*sa).user_port)) as u16))
    };
    if port == 0 {
        return ALLOW;
    }
    let agent = agent::of_current_task();
    if agent.agent_id == NO_AGENT || crate::maps::inbound_allowed(agent.agent_id, protocol, port) {
        return ALLOW;
    }
    // SAFETY: as above.
    let dest =
        unsafe { if v6 { read_ip6(sa) } else { Dest::V4(read_volatile(addr_of!((*sa).user_ip4)).to_ne_bytes()) } };
    let (family, addr) = family_addr(dest);
    events::refuse_call(&agent, HOOK_BIND, REASON_INBOUND, protocol, family, port, &addr)
}
