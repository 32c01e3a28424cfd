//! A concurrent map for simulator-side registries (open files, VMs by id). It has no kernel
//! counterpart and is not lock-order checked: its internal locks are leaves as long as the
//! closure passed to [`ConcurrentMap::with_mut`] does not touch the same map.

use std::fmt;
use std::hash::Hash;

#[cfg(gmem_loom)]
use std::collections::HashMap;

/// DashMap normally; a `Mutex<HashMap>` under loom (dashmap has no loom support, so under loom
/// every conflict must be visible to the scheduler). Values are returned by clone so no guard
/// escapes and no shard lock is held by the caller.
pub struct ConcurrentMap<K, V> {
    #[cfg(not(gmem_loom))]
    inner: dashmap::DashMap<K, V>,
    #[cfg(gmem_loom)]
    inner: loom::sync::Mutex<HashMap<K, V>>,
}

impl<K: Eq + Hash + Clone, V: Clone> Default for ConcurrentMap<K, V> {
    fn default() -> Self {
        Self::new()
    }
}

impl<K, V> fmt::Debug for ConcurrentMap<K, V> {
    /// Does not print the contents: that would lock, and add loom scheduling points.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConcurrentMap").finish_non_exhaustive()
    }
}

impl<K: Eq + Hash + Clone, V: Clone> ConcurrentMap<K, V> {
    /// An empty map.
    pub fn new() -> Self {
        Self {
            #[cfg(not(gmem_loom))]
            inner: dashmap::DashMap::new(),
            #[cfg(gmem_loom)]
            inner: loom::sync::Mutex::new(HashMap::new()),
        }
    }

    #[cfg(gmem_loom)]
    fn locked(&self) -> loom::sync::MutexGuard<'_, HashMap<K, V>> {
        self.inner.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Inserts, returning the previous value.
    pub fn insert(&self, key: K, value: V) -> Option<V> {
        #[cfg(not(gmem_loom))]
        return self.inner.insert(key, value);
        #[cfg(gmem_loom)]
        return self.locked().insert(key, value);
    }

    /// Removes, returning the value.
    pub fn remove(&self, key: &K) -> Option<V> {
        #[cfg(not(gmem_loom))]
        return self.inner.remove(key).map(|(_, v)| v);
        #[cfg(gmem_loom)]
        return self.locked().remove(key);
    }

    /// A clone of the value.
    pub fn get(&self, key: &K) -> Option<V> {
        #[cfg(not(gmem_loom))]
        return self.inner.get(key).map(|r| r.value().clone());
        #[cfg(gmem_loom)]
        return self.locked().get(key).cloned();
    }

    /// Whether `key` is present.
    pub fn contains_key(&self, key: &K) -> bool {
        #[cfg(not(gmem_loom))]
        return self.inner.contains_key(key);
        #[cfg(gmem_loom)]
        return self.locked().contains_key(key);
    }

    /// Number of entries (a snapshot; may be stale at once).
    pub fn len(&self) -> usize {
        #[cfg(not(gmem_loom))]
        return self.inner.len();
        #[cfg(gmem_loom)]
        return self.locked().len();
    }

    /// Whether the map is empty (a snapshot).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A snapshot of the keys, in no particular order.
    pub fn keys(&self) -> Vec<K> {
        #[cfg(not(gmem_loom))]
        return self.inner.iter().map(|r| r.key().clone()).collect();
        #[cfg(gmem_loom)]
        return self.locked().keys().cloned().collect();
    }

    /// Runs `f` on the value in place, atomically with respect to other operations on `key`;
    /// `None` if absent. `f` must not use this map (it runs under the map's internal lock).
    pub fn with_mut<R>(&self, key: &K, f: impl FnOnce(&mut V) -> R) -> Option<R> {
        #[cfg(not(gmem_loom))]
        return self.inner.get_mut(key).map(|mut r| f(r.value_mut()));
        #[cfg(gmem_loom)]
        return self.locked().get_mut(key).map(f);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basics() {
        crate::check(|| {
            let m: ConcurrentMap<u32, String> = ConcurrentMap::default();
            assert!(m.is_empty());
            assert_eq!(m.insert(1, "a".into()), None);
            assert_eq!(m.insert(2, "b".into()), None);
            assert_eq!(m.insert(1, "c".into()), Some("a".into()));
            assert_eq!(m.len(), 2);
            assert_eq!(m.get(&1).as_deref(), Some("c"));
            assert!(m.contains_key(&2));
            assert_eq!(
                m.with_mut(&2, |v| {
                    v.push('!');
                    v.len()
                }),
                Some(2)
            );
            assert_eq!(m.get(&2).as_deref(), Some("b!"));
            assert_eq!(m.with_mut(&3, |_| ()), None);
            let mut keys = m.keys();
            keys.sort_unstable();
            assert_eq!(keys, [1, 2]);
            assert_eq!(m.remove(&1).as_deref(), Some("c"));
            assert_eq!(m.remove(&1), None);
            assert!(!m.contains_key(&1));
            assert_eq!(m.len(), 1);
        });
    }

    #[cfg(not(gmem_loom))]
    #[test]
    fn concurrent_updates() {
        let m = crate::Arc::new(ConcurrentMap::<u32, u64>::new());
        m.insert(0, 0);
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let m = crate::Arc::clone(&m);
                std::thread::spawn(move || {
                    for _ in 0..1000 {
                        m.with_mut(&0, |v| *v += 1);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(m.get(&0), Some(4000));
    }
}
