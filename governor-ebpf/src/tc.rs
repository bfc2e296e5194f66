//! The host's own egress bill: bytes leaving the uplinks, by the cgroup of the socket that sent
//! them, for every process on the host (agents or not). One helper call and one lookup; the
//! program never drops or alters a packet.

use aya_ebpf::{bindings::TC_ACT_UNSPEC, helpers::bpf_skb_cgroup_id, programs::TcContext};
use governor_common::HostEgress;

use crate::maps::{HOST_EGRESS, per_cpu_add};

/// What TC sees before the IP header.
const ETHERNET_HEADER: u64 = 14;

/// Key of packets without a socket (forwarded, ARP...) and of cgroups the map has no room for.
const UNATTRIBUTED: u64 = 0;

#[inline(always)]
pub fn count(ctx: &TcContext) -> i32 {
    // SAFETY: helper call on the program's own context.
    let cgroup = unsafe { bpf_skb_cgroup_id(ctx.skb.skb) };
    // TC sees the Ethernet header: each UDP GSO segment carries its own.
    let (len, packets) = crate::skb::wire(&ctx.skb, ETHERNET_HEADER);
    let add = |e: &mut HostEgress| {
        e.bytes += len;
        e.packets += packets;
    };
    if !per_cpu_add(&HOST_EGRESS, &cgroup, add) {
        per_cpu_add(&HOST_EGRESS, &UNATTRIBUTED, add);
    }
    // Let the rest of the egress path decide the packet's fate.
    TC_ACT_UNSPEC
}
