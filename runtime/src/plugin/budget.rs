//! What one plugin may hold and use, all its instances together (every namespace's pool,
//! and the pools of snapshots still draining after a reload): instances, linear memory,
//! and CPU per second. Limits per call (deadline, memory per instance) bound one call;
//! these bound a plugin that many clients call at once, so one plugin cannot take the
//! gateway's memory or CPU from the others.
//!
//! - Instances in use: at most `max_instances` calls of the plugin hold an instance at
//!   once; past it the call fails as unavailable (503 `LR` when the plugin fails closed,
//!   skipped when it fails open — never silently skipped for FAIL_CLOSE). Idle instances
//!   kept in pools do not count (each pool keeps a few), so idle pools of one namespace,
//!   or of a snapshot still draining after a reload, never starve another's calls.
//! - Memory: every instance's linear memory counts against the plugin's total; a growth
//!   past it traps that call (as the per-instance limit does), and no new instance is
//!   made while the total is reached.
//! - CPU: counted in epoch ticks (1 ms) that the plugin's running calls see, per second.
//!   A call that spans a tick counts one whole tick, so short calls count in proportion
//!   to how often they straddle one: a fair estimate that costs the calls that finish
//!   inside a tick nothing. Past the budget a running call stops at its next tick and
//!   new calls are refused as unavailable until the next second.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};

use wasmtime::ResourceLimiter;

/// The budgets of one plugin (by name), shared by all its pools.
#[derive(Debug)]
pub struct Budget {
    max_instances: u32,
    max_memory: usize,
    /// Ticks per second; 0: no CPU budget.
    cpu_ticks: u32,
    /// Instances alive (busy or idle).
    instances: AtomicU32,
    /// Instances in use by a call.
    busy: AtomicU32,
    memory: AtomicUsize,
    /// The second (since `epoch`, in `coarse::millis`) the tick count is for, and the count.
    second: AtomicU64,
    ticks: AtomicU32,
    epoch: u64,
}

impl Budget {
    pub fn new(max_instances: u32, max_memory: usize, cpu_ticks: u32) -> Self {
        Budget {
            max_instances,
            max_memory,
            cpu_ticks,
            instances: AtomicU32::new(0),
            busy: AtomicU32::new(0),
            memory: AtomicUsize::new(0),
            second: AtomicU64::new(0),
            ticks: AtomicU32::new(0),
            epoch: super::coarse::millis(),
        }
    }

    /// Instances alive and memory held now.
    pub fn usage(&self) -> (u32, usize) {
        (
            self.instances.load(Ordering::Relaxed),
            self.memory.load(Ordering::Relaxed),
        )
    }

    /// Room for one more instance (its plugin's memory is not all held)? Counts it if
    /// so; its [`Limiter`] gives it back.
    pub fn admit(self: &Arc<Self>, per_instance: usize) -> Result<Limiter, String> {
        if self.memory.load(Ordering::Relaxed) >= self.max_memory {
            return Err(format!(
                "its instances hold {} MiB, its limit (--plugin-memory-total-mib)",
                self.max_memory >> 20
            ));
        }
        self.instances.fetch_add(1, Ordering::Relaxed);
        Ok(Limiter {
            per_instance,
            held: 0,
            pending: 0,
            budget: self.clone(),
        })
    }

    /// A call takes an instance: refused past the plugin's instances in use. The guard
    /// gives it back (it borrows the budget: no reference count to raise and drop per
    /// call, two locked instructions).
    pub fn occupy(&self) -> Result<Occupied<'_>, String> {
        let taken = self
            .busy
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                (n < self.max_instances).then_some(n + 1)
            });
        match taken {
            Ok(_) => Ok(Occupied(self)),
            Err(_) => Err(format!(
                "{} instances in use, its limit (--plugin-max-instances)",
                self.max_instances
            )),
        }
    }

    /// In milliseconds: subtracting `Instant`s took about 70 instructions per call.
    fn now_second(&self) -> u64 {
        super::coarse::millis().saturating_sub(self.epoch) / 1000
    }

    /// Bring the tick count to this second.
    fn roll(&self, second: u64) {
        let seen = self.second.load(Ordering::Relaxed);
        if seen != second
            && self
                .second
                .compare_exchange(seen, second, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            self.ticks.store(0, Ordering::Relaxed);
        }
    }

    /// A running call saw a tick: count it. False when the plugin is past its CPU budget
    /// for this second (the call must stop).
    pub fn tick(&self) -> bool {
        if self.cpu_ticks == 0 {
            return true;
        }
        self.roll(self.now_second());
        self.ticks.fetch_add(1, Ordering::Relaxed) < self.cpu_ticks
    }

    /// May a new call start (the CPU budget of this second is not spent)?
    pub fn may_run(&self) -> Result<(), String> {
        if self.cpu_ticks == 0 {
            return Ok(());
        }
        self.roll(self.now_second());
        if self.ticks.load(Ordering::Relaxed) >= self.cpu_ticks {
            return Err(format!(
                "it used its {} ms of CPU this second (--plugin-cpu-ms-per-second)",
                self.cpu_ticks
            ));
        }
        Ok(())
    }
}

/// An instance in use by one call (see [`Budget::occupy`]).
#[derive(Debug)]
pub struct Occupied<'a>(&'a Budget);

impl Drop for Occupied<'_> {
    fn drop(&mut self) {
        self.0.busy.fetch_sub(1, Ordering::Relaxed);
    }
}

/// One instance's memory, counted against its plugin's total; gives the instance and its
/// memory back when the instance (its store) is dropped.
#[derive(Debug)]
pub struct Limiter {
    per_instance: usize,
    held: usize,
    /// Charged by the last `memory_growing`, refunded if the grow then fails (wasmtime
    /// asks the limiter before it checks the memory's own maximum).
    pending: usize,
    budget: Arc<Budget>,
}

impl Limiter {
    /// The plugin's budget this instance counts in.
    pub fn budget(&self) -> &Budget {
        &self.budget
    }

    /// Count `bytes` the host holds for this instance (its prepared edits) in its
    /// plugin's memory, as its linear memory is; given back with the instance.
    pub fn charge(&mut self, bytes: usize) -> Result<(), String> {
        let max = self.budget.max_memory;
        self.budget
            .memory
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |held| {
                held.checked_add(bytes).filter(|total| *total <= max)
            })
            .map_err(|_| {
                format!(
                    "the plugin's instances together would hold more than {} MiB \
                     (--plugin-memory-total-mib)",
                    max >> 20
                )
            })?;
        self.held += bytes;
        Ok(())
    }
}

impl ResourceLimiter for Limiter {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.per_instance {
            wasmtime::bail!(
                "memory grow to {desired} bytes refused: past the instance's {} MiB \
                 (--plugin-memory-limit-mib)",
                self.per_instance >> 20
            );
        }
        let more = desired.saturating_sub(current);
        let max = self.budget.max_memory;
        let grown = self
            .budget
            .memory
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |held| {
                held.checked_add(more).filter(|total| *total <= max)
            });
        if grown.is_err() {
            wasmtime::bail!(
                "memory grow refused: the plugin's instances together would hold more than \
                 {} MiB (--plugin-memory-total-mib)",
                max >> 20
            );
        }
        self.held += more;
        self.pending = more;
        Ok(true)
    }

    fn memory_grow_failed(&mut self, error: wasmtime::Error) -> wasmtime::Result<()> {
        let refund = std::mem::take(&mut self.pending);
        self.held -= refund;
        self.budget.memory.fetch_sub(refund, Ordering::Relaxed);
        Err(error)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        // As wasmtime's own default limiter: tables are small next to memories.
        Ok(desired <= 1 << 20)
    }

    fn instances(&self) -> usize {
        64
    }
}

impl Drop for Limiter {
    fn drop(&mut self) {
        self.budget.memory.fetch_sub(self.held, Ordering::Relaxed);
        self.budget.instances.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instances_in_use_are_bounded_and_given_back() {
        let budget = Arc::new(Budget::new(2, 10 << 20, 0));
        let one = budget.occupy().expect("first");
        let two = budget.occupy().expect("second");
        assert!(budget.occupy().is_err(), "past two in use");
        drop(one);
        let _three = budget.occupy().expect("one was given back");
        drop(two);
    }

    #[test]
    fn memory_is_counted_across_instances_and_given_back() {
        let budget = Arc::new(Budget::new(2, 10 << 20, 0));
        let mut a = budget.admit(8 << 20).expect("first");
        let b = budget.admit(8 << 20).expect("second");
        assert!(a.memory_growing(0, 6 << 20, None).expect("fits"));
        // A grow wasmtime then refuses (past the memory's own maximum) is refunded.
        assert!(a.memory_growing(6 << 20, 7 << 20, None).expect("fits"));
        assert!(a.memory_grow_failed(wasmtime::format_err!("max")).is_err());
        assert_eq!(budget.usage(), (2, 6 << 20));
        assert!(
            a.memory_growing(0, 9 << 20, None).is_err(),
            "past the instance"
        );
        let mut b = b;
        assert!(
            b.memory_growing(0, 5 << 20, None).is_err(),
            "6 + 5 MiB past the plugin's 10"
        );
        assert!(b.memory_growing(0, 4 << 20, None).expect("fits"));
        assert_eq!(budget.usage(), (2, 10 << 20));
        assert!(a.charge(1).is_err(), "the host's bytes count in the total");
        assert!(
            budget.admit(1).is_err(),
            "no new instance while the memory is held"
        );
        drop(b);
        a.charge(1 << 20).expect("room again");
        assert_eq!(budget.usage(), (1, 7 << 20));
        let b = budget.admit(1).expect("room for one");
        drop(a);
        drop(b);
        assert_eq!(budget.usage(), (0, 0));
        assert!(budget.admit(1).is_ok());
    }

    #[test]
    fn cpu_ticks_per_second() {
        let budget = Budget::new(1, 1, 3);
        assert!(budget.may_run().is_ok());
        assert!(budget.tick() && budget.tick() && budget.tick());
        assert!(!budget.tick(), "the fourth tick is past the budget");
        assert!(budget.may_run().is_err());
        // The next second starts afresh.
        budget.second.store(u64::MAX, Ordering::Relaxed);
        assert!(budget.may_run().is_ok());
        assert!(Budget::new(1, 1, 0).tick(), "0: no budget");
    }
}
