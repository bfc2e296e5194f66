//! governor's kernel programs. The daemon loads them from the object this crate builds
//! (`cargo xtask build-ebpf`) and attaches them to the agents' root cgroup.
#![no_std]
#![no_main]
#![feature(core_intrinsics)]
#![expect(internal_features, reason = "atomic_xadd: the only fetch-add that works on bpfel (see budget.rs)")]

mod agent;
mod budget;
mod dns;
mod events;
mod limits;
mod maps;
mod skb;
mod sock;
mod sock_addr;
mod sockopt;
mod tc;

use aya_ebpf::{
    macros::{cgroup_skb, cgroup_sock, cgroup_sock_addr, cgroup_sockopt, classifier},
    programs::{SkBuffContext, SockAddrContext, SockContext, SockoptContext, TcContext},
};
use governor_common::{HOOK_CONNECT, HOOK_SENDMSG};

/// Bench only (`--features floor`, built by `cargo xtask bench`): every program lets everything
/// through at once, so the bench can measure what attaching the hooks costs by itself. Never
/// ship an object built with it: it enforces nothing.
const FLOOR: bool = cfg!(feature = "floor");

/// `pass` in a floor build, else what `program` decides.
#[inline(always)]
fn unless_floor(pass: i32, program: impl FnOnce() -> i32) -> i32 {
    if FLOOR { pass } else { program() }
}

#[cgroup_sock_addr(connect4)]
pub fn governor_connect4(ctx: SockAddrContext) -> i32 {
    unless_floor(1, || sock_addr::verdict(&ctx, HOOK_CONNECT, false))
}

#[cgroup_sock_addr(connect6)]
pub fn governor_connect6(ctx: SockAddrContext) -> i32 {
    unless_floor(1, || sock_addr::verdict(&ctx, HOOK_CONNECT, true))
}

#[cgroup_sock_addr(sendmsg4)]
pub fn governor_sendmsg4(ctx: SockAddrContext) -> i32 {
    unless_floor(1, || sock_addr::verdict(&ctx, HOOK_SENDMSG, false))
}

#[cgroup_sock_addr(sendmsg6)]
pub fn governor_sendmsg6(ctx: SockAddrContext) -> i32 {
    unless_floor(1, || sock_addr::verdict(&ctx, HOOK_SENDMSG, true))
}

#[cgroup_sock_addr(bind4)]
pub fn governor_bind4(ctx: SockAddrContext) -> i32 {
    unless_floor(1, || sock_addr::bind(&ctx, false))
}

#[cgroup_sock_addr(bind6)]
pub fn governor_bind6(ctx: SockAddrContext) -> i32 {
    unless_floor(1, || sock_addr::bind(&ctx, true))
}

#[cgroup_sock_addr(recvmsg4)]
pub fn governor_recvmsg4(ctx: SockAddrContext) -> i32 {
    unless_floor(1, || dns::restore(&ctx, false))
}

#[cgroup_sock_addr(recvmsg6)]
pub fn governor_recvmsg6(ctx: SockAddrContext) -> i32 {
    unless_floor(1, || dns::restore(&ctx, true))
}

#[cgroup_sock_addr(getpeername4)]
pub fn governor_getpeername4(ctx: SockAddrContext) -> i32 {
    unless_floor(1, || dns::restore(&ctx, false))
}

#[cgroup_sock_addr(getpeername6)]
pub fn governor_getpeername6(ctx: SockAddrContext) -> i32 {
    unless_floor(1, || dns::restore(&ctx, true))
}

#[cgroup_skb(egress)]
pub fn governor_skb_egress(ctx: SkBuffContext) -> i32 {
    unless_floor(1, || skb::count(&ctx, skb::Direction::Egress))
}

#[cgroup_skb(ingress)]
pub fn governor_skb_ingress(ctx: SkBuffContext) -> i32 {
    unless_floor(1, || skb::count(&ctx, skb::Direction::Ingress))
}

#[cgroup_sock(sock_create)]
pub fn governor_sock_create(ctx: SockContext) -> i32 {
    unless_floor(1, || sock::create(&ctx))
}

#[cgroup_sock(sock_release)]
pub fn governor_sock_release(ctx: SockContext) -> i32 {
    unless_floor(1, || sock::release(&ctx))
}

#[cgroup_sockopt(setsockopt)]
pub fn governor_setsockopt(ctx: SockoptContext) -> i32 {
    unless_floor(1, || sockopt::setsockopt(&ctx))
}

#[classifier]
pub fn governor_tc_egress(ctx: TcContext) -> i32 {
    unless_floor(aya_ebpf::bindings::TC_ACT_UNSPEC, || tc::count(&ctx))
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 4] = *b"GPL\0";
