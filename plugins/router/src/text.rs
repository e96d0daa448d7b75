//! String equality for the matchers, inlined. In Wasm, `==` on strings calls the
//! compiler's `memcmp`, a byte loop behind a call: about 130 instructions for a
//! six-byte path prefix, and scenario 1's request compares several. These compare eight
//! bytes at a time (four and overlapping under eight), about twenty.

/// `a == b`.
#[inline]
pub fn eq(a: &str, b: &str) -> bool {
    a.len() == b.len() && same(a.as_bytes(), b.as_bytes())
}

/// `value.starts_with(prefix)`.
#[inline]
pub fn starts_with(value: &str, prefix: &str) -> bool {
    value
        .as_bytes()
        .get(..prefix.len())
        .is_some_and(|head| same(head, prefix.as_bytes()))
}

/// Equal contents of two slices of the same length.
#[inline]
fn same(a: &[u8], b: &[u8]) -> bool {
    debug_assert_eq!(a.len(), b.len());
    let n = a.len();
    if n < 4 {
        return a == b;
    }
    if n <= 8 {
        // Two four-byte words, overlapping when n < 8, cover every byte.
        return word4(a, 0) == word4(b, 0) && word4(a, n - 4) == word4(b, n - 4);
    }
    let mut at = 0;
    while at + 8 <= n {
        if word8(a, at) != word8(b, at) {
            return false;
        }
        at += 8;
    }
    // The last eight bytes, overlapping what was compared, when some are left.
    at == n || word8(a, n - 8) == word8(b, n - 8)
}

#[inline]
fn word4(s: &[u8], at: usize) -> u32 {
    let mut w = [0u8; 4];
    w.copy_from_slice(&s[at..at + 4]);
    u32::from_le_bytes(w)
}

#[inline]
fn word8(s: &[u8], at: usize) -> u64 {
    let mut w = [0u8; 8];
    w.copy_from_slice(&s[at..at + 8]);
    u64::from_le_bytes(w)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Against std for every length to 40 and a difference at every position: equal
    /// strings are equal, a string and its copy with one byte changed are not, and
    /// every prefix of a string starts it.
    #[test]
    fn agrees_with_std() {
        let base: String = (0..40u8).map(|i| char::from(b'a' + i % 26)).collect();
        for n in 0..=base.len() {
            let a = &base[..n];
            assert!(eq(a, a), "{n}");
            assert!(starts_with(&base, a), "{n}");
            assert_eq!(starts_with(a, &base), n == base.len(), "{n}");
            for at in 0..n {
                let mut b = a.as_bytes().to_vec();
                b[at] = b'Z';
                let b = String::from_utf8(b).unwrap_or_default();
                assert!(!eq(a, &b), "{n} at {at}");
                assert!(!starts_with(&base, &b), "{n} at {at}");
                assert!(!starts_with(&b, a) || n == 0, "{n} at {at}");
            }
            if n > 0 {
                assert!(!eq(a, &base[..n - 1]), "{n}");
            }
        }
    }
}
