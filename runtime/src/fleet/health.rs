//! What a replica's follower counts, for `/stats/prometheus`: the revision it serves,
//! whether its watch is up, and applies by outcome. An operator alerts on refused
//! applies and on a watch that stays down.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};

use crate::telemetry::metrics::{Metrics, header};

#[derive(Debug, Default)]
pub struct Health {
    /// The store revision of the config served.
    pub revision: AtomicI64,
    /// True while a watch is established.
    pub watching: AtomicBool,
    pub applied: AtomicU64,
    pub refused: AtomicU64,
    /// Times the watch broke (etcd away, compaction) and the prefix was read again.
    pub relists: AtomicU64,
}

impl Health {
    /// Render `wasmgate_config_store_*` with the other metrics.
    pub fn report_to(self: &std::sync::Arc<Self>, metrics: &Metrics) {
        let health = self.clone();
        metrics.add_family(move |out| {
            use std::fmt::Write as _;
            let h = &health;
            let gauges = [
                (
                    "wasmgate_config_store_revision",
                    "The etcd revision of the config this replica serves.",
                    h.revision.load(Ordering::Relaxed),
                ),
                (
                    "wasmgate_config_store_watching",
                    "1 while the watch on the etcd prefix is up.",
                    i64::from(h.watching.load(Ordering::Relaxed)),
                ),
            ];
            for (name, help, value) in gauges {
                header(out, name, "gauge", help);
                let _ = writeln!(out, "{name} {value}");
            }
            let name = "wasmgate_config_store_applies_total";
            header(
                out,
                name,
                "counter",
                "Config batches from etcd, by outcome.",
            );
            for (result, count) in [("applied", &h.applied), ("refused", &h.refused)] {
                let _ = writeln!(
                    out,
                    "{name}{{result=\"{result}\"}} {}",
                    count.load(Ordering::Relaxed)
                );
            }
            let name = "wasmgate_config_store_relists_total";
            header(
                out,
                name,
                "counter",
                "Times the watch broke and the prefix was read again.",
            );
            let _ = writeln!(out, "{name} {}", h.relists.load(Ordering::Relaxed));
        });
    }
}
