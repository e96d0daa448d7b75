//! What the gateway tells operators: Istio's standard metrics and wasmgate's own on the
//! admin port in Prometheus' text format (`metrics`), and distributed tracing with W3C
//! and B3 context propagated and spans exported over OTLP (`trace`). The request path
//! only touches atomics that were allocated when the snapshot was built.

pub mod access;
pub mod metrics;
pub mod request;
pub mod trace;
