//! setsockopt for agents: options that would send a socket's packets somewhere other than the
//! destination its connect or sendmsg was admitted for are refused, whatever the agent's
//! privileges: IPv6 routing headers (`IPV6_RTHDR`, `IPV6_2292RTHDR`; a type-4 segment routing
//! header needs none) and IPv4 options (`IP_OPTIONS`: loose and strict source routes). EPERM,
//! reason `socket-option`, counted under the agent's unlisted endpoint.

use core::ptr::{addr_of, read_volatile};

use aya_ebpf::programs::SockoptContext;
use governor_common::{AF_INET, AF_INET6, HOOK_SETSOCKOPT, REASON_SOCKET_OPTION};

use crate::{
    agent::{self, NO_AGENT},
    events,
};

const SOL_IP: i32 = 0;
const IP_OPTIONS: i32 = 4;
const SOL_IPV6: i32 = 41;
const IPV6_2292RTHDR: i32 = 5;
/// Sticky options in ancillary-data form, a routing header among them.
const IPV6_2292PKTOPTIONS: i32 = 6;
const IPV6_RTHDR: i32 = 57;

#[inline(always)]
pub fn setsockopt(ctx: &SockoptContext) -> i32 {
    let so = ctx.sockopt;
    // SAFETY: 32-bit context reads.
    let (level, optname) = unsafe { (read_volatile(addr_of!((*so).level)), read_volatile(addr_of!((*so).optname))) };
    let v6 =
        level == SOL_IPV6 && (optname == IPV6_RTHDR || optname == IPV6_2292RTHDR || optname == IPV6_2292PKTOPTIONS);
    let v4 = level == SOL_IP && optname == IP_OPTIONS;
    // Every other option passes untouched (optval and optlen are left as they are), before any
    // map lookup.
    if !v4 && !v6 {
        return 1;
    }
    let agent = agent::of_current_task();
    if agent.agent_id == NO_AGENT {
        return 1;
    }
    // The option's level and name travel in `protocol` and `port`: there is no destination.
    let family = if v6 { AF_INET6 } else { AF_INET };
    events::refuse_call(&agent, HOOK_SETSOCKOPT, REASON_SOCKET_OPTION, level as u8, family, optname as u16, &[0; 16])
}
