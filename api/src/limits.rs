//! Slots with a global cap and a share per client: open connections and SSE
//! subscribers are both counted by a [`Limiter`].
//!
//! A slot is held by a [`Permit`] and given back when the permit is dropped.
//! The limiter keeps a count per key only while the key holds slots, so its
//! memory is bounded by the global cap whatever keys clients present.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex, MutexGuard};

/// Why a slot was not given.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// Every slot is taken.
    #[error("all {0} slots are taken")]
    Full(usize),
    /// The client already holds its share.
    #[error("the client already holds its share of {0} slots")]
    ClientFull(usize),
}

/// Counts slots held, in total and per key.
#[derive(Debug)]
pub struct Limiter<K> {
    inner: Arc<Inner<K>>,
}

impl<K> Clone for Limiter<K> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

#[derive(Debug)]
struct Inner<K> {
    max_total: usize,
    max_per_key: usize,
    held: Mutex<Held<K>>,
}

#[derive(Debug)]
struct Held<K> {
    total: usize,
    per_key: HashMap<K, usize>,
}

impl<K: Eq + Hash + Clone> Limiter<K> {
    /// At most `max_total` slots, and at most `max_per_key` for one key.
    pub fn new(max_total: usize, max_per_key: usize) -> Self {
        Self {
            inner: Arc::new(Inner {
                max_total,
                max_per_key,
                held: Mutex::new(Held {
                    total: 0,
                    per_key: HashMap::new(),
                }),
            }),
        }
    }

    /// A slot for `key`, if it has slots left and the server has.
    pub fn try_acquire(&self, key: K) -> Result<Permit<K>, Refusal> {
        self.acquire(Some(key))
    }

    /// A slot counted only against the global cap (a client exempt from the
    /// per-client share, such as a trusted proxy that many clients share).
    pub fn try_acquire_unshared(&self) -> Result<Permit<K>, Refusal> {
        self.acquire(None)
    }

    fn acquire(&self, key: Option<K>) -> Result<Permit<K>, Refusal> {
        let inner = &self.inner;
        let mut held = inner.lock();
        if let Some(key) = &key {
            // The client's own share first: a client over its share is told
            // so (429), even when the server is also full.
            let holds = held.per_key.get(key).copied().unwrap_or(0);
            if holds >= inner.max_per_key {
                return Err(Refusal::ClientFull(inner.max_per_key));
            }
        }
        if held.total >= inner.max_total {
            return Err(Refusal::Full(inner.max_total));
        }
        held.total += 1;
        if let Some(key) = &key {
            *held.per_key.entry(key.clone()).or_insert(0) += 1;
        }
        drop(held);
        Ok(Permit {
            limiter: self.inner.clone(),
            key,
        })
    }

    /// Slots held in total.
    pub fn total(&self) -> usize {
        self.inner.lock().total
    }

    /// Slots held by `key`.
    pub fn held_by(&self, key: &K) -> usize {
        self.inner.lock().per_key.get(key).copied().unwrap_or(0)
    }

    /// Keys holding at least one slot.
    pub fn keys(&self) -> usize {
        self.inner.lock().per_key.len()
    }
}

impl<K> Inner<K> {
    fn lock(&self) -> MutexGuard<'_, Held<K>> {
        self.held.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// One slot, given back when dropped.
#[derive(Debug)]
pub struct Permit<K: Eq + Hash> {
    limiter: Arc<Inner<K>>,
    key: Option<K>,
}

impl<K: Eq + Hash> Drop for Permit<K> {
    fn drop(&mut self) {
        let mut held = self.limiter.lock();
        held.total = held.total.saturating_sub(1);
        if let Some(key) = &self.key
            && let Some(count) = held.per_key.get_mut(key)
        {
            *count -= 1;
            if *count == 0 {
                held.per_key.remove(key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_gets_its_share_and_others_still_get_theirs() {
        let limiter = Limiter::new(10, 2);
        let a1 = limiter.try_acquire("a").unwrap();
        let _a2 = limiter.try_acquire("a").unwrap();
        assert_eq!(
            limiter.try_acquire("a").unwrap_err(),
            Refusal::ClientFull(2)
        );
        let _b = limiter.try_acquire("b").unwrap();
        assert_eq!((limiter.total(), limiter.held_by(&"a")), (3, 2));
        drop(a1);
        let _a3 = limiter.try_acquire("a").unwrap();
        assert_eq!(limiter.total(), 3);
    }

    #[test]
    fn the_global_cap_holds_across_clients_and_unshared_slots() {
        let limiter = Limiter::new(3, 2);
        let _a = limiter.try_acquire("a").unwrap();
        let _b = limiter.try_acquire("b").unwrap();
        let proxy = limiter.try_acquire_unshared().unwrap();
        assert_eq!(limiter.try_acquire("c").unwrap_err(), Refusal::Full(3));
        assert_eq!(
            limiter.try_acquire_unshared().unwrap_err(),
            Refusal::Full(3)
        );
        drop(proxy);
        let _c = limiter.try_acquire("c").unwrap();
        assert_eq!(limiter.try_acquire("d").unwrap_err(), Refusal::Full(3));
    }

    #[test]
    fn a_client_over_its_share_hears_about_its_share_even_when_the_server_is_full() {
        let limiter = Limiter::new(2, 1);
        let _a = limiter.try_acquire("a").unwrap();
        let _b = limiter.try_acquire("b").unwrap();
        assert_eq!(
            limiter.try_acquire("a").unwrap_err(),
            Refusal::ClientFull(1)
        );
        assert_eq!(limiter.try_acquire("c").unwrap_err(), Refusal::Full(2));
    }

    #[test]
    fn keys_are_forgotten_when_their_last_slot_is_given_back() {
        let limiter = Limiter::new(1000, 1);
        for i in 0..500 {
            drop(limiter.try_acquire(i).unwrap());
        }
        let held: Vec<_> = (0..5).map(|i| limiter.try_acquire(i).unwrap()).collect();
        assert_eq!((limiter.keys(), limiter.total()), (5, 5));
        drop(held);
        assert_eq!((limiter.keys(), limiter.total()), (0, 0));
    }
}
