//! `Telemetry` (telemetry.istio.io v1 and v1alpha1): how a workload's metrics, traces and
//! access logs are generated, as istio/api `telemetry/v1/telemetry.proto` and the CRD
//! schema Istio ships describe it. Every field of the schema parses, including those
//! wasmgate does not act on (validation warns about them).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{PolicyTargetReference, WorkloadSelector};

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct TelemetrySpec {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub selector: Option<WorkloadSelector>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target_ref: Option<PolicyTargetReference>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub target_refs: Vec<PolicyTargetReference>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tracing: Vec<Tracing>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub metrics: Vec<Metrics>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub access_logging: Vec<AccessLogging>,
}

/// `Tracing`: sampling, span reporting and custom tags for the selected workloads.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct Tracing {
    #[serde(rename = "match", skip_serializing_if = "Option::is_none")]
    pub match_: Option<ModeSelector>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub providers: Vec<ProviderRef>,
    /// `google.protobuf.DoubleValue`: absent inherits.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub random_sampling_percentage: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub disable_span_reporting: Option<bool>,
    /// Present (even empty) replaces the parent's tags; absent inherits them.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub custom_tags: Option<BTreeMap<String, CustomTag>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub use_request_id_for_trace_sampling: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub enable_istio_tags: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub disable_context_propagation: Option<bool>,
}

/// `Tracing.TracingSelector` and `AccessLogging.LogSelector`: `{mode: ...}`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct ModeSelector {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mode: Option<TelemetryMode>,
}

/// Telemetry's `WorkloadMode`: the traffic direction, from the workload's side. A
/// gateway's traffic is `CLIENT` (outbound), as Istio configures gateways.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum TelemetryMode {
    ClientAndServer,
    Client,
    Server,
}

/// `ProviderRef`: a MeshConfig extension provider by name.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct ProviderRef {
    pub name: String,
}

/// `Tracing.CustomTag`: one of `literal`, `environment`, `header`, `formatter`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct CustomTag {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub literal: Option<LiteralTag>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub environment: Option<NamedTag>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub header: Option<NamedTag>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub formatter: Option<LiteralTag>,
}

/// `Tracing.Literal` (and `Tracing.Formatter`): `{value: ...}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct LiteralTag {
    pub value: String,
}

/// `Tracing.Environment` and `Tracing.RequestHeader`: `{name, defaultValue}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct NamedTag {
    pub name: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub default_value: String,
}

/// `Metrics`: overrides of metric generation for some providers.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct Metrics {
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub providers: Vec<ProviderRef>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub overrides: Vec<MetricsOverrides>,
    /// A duration string (`5s`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reporting_interval: Option<String>,
}

/// `MetricsOverrides`: which metrics (and mode), whether they are off, tag changes.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct MetricsOverrides {
    #[serde(rename = "match", skip_serializing_if = "Option::is_none")]
    pub match_: Option<MetricSelector>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub disabled: Option<bool>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub tag_overrides: BTreeMap<String, TagOverride>,
}

/// `MetricSelector`: one of `metric` or `customMetric` (neither: every Istio metric),
/// and the mode.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct MetricSelector {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metric: Option<MetricName>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub custom_metric: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mode: Option<TelemetryMode>,
}

/// `MetricSelector.IstioMetric`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum MetricName {
    AllMetrics,
    RequestCount,
    RequestDuration,
    RequestSize,
    ResponseSize,
    TcpOpenedConnections,
    TcpClosedConnections,
    TcpSentBytes,
    TcpReceivedBytes,
    GrpcRequestMessages,
    GrpcResponseMessages,
}

/// `MetricsOverrides.TagOverride`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct TagOverride {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub operation: Option<TagOperation>,
    /// Presence matters: `REMOVE` must not have one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum TagOperation {
    Upsert,
    Remove,
}

/// `AccessLogging`: access logs on or off for some providers, and a filter.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct AccessLogging {
    #[serde(rename = "match", skip_serializing_if = "Option::is_none")]
    pub match_: Option<ModeSelector>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub providers: Vec<ProviderRef>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub disabled: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub filter: Option<LogFilter>,
}

/// `AccessLogging.Filter`: a CEL expression.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct LogFilter {
    #[serde(skip_serializing_if = "String::is_empty")]
    pub expression: String,
}
