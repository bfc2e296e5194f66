//! Rate and concurrency limits, per agent slot and per (agent, endpoint), with no locks: the
//! rate limit is GCRA (a token bucket kept as one "theoretical arrival time", advanced by
//! compare-and-swap), concurrency a shared counter taken with fetch-add and given back at
//! socket release.

use core::intrinsics::{AtomicOrdering, atomic_cxchg, atomic_xadd};

use aya_ebpf::helpers::bpf_ktime_get_ns;
use governor_common::{CONTROL_ENDPOINT_LIMITS, EndpointLimits, EndpointUse, StatsKey};

use crate::maps::{CONTROL, ENDPOINT_LIMITS, ENDPOINT_USE, SPEND};

/// Tries before a contended rate check gives up (and refuses, erring on the side of the limit).
const CAS_TRIES: u32 = 4;

/// GCRA on the arrival time at `tat`: takes a token, or false when the schedule is more than
/// `tolerance` ahead of now.
#[inline(always)]
fn gcra(tat: *mut u64, interval: u64, tolerance: u64) -> bool {
    // SAFETY: helper without arguments.
    let now = unsafe { bpf_ktime_get_ns() };
    let mut tries = 0;
    while tries < CAS_TRIES {
        // SAFETY: `tat` points into a map value; atomics on map values are allowed.
        let t = unsafe { core::ptr::read_volatile(tat) };
        let base = if t > now { t } else { now };
        if base - now > tolerance {
            return false;
        }
        // SAFETY: as above.
        let (_, swapped) = unsafe {
            atomic_cxchg::<u64, { AtomicOrdering::SeqCst }, { AtomicOrdering::SeqCst }>(tat, t, base + interval)
        };
        if swapped {
            return true;
        }
        tries += 1;
    }
    false
}

/// Takes a place on the counter at `live`: false (nothing taken) when `max` are in use and
/// `enforce`. Counted even without a limit (`max` 0).
#[inline(always)]
fn take(live: *mut u64, max: u64, enforce: bool) -> bool {
    // SAFETY: `live` points into a map value; atomics on map values are allowed.
    unsafe {
        let old = atomic_xadd::<u64, u64, { AtomicOrdering::SeqCst }>(live, 1);
        if max == 0 || old < max || !enforce {
            return true;
        }
        atomic_xadd::<u64, u64, { AtomicOrdering::SeqCst }>(live, 1u64.wrapping_neg());
    }
    false
}

#[inline(always)]
fn give(live: *mut u64) {
    // SAFETY: as in `take`.
    unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::SeqCst }>(live, 1u64.wrapping_neg()) };
}

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
    match SPEND.get_ptr_mut(slot) {
        // SAFETY: a field of the array value the lookup returned.
        Some(spend) => gcra(unsafe { &raw mut (*spend).tat_ns }, interval, tolerance),
        None => true,
    }
}

/// Takes one of the slot's concurrent places. False (nothing taken) when all are in use and
/// `enforce`; observe-mode agents are counted, never refused.
#[inline(always)]
pub fn acquire(slot: u32, enforce: bool) -> bool {
    let Some(control) = CONTROL.get(slot) else {
        return true;
    };
    let max = control.max_concurrent;
    match SPEND.get_ptr_mut(slot) {
        // SAFETY: as in `rate_ok`.
        Some(spend) => take(unsafe { &raw mut (*spend).live }, max, enforce),
        None => true,
    }
}

/// Gives a concurrent place back.
#[inline(always)]
pub fn release(slot: u32) {
    if let Some(spend) = SPEND.get_ptr_mut(slot) {
        // SAFETY: as in `rate_ok`.
        give(unsafe { &raw mut (*spend).live });
    }
}

pub const NO_ENDPOINT_LIMITS: EndpointLimits =
    EndpointLimits { rate_interval_ns: 0, rate_tolerance_ns: 0, max_concurrent: 0 };

/// The (agent, endpoint)'s limits, all 0 when it has none. The hash is only consulted for
/// agents the daemon marked as having endpoint limits (`CONTROL_ENDPOINT_LIMITS` on the slot).
#[inline(always)]
pub fn of_endpoint(slot: u32, key: &StatsKey) -> EndpointLimits {
    if !CONTROL.get(slot).is_some_and(|c| c.flags & CONTROL_ENDPOINT_LIMITS != 0) {
        return NO_ENDPOINT_LIMITS;
    }
    // SAFETY: copied out at once.
    match unsafe { ENDPOINT_LIMITS.get(key) } {
        Some(l) => *l,
        None => NO_ENDPOINT_LIMITS,
    }
}

/// The (agent, endpoint)'s state, created zeroed if the daemon has not yet; null when the map
/// is full (the caller refuses: limits fail closed).
#[inline(always)]
fn use_of(key: &StatsKey) -> *mut EndpointUse {
    if let Some(u) = ENDPOINT_USE.get_ptr_mut(key) {
        return u;
    }
    // BPF_NOEXIST: if another CPU created it meanwhile, use theirs.
    let _ = ENDPOINT_USE.insert(key, EndpointUse { tat_ns: 0, live: 0 }, 1);
    ENDPOINT_USE.get_ptr_mut(key).unwrap_or(core::ptr::null_mut())
}

#[inline(always)]
pub fn endpoint_rate_ok(key: &StatsKey, l: &EndpointLimits) -> bool {
    let u = use_of(key);
    if u.is_null() {
        return false;
    }
    // SAFETY: a field of the map value `use_of` returned.
    gcra(unsafe { &raw mut (*u).tat_ns }, l.rate_interval_ns, l.rate_tolerance_ns)
}

/// `endpoint_acquire`: refused, a place taken, or let through without one (observe mode with
/// a full map: nothing to give back later).
pub const REFUSED: u8 = 0;
pub const TAKEN: u8 = 1;
pub const NOT_TAKEN: u8 = 2;

#[inline(always)]
pub fn endpoint_acquire(key: &StatsKey, max: u64, enforce: bool) -> u8 {
    let u = use_of(key);
    if u.is_null() {
        return if enforce { REFUSED } else { NOT_TAKEN };
    }
    // SAFETY: as above.
    if take(unsafe { &raw mut (*u).live }, max, enforce) { TAKEN } else { REFUSED }
}

#[inline(always)]
pub fn endpoint_release(key: &StatsKey) {
    if let Some(u) = ENDPOINT_USE.get_ptr_mut(key) {
        // SAFETY: as above.
        give(unsafe { &raw mut (*u).live });
    }
}
