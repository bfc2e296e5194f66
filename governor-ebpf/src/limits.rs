//! Rate and concurrency limits, per agent slot, with no locks: the rate limit is GCRA (a token
//! bucket kept as one "theoretical arrival time", advanced by compare-and-swap), concurrency a
//! shared counter taken with fetch-add and given back at socket release.

use core::intrinsics::{AtomicOrdering, atomic_cxchg, atomic_xadd};

use aya_ebpf::helpers::bpf_ktime_get_ns;

use crate::maps::{CONTROL, SPEND};

/// Tries before a contended rate check gives up (and refuses, erring on the side of the limit).
const CAS_TRIES: u32 = 4;

/// Whether the slot may open one more connection now under its rate limit; takes the token.
#[inline(always)]
pub fn rate_ok(slot: u32) -> bool {
    let Some(control) = CONTROL.get(slot) else {
        return true;
    };
    let (interval, tolerance) = (control.rate_interval_ns, control.rate_tolerance_ns);
    if interval == 0 {
        return true;
    }
    let Some(spend) = SPEND.get_ptr_mut(slot) else {
        return true;
    };
    // SAFETY: helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    let mut tries = 0;
    while tries < CAS_TRIES {
        // SAFETY: `spend` points into an array map value; atomics on map values are allowed.
        let tat = unsafe { core::ptr::read_volatile(&raw const (*spend).tat_ns) };
        let base = if tat > now { tat } else { now };
        if base - now > tolerance {
            return false;
        }
        // SAFETY: as above.
        let (_, swapped) = unsafe {
            atomic_cxchg::<u64, { AtomicOrdering::SeqCst }, { AtomicOrdering::SeqCst }>(
                &raw mut (*spend).tat_ns,
                tat,
                base + interval,
            )
        };
        if swapped {
            return true;
        }
        tries += 1;
    }
    false
}

/// Takes one of the slot's concurrent places. False (nothing taken) when all are in use and
/// `enforce`; observe-mode agents are counted, never refused.
#[inline(always)]
pub fn acquire(slot: u32, enforce: bool) -> bool {
    let Some(control) = CONTROL.get(slot) else {
        return true;
    };
    let max = control.max_concurrent;
    let Some(spend) = SPEND.get_ptr_mut(slot) else {
        return true;
    };
    // SAFETY: as in `rate_ok`. Counted even without a limit, so status shows live connections.
    unsafe {
        let old = atomic_xadd::<u64, u64, { AtomicOrdering::SeqCst }>(&raw mut (*spend).live, 1);
        if max == 0 || old < max || !enforce {
            return true;
        }
        atomic_xadd::<u64, u64, { AtomicOrdering::SeqCst }>(&raw mut (*spend).live, 1u64.wrapping_neg());
    }
    false
}

/// Gives a concurrent place back.
#[inline(always)]
pub fn release(slot: u32) {
    if let Some(spend) = SPEND.get_ptr_mut(slot) {
        // SAFETY: as in `rate_ok`.
        unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::SeqCst }>(&raw mut (*spend).live, 1u64.wrapping_neg()) };
    }
}
