//! Deny events to user space. Best effort by design: when the ring buffer is full the event is
//! counted in EVENTS_LOST and dropped; the counters that matter live in maps.

use aya_ebpf::helpers::{bpf_get_current_cgroup_id, bpf_get_current_pid_tgid, bpf_ktime_get_ns};
use governor_common::{AgentInfo, DenyEvent};

use crate::maps::{EVENTS, EVENTS_LOST};

#[inline(always)]
pub fn send(event: &DenyEvent) {
    if EVENTS.output(event, 0).is_err()
        && let Some(lost) = EVENTS_LOST.get_ptr_mut(0)
    {
        // SAFETY: this CPU's slot of a per-CPU array.
        unsafe { *lost += 1 };
    }
}

/// Sends a `DenyEvent` for the calling task.
#[inline(always)]
#[expect(clippy::too_many_arguments, reason = "one flat event, built in one place")]
pub fn deny(agent: &AgentInfo, hook: u8, reason: u8, verdict: u8, protocol: u8, family: u8, port: u16, addr: [u8; 16]) {
    // SAFETY: helpers without pointer arguments.
    let (timestamp_ns, cgroup_id, pid) =
        unsafe { (bpf_ktime_get_ns(), bpf_get_current_cgroup_id(), (bpf_get_current_pid_tgid() >> 32) as u32) };
    send(&DenyEvent {
        timestamp_ns,
        cgroup_id,
        agent_id: agent.agent_id,
        pid,
        reason,
        verdict,
        protocol,
        family,
        port,
        hook,
        _pad: 0,
        addr,
    });
}
