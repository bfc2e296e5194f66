//! Socket lifetime hooks for agents: `sock_create` refuses what the network hooks cannot
//! govern (raw and ICMP sockets, protocols other than TCP and UDP), whatever the agent's
//! privileges; `sock_release` gives back a concurrent place the socket held.

use core::ptr::{addr_of, read_volatile};

use aya_ebpf::{bindings::bpf_sock, helpers::bpf_sk_storage_get, programs::SockContext};
use governor_common::{
    AF_INET, AF_INET6, HOOK_SOCK_CREATE, IPPROTO_TCP, IPPROTO_UDP, REASON_SOCKET_TYPE, SockTag, StatsKey, TAG_COUNTED,
    TAG_ENDPOINT_COUNTED,
};

use crate::{
    agent::{self, NO_AGENT},
    events, limits,
    maps::SOCK_TAGS,
};

const SOCK_STREAM: u32 = 1;
const SOCK_DGRAM: u32 = 2;

/// The verdict on a new IPv4/IPv6 socket (the hook runs for those families only).
#[inline(always)]
pub fn create(ctx: &SockContext) -> i32 {
    let sk = ctx.sock;
    // SAFETY: 32-bit context reads.
    let (family, kind, protocol) = unsafe {
        (
            read_volatile(addr_of!((*sk).family)),
            read_volatile(addr_of!((*sk).type_)),
            read_volatile(addr_of!((*sk).protocol)),
        )
    };
    let inet = family == u32::from(AF_INET) || family == u32::from(AF_INET6);
    let tcp = kind == SOCK_STREAM && (protocol == 0 || protocol == u32::from(IPPROTO_TCP));
    let udp = kind == SOCK_DGRAM && (protocol == 0 || protocol == u32::from(IPPROTO_UDP));
    // TCP and UDP are for everyone: decided before the agent lookup, so the common socket
    // costs no map lookup here.
    if !inet || tcp || udp {
        return 1;
    }
    let agent = agent::of_current_task();
    if agent.agent_id == NO_AGENT {
        return 1;
    }
    // The socket's type travels in `port`: there is no destination yet.
    events::refuse_call(
        &agent,
        HOOK_SOCK_CREATE,
        REASON_SOCKET_TYPE,
        protocol as u8,
        family as u8,
        kind as u16,
        &[0; 16],
    )
}

/// Gives back the concurrent place a closing socket held.
#[inline(always)]
pub fn release(ctx: &SockContext) -> i32 {
    let sk: *mut bpf_sock = ctx.sock;
    // SAFETY: the context's own socket; the helper returns null or a storage slot.
    let tag = unsafe { bpf_sk_storage_get(addr_of!(SOCK_TAGS).cast_mut().cast(), sk.cast(), core::ptr::null_mut(), 0) }
        .cast::<SockTag>();
    if tag.is_null() {
        return 1;
    }
    // SAFETY: non-null storage slot of the right type.
    unsafe {
        if (*tag).flags & TAG_COUNTED != 0 {
            (*tag).flags &= !TAG_COUNTED;
            limits::release((*tag).slot);
        }
        if (*tag).flags & TAG_ENDPOINT_COUNTED != 0 {
            (*tag).flags &= !TAG_ENDPOINT_COUNTED;
            limits::endpoint_release(&StatsKey { agent_id: (*tag).agent_id, endpoint_id: (*tag).endpoint_id });
        }
    }
    1
}
