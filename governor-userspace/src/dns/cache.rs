//! Which addresses DNS answers admitted, for which agent and name, and until when. Bounded:
//! `max_addresses` per (agent, name), `max_names` (agent, name) pairs in all, each evicting the
//! least recently seen. The kernel keeps one allowlist entry per (agent, endpoint, address)
//! however many names led to it, so entries are reference-counted here and leave the kernel
//! only when no name holds them any more.
//!
//! Times are CLOCK_BOOTTIME seconds, the clock the kernel stamps each use with.

use std::{collections::HashMap, net::IpAddr, num::NonZeroUsize, time::Duration};

use lru::LruCache;

/// An allowlist entry's identity: (agent id, endpoint name, address).
pub type Held = (u32, String, IpAddr);

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Address {
    pub addr: IpAddr,
    /// Admitted until then even if never used: last answer + max(TTL, min_ttl) + grace.
    pub until: u64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NameEntry {
    /// The endpoint whose host pattern the name matched.
    pub endpoint: String,
    /// Most recently seen last.
    pub addrs: Vec<Address>,
}

/// How long admitted addresses live: at least `min_ttl` whatever the answer's TTL, and `grace`
/// past the TTL and past their last use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lifetimes {
    pub min_ttl: Duration,
    pub grace: Duration,
}

pub struct NameCache {
    names: LruCache<(u32, String), NameEntry>,
    max_addresses: usize,
    lifetimes: Lifetimes,
    refs: HashMap<Held, usize>,
    pub evictions: u64,
}

/// What the kernel must drop after a cache change.
pub type Released = Vec<Held>;

impl NameCache {
    pub fn new(max_names: usize, max_addresses: usize, lifetimes: Lifetimes) -> Self {
        Self {
            names: LruCache::new(NonZeroUsize::new(max_names.max(1)).expect("at least one")),
            max_addresses: max_addresses.max(1),
            lifetimes,
            refs: HashMap::new(),
            evictions: 0,
        }
    }

    /// Changes the bounds and lifetimes (a reload); shrinking evicts.
    pub fn reconfigure(&mut self, max_names: usize, max_addresses: usize, lifetimes: Lifetimes) -> Released {
        self.lifetimes = lifetimes;
        let mut released = Vec::new();
        self.max_addresses = max_addresses.max(1);
        while self.names.len() > max_names.max(1) {
            if let Some(((agent, _), e)) = self.names.pop_lru() {
                self.evictions += 1;
                released.extend(self.unhold(agent, &e.endpoint, e.addrs.iter().map(|a| a.addr)));
            }
        }
        let keys: Vec<(u32, String)> = self.names.iter().map(|(k, _)| k.clone()).collect();
        for k in keys {
            released.extend(self.trim(&k));
        }
        self.names.resize(NonZeroUsize::new(max_names.max(1)).expect("at least one"));
        released
    }

    /// Records that an answer for `name` gave `agent` these addresses (with TTLs) at `now`.
    pub fn admit(&mut self, agent: u32, name: &str, endpoint: &str, addrs: &[(IpAddr, u32)], now: u64) -> Released {
        let Lifetimes { min_ttl, grace } = self.lifetimes;
        let key = (agent, name.to_owned());
        let mut released = Vec::new();
        if !self.names.contains(&key)
            && self.names.len() == self.names.cap().get()
            && let Some(((a, _), e)) = self.names.pop_lru()
        {
            self.evictions += 1;
            released.extend(self.unhold(a, &e.endpoint, e.addrs.iter().map(|x| x.addr)));
        }
        let mut entry = self.names.pop(&key).unwrap_or(NameEntry { endpoint: endpoint.to_owned(), addrs: Vec::new() });
        if entry.endpoint != endpoint {
            // The name now matches another endpoint (a reload): move its addresses over.
            released.extend(self.unhold(agent, &entry.endpoint, entry.addrs.iter().map(|x| x.addr)));
            entry = NameEntry { endpoint: endpoint.to_owned(), addrs: Vec::new() };
        }
        for &(addr, ttl) in addrs {
            let until = now + u64::from(ttl).max(min_ttl.as_secs()) + grace.as_secs();
            match entry.addrs.iter().position(|a| a.addr == addr) {
                Some(i) => {
                    let mut a = entry.addrs.remove(i);
                    a.until = a.until.max(until);
                    entry.addrs.push(a);
                }
                None => {
                    *self.refs.entry((agent, endpoint.to_owned(), addr)).or_default() += 1;
                    entry.addrs.push(Address { addr, until });
                }
            }
        }
        self.names.put(key.clone(), entry);
        released.extend(self.trim(&key));
        released
    }

    /// Drops the least recently seen addresses of `key` beyond the per-name bound.
    fn trim(&mut self, key: &(u32, String)) -> Released {
        let Some(entry) = self.names.peek_mut(key) else { return Vec::new() };
        if entry.addrs.len() <= self.max_addresses {
            return Vec::new();
        }
        let excess = entry.addrs.len() - self.max_addresses;
        let dropped: Vec<IpAddr> = entry.addrs.drain(..excess).map(|a| a.addr).collect();
        let endpoint = entry.endpoint.clone();
        self.evictions += excess as u64;
        self.unhold(key.0, &endpoint, dropped.into_iter())
    }

    fn unhold(&mut self, agent: u32, endpoint: &str, addrs: impl Iterator<Item = IpAddr>) -> Released {
        let mut released = Vec::new();
        for addr in addrs {
            let k = (agent, endpoint.to_owned(), addr);
            if let Some(n) = self.refs.get_mut(&k) {
                *n -= 1;
                if *n == 0 {
                    self.refs.remove(&k);
                    released.push(k);
                }
            }
        }
        released
    }

    /// Drops addresses whose time is up: past `until`, and past their last use (as the kernel
    /// stamped it, `last_use(agent, endpoint, addr)`, asked only for addresses past `until`)
    /// plus `grace`.
    pub fn expire(&mut self, now: u64, last_use: impl Fn(&Held) -> Option<u64>) -> Released {
        let grace = self.lifetimes.grace;
        let mut released = Vec::new();
        let keys: Vec<(u32, String)> = self.names.iter().map(|(k, _)| k.clone()).collect();
        for key in keys {
            let Some(entry) = self.names.peek_mut(&key) else { continue };
            let endpoint = entry.endpoint.clone();
            let mut gone = Vec::new();
            entry.addrs.retain_mut(|a| {
                // The kernel is asked only once an address's known deadline has passed; a
                // recent use moves the deadline, so an address in use costs one lookup per grace.
                if now < a.until {
                    return true;
                }
                let used = last_use(&(key.0, endpoint.clone(), a.addr)).map_or(0, |t| t + grace.as_secs());
                a.until = a.until.max(used);
                let keep = now < a.until;
                if !keep {
                    gone.push(a.addr);
                }
                keep
            });
            let empty = entry.addrs.is_empty();
            released.extend(self.unhold(key.0, &endpoint, gone.into_iter()));
            if empty {
                self.names.pop(&key);
            }
        }
        released
    }

    /// Drops every name `keep(agent, name)` refuses (a reload narrowed the policy).
    pub fn retain(&mut self, keep: impl Fn(u32, &str, &str) -> bool) -> Released {
        let drop: Vec<(u32, String)> =
            self.names.iter().filter(|((a, n), e)| !keep(*a, n, &e.endpoint)).map(|(k, _)| k.clone()).collect();
        let mut released = Vec::new();
        for key in drop {
            if let Some(e) = self.names.pop(&key) {
                released.extend(self.unhold(key.0, &e.endpoint, e.addrs.iter().map(|a| a.addr)));
            }
        }
        released
    }

    /// Every (agent, name, entry), most recently used first.
    pub fn iter(&self) -> impl Iterator<Item = (u32, &str, &NameEntry)> {
        self.names.iter().map(|((a, n), e)| (*a, n.as_str(), e))
    }

    /// Every allowlist entry the cache holds.
    pub fn held(&self) -> impl Iterator<Item = &Held> {
        self.refs.keys()
    }

    pub fn names(&self) -> usize {
        self.names.len()
    }

    pub fn addresses(&self) -> usize {
        self.refs.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIFE: Lifetimes = Lifetimes { min_ttl: Duration::from_secs(60), grace: Duration::from_secs(300) };

    fn ip(n: u8) -> IpAddr {
        IpAddr::from([192, 0, 2, n])
    }

    #[test]
    fn addresses_live_for_ttl_or_min_ttl_plus_grace_then_by_last_use() {
        let mut c = NameCache::new(10, 10, LIFE);
        assert!(c.admit(1, "a.example.com", "api", &[(ip(1), 5), (ip(2), 3600)], 1000).is_empty());
        // ip(1): TTL 5 is raised to 60: until 1000 + 60 + 300.
        assert!(c.expire(1359, |_| None).is_empty());
        let gone = c.expire(1360, |_| None);
        assert_eq!(gone, vec![(1, "api".to_owned(), ip(1))]);
        // ip(2) is used at 5000: kept until 5300 though its TTL ran out at 4900.
        let used = |h: &Held| (h.2 == ip(2)).then_some(5000);
        assert!(c.expire(5299, used).is_empty());
        assert_eq!(c.expire(5300, used).len(), 1);
        assert_eq!((c.names(), c.addresses()), (0, 0));
    }

    #[test]
    fn an_address_two_names_share_leaves_only_with_the_last() {
        let mut c = NameCache::new(10, 10, LIFE);
        c.admit(1, "a.example.com", "api", &[(ip(1), 60)], 0);
        c.admit(1, "b.example.com", "api", &[(ip(1), 600)], 0);
        assert_eq!(c.addresses(), 1);
        assert!(c.expire(400, |_| None).is_empty(), "b still holds it");
        assert_eq!(c.expire(900, |_| None).len(), 1);
    }

    #[test]
    fn bounds_evict_least_recently_seen_and_count_it() {
        let mut c = NameCache::new(2, 2, LIFE);
        let r = c.admit(1, "a", "api", &[(ip(1), 60), (ip(2), 60), (ip(3), 60)], 0);
        assert_eq!(r, vec![(1, "api".to_owned(), ip(1))]);
        c.admit(1, "b", "api", &[(ip(4), 60)], 0);
        c.admit(1, "a", "api", &[(ip(2), 60)], 1); // a is now the most recent
        let r = c.admit(1, "c", "api", &[(ip(5), 60)], 2);
        assert_eq!(r, vec![(1, "api".to_owned(), ip(4))], "b was the least recently looked up");
        assert_eq!(c.evictions, 2);
        assert_eq!((c.names(), c.addresses()), (2, 3));
    }

    #[test]
    fn agents_are_kept_apart() {
        let mut c = NameCache::new(10, 10, LIFE);
        c.admit(1, "a", "api", &[(ip(1), 60)], 0);
        c.admit(2, "a", "api", &[(ip(1), 60)], 0);
        assert_eq!(c.addresses(), 2);
        let r = c.retain(|agent, _, _| agent == 2);
        assert_eq!(r, vec![(1, "api".to_owned(), ip(1))]);
    }
}
