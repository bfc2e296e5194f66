//! Per-packet counting and charging for agent sockets (cgroup_skb ingress and egress).
//!
//! The hot path: the socket's tag (socket-local storage, no hashing), the slot's budget state
//! and this CPU's counters (array entries, which the verifier inlines). Only a socket's
//! first packet, when connect/sendmsg never tagged it (accepted connections, sockets older than
//! the daemon), pays for the agent lookup. A packet is counted only if it passes.

use core::ptr::{addr_of, read_volatile};

use aya_ebpf::{
    bindings::{BPF_SK_STORAGE_GET_F_CREATE, bpf_sock},
    helpers::{bpf_ktime_get_ns, bpf_sk_fullsock, bpf_sk_storage_get},
    programs::{SkBuffContext, sk_buff::SkBuff},
};
use governor_common::{
    ConnCounters, DenyEvent, ENDPOINT_DNS, ENDPOINT_UNLISTED, HOOK_EGRESS, HOOK_INGRESS, IPPROTO_UDP, MAX_RESOLVERS,
    MODE_ENFORCE, PROXY_OCTET, REASON_INBOUND, SockTag, StatsKey, TAG_UDP, VERDICT_DENIED,
};

use crate::{
    agent::{self, NO_AGENT},
    budget, events,
    maps::{CONN_STATS, SOCK_TAGS, TRAFFIC, inbound_allowed, per_cpu_add},
};

pub const PASS: i32 = 1;
pub const DROP: i32 = 0;

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    Egress,
    Ingress,
}

#[inline(always)]
pub fn count(ctx: &SkBuffContext, direction: Direction) -> i32 {
    // SAFETY: reading the context's socket pointer; checked for null before use.
    let sk: *mut bpf_sock = unsafe { (*ctx.skb.skb).__bindgen_anon_2.sk };
    if sk.is_null() {
        return PASS;
    }
    let tag = socket_tag(ctx, sk);
    if tag.agent_id == NO_AGENT {
        return PASS;
    }
    if tag.flags & NOT_ADMITTED != 0 {
        refuse_inbound(&tag, direction, tag.flags & FIRST_SIGHT != 0);
        return DROP;
    }
    if direction == Direction::Ingress && tag.flags & TAG_UDP != 0 && !udp_source_admitted(ctx, sk, &tag) {
        refuse_inbound(&tag, direction, true);
        return DROP;
    }
    // A suspended or paused agent's established connections carry no further payload.
    if budget::agent_blocked(tag.slot) != 0 {
        return DROP;
    }
    let (len, packets) = wire(&ctx.skb, 0);
    let price = if direction == Direction::Egress { tag.tx_byte } else { tag.rx_byte };
    // len < 2^32 and config caps per-byte prices below 2^30 pico, so this cannot wrap
    // (saturating_mul would need a 128-bit multiply, which BPF lacks).
    let refused = budget::charge_agent(tag.slot, len.wrapping_mul(price));
    if refused != 0 {
        report_refused(&tag, direction, refused);
        return DROP;
    }
    if let Some(c) = TRAFFIC.get_ptr_mut(tag.traffic) {
        // SAFETY: this CPU's copy of an array entry; programs do not nest here.
        let c = unsafe { &mut *c };
        match direction {
            Direction::Egress => {
                c.tx_bytes += len;
                c.tx_packets += packets;
            }
            Direction::Ingress => {
                c.rx_bytes += len;
                c.rx_packets += packets;
            }
        }
    }
    PASS
}

/// What a packet is on the wire: its length and 1, or, for a UDP GSO super-packet (the hooks
/// see it before it is cut up), its `gso_segs` datagrams each with its own IP and UDP headers
/// (and `link_header` bytes more each, for TC). Without this, 128 one-byte segments counted as
/// one 156-byte packet and left as 128 of 29 bytes. TCP super-packets are counted as the
/// kernel hands them (a TCP segment's header size varies with its options).
#[inline(always)]
pub fn wire(ctx: &SkBuff, link_header: u64) -> (u64, u64) {
    let len = u64::from(ctx.len());
    // SAFETY: a read of the context's own field.
    let segs = u64::from(unsafe { (*ctx.skb).gso_segs });
    if segs <= 1 {
        return (len, 1);
    }
    let Ok(first) = ctx.load::<u8>(link_header as usize) else { return (len, 1) };
    let (protocol_at, ip_header) = match first >> 4 {
        4 => (9, u64::from(first & 0x0f) * 4),
        6 => (6, 40),
        _ => return (len, 1),
    };
    match ctx.load::<u8>(link_header as usize + protocol_at) {
        Ok(p) if p == IPPROTO_UDP => (len + (segs - 1) * (link_header + ip_header + 8), segs),
        _ => (len, 1),
    }
}

/// Marks a socket's tag (never stored) when nothing admitted its traffic: an enforce agent's
/// socket that no connect or sendmsg tagged (an accepted connection, a listener, a datagram
/// received before any was sent, a socket older than the daemon) on a local port
/// `[[agent]] inbound` does not name.
/// Stored with the tag, so a flood at such a socket costs one storage lookup a packet, not the
/// agent, socket and INBOUND lookups again (a socket refused so stays refused until a connect or
/// sendmsg of the agent admits it).
const NOT_ADMITTED: u32 = 1 << 31;
/// Set on the returned copy only, the first time: the refusal is reported once per socket, and
/// counted for every packet.
const FIRST_SIGHT: u32 = 1 << 30;

/// The socket's tag, creating it (charged to the agent's unlisted endpoint, at no price) on
/// first sight. Sockets that belong to no agent get `NO_AGENT` and no tag: they are looked up
/// each time, so a cgroup that becomes an agent later is counted from then on. An enforce
/// agent's socket whose local port `inbound` does not name gets no tag either, and the
/// `NOT_ADMITTED` flag: its packets are dropped.
#[inline(always)]
fn socket_tag(ctx: &SkBuffContext, sk: *mut bpf_sock) -> SockTag {
    let map = addr_of!(SOCK_TAGS).cast_mut().cast();
    // SAFETY: `sk` is non-null and owned by the context; the helper returns null or a slot.
    let tag = unsafe { bpf_sk_storage_get(map, sk.cast(), core::ptr::null_mut(), 0) }.cast::<SockTag>();
    if !tag.is_null() {
        // SAFETY: non-null storage slot of the right type.
        return unsafe { *tag };
    }
    let agent = agent::of_skb(ctx);
    let fresh = SockTag {
        agent_id: agent.agent_id,
        endpoint_id: ENDPOINT_UNLISTED,
        slot: agent.slot,
        flags: 0,
        tx_byte: 0,
        rx_byte: 0,
        traffic: agent.traffic_unlisted,
        _pad: 0,
    };
    if agent.agent_id == NO_AGENT {
        return fresh;
    }
    // The context's socket is a `sock_common` to the verifier; its protocol and local port are
    // read through the full socket (the cgroup skb hooks only run for full sockets).
    // SAFETY: helper on the context's non-null socket; 32-bit reads of the result's fields.
    let full = unsafe { bpf_sk_fullsock(sk) };
    let inbound = full.is_null() || {
        let (protocol, port) =
            unsafe { (read_volatile(addr_of!((*full).protocol)), read_volatile(addr_of!((*full).src_port))) };
        inbound_allowed(agent.agent_id, protocol as u8, port as u16)
    };
    let refused = !inbound && agent.mode == MODE_ENFORCE;
    if !inbound && !refused {
        let key = StatsKey { agent_id: agent.agent_id, endpoint_id: ENDPOINT_UNLISTED };
        per_cpu_add(&CONN_STATS, &key, |c: &mut ConnCounters| c.would_deny += 1);
    }
    let stored = SockTag { flags: if refused { NOT_ADMITTED } else { 0 }, ..fresh };
    // SAFETY: as above; creation fails (null) on request and time-wait sockets, which is fine.
    let tag = unsafe { bpf_sk_storage_get(map, sk.cast(), core::ptr::null_mut(), BPF_SK_STORAGE_GET_F_CREATE.into()) }
        .cast::<SockTag>();
    if !tag.is_null() {
        // SAFETY: fresh slot of the right type.
        unsafe { *tag = stored };
    }
    SockTag { flags: stored.flags | if refused { FIRST_SIGHT } else { 0 }, ..stored }
}

/// Whether a datagram arriving on a UDP socket that sent with sendmsg comes from a source its
/// agent may reach. A connected socket (the kernel delivers only its peer's datagrams), an
/// observe-mode agent, and a local port `inbound` names pass; a socket that sent DNS may hear
/// only the proxy. Otherwise an unconnected socket that sent once would hear anyone.
#[inline(always)]
fn udp_source_admitted(ctx: &SkBuffContext, sk: *mut bpf_sock, tag: &SockTag) -> bool {
    // SAFETY: helper on the context's non-null socket; 32-bit reads of the full socket.
    let full = unsafe { bpf_sk_fullsock(sk) };
    if full.is_null() {
        return true;
    }
    let (peer_port, local_port) =
        unsafe { (read_volatile(addr_of!((*full).dst_port)), read_volatile(addr_of!((*full).src_port))) };
    if peer_port != 0 || inbound_allowed(tag.agent_id, IPPROTO_UDP, local_port as u16) {
        return true;
    }
    let agent = agent::of_skb(ctx);
    if agent.agent_id == NO_AGENT || agent.mode != MODE_ENFORCE {
        return true;
    }
    let Ok(first) = ctx.load::<u8>(0) else { return false };
    match first >> 4 {
        4 => {
            let ihl = usize::from(first & 0x0f) * 4;
            let (Ok(src), Ok(sport)) = (ctx.load::<[u8; 4]>(12), ctx.load::<u16>(ihl)) else { return false };
            if tag.endpoint_id == ENDPOINT_DNS {
                return src[0] == 127 && src[1] >= PROXY_OCTET && u32::from(src[1] - PROXY_OCTET) < MAX_RESOLVERS;
            }
            crate::sock_addr::admits_v4(agent.rule_id, u16::from_be(sport), src)
        }
        6 => {
            // A datagram behind extension headers is not read further: refused.
            let (Ok(next), Ok(src), Ok(sport)) = (ctx.load::<u8>(6), ctx.load::<[u8; 16]>(8), ctx.load::<u16>(40))
            else {
                return false;
            };
            next == IPPROTO_UDP
                && tag.endpoint_id != ENDPOINT_DNS
                && crate::sock_addr::admits_v6(agent.rule_id, u16::from_be(sport), src)
        }
        _ => false,
    }
}

/// Counts a packet dropped because nothing admitted it, and with `report` tells the daemon.
#[inline(always)]
fn refuse_inbound(tag: &SockTag, direction: Direction, report: bool) {
    let key = StatsKey { agent_id: tag.agent_id, endpoint_id: ENDPOINT_UNLISTED };
    per_cpu_add(&CONN_STATS, &key, |c: &mut ConnCounters| c.denied[REASON_INBOUND as usize] += 1);
    if report {
        report_refused(tag, direction, REASON_INBOUND);
    }
}

/// Tells the daemon a packet ran the agent (or host) into its ceiling or a spend checkpoint.
#[inline(always)]
fn report_refused(tag: &SockTag, direction: Direction, reason: u8) {
    events::send(&DenyEvent {
        // SAFETY: helper without arguments.
        timestamp_ns: unsafe { bpf_ktime_get_ns() },
        cgroup_id: 0,
        agent_id: tag.agent_id,
        pid: 0,
        reason,
        verdict: VERDICT_DENIED,
        protocol: 0,
        family: 0,
        port: 0,
        hook: if direction == Direction::Egress { HOOK_EGRESS } else { HOOK_INGRESS },
        _pad: 0,
        addr: [0; 16],
    });
}
