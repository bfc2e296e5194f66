//! Deny events to user space. Best effort by design: when the ring buffer is full the event is
//! counted in EVENTS_LOST and dropped; the counters that matter live in maps.

use governor_common::DenyEvent;

use crate::maps::{EVENTS, EVENTS_LOST};

#[inline(always)]
pub fn send(event: &DenyEvent) {
    if EVENTS.output(event, 0).is_err()
        && let Some(lost) = EVENTS_LOST.get_ptr_mut(0)
    {
        // SAFETY: this CPU's slot of a per-CPU array.
        unsafe { *lost += 1 };
    }
}
