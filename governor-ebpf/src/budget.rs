//! Charging money. A charge is an atomic add on the slot's shared `SPEND` counter; if the new
//! total would pass the ceiling the charge is refunded at once and the slot marked exhausted.
//! Counted spend therefore never exceeds a ceiling, however many CPUs charge at the same time:
//! every charge that stays was checked against a total that already held all earlier ones.
//!
//! The fetch-add must be `SeqCst` and the object built with `-C target-cpu=v3`: with `Relaxed`
//! the backend emits a plain `lock +=` and reads the register as if it held the old value
//! (silently wrong; see shared/AYA-NOTES.md). `cargo xtask build-ebpf` checks the object.

use core::intrinsics::{AtomicOrdering, atomic_xadd};

use governor_common::{CONTROL_ENFORCE_CEILING, CONTROL_PAUSED, HOST_SLOT, REASON_BUDGET, REASON_PAUSED};

use crate::maps::{CONTROL, SPEND};

/// Why `slot` may not send now: REASON_PAUSED, REASON_BUDGET (its ceiling was reached in the
/// current generation), or 0.
#[inline(always)]
fn blocked(slot: u32) -> u8 {
    let Some(control) = CONTROL.get(slot) else {
        return 0;
    };
    let (generation, flags) = (control.generation, control.flags);
    if flags & CONTROL_PAUSED != 0 {
        return REASON_PAUSED;
    }
    let Some(spend) = SPEND.get(slot) else {
        return 0;
    };
    if flags & CONTROL_ENFORCE_CEILING != 0 && spend.exhausted_generation == generation {
        return REASON_BUDGET;
    }
    0
}

/// Why the agent in `slot` may not send now (its own state first, then the host's), or 0.
#[inline(always)]
pub fn agent_blocked(slot: u32) -> u8 {
    match blocked(slot) {
        0 => blocked(HOST_SLOT),
        reason => reason,
    }
}

/// Charges `cost` to `slot`. Returns false, charging nothing and marking the slot exhausted,
/// when the charge would pass the slot's ceiling.
#[inline(always)]
fn charge(slot: u32, cost: u64) -> bool {
    let Some(control) = CONTROL.get(slot) else {
        return true;
    };
    let (ceiling, generation, flags) = (control.ceiling, control.generation, control.flags);
    let Some(spend) = SPEND.get_ptr_mut(slot) else {
        return true;
    };
    // SAFETY: `spend` points into an array map value, valid for this program run; the kernel
    // allows atomic adds on map values.
    unsafe {
        let old = atomic_xadd::<u64, u64, { AtomicOrdering::SeqCst }>(&raw mut (*spend).spent, cost);
        if flags & CONTROL_ENFORCE_CEILING == 0 || old.saturating_add(cost) <= ceiling {
            return true;
        }
        atomic_xadd::<u64, u64, { AtomicOrdering::SeqCst }>(&raw mut (*spend).spent, cost.wrapping_neg());
        (*spend).exhausted_generation = generation;
    }
    false
}

/// Charges `cost` to the agent in `slot` and to the host. All or nothing: if the host refuses,
/// the agent's charge is refunded.
#[inline(always)]
pub fn charge_agent(slot: u32, cost: u64) -> bool {
    if cost == 0 {
        return true;
    }
    if !charge(slot, cost) {
        return false;
    }
    if charge(HOST_SLOT, cost) {
        return true;
    }
    if let Some(spend) = SPEND.get_ptr_mut(slot) {
        // SAFETY: as in `charge`.
        unsafe {
            atomic_xadd::<u64, u64, { AtomicOrdering::SeqCst }>(&raw mut (*spend).spent, cost.wrapping_neg());
        }
    }
    false
}
