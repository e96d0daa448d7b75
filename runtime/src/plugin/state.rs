//! The `state` capability: a key-value store per (plugin, namespace) kept by the host,
//! shared by every instance, kept across traps and across reloads that keep the plugin.
//! Operations on one key are atomic (a dashmap shard lock is held for each); expiry is
//! checked on access and swept when the store is full. Bounded: keys, values, the number
//! of keys and the bytes of all values ([`MAX_BYTES`], 16 MiB per store).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use dashmap::DashMap;
use dashmap::mapref::entry::Entry;

/// Longest key, largest value, most live keys, most value bytes per store.
pub const MAX_KEY: usize = 256;
pub const MAX_VALUE: usize = 64 << 10;
pub const MAX_KEYS: usize = 10_000;
pub const MAX_BYTES: usize = 16 << 20;

#[derive(Debug)]
struct Value {
    bytes: Vec<u8>,
    expires: Option<Instant>,
}

impl Value {
    fn live(&self, now: Instant) -> bool {
        self.expires.is_none_or(|e| e > now)
    }
}

/// One plugin's store in one namespace.
#[derive(Debug, Default)]
pub struct KvStore {
    map: DashMap<String, Value>,
    /// Keys held (live or expired but not yet removed), kept beside the map so a write
    /// need not count every shard.
    held: AtomicUsize,
    /// Bytes of the values held (keys are bounded by their count and length).
    bytes: AtomicUsize,
    /// When a full store was last swept, in ms since `born`: at most one sweep a second,
    /// so a full store does not make every write walk all its keys.
    swept: std::sync::atomic::AtomicU64,
    born: std::sync::OnceLock<Instant>,
}

/// Where a plugin's state is kept: in this process, or (`state:global`) in Redis, shared
/// by every replica.
#[derive(Debug, Clone)]
pub enum StateStore {
    Local(Arc<KvStore>),
    Global(Arc<super::redis::RedisStore>),
}

/// Every store, by (plugin, namespace), for the life of the process.
#[derive(Debug, Default)]
pub struct Stores {
    all: DashMap<(String, String), Arc<KvStore>>,
}

impl Stores {
    /// The store of `plugin` in `namespace`, made on first use.
    pub fn of(&self, plugin: &str, namespace: &str) -> Arc<KvStore> {
        self.all
            .entry((plugin.to_string(), namespace.to_string()))
            .or_default()
            .clone()
    }
}

/// A TTL as stores keep it: at least 1 ms, at most ten years.
pub(super) fn ttl(ms: u64) -> u64 {
    ms.clamp(1, 10 * 365 * 86_400_000)
}

fn expiry(now: Instant, ttl_ms: Option<u64>) -> Option<Instant> {
    ttl_ms.map(|ms| now + Duration::from_millis(ttl(ms)))
}

/// The key and value limits every store (local or `state:global`) holds to.
pub(super) fn check_key(key: &str) -> Result<(), String> {
    if key.len() > MAX_KEY {
        return Err(format!("key of {} bytes, over {MAX_KEY}", key.len()));
    }
    Ok(())
}

pub(super) fn check_value(value: &[u8]) -> Result<(), String> {
    if value.len() > MAX_VALUE {
        return Err(format!("value of {} bytes, over {MAX_VALUE}", value.len()));
    }
    Ok(())
}

impl KvStore {
    pub fn get(&self, key: &str, now: Instant) -> Result<Option<Vec<u8>>, String> {
        check_key(key)?;
        Ok(self
            .map
            .get(key)
            .filter(|v| v.live(now))
            .map(|v| v.bytes.clone()))
    }

    /// Room for one more key, sweeping expired ones when full (at most once a second).
    fn room(&self, now: Instant) -> Result<(), String> {
        if self.held.load(Ordering::Relaxed) < MAX_KEYS {
            return Ok(());
        }
        let full = || Err(format!("the store is full ({MAX_KEYS} keys)"));
        let born = *self.born.get_or_init(|| now);
        let at = u64::try_from(now.saturating_duration_since(born).as_millis()).unwrap_or(u64::MAX);
        let last = self.swept.load(Ordering::Relaxed);
        if at.saturating_sub(last) < 1000 && last != 0 {
            return full();
        }
        if self
            .swept
            .compare_exchange(last, at.max(1), Ordering::Relaxed, Ordering::Relaxed)
            .is_err()
        {
            return full();
        }
        // Count what the sweep itself removes: other writers may add or delete meanwhile.
        let (mut removed, mut freed) = (0, 0);
        self.map.retain(|_, v| {
            let keep = v.live(now);
            if !keep {
                removed += 1;
                freed += v.bytes.len();
            }
            keep
        });
        self.held.fetch_sub(removed, Ordering::Relaxed);
        self.bytes.fetch_sub(freed, Ordering::Relaxed);
        if self.held.load(Ordering::Relaxed) >= MAX_KEYS {
            return full();
        }
        Ok(())
    }

    /// A value of `old` bytes becomes one of `new` bytes: refused past [`MAX_BYTES`].
    fn resize(&self, old: usize, new: usize) -> Result<(), String> {
        if new <= old {
            self.bytes.fetch_sub(old - new, Ordering::Relaxed);
            return Ok(());
        }
        self.bytes
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |held| {
                held.checked_add(new - old).filter(|t| *t <= MAX_BYTES)
            })
            .map(|_| ())
            .map_err(|_| {
                format!(
                    "the store holds {} MiB of values, its limit",
                    MAX_BYTES >> 20
                )
            })
    }

    fn insert(&self, key: &str, value: Value, now: Instant) -> Result<(), String> {
        if !self.map.contains_key(key) {
            self.room(now)?;
        }
        match self.map.entry(key.to_string()) {
            Entry::Occupied(mut e) => {
                self.resize(e.get().bytes.len(), value.bytes.len())?;
                *e.get_mut() = value;
            }
            Entry::Vacant(e) => {
                self.resize(0, value.bytes.len())?;
                e.insert(value);
                self.held.fetch_add(1, Ordering::Relaxed);
            }
        }
        Ok(())
    }

    pub fn set(
        &self,
        key: &str,
        value: Vec<u8>,
        ttl_ms: Option<u64>,
        now: Instant,
    ) -> Result<(), String> {
        check_key(key)?;
        check_value(&value)?;
        let value = Value {
            bytes: value,
            expires: expiry(now, ttl_ms),
        };
        self.insert(key, value, now)
    }

    pub fn delete(&self, key: &str, now: Instant) -> Result<bool, String> {
        check_key(key)?;
        match self.map.remove(key) {
            Some((_, v)) => {
                self.held.fetch_sub(1, Ordering::Relaxed);
                self.bytes.fetch_sub(v.bytes.len(), Ordering::Relaxed);
                Ok(v.live(now))
            }
            None => Ok(false),
        }
    }

    pub fn increment(
        &self,
        key: &str,
        delta: i64,
        ttl_ms: Option<u64>,
        now: Instant,
    ) -> Result<i64, String> {
        check_key(key)?;
        if !self.map.contains_key(key) {
            self.room(now)?;
        }
        match self.map.entry(key.to_string()) {
            Entry::Occupied(mut e) => {
                let v = e.get_mut();
                if !v.live(now) {
                    self.resize(v.bytes.len(), 8)?;
                    *v = Value {
                        bytes: delta.to_le_bytes().to_vec(),
                        expires: expiry(now, ttl_ms),
                    };
                    return Ok(delta);
                }
                let bytes: [u8; 8] = v.bytes.as_slice().try_into().map_err(|_| {
                    format!("key {key:?} holds {} bytes, not a counter", v.bytes.len())
                })?;
                let n = i64::from_le_bytes(bytes).wrapping_add(delta);
                v.bytes = n.to_le_bytes().to_vec();
                Ok(n)
            }
            Entry::Vacant(e) => {
                self.resize(0, 8)?;
                e.insert(Value {
                    bytes: delta.to_le_bytes().to_vec(),
                    expires: expiry(now, ttl_ms),
                });
                self.held.fetch_add(1, Ordering::Relaxed);
                Ok(delta)
            }
        }
    }

    pub fn compare_and_swap(
        &self,
        key: &str,
        expected: Option<&[u8]>,
        value: Option<Vec<u8>>,
        ttl_ms: Option<u64>,
        now: Instant,
    ) -> Result<bool, String> {
        check_key(key)?;
        if let Some(v) = &value {
            check_value(v)?;
        }
        if value.is_some() && !self.map.contains_key(key) {
            self.room(now)?;
        }
        match self.map.entry(key.to_string()) {
            Entry::Occupied(mut e) => {
                let current = Some(e.get()).filter(|v| v.live(now)).map(|v| &v.bytes[..]);
                if current != expected {
                    return Ok(false);
                }
                match value {
                    Some(bytes) => {
                        self.resize(e.get().bytes.len(), bytes.len())?;
                        *e.get_mut() = Value {
                            bytes,
                            expires: expiry(now, ttl_ms),
                        }
                    }
                    None => {
                        let (_, gone) = e.remove_entry();
                        self.held.fetch_sub(1, Ordering::Relaxed);
                        self.bytes.fetch_sub(gone.bytes.len(), Ordering::Relaxed);
                    }
                }
                Ok(true)
            }
            Entry::Vacant(e) => {
                if expected.is_some() {
                    return Ok(false);
                }
                if let Some(bytes) = value {
                    self.resize(0, bytes.len())?;
                    e.insert(Value {
                        bytes,
                        expires: expiry(now, ttl_ms),
                    });
                    self.held.fetch_add(1, Ordering::Relaxed);
                }
                Ok(true)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_ttl_and_compare_and_swap() {
        let s = KvStore::default();
        let t0 = Instant::now();
        assert_eq!(s.increment("n", 2, Some(1000), t0), Ok(2));
        assert_eq!(s.increment("n", 3, Some(1), t0), Ok(5), "ttl kept");
        let later = t0 + Duration::from_millis(1001);
        assert_eq!(s.get("n", later), Ok(None), "expired");
        assert_eq!(s.increment("n", 1, None, later), Ok(1), "a fresh counter");
        s.set("t", b"text".to_vec(), None, t0).expect("set");
        assert!(s.increment("t", 1, None, t0).is_err(), "not a counter");
        assert_eq!(
            s.compare_and_swap("l", None, Some(b"a".to_vec()), None, t0),
            Ok(true)
        );
        assert_eq!(
            s.compare_and_swap("l", None, Some(b"b".to_vec()), None, t0),
            Ok(false)
        );
        assert_eq!(
            s.compare_and_swap("l", Some(b"a"), None, None, t0),
            Ok(true)
        );
        assert_eq!(s.get("l", t0), Ok(None));
        assert_eq!(s.delete("t", t0), Ok(true));
        assert_eq!(s.delete("t", t0), Ok(false));
        assert!(
            s.set(&"k".repeat(MAX_KEY + 1), Vec::new(), None, t0)
                .is_err()
        );
        assert!(s.set("v", vec![0; MAX_VALUE + 1], None, t0).is_err());
    }

    #[test]
    fn a_full_store_refuses_new_keys_until_some_expire() {
        let s = KvStore::default();
        let t0 = Instant::now();
        for i in 0..MAX_KEYS {
            s.set(&format!("k{i}"), Vec::new(), Some(10), t0)
                .expect("room");
        }
        assert!(s.set("one-more", Vec::new(), None, t0).is_err());
        assert!(
            s.set("k1", b"x".to_vec(), None, t0).is_ok(),
            "overwrites fit"
        );
        // Expired now, but a sweep ran less than a second ago: still full.
        let later = t0 + Duration::from_millis(20);
        assert!(s.set("one-more", Vec::new(), None, later).is_err());
        let much_later = t0 + Duration::from_millis(1100);
        assert!(
            s.set("one-more", Vec::new(), None, much_later).is_ok(),
            "swept"
        );
        assert!(
            s.held.load(Ordering::Relaxed) <= 2,
            "the sweep's removals counted"
        );
    }

    #[test]
    fn the_values_a_store_holds_are_bounded_in_bytes() {
        let s = KvStore::default();
        let t0 = Instant::now();
        let big = vec![0u8; MAX_VALUE];
        let fit = MAX_BYTES / MAX_VALUE;
        for i in 0..fit {
            s.set(&format!("k{i}"), big.clone(), None, t0)
                .expect("fits");
        }
        let err = s
            .set("one-more", big.clone(), None, t0)
            .expect_err("past the bytes");
        assert!(err.contains("16 MiB"), "{err}");
        assert!(
            s.increment("n", 1, None, t0).is_err(),
            "8 more bytes do not fit"
        );
        // Shrinking and deleting give bytes back.
        s.set("k0", Vec::new(), None, t0).expect("shrink");
        assert!(s.set("one-more", vec![0; MAX_VALUE - 8], None, t0).is_ok());
        assert_eq!(s.delete("k1", t0), Ok(true));
        assert_eq!(s.increment("n", 1, None, t0), Ok(1));
        assert_eq!(
            s.bytes.load(Ordering::Relaxed),
            (fit - 2) * MAX_VALUE + (MAX_VALUE - 8) + 8
        );
    }

    #[test]
    fn stores_are_per_plugin_and_namespace() {
        let all = Stores::default();
        assert!(Arc::ptr_eq(&all.of("ns/p", "a"), &all.of("ns/p", "a")));
        assert!(!Arc::ptr_eq(&all.of("ns/p", "a"), &all.of("ns/p", "b")));
        assert!(!Arc::ptr_eq(&all.of("ns/p", "a"), &all.of("ns/q", "a")));
    }
}
