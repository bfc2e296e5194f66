//! DNS from agents goes only to the configured resolvers, and through the daemon's proxy.
//!
//! A connect or sendmsg to port 53 of a configured resolver is rewritten to the proxy at
//! 127.(PROXY_OCTET + resolver).(slot >> 8).(slot & 255):proxy_port, so the proxy knows from the
//! destination alone which agent asked and which resolver it meant. The proxy admits the
//! addresses of allowed names into the allowlist before it answers. recvmsg and getpeername
//! put the resolver's address back, so the agent's resolver library sees the server it asked.
//! Port 53 anywhere else is refused with REASON_DNS_RESOLVER.

use core::ptr::{addr_of_mut, write_volatile};

use aya_ebpf::{bindings::bpf_sock_addr, programs::SockAddrContext};
use governor_common::{AgentInfo, DNS_PORT, MAX_RESOLVERS, PROXY_OCTET};

use crate::{
    maps::{RESOLVER_SLOTS, RESOLVERS},
    sock_addr::Dest,
};

/// Resolver index and proxy port for a DNS destination; `index` is NOT_A_RESOLVER when the
/// destination is not a configured resolver.
#[derive(Clone, Copy)]
pub struct Route {
    pub index: u32,
    pub proxy_port: u32,
}

pub const NOT_A_RESOLVER: u32 = u32::MAX;

#[inline(always)]
pub fn route(dest: Dest) -> Route {
    let key = match dest {
        Dest::V4(a) => [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, a[0], a[1], a[2], a[3]],
        Dest::V6(a) => a,
    };
    // SAFETY: copied out at once.
    match unsafe { RESOLVERS.get(&key) } {
        Some(r) if r.index < MAX_RESOLVERS => Route { index: r.index, proxy_port: r.proxy_port },
        _ => Route { index: NOT_A_RESOLVER, proxy_port: 0 },
    }
}

/// The proxy address standing for (resolver, agent), as the octets of an IPv4 address.
#[inline(always)]
fn proxy_addr(index: u32, agent: &AgentInfo) -> [u8; 4] {
    [127, PROXY_OCTET + index as u8, (agent.slot >> 8) as u8, agent.slot as u8]
}

/// Sends this connect or sendmsg to the proxy instead of the resolver. A v6 socket is sent to
/// the IPv4-mapped proxy address (the kernel handles it as IPv4 unless the socket is V6ONLY).
#[inline(always)]
pub fn redirect(ctx: &SockAddrContext, route: Route, agent: &AgentInfo, v6: bool) {
    if route.proxy_port == 0 {
        return;
    }
    let a = proxy_addr(route.index, agent);
    let sa = ctx.sock_addr;
    // SAFETY: 32-bit writes of the writable context fields, one at a time.
    unsafe {
        if v6 {
            write_volatile(addr_of_mut!((*sa).user_ip6[0]), 0);
            write_volatile(addr_of_mut!((*sa).user_ip6[1]), 0);
            write_volatile(addr_of_mut!((*sa).user_ip6[2]), u32::from_ne_bytes([0, 0, 0xff, 0xff]));
            write_volatile(addr_of_mut!((*sa).user_ip6[3]), u32::from_ne_bytes(a));
        } else {
            write_volatile(addr_of_mut!((*sa).user_ip4), u32::from_ne_bytes(a));
        }
        write_volatile(addr_of_mut!((*sa).user_port), u32::from((route.proxy_port as u16).to_be()));
    }
}

/// recvmsg/getpeername: if the peer is the proxy standing for a resolver, show the resolver.
/// Always lets the call go on (these hooks cannot refuse).
#[inline(always)]
pub fn restore(ctx: &SockAddrContext, v6: bool) -> i32 {
    let sa = ctx.sock_addr;
    // SAFETY: 32-bit context reads.
    let (port, ip) = unsafe {
        let port = u16::from_be(core::ptr::read_volatile(core::ptr::addr_of!((*sa).user_port)) as u16);
        let ip = if v6 {
            match crate::sock_addr::read_ip6(sa) {
                Dest::V4(a) => a,
                Dest::V6(_) => return 1,
            }
        } else {
            core::ptr::read_volatile(core::ptr::addr_of!((*sa).user_ip4)).to_ne_bytes()
        };
        (port, ip)
    };
    if ip[0] != 127 || ip[1] < PROXY_OCTET || u32::from(ip[1] - PROXY_OCTET) >= MAX_RESOLVERS {
        return 1;
    }
    let Some(slot) = RESOLVER_SLOTS.get(u32::from(ip[1] - PROXY_OCTET)) else {
        return 1;
    };
    if slot.proxy_port == 0 || slot.proxy_port != u32::from(port) {
        return 1;
    }
    let addr = slot.addr;
    // SAFETY: 32-bit writes of the writable context fields.
    unsafe { write_resolver(sa, addr, v6) };
    1
}

#[inline(always)]
unsafe fn write_resolver(sa: *mut bpf_sock_addr, addr: [u8; 16], v6: bool) {
    let word = |i: usize| u32::from_ne_bytes([addr[i], addr[i + 1], addr[i + 2], addr[i + 3]]);
    // SAFETY: the caller's context pointer; 32-bit writes.
    unsafe {
        if v6 {
            write_volatile(addr_of_mut!((*sa).user_ip6[0]), word(0));
            write_volatile(addr_of_mut!((*sa).user_ip6[1]), word(4));
            write_volatile(addr_of_mut!((*sa).user_ip6[2]), word(8));
            write_volatile(addr_of_mut!((*sa).user_ip6[3]), word(12));
        } else {
            // A v4 socket only ever talks to IPv4 resolvers (mapped in the slot).
            write_volatile(addr_of_mut!((*sa).user_ip4), word(12));
        }
        write_volatile(addr_of_mut!((*sa).user_port), u32::from(DNS_PORT.to_be()));
    }
}
