//! Which agent, if any, the current task or a packet's socket belongs to.

use aya_ebpf::helpers::{bpf_get_current_ancestor_cgroup_id, bpf_skb_ancestor_cgroup_id};
use aya_ebpf::programs::SkBuffContext;
use governor_common::AgentInfo;

use crate::maps::AGENTS;

/// The cgroup level of agent cgroups, set by the loader. An agent's nested cgroups share its
/// ancestor at this level, which is how they count as the agent with one lookup.
#[unsafe(no_mangle)]
static AGENT_LEVEL: u32 = 0;

#[inline(always)]
fn level() -> i32 {
    // SAFETY: a read of a constant the loader patched into .rodata.
    unsafe { core::ptr::read_volatile(&AGENT_LEVEL) as i32 }
}

/// `AgentInfo::agent_id` of "not an agent". Plain values, not `Option`s, cross function
/// boundaries here: see the note on the lookups in `sock_addr.rs`.
pub const NO_AGENT: u32 = 0;

/// The agent of the calling task, found through its ancestor cgroup at the agent level.
#[inline(always)]
pub fn of_current_task() -> AgentInfo {
    // SAFETY: helper call with a plain integer argument.
    let cgroup = unsafe { bpf_get_current_ancestor_cgroup_id(level()) };
    lookup(cgroup)
}

/// The agent of the socket that owns `ctx`'s packet.
#[inline(always)]
pub fn of_skb(ctx: &SkBuffContext) -> AgentInfo {
    // SAFETY: helper call on the program's own context.
    let cgroup = unsafe { bpf_skb_ancestor_cgroup_id(ctx.skb.skb.cast(), level()) };
    lookup(cgroup)
}

#[inline(always)]
fn lookup(cgroup: u64) -> AgentInfo {
    let none = AgentInfo { agent_id: NO_AGENT, ..AgentInfo::default() };
    if cgroup == 0 {
        return none;
    }
    // SAFETY: copied out at once, so no map value pointer outlives this call.
    match unsafe { AGENTS.get(&cgroup) } {
        Some(a) => *a,
        None => none,
    }
}
