//! connect() and sendmsg() verdicts: match the destination against the calling agent's allowlist.
//!
//! Two LPM lookups at most (the exact port, then "any port"), one counter update, and an event
//! only when the verdict is not allow. Processes that are not in an agent pass untouched.

use core::ptr::{addr_of, read_volatile};

use aya_ebpf::{
    bindings::{BPF_SK_STORAGE_GET_F_CREATE, bpf_sock, bpf_sock_addr},
    btf_maps::lpm_trie::Key,
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_sk_storage_get,
    },
    programs::SockAddrContext,
};
use governor_common::{
    AF_INET, AF_INET6, ALLOW_KEY_FIXED_BITS, AgentInfo, AllowKeyV4, AllowKeyV6, ConnCounters,
    DenyEvent, ENDPOINT_UNLISTED, MODE_ENFORCE, REASON_NOT_ALLOWLISTED, StatsKey, VERDICT_DENIED,
    VERDICT_WOULD_DENY,
};

use crate::{
    agent::{self, NO_AGENT},
    maps::{ALLOW_V4, ALLOW_V6, CONN_STATS, EVENTS, EVENTS_LOST, SOCK_TAGS, per_cpu_add},
};

pub const ALLOW: i32 = 1;
pub const DENY: i32 = 0;

/// A destination as the hooks see it; IPv4-mapped IPv6 is already folded into `V4`.
#[derive(Clone, Copy)]
enum Dest {
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
        let dest = if v6 {
            read_ip6(sa)
        } else {
            Dest::V4(read_volatile(addr_of!((*sa).user_ip4)).to_ne_bytes())
        };
        (protocol, port, dest)
    };

    let endpoint = match dest {
        Dest::V4(addr) => lookup_v4(agent.agent_id, protocol, port, addr),
        Dest::V6(addr) => lookup_v6(agent.agent_id, protocol, port, addr),
    };
    let key = StatsKey {
        agent_id: agent.agent_id,
        endpoint_id: endpoint,
    };

    if endpoint != ENDPOINT_UNLISTED {
        per_cpu_add(&CONN_STATS, &key, |c: &mut ConnCounters| c.allowed += 1);
        tag_socket(ctx, key);
        return ALLOW;
    }
    if agent.mode == MODE_ENFORCE {
        per_cpu_add(&CONN_STATS, &key, |c: &mut ConnCounters| c.denied += 1);
        report(&agent, hook, VERDICT_DENIED, protocol, port, dest);
        return DENY;
    }
    per_cpu_add(&CONN_STATS, &key, |c: &mut ConnCounters| c.would_deny += 1);
    report(&agent, hook, VERDICT_WOULD_DENY, protocol, port, dest);
    tag_socket(ctx, key);
    ALLOW
}

/// Reads `user_ip6` one 32-bit word at a time and folds `::ffff:a.b.c.d` into IPv4.
#[inline(always)]
unsafe fn read_ip6(sa: *mut bpf_sock_addr) -> Dest {
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

// The lookups return a plain endpoint id (ENDPOINT_UNLISTED when nothing matches) rather than
// an Option: LLVM lowers `Option<u32>` to a register left undefined on the None path, and the
// verifier refuses to read it ("R1 !read_ok") even where the value is dead.

/// The endpoint allowing (protocol, port, addr) for the agent: exact port first, then any port.
#[inline(always)]
fn lookup_v4(agent_id: u32, protocol: u8, port: u16, addr: [u8; 4]) -> u32 {
    let exact = Key::new(
        ALLOW_KEY_FIXED_BITS + 32,
        AllowKeyV4::new(agent_id, protocol, port, addr),
    );
    if let Some(ep) = ALLOW_V4.get(&exact) {
        return *ep;
    }
    let any_port = Key::new(
        ALLOW_KEY_FIXED_BITS + 32,
        AllowKeyV4::new(agent_id, protocol, 0, addr),
    );
    match ALLOW_V4.get(&any_port) {
        Some(ep) => *ep,
        None => ENDPOINT_UNLISTED,
    }
}

#[inline(always)]
fn lookup_v6(agent_id: u32, protocol: u8, port: u16, addr: [u8; 16]) -> u32 {
    let exact = Key::new(
        ALLOW_KEY_FIXED_BITS + 128,
        AllowKeyV6::new(agent_id, protocol, port, addr),
    );
    if let Some(ep) = ALLOW_V6.get(&exact) {
        return *ep;
    }
    let any_port = Key::new(
        ALLOW_KEY_FIXED_BITS + 128,
        AllowKeyV6::new(agent_id, protocol, 0, addr),
    );
    match ALLOW_V6.get(&any_port) {
        Some(ep) => *ep,
        None => ENDPOINT_UNLISTED,
    }
}

/// Remembers on the socket which (agent, endpoint) its packets are charged to.
#[inline(always)]
fn tag_socket(ctx: &SockAddrContext, key: StatsKey) {
    // SAFETY: `sk` is the context's own socket; the helper returns null or a valid value slot.
    unsafe {
        let sk: *mut bpf_sock = (*ctx.sock_addr).__bindgen_anon_1.sk;
        let tag = bpf_sk_storage_get(
            addr_of!(SOCK_TAGS).cast_mut().cast(),
            sk.cast(),
            core::ptr::null_mut(),
            BPF_SK_STORAGE_GET_F_CREATE.into(),
        )
        .cast::<StatsKey>();
        if !tag.is_null() {
            *tag = key;
        }
    }
}

#[inline(always)]
fn report(agent: &AgentInfo, hook: u8, verdict: u8, protocol: u8, port: u16, dest: Dest) {
    let (family, addr) = match dest {
        Dest::V4(a) => {
            let mut addr = [0u8; 16];
            addr[..4].copy_from_slice(&a);
            (AF_INET, addr)
        }
        Dest::V6(a) => (AF_INET6, a),
    };
    // SAFETY: helpers without pointer arguments.
    let (timestamp_ns, cgroup_id, pid) = unsafe {
        (
            bpf_ktime_get_ns(),
            bpf_get_current_cgroup_id(),
            (bpf_get_current_pid_tgid() >> 32) as u32,
        )
    };
    let event = DenyEvent {
        timestamp_ns,
        cgroup_id,
        agent_id: agent.agent_id,
        pid,
        reason: REASON_NOT_ALLOWLISTED,
        verdict,
        protocol,
        family,
        port,
        hook,
        _pad: 0,
        addr,
    };
    if EVENTS.output(&event, 0).is_err()
        && let Some(lost) = EVENTS_LOST.get_ptr_mut(0)
    {
        // SAFETY: this CPU's slot of a per-CPU array.
        unsafe { *lost += 1 };
    }
}
