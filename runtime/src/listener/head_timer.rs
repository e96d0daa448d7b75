//! The timer hyper's HTTP/1 server uses for its request head timeout
//! (`--request-headers-timeout-seconds`, the slow-loris guard; hyper starts it when it
//! waits for a head, so it also ends a keep-alive connection idle that long), and for
//! the same timeout on a connection whose protocol is not known yet (the deadline
//! `proxy::framing::Watched` holds).
//!
//! hyper makes one sleep per request, polls it while the head is incomplete and drops it
//! once the head is in. With tokio's timer that is a timer-wheel entry made, registered
//! and removed for every request, about 1,500 instructions (callgrind, scenario 1),
//! although the timeout almost never fires. Here a sleep is a slot in a list shared by
//! one listener's connections on one worker, and one task looks at the list once per
//! [`TICK`] while it holds any: making and dropping a sleep is a lock and a slot. A head
//! timeout fires up to one tick late: little against the 30 s default, and the reason
//! the flag counts whole seconds.

use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use hyper::rt::{Sleep, Timer};

/// How often expired sleeps are looked for.
pub const TICK: Duration = Duration::from_secs(1);

/// The head timer of one listener on one worker; clones share its sleepers.
#[derive(Clone, Default)]
pub struct HeadTimer {
    sleepers: Arc<Mutex<Sleepers>>,
}

#[derive(Default)]
struct Sleepers {
    slots: Vec<Slot>,
    /// Slots not in use, for the next sleep.
    free: Vec<usize>,
    /// Slots in use.
    live: usize,
    /// Whether the task that fires sleeps runs.
    ticking: bool,
}

struct Slot {
    deadline: Instant,
    waker: Option<Waker>,
    fired: bool,
}

#[cfg(test)]
impl HeadTimer {
    fn lock(&self) -> MutexGuard<'_, Sleepers> {
        lock(&self.sleepers)
    }

    /// Sleeps made and not dropped.
    fn live(&self) -> usize {
        self.lock().live
    }

    /// Whether the firing task runs.
    fn ticking(&self) -> bool {
        self.lock().ticking
    }
}

/// A poisoned lock only means a panic elsewhere: the slots are still consistent.
fn lock(sleepers: &Mutex<Sleepers>) -> MutexGuard<'_, Sleepers> {
    sleepers.lock().unwrap_or_else(|p| p.into_inner())
}

/// Now on tokio's clock (which tests may pause): what the sleeps are made and fired by.
/// hyper's own deadlines start from [`HeadTimer::now`], the real clock, so the two agree
/// only while tokio's clock runs: hyper's server is not run under paused time.
fn now() -> Instant {
    tokio::time::Instant::now().into_std()
}

impl Timer for HeadTimer {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn Sleep>> {
        self.sleep_until(now() + duration)
    }

    /// What hyper adds the head timeout to, once per request: the epoch thread's
    /// clock, a millisecond or two behind (more only while that thread waits for a CPU),
    /// where the system clock was a read per request. The sleeps fire up to a [`TICK`], a
    /// second, late anyway.
    fn now(&self) -> Instant {
        crate::plugin::coarse::now()
    }

    fn sleep_until(&self, deadline: Instant) -> Pin<Box<dyn Sleep>> {
        Box::pin(HeadSleep {
            deadline,
            slot: None,
            sleepers: self.sleepers.clone(),
        })
    }

    fn reset(&self, sleep: &mut Pin<Box<dyn Sleep>>, new_deadline: Instant) {
        match sleep.as_mut().downcast_mut_pin::<HeadSleep>() {
            Some(mut s) => s.as_mut().get_mut().reset(new_deadline),
            None => *sleep = self.sleep_until(new_deadline),
        }
    }
}

/// One of hyper's sleeps: it takes a slot when first polled.
struct HeadSleep {
    deadline: Instant,
    slot: Option<usize>,
    sleepers: Arc<Mutex<Sleepers>>,
}

impl HeadSleep {
    fn reset(&mut self, deadline: Instant) {
        self.deadline = deadline;
        if let Some(i) = self.slot {
            let mut s = lock(&self.sleepers);
            if let Some(slot) = s.slots.get_mut(i) {
                slot.deadline = deadline;
                slot.fired = false;
            }
        }
    }
}

impl Future for HeadSleep {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.get_mut();
        let mut s = lock(&this.sleepers);
        match this.slot.and_then(|i| s.slots.get_mut(i)) {
            Some(slot) if slot.fired => return Poll::Ready(()),
            Some(slot) => {
                if !slot.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                    slot.waker = Some(cx.waker().clone());
                }
            }
            None => {
                let slot = Slot {
                    deadline: this.deadline,
                    waker: Some(cx.waker().clone()),
                    fired: false,
                };
                let i = match s.free.pop() {
                    Some(i) => {
                        s.slots[i] = slot;
                        i
                    }
                    None => {
                        s.slots.push(slot);
                        s.slots.len() - 1
                    }
                };
                this.slot = Some(i);
                s.live += 1;
                // Outside a tokio runtime nothing fires (hyper runs on one).
                if !s.ticking
                    && let Ok(runtime) = tokio::runtime::Handle::try_current()
                {
                    s.ticking = true;
                    runtime.spawn(fire(Arc::downgrade(&this.sleepers)));
                }
            }
        }
        Poll::Pending
    }
}

impl Sleep for HeadSleep {}

impl Drop for HeadSleep {
    fn drop(&mut self) {
        if let Some(i) = self.slot.take() {
            let mut s = lock(&self.sleepers);
            if let Some(slot) = s.slots.get_mut(i) {
                slot.waker = None;
                s.free.push(i);
                s.live -= 1;
            }
        }
    }
}

/// Wake the sleeps whose deadline passed, once a tick, until none is left.
async fn fire(sleepers: Weak<Mutex<Sleepers>>) {
    let mut due = Vec::new();
    loop {
        tokio::time::sleep(TICK).await;
        let Some(sleepers) = sleepers.upgrade() else {
            return;
        };
        {
            let mut s = lock(&sleepers);
            if s.live == 0 {
                s.ticking = false;
                return;
            }
            let now = now();
            for slot in &mut s.slots {
                if !slot.fired
                    && slot.deadline <= now
                    && let Some(waker) = slot.waker.take()
                {
                    slot.fired = true;
                    due.push(waker);
                }
            }
        }
        // Woken outside the lock: a woken task may poll (and lock) at once.
        for waker in due.drain(..) {
            waker.wake();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::framing::Watched;
    use std::future::poll_fn;

    /// Poll `sleep` once, Pending or Ready.
    async fn poll_once(sleep: &mut Pin<Box<dyn Sleep>>) -> Poll<()> {
        poll_fn(|cx| Poll::Ready(sleep.as_mut().poll(cx))).await
    }

    #[tokio::test(start_paused = true)]
    async fn a_sleep_fires_within_a_tick_of_its_deadline() {
        let timer = HeadTimer::default();
        let start = now();
        let mut sleep = timer.sleep(Duration::from_millis(2500));
        assert!(poll_once(&mut sleep).await.is_pending());
        assert_eq!(timer.live(), 1);
        assert!(timer.ticking());
        sleep.as_mut().await;
        let took = now() - start;
        assert!(
            took >= Duration::from_millis(2500) && took <= Duration::from_millis(2500) + TICK,
            "fired after {took:?}"
        );
        drop(sleep);
        assert_eq!(timer.live(), 0);
        // The firing task stops at its next tick once no sleep is left...
        tokio::time::sleep(TICK * 2).await;
        assert!(!timer.ticking());
        // ...and the next sleep starts it again.
        let start = now();
        let mut again = timer.sleep(Duration::from_secs(2));
        assert!(poll_once(&mut again).await.is_pending());
        assert!(timer.ticking());
        again.as_mut().await;
        let took = now() - start;
        assert!(took >= Duration::from_secs(2) && took <= Duration::from_secs(2) + TICK);
    }

    #[tokio::test(start_paused = true)]
    async fn only_the_sleeps_that_are_due_fire() {
        let timer = HeadTimer::default();
        let mut soon = timer.sleep(Duration::from_secs(1));
        let mut later = timer.sleep(Duration::from_secs(30));
        assert!(poll_once(&mut soon).await.is_pending());
        assert!(poll_once(&mut later).await.is_pending());
        soon.as_mut().await;
        tokio::time::sleep(TICK * 3).await;
        assert!(poll_once(&mut later).await.is_pending(), "30 s are not up");
        assert_eq!(timer.live(), 2);
    }

    #[tokio::test(start_paused = true)]
    async fn dropped_sleeps_free_their_slots_and_never_fire() {
        let timer = HeadTimer::default();
        for _ in 0..3 {
            let mut sleep = timer.sleep(Duration::from_secs(1));
            assert!(poll_once(&mut sleep).await.is_pending());
        }
        assert_eq!(timer.live(), 0, "each sleep gave its slot back");
        assert_eq!(timer.lock().slots.len(), 1, "and the next one took it");
        // Past the dropped sleeps' deadline nothing was marked fired.
        tokio::time::sleep(TICK * 3).await;
        assert!(
            timer
                .lock()
                .slots
                .iter()
                .all(|s| !s.fired && s.waker.is_none())
        );
        // A sleep never polled takes no slot.
        let unpolled = timer.sleep(Duration::from_secs(1));
        assert_eq!(timer.live(), 0);
        drop(unpolled);
    }

    /// Read from `io` until it fails or ends: the error, if any.
    async fn read_all(io: &mut Watched<tokio::io::DuplexStream>) -> Option<std::io::Error> {
        use tokio::io::AsyncReadExt;
        let mut buf = [0u8; 64];
        loop {
            match io.read(&mut buf).await {
                Ok(0) => return None,
                Ok(_) => {}
                Err(e) => return Some(e),
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn first_bytes_time_out_until_the_protocol_is_known() {
        use tokio::io::AsyncWriteExt;
        let timer = HeadTimer::default();
        for (sent, closed) in [
            (&b""[..], true),
            (b"P", true),
            (b"PRI * HTTP/2.0\r\n", true),
            (b"G", false),
            (b"PRX", false),
            (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", false),
        ] {
            let (client, server) = tokio::io::duplex(64);
            let (mut io, _) = Watched::new(server, timer.sleep(Duration::from_secs(2)));
            let mut client = client;
            client.write_all(sent).await.expect("write");
            let start = now();
            // The client stays, silent after `sent`: only the deadline can end the read.
            let read = tokio::time::timeout(Duration::from_secs(10), read_all(&mut io)).await;
            match read {
                Ok(Some(e)) => {
                    assert!(closed, "{sent:?}: {e}");
                    assert_eq!(e.kind(), std::io::ErrorKind::TimedOut);
                    assert!(now() - start <= Duration::from_secs(2) + TICK);
                }
                Ok(None) => panic!("{sent:?}: ended"),
                Err(_) => assert!(!closed, "{sent:?}: still open after 10 s"),
            }
            drop(client);
        }
        assert_eq!(timer.live(), 0, "every deadline gave its slot back");
    }

    #[tokio::test(start_paused = true)]
    async fn first_bytes_after_a_pause_and_an_end_are_not_timed_out() {
        use tokio::io::AsyncWriteExt;
        let timer = HeadTimer::default();
        let (mut client, server) = tokio::io::duplex(64);
        let (mut io, _) = Watched::new(server, timer.sleep(Duration::from_secs(2)));
        let reader = tokio::spawn(async move { read_all(&mut io).await });
        tokio::time::sleep(Duration::from_millis(1500)).await;
        client
            .write_all(b"GET / HTTP/1.1\r\n")
            .await
            .expect("write");
        tokio::time::sleep(Duration::from_secs(5)).await;
        drop(client);
        let error = reader.await.expect("reader");
        assert!(error.is_none(), "{error:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn reset_moves_the_deadline() {
        let timer = HeadTimer::default();
        let start = now();
        let mut sleep = timer.sleep(Duration::from_secs(1));
        assert!(poll_once(&mut sleep).await.is_pending());
        timer.reset(&mut sleep, start + Duration::from_secs(5));
        sleep.as_mut().await;
        let took = now() - start;
        assert!(took >= Duration::from_secs(5), "{took:?}");
        // A fired sleep reset to later sleeps again.
        timer.reset(&mut sleep, now() + Duration::from_secs(3));
        assert!(poll_once(&mut sleep).await.is_pending());
    }
}
