//! Istio's `Telemetry` resources at run time. The config crate decides which apply and
//! merges them (`wasmgate_config::telemetry`); here the result becomes what a
//! configuration serves with: each snapshot's tracer, built from `--trace-sampling` and
//! the one exporter `--otlp-endpoint` started, with `randomSamplingPercentage`,
//! `customTags` and `disableSpanReporting` on top ([`tracer`]); and, once the snapshot
//! serves, the metrics that are off and the access-log switch ([`apply`]). A reload
//! applies a changed Telemetry like any other change; nothing restarts.

use std::sync::atomic::Ordering;

use wasmgate_config::{CustomTag, TelemetrySettings};

use super::metrics::Metrics;
use super::trace::{self, Exporter, TagValue, Tracer};

/// What every snapshot's tracer starts from.
#[derive(Debug, Clone)]
pub struct TraceBase {
    /// `--otlp-endpoint`'s exporter, started once with the process (cheap to clone);
    /// `None`: nothing is traced.
    pub exporter: Option<Exporter>,
    /// `--trace-sampling`: the percentage when no Telemetry sets one.
    pub sampling_percent: f64,
    /// The gateway's workload name: every span's `istio.canonical_service` and its name
    /// until a route gives it one.
    pub service: String,
}

/// The tracer for a configuration whose Telemetries add up to `settings`: `None` without
/// an exporter (a Telemetry that sets tracing fields is then a warning).
pub fn tracer(base: &TraceBase, settings: &TelemetrySettings) -> Option<Tracer> {
    let o = &settings.tracing;
    let Some(exporter) = &base.exporter else {
        if !o.is_empty() {
            let names: Vec<String> = settings.applied.iter().map(ToString::to_string).collect();
            tracing::warn!(
                "Telemetry tracing settings not applied: no --otlp-endpoint: tracing is off ({} applied)",
                names.join(", ")
            );
        }
        return None;
    };
    let custom_tags = o
        .custom_tags
        .iter()
        .flatten()
        .map(|(name, tag)| trace::CustomTag {
            name: name.clone(),
            value: match tag {
                CustomTag::Literal(v) => TagValue::Literal(v.clone()),
                CustomTag::Header { name, default } => TagValue::Header {
                    name: name.to_ascii_lowercase(),
                    default: default.clone(),
                },
                CustomTag::Environment { name, default } => TagValue::Environment {
                    name: name.clone(),
                    default: default.clone(),
                },
            },
        })
        .collect();
    let settings = trace::Settings {
        sampling_percent: o.sampling.unwrap_or(base.sampling_percent),
        custom_tags,
        canonical_service: base.service.clone(),
        report_spans: !o.disable_span_reporting.unwrap_or(false),
        default_span_name: base.service.clone(),
    };
    Some(Tracer::new(&settings, Some(exporter.clone())))
}

/// A configuration starts serving: switch Istio's metrics and the access lines as its
/// Telemetries say (lock-free for the request path: an atomic store each).
pub fn apply(metrics: &Metrics, settings: &TelemetrySettings) {
    metrics.disabled.set(&settings.disabled_metrics);
    metrics
        .access_log_disabled
        .store(settings.access_log_disabled, Ordering::Relaxed);
    if !settings.applied.is_empty() {
        let names: Vec<String> = settings.applied.iter().map(ToString::to_string).collect();
        let off: Vec<&str> = settings
            .disabled_metrics
            .iter()
            .map(|m| m.prometheus_name())
            .collect();
        tracing::info!(
            telemetry = %names.join(", "),
            disabled_metrics = %off.join(","),
            access_log = if settings.access_log_disabled { "off" } else { "on" },
            "Telemetry applied"
        );
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use wasmgate_config::{IstioMetric, TracingOverride};

    use super::*;
    use crate::telemetry::trace::ExporterConfig;

    fn base(exporter: Option<Exporter>) -> TraceBase {
        TraceBase {
            exporter,
            sampling_percent: 0.0,
            service: "wasmgate".into(),
        }
    }

    #[tokio::test]
    async fn telemetry_overrides_the_flags() {
        let (exporter, _task) = Exporter::spawn(ExporterConfig::new(
            "http://127.0.0.1:9/v1/traces",
            "wasmgate",
        ))
        .expect("endpoint");
        let mut settings = TelemetrySettings::default();
        let headers = http::HeaderMap::new();
        let mut n = 0u64;
        let mut next = || {
            n += 1;
            n.wrapping_mul(0x9e37_79b9_7f4a_7c15)
        };
        // The flag's 0 %: not sampled, so not recording.
        let t = tracer(&base(Some(exporter.clone())), &settings).expect("tracer");
        assert!(!t.start(&headers, &mut next).is_recording());
        // Telemetry's 100 %.
        settings.tracing = TracingOverride {
            sampling: Some(100.0),
            ..TracingOverride::default()
        };
        let t = tracer(&base(Some(exporter.clone())), &settings).expect("tracer");
        assert!(t.start(&headers, &mut next).is_recording());
        // Span reporting off: sampled and propagated, never recorded.
        settings.tracing.disable_span_reporting = Some(true);
        let t = tracer(&base(Some(exporter)), &settings).expect("tracer");
        let span = t.start(&headers, &mut next);
        assert!(span.is_sampled() && !span.is_recording());
        // No exporter: no tracer, whatever the Telemetry says.
        assert!(tracer(&base(None), &settings).is_none());
    }

    #[test]
    fn apply_switches_metrics_and_access_lines() {
        let metrics = Metrics::new(true, "wasmgate", "istio-system");
        let settings = TelemetrySettings {
            disabled_metrics: BTreeSet::from([IstioMetric::RequestCount]),
            access_log_disabled: true,
            ..TelemetrySettings::default()
        };
        apply(&metrics, &settings);
        assert!(metrics.disabled.contains(IstioMetric::RequestCount));
        assert!(metrics.access_log_disabled.load(Ordering::Relaxed));
        apply(&metrics, &TelemetrySettings::default());
        assert!(!metrics.disabled.contains(IstioMetric::RequestCount));
        assert!(!metrics.access_log_disabled.load(Ordering::Relaxed));
    }
}
