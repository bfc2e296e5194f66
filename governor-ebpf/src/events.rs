//! Deny events to user space. Best effort by design: when the ring buffer is full the event is
//! counted in EVENTS_LOST and dropped; the counters that matter live in maps.

use aya_ebpf::helpers::{bpf_get_current_cgroup_id, bpf_get_current_pid_tgid, bpf_ktime_get_ns};
use governor_common::{
    AgentInfo, ConnCounters, DenyEvent, ENDPOINT_UNLISTED, MODE_ENFORCE, StatsKey, VERDICT_DENIED, VERDICT_WOULD_DENY,
};

use crate::maps::{CONN_STATS, EVENTS, EVENTS_LOST, per_cpu_add};

#[inline(always)]
pub fn send(event: &DenyEvent) {
    if EVENTS.output(event, 0).is_err()
        && let Some(lost) = EVENTS_LOST.get_ptr_mut(0)
    {
        // SAFETY: this CPU's slot of a per-CPU array.
        unsafe { *lost += 1 };
    }
}

/// Sends a `DenyEvent` for the calling task, written straight into the ring buffer: built on
/// the stack first, it would push the connect programs' combined stack past the verifier's
/// 512 bytes.
#[inline(always)]
#[expect(clippy::too_many_arguments, reason = "one flat event, built in one place")]
pub fn deny(
    agent: &AgentInfo,
    hook: u8,
    reason: u8,
    verdict: u8,
    protocol: u8,
    family: u8,
    port: u16,
    addr: &[u8; 16],
) {
    let Some(mut entry) = EVENTS.reserve(0) else {
        if let Some(lost) = EVENTS_LOST.get_ptr_mut(0) {
            // SAFETY: this CPU's slot of a per-CPU array.
            unsafe { *lost += 1 };
        }
        return;
    };
    let e = entry.as_mut_ptr();
    // SAFETY: `e` points at a reserved ring buffer record of DenyEvent's size; every field is
    // written before it is submitted. The helpers take no pointer arguments.
    unsafe {
        (*e).timestamp_ns = bpf_ktime_get_ns();
        (*e).cgroup_id = bpf_get_current_cgroup_id();
        (*e).agent_id = agent.agent_id;
        (*e).pid = (bpf_get_current_pid_tgid() >> 32) as u32;
        (*e).reason = reason;
        (*e).verdict = verdict;
        (*e).protocol = protocol;
        (*e).family = family;
        (*e).port = port;
        (*e).hook = hook;
        (*e)._pad = 0;
        (*e).addr = *addr;
    }
    entry.submit(0);
}

/// A call that has no endpoint (a socket type, a socket option, a bind) refused for `agent`:
/// counted under its unlisted endpoint and reported, as `denied` in enforce mode, where the
/// call fails (0), or as `would_deny` in observe mode, where it goes on (1).
#[inline(always)]
#[expect(clippy::too_many_arguments, reason = "the event's fields, passed through")]
pub fn refuse_call(
    agent: &AgentInfo,
    hook: u8,
    reason: u8,
    protocol: u8,
    family: u8,
    port: u16,
    addr: &[u8; 16],
) -> i32 {
    let enforce = agent.mode == MODE_ENFORCE;
    let key = StatsKey { agent_id: agent.agent_id, endpoint_id: ENDPOINT_UNLISTED };
    per_cpu_add(&CONN_STATS, &key, |c: &mut ConnCounters| {
        if enforce {
            c.denied[reason as usize] += 1;
        } else {
            c.would_deny += 1;
        }
    });
    let verdict = if enforce { VERDICT_DENIED } else { VERDICT_WOULD_DENY };
    deny(agent, hook, reason, verdict, protocol, family, port, addr);
    if enforce { 0 } else { 1 }
}
