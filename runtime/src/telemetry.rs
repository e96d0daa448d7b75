//! What the gateway tells operators: Istio's standard metrics and wasmgate's own on the
//! admin port in Prometheus' text format (`metrics`), and distributed tracing with W3C
//! and B3 context propagated and spans exported over OTLP (`trace`). Istio's `Telemetry`
//! resources tune all three, access lines included (`overrides`). The request path
//! only touches atomics that were allocated when the snapshot was built.

pub mod access;
pub mod metrics;
pub mod overrides;
pub mod request;
pub mod trace;

use std::sync::atomic::Ordering;

/// Whether access lines are written for what `shared` serves now: a Telemetry's
/// `accessLogging[].disabled: true` turns them off until a configuration says otherwise
/// (`--access-log` decides where they go, and whether at all).
pub fn access_log_enabled(shared: &crate::proxy::Shared) -> bool {
    !shared.metrics.access_log_disabled.load(Ordering::Relaxed)
}
