//! Consistent hashing (`consistentHash`): the key a request hashes to (a header, a
//! cookie, the client's address or a query parameter), and the two tables Envoy offers
//! to look it up in, a ring (`ringHash`, the default) and Maglev (`maglev`).
//!
//! Hashes are wasmgate's own 64-bit hash (FNV-1a with a strong finalizer), stable
//! across processes and restarts of the same release, so gateways of one fleet send a
//! key to the same endpoint; they are not Envoy's xxHash values.

use std::net::IpAddr;

use http::{HeaderMap, HeaderValue, header};
use wasmgate_config::model::traffic::{CookieKey, HashKey};

use super::Target;

/// The most points a ring gets (Envoy's limit is 8M; 1M keeps a ring under 16 MiB).
const MAX_RING: u64 = 1 << 20;

/// wasmgate's 64-bit hash of `bytes`.
pub fn hash64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    // splitmix64's finalizer: FNV alone clusters similar keys.
    h = (h ^ (h >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h = (h ^ (h >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// A ring of points, each an endpoint's, sorted by hash; a key goes to the first point
/// at or after its hash.
#[derive(Debug)]
pub struct Ring {
    points: Box<[(u64, u32)]>,
    endpoints: usize,
}

impl Ring {
    /// Each endpoint gets points in proportion to its weight, at least
    /// `minimum_size` in all (Envoy's `minimum_ring_size`).
    pub fn new(targets: &[Target], weights: &[u32], minimum_size: u64) -> Ring {
        let total: u64 = weights.iter().map(|w| u64::from(*w)).sum::<u64>().max(1);
        // Points per unit of weight, so that the ring has at least the minimum.
        let per_weight = minimum_size.clamp(1, MAX_RING).div_ceil(total).max(1);
        let mut points = Vec::new();
        for (i, (t, w)) in targets.iter().zip(weights).enumerate() {
            let count = (u64::from(*w) * per_weight)
                .min(MAX_RING / targets.len().max(1) as u64)
                .max(1);
            let mut key = Vec::with_capacity(t.authority().len() + 12);
            for n in 0..count {
                key.clear();
                key.extend_from_slice(t.authority().as_bytes());
                key.push(b'_');
                key.extend_from_slice(n.to_string().as_bytes());
                points.push((hash64(&key), i as u32));
            }
        }
        points.sort_unstable();
        Ring {
            points: points.into_boxed_slice(),
            endpoints: targets.len(),
        }
    }

    pub fn endpoints(&self) -> usize {
        self.endpoints
    }

    /// The endpoint of the first healthy point at or after `hash` (any, if none is).
    pub fn pick(&self, hash: u64, healthy: impl Fn(usize) -> bool) -> usize {
        let n = self.points.len();
        if n == 0 {
            return 0;
        }
        let start = self.points.partition_point(|(h, _)| *h < hash) % n;
        (0..n)
            .map(|k| self.points[(start + k) % n].1 as usize)
            .find(|i| healthy(*i))
            .unwrap_or(self.points[start].1 as usize)
    }
}

/// A Maglev lookup table: every endpoint fills slots in its own permutation order, in
/// turn, as often as its weight, until the table is full.
#[derive(Debug)]
pub struct Maglev {
    table: Box<[u32]>,
    endpoints: usize,
}

impl Maglev {
    pub fn new(targets: &[Target], weights: &[u32], table_size: u64) -> Maglev {
        let m = table_size.clamp(2, 5_000_011);
        let mut table = vec![u32::MAX; m as usize];
        let n = targets.len();
        if n == 0 {
            return Maglev {
                table: Box::new([]),
                endpoints: 0,
            };
        }
        let perms: Vec<(u64, u64)> = targets
            .iter()
            .map(|t| {
                let h = hash64(t.authority().as_bytes());
                let offset = h % m;
                let skip = hash64(&h.to_le_bytes()) % (m - 1) + 1;
                (offset, skip)
            })
            .collect();
        let most = u64::from(weights.iter().copied().max().unwrap_or(1).max(1));
        let mut next = vec![0u64; n];
        let mut credit = vec![0u64; n];
        let mut filled = 0u64;
        'fill: loop {
            for i in 0..n {
                credit[i] += u64::from(weights.get(i).copied().unwrap_or(1).max(1));
                if credit[i] < most {
                    continue;
                }
                credit[i] -= most;
                let (offset, skip) = perms[i];
                loop {
                    let slot = ((offset + next[i] * skip) % m) as usize;
                    next[i] += 1;
                    if table[slot] == u32::MAX {
                        table[slot] = i as u32;
                        filled += 1;
                        break;
                    }
                }
                if filled == m {
                    break 'fill;
                }
            }
        }
        Maglev {
            table: table.into_boxed_slice(),
            endpoints: n,
        }
    }

    pub fn endpoints(&self) -> usize {
        self.endpoints
    }

    /// The endpoint of `hash`'s slot; when that one is unhealthy, of the slot a
    /// rehash finds (a fixed sequence, so a key keeps going to one place).
    pub fn pick(&self, hash: u64, healthy: impl Fn(usize) -> bool) -> usize {
        let m = self.table.len() as u64;
        if m == 0 {
            return 0;
        }
        let mut h = hash;
        let first = self.table[(h % m) as usize] as usize;
        for _ in 0..(4 * self.endpoints.max(1)) {
            let i = self.table[(h % m) as usize] as usize;
            if healthy(i) {
                return i;
            }
            h = hash64(&h.to_le_bytes());
        }
        first
    }
}

/// What a request hashes to, and the cookie to give the client when the cluster hashes
/// on a cookie with a `ttl` and the request had none.
#[derive(Debug, Default)]
pub struct RequestHash {
    pub hash: Option<u64>,
    pub set_cookie: Option<HeaderValue>,
}

/// The hash of a request under `key`. `None` when the request lacks the key (then it
/// lands on any endpoint, as in Envoy) — except a missing cookie with a `ttl`, which is
/// made up from the connection's addresses and handed to the client.
pub fn request_hash(
    key: &HashKey,
    headers: &HeaderMap,
    query: Option<&str>,
    client: std::net::SocketAddr,
    local: std::net::SocketAddr,
) -> RequestHash {
    let hash = match key {
        HashKey::Header(name) if name.is_empty() => None,
        HashKey::Header(name) => {
            let mut values = headers.get_all(name.as_str()).iter().peekable();
            values.peek().is_some().then(|| {
                // Several values hash as one, joined, as Envoy does.
                let mut joined = Vec::new();
                for (i, v) in values.enumerate() {
                    if i > 0 {
                        joined.push(b',');
                    }
                    joined.extend_from_slice(v.as_bytes());
                }
                hash64(&joined)
            })
        }
        HashKey::SourceIp => Some(match client.ip() {
            IpAddr::V4(a) => hash64(&a.octets()),
            IpAddr::V6(a) => hash64(&a.octets()),
        }),
        HashKey::QueryParameter(name) => query.and_then(|q| {
            q.split('&')
                .filter_map(|pair| pair.split_once('=').or(Some((pair, ""))))
                .find(|(k, _)| *k == name.as_str())
                .map(|(_, v)| hash64(v.as_bytes()))
        }),
        HashKey::Cookie(c) => {
            if let Some(v) = cookie(headers, &c.name) {
                Some(hash64(v.as_bytes()))
            } else if c.ttl.is_some() {
                let made = format!("{:016x}", hash64(format!("{client}{local}").as_bytes()));
                return RequestHash {
                    hash: Some(hash64(made.as_bytes())),
                    set_cookie: set_cookie(c, &made),
                };
            } else {
                None
            }
        }
    };
    RequestHash {
        hash,
        set_cookie: None,
    }
}

/// The value of cookie `name` in the request's `Cookie` headers (quotes removed).
fn cookie<'h>(headers: &'h HeaderMap, name: &str) -> Option<&'h str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v.trim_matches('"'))
}

/// `name="value"; Max-Age=ttl; Path=path; attributes; HttpOnly`, as Envoy writes it.
fn set_cookie(c: &CookieKey, value: &str) -> Option<HeaderValue> {
    let mut text = format!("{}=\"{value}\"", c.name);
    if let Some(ttl) = c.ttl.filter(|t| t.as_secs() > 0) {
        text.push_str(&format!("; Max-Age={}", ttl.as_secs()));
    }
    if !c.path.is_empty() {
        text.push_str(&format!("; Path={}", c.path));
    }
    for (k, v) in &c.attributes {
        if v.is_empty() {
            text.push_str(&format!("; {k}"));
        } else {
            text.push_str(&format!("; {k}={v}"));
        }
    }
    text.push_str("; HttpOnly");
    HeaderValue::from_str(&text).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn targets(n: u16) -> Vec<Target> {
        (0..n)
            .map(|i| Target::new("127.0.0.1".into(), 9000 + i))
            .collect()
    }

    /// How many of `keys` keys move when endpoint 2 of 4 goes away.
    fn moved(pick: impl Fn(u64, &dyn Fn(usize) -> bool) -> usize) -> (usize, usize) {
        let (mut moved, mut stayed) = (0, 0);
        for k in 0..2000u64 {
            let h = hash64(&k.to_le_bytes());
            let before = pick(h, &|_| true);
            let after = pick(h, &|i| i != 2);
            assert_ne!(after, 2);
            if before == 2 {
                continue;
            }
            if before == after {
                stayed += 1;
            } else {
                moved += 1;
            }
        }
        (moved, stayed)
    }

    #[test]
    fn ring_spreads_by_weight_and_keeps_keys_of_healthy_endpoints() {
        let t = targets(4);
        let ring = Ring::new(&t, &[1, 1, 1, 3], 1024);
        let mut counts = [0usize; 4];
        for k in 0..6000u64 {
            counts[ring.pick(hash64(&k.to_le_bytes()), |_| true)] += 1;
        }
        assert!(counts[3] > counts[0] * 2, "weight 3 gets more: {counts:?}");
        assert!(counts.iter().all(|c| *c > 500), "{counts:?}");
        let (moved, stayed) = moved(|h, ok| ring.pick(h, ok));
        assert_eq!(moved, 0, "{stayed} stayed");
    }

    #[test]
    fn maglev_fills_the_table_evenly() {
        let t = targets(3);
        let m = Maglev::new(&t, &[1, 1, 1], 65537);
        let mut counts = [0usize; 3];
        for slot in m.table.iter() {
            counts[*slot as usize] += 1;
        }
        for c in counts {
            assert!((21000..=22700).contains(&c), "{counts:?}");
        }
        let m = Maglev::new(&targets(4), &[1, 1, 1, 1], 65537);
        let (moved, _) = moved(|h, ok| m.pick(h, ok));
        assert_eq!(moved, 0);
    }

    #[test]
    fn request_keys() {
        let client: std::net::SocketAddr = "10.0.0.1:5555".parse().expect("addr");
        let local: std::net::SocketAddr = "127.0.0.1:80".parse().expect("addr");
        let mut h = HeaderMap::new();
        h.insert("x-user", HeaderValue::from_static("ann"));
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; session=\"xyz\""),
        );
        let key = HashKey::Header("x-user".into());
        let a = request_hash(&key, &h, None, client, local).hash;
        assert_eq!(a, Some(hash64(b"ann")));
        let missing = HashKey::Header("x-other".into());
        assert_eq!(request_hash(&missing, &h, None, client, local).hash, None);
        let q = HashKey::QueryParameter("id".into());
        assert_eq!(
            request_hash(&q, &h, Some("x=1&id=7"), client, local).hash,
            Some(hash64(b"7"))
        );
        let c = CookieKey {
            name: "session".into(),
            path: "/".into(),
            ttl: Some(std::time::Duration::from_secs(60)),
            attributes: vec![("SameSite".into(), "Strict".into())],
        };
        let sent = request_hash(&HashKey::Cookie(c.clone()), &h, None, client, local);
        assert_eq!(sent.hash, Some(hash64(b"xyz")));
        assert!(sent.set_cookie.is_none());
        let fresh = request_hash(
            &HashKey::Cookie(CookieKey {
                name: "other".into(),
                ..c
            }),
            &h,
            None,
            client,
            local,
        );
        let text = fresh
            .set_cookie
            .as_ref()
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        assert!(
            text.starts_with("other=\"")
                && text.ends_with("; Max-Age=60; Path=/; SameSite=Strict; HttpOnly"),
            "{text}"
        );
        let value = text.split('"').nth(1).unwrap_or_default();
        assert_eq!(
            fresh.hash,
            Some(hash64(value.as_bytes())),
            "the cookie sent back hashes alike"
        );
    }
}
