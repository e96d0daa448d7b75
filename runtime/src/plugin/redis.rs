//! The `state:global` backend: a plugin's key-value store kept in Redis (`--redis URL`),
//! so every gateway replica shares it (the global rate limiter's buckets). A small RESP2
//! client of our own: a few pooled connections on the gateway's runtime, each command
//! bounded by a short timeout, so a Redis that is slow or gone costs a request at most
//! that long (the plugin's failStrategy then decides). Values and semantics are the local
//! store's ([`super::state`]): the same size limits, counters as 8-byte little-endian
//! integers, TTLs in milliseconds; compare-and-swap and increment are Lua scripts, so each
//! is atomic in Redis.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use super::state::{self, MAX_VALUE, check_key, check_value};

/// Connections per gateway.
const CONNECTIONS: usize = 8;
/// After a failed connect, how long before the next try (calls fail at once meanwhile).
const RECONNECT_AFTER: Duration = Duration::from_millis(500);
/// The largest reply read (a value is at most `MAX_VALUE`).
const MAX_REPLY: usize = MAX_VALUE + 1024;

/// Where Redis is: `redis://[[user]:password@]host[:port][/db]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisUrl {
    pub addr: String,
    pub user: Option<String>,
    pub password: Option<String>,
    pub db: u32,
}

impl std::str::FromStr for RedisUrl {
    type Err = String;

    fn from_str(url: &str) -> Result<Self, String> {
        let rest = url
            .strip_prefix("redis://")
            .ok_or_else(|| format!("{url:?}: a Redis URL starts with redis://"))?;
        let (auth, rest) = match rest.rsplit_once('@') {
            Some((auth, rest)) => (Some(auth), rest),
            None => (None, rest),
        };
        let (hostport, db) = match rest.split_once('/') {
            Some((h, "")) => (h, 0),
            Some((h, db)) => (
                h,
                db.parse()
                    .map_err(|_| format!("{url:?}: database {db:?} is not a number"))?,
            ),
            None => (rest, 0),
        };
        if hostport.is_empty() {
            return Err(format!("{url:?}: no host"));
        }
        let addr = if hostport.rsplit_once(':').is_some_and(|(h, p)| {
            !h.is_empty() && !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit())
        }) && !hostport.ends_with(']')
        {
            hostport.to_string()
        } else {
            format!("{hostport}:6379")
        };
        let (user, password) = match auth {
            None => (None, None),
            Some(a) => match a.split_once(':') {
                Some((u, p)) => ((!u.is_empty()).then(|| u.to_string()), Some(p.to_string())),
                None => (Some(a.to_string()), None),
            },
        };
        Ok(RedisUrl {
            addr,
            user,
            password,
            db,
        })
    }
}

/// One reply.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Reply {
    Status(String),
    Int(i64),
    Bulk(Option<Vec<u8>>),
    Array(Vec<Reply>),
}

type Conn = BufReader<TcpStream>;

/// A pooled client, shared by every `state:global` store of the gateway.
#[derive(Debug)]
pub struct Redis {
    url: RedisUrl,
    timeout: Duration,
    /// Where the connections live: the gateway's runtime (a plugin call may run on the
    /// slow lane's).
    runtime: tokio::runtime::Handle,
    conns: Vec<tokio::sync::Mutex<Option<Conn>>>,
    next: AtomicUsize,
    /// Until when connecting is not tried again.
    down_until: std::sync::Mutex<Option<Instant>>,
}

impl Redis {
    pub fn new(url: RedisUrl, timeout: Duration, runtime: tokio::runtime::Handle) -> Arc<Redis> {
        Arc::new(Redis {
            url,
            timeout,
            runtime,
            conns: (0..CONNECTIONS)
                .map(|_| tokio::sync::Mutex::new(None))
                .collect(),
            next: AtomicUsize::new(0),
            down_until: std::sync::Mutex::new(None),
        })
    }

    /// `PING`: is Redis reachable now?
    pub async fn ping(self: &Arc<Self>) -> Result<(), String> {
        match self.command(vec![b"PING".to_vec()]).await? {
            Reply::Status(s) if s == "PONG" => Ok(()),
            other => Err(format!("unexpected answer to PING: {other:?}")),
        }
    }

    /// Run one command on the gateway's runtime, within the timeout. The command runs to
    /// its end (or its timeout) even when the caller goes away, so a connection never
    /// goes back to its slot with a reply left unread.
    async fn command(self: &Arc<Self>, args: Vec<Vec<u8>>) -> Result<Reply, String> {
        let me = self.clone();
        let task = self.runtime.spawn(async move { me.run(&args).await });
        task.await.map_err(|e| format!("Redis command lost: {e}"))?
    }

    async fn run(&self, args: &[Vec<u8>]) -> Result<Reply, String> {
        let deadline = tokio::time::Instant::now() + self.timeout;
        let late = || {
            format!(
                "Redis at {} gave no answer within {:?}",
                self.url.addr, self.timeout
            )
        };
        // A free connection if there is one, else wait for the next in turn.
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let n = self.conns.len();
        let free = (0..n).find_map(|i| self.conns[(start + i) % n].try_lock().ok());
        let mut guard = match free {
            Some(g) => g,
            None => tokio::time::timeout_at(deadline, self.conns[start % n].lock())
                .await
                .map_err(|_| late())?,
        };
        if guard.is_none() {
            match tokio::time::timeout_at(deadline, self.connect()).await {
                Ok(c) => *guard = Some(c?),
                Err(_) => {
                    self.mark_down();
                    return Err(late());
                }
            }
        }
        let Some(conn) = guard.as_mut() else {
            return Err("no connection".into());
        };
        let exchange = async {
            conn.get_mut().write_all(&encode(args)).await?;
            read_reply(conn, 0).await
        };
        match tokio::time::timeout_at(deadline, exchange).await {
            Ok(Ok(Ok(reply))) => Ok(reply),
            // A Redis error reply: the connection is fine.
            Ok(Ok(Err(message))) => Err(format!("Redis: {message}")),
            Ok(Err(e)) => {
                *guard = None;
                Err(format!("Redis at {}: {e}", self.url.addr))
            }
            // Cut off mid-exchange: the reply may still come, so the connection goes.
            Err(_) => {
                *guard = None;
                Err(late())
            }
        }
    }

    /// Connecting is not tried again for a while.
    fn mark_down(&self) {
        *self.down_until.lock().unwrap_or_else(|e| e.into_inner()) =
            Some(Instant::now() + RECONNECT_AFTER);
    }

    async fn connect(&self) -> Result<Conn, String> {
        let lock = || self.down_until.lock().unwrap_or_else(|e| e.into_inner());
        if lock().is_some_and(|until| Instant::now() < until) {
            return Err(format!("Redis at {} is unreachable", self.url.addr));
        }
        let attempt = async {
            let stream = TcpStream::connect(&self.url.addr)
                .await
                .map_err(|e| e.to_string())?;
            let _ = stream.set_nodelay(true);
            let mut conn = BufReader::new(stream);
            let mut setup = Vec::new();
            if let Some(password) = &self.url.password {
                let mut auth = vec![b"AUTH".to_vec()];
                auth.extend(self.url.user.iter().map(|u| u.as_bytes().to_vec()));
                auth.push(password.as_bytes().to_vec());
                setup.push(auth);
            }
            if self.url.db != 0 {
                setup.push(vec![
                    b"SELECT".to_vec(),
                    self.url.db.to_string().into_bytes(),
                ]);
            }
            for cmd in setup {
                conn.get_mut()
                    .write_all(&encode(&cmd))
                    .await
                    .map_err(|e| e.to_string())?;
                read_reply(&mut conn, 0)
                    .await
                    .map_err(|e| e.to_string())??;
            }
            Ok::<_, String>(conn)
        };
        match attempt.await {
            Ok(c) => {
                *lock() = None;
                Ok(c)
            }
            Err(e) => {
                self.mark_down();
                Err(format!("Redis at {}: {e}", self.url.addr))
            }
        }
    }
}

fn encode(args: &[Vec<u8>]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// One reply; the outer error is the connection's, the inner one Redis's error reply.
async fn read_reply(conn: &mut Conn, depth: usize) -> std::io::Result<Result<Reply, String>> {
    let bad = |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_string());
    let mut line = Vec::new();
    let n = (&mut *conn)
        .take(MAX_REPLY as u64)
        .read_until(b'\n', &mut line)
        .await?;
    if n == 0 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "connection closed",
        ));
    }
    if !line.ends_with(b"\r\n") {
        return Err(bad("a reply line without CRLF"));
    }
    let text = String::from_utf8_lossy(&line[1..line.len() - 2]).into_owned();
    let int = || text.parse::<i64>().map_err(|_| bad("a bad integer"));
    Ok(match line[0] {
        b'+' => Ok(Reply::Status(text)),
        b'-' => Err(text),
        b':' => Ok(Reply::Int(int()?)),
        b'$' => {
            let len = int()?;
            if len < 0 {
                return Ok(Ok(Reply::Bulk(None)));
            }
            let len = usize::try_from(len).map_err(|_| bad("a bad length"))?;
            if len > MAX_REPLY {
                return Err(bad("a reply larger than any value"));
            }
            let mut buf = vec![0; len + 2];
            conn.read_exact(&mut buf).await?;
            buf.truncate(len);
            Ok(Reply::Bulk(Some(buf)))
        }
        b'*' if depth < 2 => {
            let len = int()?;
            let mut items = Vec::new();
            for _ in 0..len.clamp(0, 64) {
                match Box::pin(read_reply(conn, depth + 1)).await? {
                    Ok(r) => items.push(r),
                    Err(e) => return Ok(Err(e)),
                }
            }
            Ok(Reply::Array(items))
        }
        _ => return Err(bad("an unknown reply type")),
    })
}

/// Compare-and-swap: ARGV = has-expected, expected, has-value, value, ttl-ms ('' none).
const CAS: &str = "local cur = redis.call('GET', KEYS[1]) \
if ARGV[1] == '0' then if cur then return 0 end \
elseif (not cur) or cur ~= ARGV[2] then return 0 end \
if ARGV[3] == '0' then redis.call('DEL', KEYS[1]) \
elseif ARGV[5] ~= '' then redis.call('SET', KEYS[1], ARGV[4], 'PX', ARGV[5]) \
else redis.call('SET', KEYS[1], ARGV[4]) end \
return 1";

/// Increment an 8-byte little-endian counter: ARGV = delta, ttl-ms ('' none) used only
/// when the key is created.
const INCREMENT: &str = "local cur = redis.call('GET', KEYS[1]) \
local n = 0 \
if cur then if #cur ~= 8 then return redis.error_reply('the value is not a counter') end \
n = struct.unpack('<i8', cur) end \
n = n + tonumber(ARGV[1]) \
if cur then redis.call('SET', KEYS[1], struct.pack('<i8', n), 'KEEPTTL') \
elseif ARGV[2] ~= '' then redis.call('SET', KEYS[1], struct.pack('<i8', n), 'PX', ARGV[2]) \
else redis.call('SET', KEYS[1], struct.pack('<i8', n)) end \
return n";

/// One plugin's `state:global` store in one namespace: its keys are
/// `wasmgate:<plugin>:<namespace>:<key>` in Redis.
#[derive(Debug)]
pub struct RedisStore {
    prefix: String,
    redis: Arc<Redis>,
}

fn ttl_arg(ttl_ms: Option<u64>) -> Vec<u8> {
    ttl_ms
        .map(|ms| state::ttl(ms).to_string().into_bytes())
        .unwrap_or_default()
}

fn unexpected(reply: &Reply) -> String {
    format!("unexpected answer from Redis: {reply:?}")
}

impl RedisStore {
    pub fn new(redis: Arc<Redis>, plugin: &str, namespace: &str) -> RedisStore {
        RedisStore {
            prefix: format!("wasmgate:{plugin}:{namespace}:"),
            redis,
        }
    }

    fn key(&self, key: &str) -> Vec<u8> {
        format!("{}{key}", self.prefix).into_bytes()
    }

    pub async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, String> {
        check_key(key)?;
        match self
            .redis
            .command(vec![b"GET".to_vec(), self.key(key)])
            .await?
        {
            Reply::Bulk(v) => Ok(v),
            other => Err(unexpected(&other)),
        }
    }

    pub async fn set(&self, key: &str, value: Vec<u8>, ttl_ms: Option<u64>) -> Result<(), String> {
        check_key(key)?;
        check_value(&value)?;
        let mut cmd = vec![b"SET".to_vec(), self.key(key), value];
        if ttl_ms.is_some() {
            cmd.extend([b"PX".to_vec(), ttl_arg(ttl_ms)]);
        }
        match self.redis.command(cmd).await? {
            Reply::Status(_) => Ok(()),
            other => Err(unexpected(&other)),
        }
    }

    pub async fn delete(&self, key: &str) -> Result<bool, String> {
        check_key(key)?;
        match self
            .redis
            .command(vec![b"DEL".to_vec(), self.key(key)])
            .await?
        {
            Reply::Int(n) => Ok(n > 0),
            other => Err(unexpected(&other)),
        }
    }

    pub async fn increment(
        &self,
        key: &str,
        delta: i64,
        ttl_ms: Option<u64>,
    ) -> Result<i64, String> {
        check_key(key)?;
        let cmd = vec![
            b"EVAL".to_vec(),
            INCREMENT.as_bytes().to_vec(),
            b"1".to_vec(),
            self.key(key),
            delta.to_string().into_bytes(),
            ttl_arg(ttl_ms),
        ];
        match self.redis.command(cmd).await? {
            Reply::Int(n) => Ok(n),
            other => Err(unexpected(&other)),
        }
    }

    pub async fn compare_and_swap(
        &self,
        key: &str,
        expected: Option<Vec<u8>>,
        value: Option<Vec<u8>>,
        ttl_ms: Option<u64>,
    ) -> Result<bool, String> {
        check_key(key)?;
        if let Some(v) = &value {
            check_value(v)?;
        }
        let flag = |b: bool| if b { b"1".to_vec() } else { b"0".to_vec() };
        let cmd = vec![
            b"EVAL".to_vec(),
            CAS.as_bytes().to_vec(),
            b"1".to_vec(),
            self.key(key),
            flag(expected.is_some()),
            expected.unwrap_or_default(),
            flag(value.is_some()),
            value.unwrap_or_default(),
            ttl_arg(ttl_ms),
        ];
        match self.redis.command(cmd).await? {
            Reply::Int(n) => Ok(n == 1),
            other => Err(unexpected(&other)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let u: RedisUrl = "redis://127.0.0.1:6380/2".parse().expect("url");
        assert_eq!(
            (u.addr.as_str(), u.db, u.password),
            ("127.0.0.1:6380", 2, None)
        );
        let u: RedisUrl = "redis://:secret@cache".parse().expect("url");
        assert_eq!(
            (u.addr.as_str(), u.user, u.password.as_deref()),
            ("cache:6379", None, Some("secret"))
        );
        let u: RedisUrl = "redis://me:pw@[::1]:7000/".parse().expect("url");
        assert_eq!(
            (u.addr.as_str(), u.user.as_deref()),
            ("[::1]:7000", Some("me"))
        );
        assert!("http://x".parse::<RedisUrl>().is_err());
        assert!("redis:///0".parse::<RedisUrl>().is_err());
        assert!("redis://x/zero".parse::<RedisUrl>().is_err());
    }

    #[test]
    fn commands_are_resp_arrays() {
        assert_eq!(
            encode(&[b"GET".to_vec(), b"k".to_vec()]),
            b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n".to_vec()
        );
    }
}
