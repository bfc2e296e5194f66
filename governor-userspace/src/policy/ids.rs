//! Stable ids for agents and endpoints: a hash of the name, so counters keyed by id survive
//! restarts and reloads without a persisted id table.

use std::collections::HashMap;

use governor_common::ENDPOINT_UNLISTED;

use super::PolicyError;

/// FNV-1a (32 bit) of `name`, never 0 (0 is reserved for "unlisted"/"none").
pub fn name_id(name: &str) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in name.bytes() {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    if h == ENDPOINT_UNLISTED { 1 } else { h }
}

/// Assigns ids within one kind and refuses collisions.
pub(super) struct IdSpace {
    kind: &'static str,
    taken: HashMap<u32, String>,
}

impl IdSpace {
    pub fn new(kind: &'static str) -> Self {
        Self { kind, taken: HashMap::new() }
    }

    /// The id of `name`. Refuses a name whose id, or whose id in the other policy generation
    /// (`RULE_GENERATION_BIT` flipped), another name already has.
    pub fn assign(&mut self, name: &str) -> Result<u32, PolicyError> {
        let id = name_id(name);
        for probe in [id, id ^ governor_common::RULE_GENERATION_BIT] {
            if let Some(other) = self.taken.get(&probe) {
                return Err(PolicyError::IdCollision { kind: self.kind, a: other.clone(), b: name.to_owned(), id });
            }
        }
        self.taken.insert(id, name.to_owned());
        self.taken.insert(id ^ governor_common::RULE_GENERATION_BIT, name.to_owned());
        Ok(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_stable_and_nonzero() {
        // Pinned values: changing the hash would re-key every counter in a running fleet.
        assert_eq!(name_id("scanner"), 0x9310_da45);
        assert_eq!(name_id(""), 0x811c_9dc5);
        assert_ne!(name_id("llm-api"), 0);
    }

    #[test]
    fn collisions_are_refused() {
        let mut ids = IdSpace::new("agent");
        ids.assign("a").unwrap();
        assert!(matches!(ids.assign("a"), Err(PolicyError::IdCollision { .. })));
    }
}
