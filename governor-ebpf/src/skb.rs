//! Per-packet byte and packet counting for agent sockets (cgroup_skb ingress and egress).
//!
//! The hot path is two lookups: the socket's tag (socket-local storage, no hashing) and this
//! CPU's counter slot. Only a socket's first packet, when connect/sendmsg never tagged it
//! (accepted connections, sockets older than the daemon), pays for the agent lookup.

use core::ptr::addr_of;

use aya_ebpf::{
    bindings::{BPF_SK_STORAGE_GET_F_CREATE, bpf_sock},
    helpers::bpf_sk_storage_get,
    programs::SkBuffContext,
};
use governor_common::{ENDPOINT_UNLISTED, StatsKey, TrafficCounters};

use crate::{
    agent::{self, NO_AGENT},
    maps::{SOCK_TAGS, TRAFFIC, per_cpu_add},
};

pub const PASS: i32 = 1;

#[derive(Clone, Copy)]
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
    let key = socket_tag(ctx, sk);
    if key.agent_id == NO_AGENT {
        return PASS;
    }
    let len = u64::from(ctx.len());
    per_cpu_add(&TRAFFIC, &key, |c: &mut TrafficCounters| match direction {
        Direction::Egress => {
            c.tx_bytes += len;
            c.tx_packets += 1;
        }
        Direction::Ingress => {
            c.rx_bytes += len;
            c.rx_packets += 1;
        }
    });
    PASS
}

/// The socket's tag, creating it (charged to the agent's unlisted endpoint) on first sight.
/// Sockets that belong to no agent get `NO_AGENT` and no tag: they are looked up each time, so
/// a cgroup that becomes an agent later is counted from then on.
#[inline(always)]
fn socket_tag(ctx: &SkBuffContext, sk: *mut bpf_sock) -> StatsKey {
    let map = addr_of!(SOCK_TAGS).cast_mut().cast();
    // SAFETY: `sk` is non-null and owned by the context; the helper returns null or a slot.
    let tag =
        unsafe { bpf_sk_storage_get(map, sk.cast(), core::ptr::null_mut(), 0) }.cast::<StatsKey>();
    if !tag.is_null() {
        // SAFETY: non-null storage slot of the right type.
        return unsafe { *tag };
    }
    let agent = agent::of_skb(ctx);
    if agent.agent_id == NO_AGENT {
        return StatsKey {
            agent_id: NO_AGENT,
            endpoint_id: ENDPOINT_UNLISTED,
        };
    }
    let key = StatsKey {
        agent_id: agent.agent_id,
        endpoint_id: ENDPOINT_UNLISTED,
    };
    // SAFETY: as above; creation fails (null) on request and time-wait sockets, which is fine.
    let tag = unsafe {
        bpf_sk_storage_get(
            map,
            sk.cast(),
            core::ptr::null_mut(),
            BPF_SK_STORAGE_GET_F_CREATE.into(),
        )
    }
    .cast::<StatsKey>();
    if !tag.is_null() {
        // SAFETY: fresh slot of the right type.
        unsafe { *tag = key };
    }
    key
}
