//! Numbers nobody can predict, from the operating system (`/dev/urandom`, read a page
//! at a time per thread): request ids and trace ids come from here, never from the
//! seedable sequence load balancing and plugins share, so seeing ids tells nothing
//! about other ids or about the numbers policies draw.

use std::cell::RefCell;
use std::io::Read;

/// Bytes read from the system at a time.
const PAGE: usize = 4096;

struct Pool {
    bytes: Box<[u8; PAGE]>,
    used: usize,
    source: Option<std::fs::File>,
}

thread_local! {
    static POOL: RefCell<Pool> = RefCell::new(Pool {
        bytes: Box::new([0; PAGE]),
        used: PAGE,
        source: None,
    });
}

/// The operating system's randomness. A zero-sized handle: every thread reads its own
/// buffer.
#[derive(Debug, Clone, Copy, Default)]
pub struct OsRandom;

impl OsRandom {
    pub fn next_u64(&self) -> u64 {
        let mut b = [0u8; 8];
        fill(&mut b);
        u64::from_ne_bytes(b)
    }
}

/// Fill `out` from the operating system's randomness.
pub fn fill(out: &mut [u8]) {
    POOL.with(|pool| {
        let mut pool = pool.borrow_mut();
        let mut at = 0;
        while at < out.len() {
            if pool.used == PAGE {
                refill(&mut pool);
            }
            let n = (out.len() - at).min(PAGE - pool.used);
            let start = pool.used;
            out[at..at + n].copy_from_slice(&pool.bytes[start..start + n]);
            // Bytes handed out are not kept.
            pool.bytes[start..start + n].fill(0);
            pool.used += n;
            at += n;
        }
    });
}

fn refill(pool: &mut Pool) {
    if pool.source.is_none() {
        pool.source = std::fs::File::open("/dev/urandom").ok();
    }
    let read = pool
        .source
        .as_mut()
        .map(|f| f.read_exact(&mut pool.bytes[..]));
    if !matches!(read, Some(Ok(()))) {
        // No /dev/urandom (a bare chroot): the process's hash keys, which the standard
        // library draws from the system, stretched. Worse, but never a fixed sequence.
        tracing::warn!("/dev/urandom unreadable; request ids use a weaker source");
        use std::hash::{BuildHasher, Hasher};
        let state = std::collections::hash_map::RandomState::new();
        for (i, chunk) in pool.bytes.chunks_mut(8).enumerate() {
            let mut h = state.build_hasher();
            h.write_usize(i);
            chunk.copy_from_slice(&h.finish().to_ne_bytes()[..chunk.len()]);
        }
    }
    pool.used = 0;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_differ_across_pages() {
        let r = OsRandom;
        let mut seen = std::collections::HashSet::new();
        for _ in 0..2000 {
            assert!(seen.insert(r.next_u64()), "no repeats in 2000 draws");
        }
        let mut big = vec![0u8; PAGE * 2 + 3];
        fill(&mut big);
        assert!(big.iter().filter(|b| **b == 0).count() < 100);
    }
}
