//! Decoding deny events from the ring buffer. A record is never trusted: wrong sizes and
//! unknown codes are rejected and counted by the caller.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use governor_common::{
    AF_INET, AF_INET6, DenyEvent, HOOK_BIND, HOOK_CONNECT, HOOK_EGRESS, HOOK_INGRESS, HOOK_SENDMSG, HOOK_SETSOCKOPT,
    HOOK_SOCK_CREATE, REASON_BUDGET, REASON_CHECKPOINT, REASON_CONCURRENCY, REASON_DNS_RESOLVER, REASON_INBOUND,
    REASON_NOT_ALLOWLISTED, REASON_PAUSED, REASON_RATE_LIMIT, REASON_SECOND_ENDPOINT, REASON_SOCKET_OPTION,
    REASON_SOCKET_STORAGE, REASON_SOCKET_TYPE, VERDICT_DENIED, VERDICT_WOULD_DENY,
};
use serde::{Deserialize, Serialize};

use crate::policy::protocol_name;

/// A decoded deny event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Denial {
    pub timestamp_ns: u64,
    pub cgroup_id: u64,
    pub agent_id: u32,
    pub pid: u32,
    pub reason: String,
    /// "denied" or "would_deny" (observe mode).
    pub verdict: String,
    pub hook: String,
    pub protocol: String,
    /// `addr:port`; absent for packets refused at the ceiling (egress/ingress hooks).
    pub destination: Option<String>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("ring buffer record of {0} bytes, expected {size}", size = size_of::<DenyEvent>())]
    Size(usize),
    #[error("unknown {field} code {value}")]
    Code { field: &'static str, value: u8 },
}

pub fn reason_name(code: u8) -> Option<&'static str> {
    match code {
        REASON_NOT_ALLOWLISTED => Some("not-allowlisted"),
        REASON_BUDGET => Some("budget"),
        REASON_PAUSED => Some("paused"),
        REASON_RATE_LIMIT => Some("rate-limit"),
        REASON_CONCURRENCY => Some("concurrency"),
        REASON_SOCKET_TYPE => Some("socket-type"),
        REASON_DNS_RESOLVER => Some("dns-resolver"),
        REASON_CHECKPOINT => Some("checkpoint"),
        REASON_SOCKET_OPTION => Some("socket-option"),
        REASON_INBOUND => Some("inbound"),
        REASON_SOCKET_STORAGE => Some("socket-storage"),
        REASON_SECOND_ENDPOINT => Some("second-endpoint"),
        _ => None,
    }
}

pub fn decode_event(bytes: &[u8]) -> Result<Denial, DecodeError> {
    if bytes.len() != size_of::<DenyEvent>() {
        return Err(DecodeError::Size(bytes.len()));
    }
    // SAFETY: the length matches and DenyEvent is plain integers; read_unaligned copies.
    let e: DenyEvent = unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) };
    let code = |field, value| DecodeError::Code { field, value };
    let reason = reason_name(e.reason).ok_or(code("reason", e.reason))?;
    let verdict = match e.verdict {
        VERDICT_DENIED => "denied",
        VERDICT_WOULD_DENY => "would_deny",
        v => return Err(code("verdict", v)),
    };
    let hook = match e.hook {
        HOOK_CONNECT => "connect",
        HOOK_SENDMSG => "sendmsg",
        HOOK_EGRESS => "egress",
        HOOK_INGRESS => "ingress",
        HOOK_SOCK_CREATE => "sock_create",
        HOOK_SETSOCKOPT => "setsockopt",
        HOOK_BIND => "bind",
        v => return Err(code("hook", v)),
    };
    let ip: Option<IpAddr> = match (e.family, e.hook) {
        (AF_INET, HOOK_CONNECT | HOOK_SENDMSG | HOOK_BIND) => {
            Some(Ipv4Addr::new(e.addr[0], e.addr[1], e.addr[2], e.addr[3]).into())
        }
        (AF_INET6, HOOK_CONNECT | HOOK_SENDMSG | HOOK_BIND) => Some(Ipv6Addr::from(e.addr).into()),
        (0, HOOK_EGRESS | HOOK_INGRESS) => None,
        // The socket's family, type (in `port`) and protocol: there is no destination yet.
        (_, HOOK_SOCK_CREATE | HOOK_SETSOCKOPT) => None,
        (v, _) => return Err(code("family", v)),
    };
    let destination = match e.hook {
        HOOK_SOCK_CREATE => Some(format!("socket(family {}, type {}, protocol {})", e.family, e.port, e.protocol)),
        // The option's level travels in `protocol` and its name in `port`.
        HOOK_SETSOCKOPT => Some(format!("setsockopt(level {}, option {})", e.protocol, e.port)),
        _ => ip.map(|ip| match ip {
            IpAddr::V4(a) => format!("{a}:{}", e.port),
            IpAddr::V6(a) => format!("[{a}]:{}", e.port),
        }),
    };
    Ok(Denial {
        timestamp_ns: e.timestamp_ns,
        cgroup_id: e.cgroup_id,
        agent_id: e.agent_id,
        pid: e.pid,
        reason: reason.to_owned(),
        verdict: verdict.to_owned(),
        hook: hook.to_owned(),
        protocol: protocol_name(e.protocol).to_owned(),
        destination,
    })
}

#[cfg(test)]
mod tests {
    use governor_common::IPPROTO_UDP;

    use super::*;

    fn bytes(e: &DenyEvent) -> Vec<u8> {
        // SAFETY: DenyEvent is plain integers with no padding (asserted in governor-common).
        unsafe { std::slice::from_raw_parts((e as *const DenyEvent).cast::<u8>(), size_of::<DenyEvent>()) }.to_vec()
    }

    fn event() -> DenyEvent {
        let mut addr = [0; 16];
        addr[..4].copy_from_slice(&[203, 0, 113, 7]);
        DenyEvent {
            timestamp_ns: 5,
            cgroup_id: 9,
            agent_id: 3,
            pid: 42,
            reason: REASON_NOT_ALLOWLISTED,
            verdict: VERDICT_DENIED,
            protocol: IPPROTO_UDP,
            family: AF_INET,
            port: 443,
            hook: HOOK_SENDMSG,
            _pad: 0,
            addr,
        }
    }

    #[test]
    fn decodes_a_v4_denial() {
        let d = decode_event(&bytes(&event())).unwrap();
        assert_eq!(d.destination.as_deref(), Some("203.0.113.7:443"));
        assert_eq!(
            (d.reason.as_str(), d.verdict.as_str(), d.hook.as_str(), d.protocol.as_str()),
            ("not-allowlisted", "denied", "sendmsg", "udp")
        );
    }

    #[test]
    fn decodes_v6_with_brackets() {
        let mut e = event();
        e.family = AF_INET6;
        e.addr = Ipv6Addr::LOCALHOST.octets();
        assert_eq!(decode_event(&bytes(&e)).unwrap().destination.as_deref(), Some("[::1]:443"));
    }

    #[test]
    fn decodes_a_packet_refused_at_the_ceiling() {
        let e = DenyEvent { reason: REASON_BUDGET, hook: HOOK_EGRESS, family: 0, addr: [0; 16], port: 0, ..event() };
        let d = decode_event(&bytes(&e)).unwrap();
        assert_eq!((d.reason.as_str(), d.hook.as_str(), d.destination), ("budget", "egress", None));
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: crate::config::fuzz_cases(), ..Default::default() })]

        /// Whatever bytes the ring buffer hands over, decoding never panics, and a record is
        /// accepted only when every code in it is known.
        #[test]
        fn arbitrary_records_never_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..96)) {
            if let Ok(d) = decode_event(&bytes) {
                proptest::prop_assert_eq!(bytes.len(), size_of::<DenyEvent>());
                proptest::prop_assert!(reason_name(bytes[24]).is_some());
                proptest::prop_assert!(!d.verdict.is_empty() && !d.hook.is_empty());
            }
        }
    }

    #[test]
    fn rejects_truncated_and_unknown_records() {
        let b = bytes(&event());
        assert_eq!(decode_event(&b[..47]), Err(DecodeError::Size(47)));
        let mut e = event();
        e.reason = 200;
        assert_eq!(decode_event(&bytes(&e)), Err(DecodeError::Code { field: "reason", value: 200 }));
        let mut e = event();
        e.family = 7;
        assert!(decode_event(&bytes(&e)).is_err());
        // A connect event must carry an address family.
        e.family = 0;
        assert!(decode_event(&bytes(&e)).is_err());
    }
}
