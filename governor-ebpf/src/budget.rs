//! Charging money. A charge is an atomic add on the slot's shared `SPEND` counter; if the new
//! total would pass the ceiling the charge is refunded at once and the slot marked exhausted.
//! Counted spend therefore never exceeds a ceiling, however many CPUs charge at the same time:
//! every charge that stays was checked against a total that already held all earlier ones.
//!
//! Checkpoints are gates of the same kind, kept beside the budget in the slot's `CONTROL` and
//! `SPEND` entries: the connection that reaches the milestone is the last one let through, a
//! charge may not pass the spend milestone, and nothing passes after the time milestone. A gate
//! that refuses marks the slot as waiting (its checkpoint generation), until the daemon moves
//! the gates on an operator's acknowledgement.
//!
//! The fetch-add must be `SeqCst` and the object built with `-C target-cpu=v3`: with `Relaxed`
//! the backend emits a plain `lock +=` and reads the register as if it held the old value
//! (silently wrong; see ARCHITECTURE.md, "eBPF pitfalls"). `cargo xtask build-ebpf` checks the
//! object.

use core::intrinsics::{AtomicOrdering, atomic_xadd};

use aya_ebpf::helpers::bpf_ktime_get_boot_ns;
use governor_common::{
    CONTROL_CHECKPOINT, CONTROL_ENFORCE_CEILING, CONTROL_PAUSED, Control, HOST_SLOT, REASON_BUDGET, REASON_CHECKPOINT,
    REASON_PAUSED, Spend,
};

use crate::maps::{CONTROL, SPEND};

/// Why `slot` may not send now: REASON_PAUSED, REASON_BUDGET (its ceiling was reached in the
/// current generation), REASON_CHECKPOINT (it waits at a checkpoint, or its time milestone has
/// come), or 0.
#[inline(always)]
fn blocked(slot: u32) -> u8 {
    let Some(control) = CONTROL.get(slot) else {
        return 0;
    };
    let (generation, flags) = (control.generation, control.flags);
    if flags & CONTROL_PAUSED != 0 {
        return REASON_PAUSED;
    }
    let Some(spend) = SPEND.get_ptr_mut(slot) else {
        return 0;
    };
    // SAFETY: `spend` points into an array map value, valid for this program run.
    let spend = unsafe { &mut *spend };
    if flags & CONTROL_ENFORCE_CEILING != 0 && spend.exhausted_generation == generation {
        return REASON_BUDGET;
    }
    if flags & CONTROL_CHECKPOINT != 0 {
        let waiting = control.checkpoint_generation;
        if spend.checkpoint_generation == waiting {
            return REASON_CHECKPOINT;
        }
        let deadline = control.checkpoint_deadline_ns;
        // SAFETY: helper without arguments.
        if deadline != 0 && unsafe { bpf_ktime_get_boot_ns() } >= deadline {
            spend.checkpoint_generation = waiting;
            return REASON_CHECKPOINT;
        }
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

/// Charges `cost` to `slot`. Returns 0, or the reason it charged nothing: REASON_BUDGET (the
/// charge would pass the ceiling; the slot is marked exhausted) or REASON_CHECKPOINT (it would
/// pass the spend milestone; the slot is marked waiting).
#[inline(always)]
fn charge(slot: u32, cost: u64) -> u8 {
    let Some(control) = CONTROL.get(slot) else {
        return 0;
    };
    let (ceiling, generation, flags) = (control.ceiling, control.generation, control.flags);
    let milestone = if flags & CONTROL_CHECKPOINT != 0 { control.checkpoint_spend } else { 0 };
    let Some(spend) = SPEND.get_ptr_mut(slot) else {
        return 0;
    };
    // SAFETY: `spend` points into an array map value, valid for this program run; the kernel
    // allows atomic adds on map values.
    unsafe {
        let old = atomic_xadd::<u64, u64, { AtomicOrdering::SeqCst }>(&raw mut (*spend).spent, cost);
        let new = old.saturating_add(cost);
        let reason = if flags & CONTROL_ENFORCE_CEILING != 0 && new > ceiling {
            (*spend).exhausted_generation = generation;
            REASON_BUDGET
        } else if milestone != 0 && new > milestone {
            (*spend).checkpoint_generation = control.checkpoint_generation;
            REASON_CHECKPOINT
        } else {
            return 0;
        };
        atomic_xadd::<u64, u64, { AtomicOrdering::SeqCst }>(&raw mut (*spend).spent, cost.wrapping_neg());
        reason
    }
}

/// Charges `cost` to the agent in `slot` and to the host. All or nothing: if the host refuses,
/// the agent's charge is refunded. Returns 0 or the reason nothing was charged.
#[inline(always)]
pub fn charge_agent(slot: u32, cost: u64) -> u8 {
    if cost == 0 {
        return 0;
    }
    let reason = charge(slot, cost);
    if reason != 0 {
        return reason;
    }
    let reason = charge(HOST_SLOT, cost);
    if reason == 0 {
        return 0;
    }
    if let Some(spend) = SPEND.get_ptr_mut(slot) {
        // SAFETY: as in `charge`.
        unsafe {
            atomic_xadd::<u64, u64, { AtomicOrdering::SeqCst }>(&raw mut (*spend).spent, cost.wrapping_neg());
        }
    }
    reason
}

/// Counts a new connection of the agent in `slot` toward its connections checkpoint. False,
/// counting nothing and marking the slot waiting, when the milestone's connection has already
/// gone through: the one that reaches it is the last one allowed. Not inlined: the connect
/// programs' combined stack must stay under the verifier's 512 bytes.
#[inline(never)]
pub fn count_connection(slot: u32) -> bool {
    let Some(control) = CONTROL.get(slot) else {
        return true;
    };
    if control.flags & CONTROL_CHECKPOINT == 0 {
        return true;
    }
    let milestone = control.checkpoint_connections;
    let Some(spend) = SPEND.get_ptr_mut(slot) else {
        return true;
    };
    // SAFETY: as in `charge`.
    unsafe {
        let old = atomic_xadd::<u64, u64, { AtomicOrdering::SeqCst }>(&raw mut (*spend).connections, 1);
        if milestone == 0 || old < milestone {
            return true;
        }
        atomic_xadd::<u64, u64, { AtomicOrdering::SeqCst }>(&raw mut (*spend).connections, u64::MAX);
        (*spend).checkpoint_generation = control.checkpoint_generation;
    }
    false
}

/// Takes back a connection `count_connection` counted, when a later check refused it.
#[inline(never)]
pub fn uncount_connection(slot: u32) {
    let Some(control) = CONTROL.get(slot) else {
        return;
    };
    if control.flags & CONTROL_CHECKPOINT == 0 {
        return;
    }
    if let Some(spend) = SPEND.get_ptr_mut(slot) {
        // SAFETY: as in `charge`.
        unsafe {
            atomic_xadd::<u64, u64, { AtomicOrdering::SeqCst }>(&raw mut (*spend).connections, u64::MAX);
        }
    }
}

// Layout anchors for the fields above (the shared crate asserts sizes and offsets).
const _: () = assert!(size_of::<Control>() == 80 && size_of::<Spend>() == 48);
