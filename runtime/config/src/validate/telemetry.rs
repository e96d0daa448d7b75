//! Telemetry rules (Istio's `ValidateTelemetry` and the CRD's schema): selector vs target
//! references, providers, sampling percentage, custom tags, metric overrides and tag
//! overrides; builds [`model::Telemetry`]. What wasmgate does not act on (provider names,
//! tag overrides, filters, reporting intervals, request-id sampling, `SERVER` mode) is a
//! warning naming the field.

use std::collections::BTreeMap;

use super::Report;
use super::wasm_plugin::{policy_scope, scope};
use crate::model::{self, CustomTag, IstioMetric, TracingOverride};
use crate::raw::{self, MetricName, TagOperation, TelemetryMode};
use crate::yaml::FieldPath;

/// The networking.istio.io kinds a Telemetry `targetRef` selects wasmgate by.
const TELEMETRY_TARGETS: &[&str] = &["Gateway"];

/// Istio's built-in provider names for what wasmgate has one of: the Prometheus
/// endpoint and the access log (Istio's `envoy` file logger). Tracing has no built-in.
const METRICS_PROVIDER: &str = "prometheus";
const ACCESS_LOG_PROVIDER: &str = "envoy";

const SERVER_MODE: &str = "mode SERVER does not apply to a gateway, whose traffic is CLIENT (as in Istio); this entry is ignored";

pub(crate) fn validate(
    meta: &model::Meta,
    spec: &raw::TelemetrySpec,
    r: &mut Report,
) -> model::Telemetry {
    let p = FieldPath::root("spec");
    let ns = &meta.id.namespace;
    let targets = scope(
        spec.selector.as_ref(),
        spec.target_ref.as_ref(),
        &spec.target_refs,
        ns,
        r,
        TELEMETRY_TARGETS,
    );
    let targeted = spec.target_ref.is_some() || !spec.target_refs.is_empty();
    let scope = policy_scope(spec.selector.as_ref(), targeted, targets);

    model::Telemetry {
        meta: meta.clone(),
        scope,
        tracing: tracing(&spec.tracing, &p.key("tracing"), r),
        metrics: metrics(&spec.metrics, &p.key("metrics"), r),
        access_logging: access_logging(&spec.access_logging, &p.key("accessLogging"), r),
        spec: spec.clone(),
    }
}

/// Provider names: required; names other than `default` (what wasmgate has one of) are
/// read as wasmgate's own, with a warning naming what that is.
fn providers(
    list: &[raw::ProviderRef],
    p: &FieldPath,
    default: Option<&str>,
    ours: &str,
    r: &mut Report,
) {
    for (i, provider) in list.iter().enumerate() {
        let pp = p.key("providers").index(i);
        let name = provider.name.trim();
        if name.is_empty() {
            r.err(&pp.key("name"), "providers.name may not be empty");
        } else if Some(name) != default {
            r.warn(
                &pp.key("name"),
                format!(
                    "wasmgate has no MeshConfig extension providers: {ours} (provider {name:?} is read as that)"
                ),
            );
        }
    }
}

fn is_server(mode: Option<TelemetryMode>) -> bool {
    mode == Some(TelemetryMode::Server)
}

fn tracing(list: &[raw::Tracing], p: &FieldPath, r: &mut Report) -> Option<TracingOverride> {
    if list.len() > 1 {
        r.warn(p, "multiple tracing is not currently supported");
    }
    let mut merged: Option<TracingOverride> = None;
    for (i, t) in list.iter().enumerate() {
        let tp = p.index(i);
        if t.providers.len() > 1 {
            r.warn(
                &tp.key("providers"),
                "multiple providers is not currently supported",
            );
        }
        providers(&t.providers, &tp, None, "spans go to --otlp-endpoint", r);
        if let Some(pct) = t.random_sampling_percentage
            && !(0.0..=100.0).contains(&pct)
        {
            r.err(
                &tp.key("randomSamplingPercentage"),
                "randomSamplingPercentage must be in range [0.0, 100.0]",
            );
        }
        let tags = t
            .custom_tags
            .as_ref()
            .map(|tags| custom_tags(tags, &tp.key("customTags"), r));
        if t.use_request_id_for_trace_sampling.is_some() {
            r.warn(
                &tp.key("useRequestIdForTraceSampling"),
                "not implemented: wasmgate never samples by x-request-id (only by the caller's decision, else randomSamplingPercentage)",
            );
        }
        if t.enable_istio_tags == Some(false) {
            r.warn(
                &tp.key("enableIstioTags"),
                "not implemented: wasmgate's spans always carry Istio's tags",
            );
        }
        if t.disable_context_propagation == Some(true) {
            r.warn(
                &tp.key("disableContextPropagation"),
                "not implemented: wasmgate always propagates the trace context upstream",
            );
        }
        if is_server(t.match_.and_then(|m| m.mode)) {
            r.warn(&tp.key("match").key("mode"), SERVER_MODE);
            continue;
        }
        let entry = TracingOverride {
            sampling: t.random_sampling_percentage,
            disable_span_reporting: t.disable_span_reporting,
            custom_tags: tags,
        };
        merged
            .get_or_insert_with(TracingOverride::default)
            .overlay(&entry);
    }
    merged
}

fn custom_tags(
    tags: &BTreeMap<String, raw::CustomTag>,
    p: &FieldPath,
    r: &mut Report,
) -> Vec<(String, CustomTag)> {
    let mut out = Vec::new();
    for (name, tag) in tags {
        let tp = p.key(name);
        if name.is_empty() {
            r.err(&tp, "tag name may not be empty");
        }
        let set = [
            tag.literal.is_some(),
            tag.environment.is_some(),
            tag.header.is_some(),
            tag.formatter.is_some(),
        ]
        .iter()
        .filter(|b| **b)
        .count();
        if set > 1 {
            r.err(
                &tp,
                "only one of literal, environment, header or formatter may be set",
            );
            continue;
        }
        let default = |d: &str| (!d.is_empty()).then(|| d.to_string());
        if let Some(l) = &tag.literal {
            if l.value.is_empty() {
                r.err(
                    &tp.key("literal").key("value"),
                    "literal tag value may not be empty",
                );
            } else {
                out.push((name.clone(), CustomTag::Literal(l.value.clone())));
            }
        } else if let Some(h) = &tag.header {
            if h.name.is_empty() {
                r.err(
                    &tp.key("header").key("name"),
                    "header tag name may not be empty",
                );
            } else {
                out.push((
                    name.clone(),
                    CustomTag::Header {
                        name: h.name.clone(),
                        default: default(&h.default_value),
                    },
                ));
            }
        } else if let Some(e) = &tag.environment {
            if e.name.is_empty() {
                r.err(
                    &tp.key("environment").key("name"),
                    "environment tag name may not be empty",
                );
            } else {
                out.push((
                    name.clone(),
                    CustomTag::Environment {
                        name: e.name.clone(),
                        default: default(&e.default_value),
                    },
                ));
            }
        } else if let Some(f) = &tag.formatter {
            if f.value.is_empty() {
                r.err(
                    &tp.key("formatter").key("value"),
                    "formatter tag value may not be empty",
                );
            } else {
                r.warn(
                    &tp.key("formatter"),
                    "not implemented: wasmgate has no Envoy substitution formatters; this tag is not added",
                );
            }
        } else {
            r.warn(
                &tp,
                "a custom tag without literal, environment or header adds nothing",
            );
        }
    }
    out
}

fn metrics(list: &[raw::Metrics], p: &FieldPath, r: &mut Report) -> BTreeMap<IstioMetric, bool> {
    let mut disabled = BTreeMap::new();
    for (i, m) in list.iter().enumerate() {
        let mp = p.index(i);
        providers(
            &m.providers,
            &mp,
            Some(METRICS_PROVIDER),
            "metrics are served at /stats/prometheus",
            r,
        );
        if let Some(interval) = &m.reporting_interval {
            let ip = mp.key("reportingInterval");
            match crate::parse_duration(interval) {
                Ok(d) if d >= std::time::Duration::from_millis(1) => r.warn(
                    &ip,
                    "not implemented: wasmgate records a TCP connection's metrics when it closes",
                ),
                _ => r.err(&ip, "must be a valid duration greater than 1ms"),
            }
        }
        for (k, o) in m.overrides.iter().enumerate() {
            let op = mp.key("overrides").index(k);
            let before = r.errors.len();
            let mut applies = true;
            let mut selected = IstioMetric::ALL.to_vec();
            if let Some(sel) = &o.match_ {
                let sp = op.key("match");
                if sel.metric.is_some() && sel.custom_metric.is_some() {
                    r.err(&sp, "only one of metric or customMetric may be set");
                }
                match &sel.custom_metric {
                    Some(c) if c.is_empty() => {
                        r.err(&sp.key("customMetric"), "customMetric may not be empty");
                    }
                    Some(c) => {
                        r.warn(
                            &sp.key("customMetric"),
                            format!(
                                "wasmgate has no custom metric {c:?}; this override does nothing"
                            ),
                        );
                        applies = false;
                    }
                    None => {}
                }
                if let Some(m) = sel.metric {
                    selected = metric_set(m);
                }
                if is_server(sel.mode) {
                    r.warn(&sp.key("mode"), SERVER_MODE);
                    applies = false;
                }
            }
            for (name, t) in &o.tag_overrides {
                let tp = op.key("tagOverrides").key(name);
                if name.is_empty() {
                    r.warn(&tp, "tagOverrides.name may not be empty");
                }
                match t.operation.unwrap_or(TagOperation::Upsert) {
                    TagOperation::Upsert if t.value.as_deref().unwrap_or_default().is_empty() => {
                        r.err(&tp, "value must be set when operation is UPSERT");
                    }
                    TagOperation::Remove if t.value.is_some() => {
                        r.err(&tp, "value must not be set when operation is REMOVE");
                    }
                    _ => {}
                }
            }
            if !o.tag_overrides.is_empty() && r.errors.len() == before {
                r.warn(
                    &op.key("tagOverrides"),
                    "not implemented: wasmgate's metrics keep Istio's standard labels",
                );
            }
            if let (true, Some(off)) = (applies, o.disabled) {
                for metric in selected {
                    disabled.insert(metric, off);
                }
            }
        }
    }
    disabled
}

fn metric_set(m: MetricName) -> Vec<IstioMetric> {
    let one = match m {
        MetricName::AllMetrics => return IstioMetric::ALL.to_vec(),
        MetricName::RequestCount => IstioMetric::RequestCount,
        MetricName::RequestDuration => IstioMetric::RequestDuration,
        MetricName::RequestSize => IstioMetric::RequestSize,
        MetricName::ResponseSize => IstioMetric::ResponseSize,
        MetricName::TcpOpenedConnections => IstioMetric::TcpOpenedConnections,
        MetricName::TcpClosedConnections => IstioMetric::TcpClosedConnections,
        MetricName::TcpSentBytes => IstioMetric::TcpSentBytes,
        MetricName::TcpReceivedBytes => IstioMetric::TcpReceivedBytes,
        MetricName::GrpcRequestMessages => IstioMetric::GrpcRequestMessages,
        MetricName::GrpcResponseMessages => IstioMetric::GrpcResponseMessages,
    };
    vec![one]
}

fn access_logging(list: &[raw::AccessLogging], p: &FieldPath, r: &mut Report) -> Option<bool> {
    let mut disabled = None;
    for (i, a) in list.iter().enumerate() {
        let ap = p.index(i);
        providers(
            &a.providers,
            &ap,
            Some(ACCESS_LOG_PROVIDER),
            "access lines go to --access-log",
            r,
        );
        if a.filter.is_some() {
            r.warn(
                &ap.key("filter"),
                "not implemented: wasmgate does not evaluate CEL filters; every request is logged",
            );
        }
        if is_server(a.match_.and_then(|m| m.mode)) {
            r.warn(&ap.key("match").key("mode"), SERVER_MODE);
            continue;
        }
        // Istio: an entry without `disabled` does not undo a parent's `disabled: true`.
        if a.disabled.is_some() {
            disabled = a.disabled;
        }
    }
    disabled
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::model::PolicyScope;

    /// Loads one Telemetry: its model and its warnings as `field: message`.
    fn load(yaml: &str) -> (model::Telemetry, Vec<String>) {
        let cfg = match crate::load_sources(&[(PathBuf::from("t.yaml"), yaml.to_string())]) {
            Ok(c) => c,
            Err(e) => panic!("{e}\n---\n{yaml}"),
        };
        let warnings = cfg
            .warnings
            .iter()
            .map(|w| format!("{}: {}", w.field.as_deref().unwrap_or("-"), w.message))
            .collect();
        (cfg.telemetries[0].clone(), warnings)
    }

    /// The errors of one document as `field: message`.
    fn errors(yaml: &str) -> Vec<String> {
        crate::validate_document(&PathBuf::from("t.yaml"), yaml)
            .iter()
            .map(|e| format!("{}: {}", e.field.as_deref().unwrap_or("-"), e.message))
            .collect()
    }

    fn doc(ns: &str, spec: &str) -> String {
        format!(
            "apiVersion: telemetry.istio.io/v1\nkind: Telemetry\nmetadata:\n  name: t\n  namespace: {ns}\nspec:\n{spec}"
        )
    }

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    /// The examples of istio/api's `telemetry/v1/telemetry.proto` and istio.io's tasks
    /// (tracing, metrics and access logs with the Telemetry API), as written there.
    #[test]
    fn istio_examples_load() {
        // Random sampling for 10% of traffic.
        let (t, w) = load(&doc(
            "istio-system",
            "  # no selector specified, applies to all workloads\n  tracing:\n  - randomSamplingPercentage: 10.00\n",
        ));
        assert_eq!(t.scope, PolicyScope::Namespace);
        assert_eq!(t.tracing.and_then(|o| o.sampling), Some(10.0));
        assert!(w.is_empty(), "{w:?}");

        // Span reporting off for a workload (context still propagated).
        let (t, w) = load(&doc(
            "bar",
            "  selector:\n    matchLabels:\n      service.istio.io/canonical-name: foo\n  tracing:\n  - disableSpanReporting: true\n",
        ));
        assert_eq!(
            t.scope,
            PolicyScope::Selector(labels(&[("service.istio.io/canonical-name", "foo")]))
        );
        assert_eq!(t.tracing.and_then(|o| o.disable_span_reporting), Some(true));
        assert_eq!(
            w,
            vec![
                "spec.selector: IST0101: Referenced selector not found: \"service.istio.io/canonical-name=foo\" (no Gateway in namespace bar has these labels in its selector, so the Telemetry applies to nothing)"
            ]
        );

        // An alternate provider.
        let (_, w) = load(&doc(
            "baz",
            "  selector:\n    matchLabels:\n      service.istio.io/canonical-name: foo\n  tracing:\n  - providers:\n    - name: \"zipkin-alternate\"\n    randomSamplingPercentage: 10.00\n",
        ));
        assert_eq!(
            w[0],
            "spec.tracing[0].providers[0].name: wasmgate has no MeshConfig extension providers: spans go to --otlp-endpoint (provider \"zipkin-alternate\" is read as that)"
        );

        // A literal custom tag (and istio.io's tracing task, with zipkin at 100 %).
        let (t, _) = load(&doc(
            "istio-system",
            "  tracing:\n  - randomSamplingPercentage: 10.00\n    customTags:\n      my_new_foo_tag:\n        literal:\n          value: \"foo\"\n",
        ));
        assert_eq!(
            t.tracing.and_then(|o| o.custom_tags),
            Some(vec![(
                "my_new_foo_tag".to_string(),
                CustomTag::Literal("foo".into())
            )])
        );
        let (t, _) = load(&doc(
            "istio-system",
            "  tracing:\n    - providers:\n        - name: \"zipkin\"\n      randomSamplingPercentage: 100.00\n      customTags:\n        \"provider\":\n          literal:\n            value: \"zipkin\"\n",
        ));
        assert_eq!(t.tracing.as_ref().and_then(|o| o.sampling), Some(100.0));

        // Server-side metrics off for Prometheus: a gateway's are client-side.
        let (t, w) = load(&doc(
            "istio-system",
            "  metrics:\n  - providers:\n    - name: prometheus\n    overrides:\n    - match:\n        metric: ALL_METRICS\n        mode: SERVER\n      disabled: true\n",
        ));
        assert!(t.metrics.is_empty());
        assert_eq!(
            w,
            vec![
                "spec.metrics[0].overrides[0].match.mode: mode SERVER does not apply to a gateway, whose traffic is CLIENT (as in Istio); this entry is ignored"
            ]
        );

        // Dimensions added for a namespace; response_code removed for a workload.
        let (t, w) = load(&doc(
            "foo",
            "  metrics:\n  - providers:\n    - name: prometheus\n    overrides:\n    # match clause left off matches all istio metrics, client and server\n    - tagOverrides:\n        request_method:\n          value: \"request.method\"\n        request_host:\n          value: \"request.host\"\n",
        ));
        assert!(t.metrics.is_empty());
        assert_eq!(
            w[0],
            "spec.metrics[0].overrides[0].tagOverrides: not implemented: wasmgate's metrics keep Istio's standard labels"
        );
        let mut remove = String::from(
            "  selector:\n    matchLabels:\n      service.istio.io/canonical-name: bar\n  metrics:\n  - providers:\n    - name: prometheus\n    overrides:\n",
        );
        for m in [
            "REQUEST_COUNT",
            "REQUEST_DURATION",
            "REQUEST_SIZE",
            "RESPONSE_SIZE",
        ] {
            remove += &format!(
                "    - match:\n        metric: {m}\n      tagOverrides:\n        response_code:\n          operation: REMOVE\n"
            );
        }
        let (_, w) = load(&doc("foo", &remove));
        assert_eq!(w.len(), 5, "{w:?}");

        // istio.io's metrics task: every metric off; REQUEST_COUNT off.
        let (t, w) = load(&doc(
            "istio-system",
            "  metrics:\n    - providers:\n        - name: prometheus\n      overrides:\n        - disabled: true\n          match:\n            mode: CLIENT_AND_SERVER\n            metric: ALL_METRICS\n",
        ));
        assert_eq!(t.metrics.len(), IstioMetric::ALL.len());
        assert!(t.metrics.values().all(|off| *off));
        assert!(w.is_empty(), "{w:?}");
        let (t, _) = load(&doc(
            "istio-system",
            "  metrics:\n    - providers:\n        - name: prometheus\n      overrides:\n        - match:\n            metric: REQUEST_COUNT\n            mode: CLIENT_AND_SERVER\n          disabled: true\n",
        ));
        assert_eq!(
            t.metrics,
            [(IstioMetric::RequestCount, true)].into_iter().collect()
        );

        // Access logs on for the mesh (Istio's `envoy` provider), off for a namespace.
        let (t, w) = load(&doc(
            "istio-system",
            "  # no selector specified, applies to all workloads\n  accessLogging:\n  - providers:\n    - name: envoy\n",
        ));
        assert_eq!(t.access_logging, None);
        assert!(w.is_empty(), "{w:?}");
        let (t, _) = load(&doc("foo", "  accessLogging:\n  - disabled: true\n"));
        assert_eq!(t.access_logging, Some(true));
    }

    #[test]
    fn both_api_versions_and_nulls() {
        let yaml = doc(
            "istio-system",
            "  tracing:\n  - randomSamplingPercentage: null\n    disableSpanReporting: null\n  accessLogging:\n  - disabled: null\n",
        )
        .replace("telemetry.istio.io/v1", "telemetry.istio.io/v1alpha1");
        let (t, _) = load(&yaml);
        assert_eq!(t.tracing, Some(TracingOverride::default()));
        assert_eq!(t.access_logging, None);
        let beta = doc("x", "  tracing: []\n").replace("/v1\n", "/v1beta1\n");
        assert_eq!(
            errors(&beta),
            vec![
                "apiVersion: unknown apiVersion \"telemetry.istio.io/v1beta1\" for Telemetry; expected one of telemetry.istio.io/v1, telemetry.istio.io/v1alpha1"
            ]
        );
    }

    #[test]
    fn errors_name_their_fields() {
        let cases: &[(&str, &[&str])] = &[
            (
                "  selector: {matchLabels: {app: web}}\n  targetRefs: [{group: networking.istio.io, kind: Gateway, name: gw}]\n",
                &["spec: only one of targetRefs or selector can be set"],
            ),
            (
                "  tracing:\n  - randomSamplingPercentage: 100.5\n",
                &[
                    "spec.tracing[0].randomSamplingPercentage: randomSamplingPercentage must be in range [0.0, 100.0]",
                ],
            ),
            (
                "  tracing:\n  - randomSamplingPercentage: -1\n",
                &[
                    "spec.tracing[0].randomSamplingPercentage: randomSamplingPercentage must be in range [0.0, 100.0]",
                ],
            ),
            (
                "  tracing:\n  - providers: [{name: ''}]\n    customTags:\n      a: {literal: {value: ''}}\n      b: {header: {name: ''}}\n      c: {environment: {defaultValue: x}}\n      d: {literal: {value: x}, header: {name: y}}\n",
                &[
                    "spec.tracing[0].providers[0].name: providers.name may not be empty",
                    "spec.tracing[0].customTags.a.literal.value: literal tag value may not be empty",
                    "spec.tracing[0].customTags.b.header.name: header tag name may not be empty",
                    "spec.tracing[0].customTags.c.environment.name: environment tag name may not be empty",
                    "spec.tracing[0].customTags.d: only one of literal, environment, header or formatter may be set",
                ],
            ),
            (
                "  metrics:\n  - reportingInterval: 0s\n    overrides:\n    - match: {metric: REQUEST_COUNT, customMetric: x}\n    - match: {customMetric: ''}\n    - tagOverrides: {a: {operation: UPSERT}, b: {operation: REMOVE, value: x}, c: {}}\n",
                &[
                    "spec.metrics[0].reportingInterval: must be a valid duration greater than 1ms",
                    "spec.metrics[0].overrides[0].match: only one of metric or customMetric may be set",
                    "spec.metrics[0].overrides[1].match.customMetric: customMetric may not be empty",
                    "spec.metrics[0].overrides[2].tagOverrides.a: value must be set when operation is UPSERT",
                    "spec.metrics[0].overrides[2].tagOverrides.b: value must not be set when operation is REMOVE",
                    "spec.metrics[0].overrides[2].tagOverrides.c: value must be set when operation is UPSERT",
                ],
            ),
            (
                "  metrics:\n  - overrides:\n    - match: {metric: REQUEST_COUNTS}\n",
                &[
                    "spec.metrics[0].overrides[0].match.metric: unknown variant `REQUEST_COUNTS`, expected one of `ALL_METRICS`, `REQUEST_COUNT`, `REQUEST_DURATION`, `REQUEST_SIZE`, `RESPONSE_SIZE`, `TCP_OPENED_CONNECTIONS`, `TCP_CLOSED_CONNECTIONS`, `TCP_SENT_BYTES`, `TCP_RECEIVED_BYTES`, `GRPC_REQUEST_MESSAGES`, `GRPC_RESPONSE_MESSAGES`",
                ],
            ),
            (
                "  accessLogging:\n  - disabled: true\n    sampling: 10\n",
                &[
                    "spec.accessLogging[0].sampling: unknown field `sampling`, expected one of `match`, `providers`, `disabled`, `filter`",
                ],
            ),
            (
                "  targetRef: {group: networking.istio.io, kind: VirtualService, name: web}\n",
                &[
                    "spec.targetRef: targetRef must be to one of networking.istio.io/Gateway, core/Service, networking.istio.io/ServiceEntry, gateway.networking.k8s.io/Gateway, gateway.networking.k8s.io/GatewayClass but was networking.istio.io/VirtualService",
                ],
            ),
        ];
        for (spec, want) in cases {
            let got = errors(&doc("default", spec));
            assert_eq!(&got, want, "{spec}");
        }
    }

    #[test]
    fn unimplemented_fields_are_warnings() {
        let (t, w) = load(&doc(
            "istio-system",
            "  tracing:\n  - providers: [{name: otel}, {name: zipkin}]\n    useRequestIdForTraceSampling: true\n    enableIstioTags: false\n    disableContextPropagation: true\n    customTags:\n      f: {formatter: {value: '%REQ(x)%'}}\n      e: {}\n  - match: {mode: SERVER}\n    randomSamplingPercentage: 100\n  metrics:\n  - providers: [{name: stackdriver}]\n    reportingInterval: 10s\n    overrides:\n    - match: {customMetric: my_metric}\n      disabled: true\n  accessLogging:\n  - providers: [{name: otel}]\n    filter: {expression: 'response.code >= 400'}\n    disabled: true\n  - match: {mode: SERVER}\n    disabled: false\n",
        ));
        assert_eq!(
            w,
            vec![
                "spec.tracing: multiple tracing is not currently supported",
                "spec.tracing[0].providers: multiple providers is not currently supported",
                "spec.tracing[0].providers[0].name: wasmgate has no MeshConfig extension providers: spans go to --otlp-endpoint (provider \"otel\" is read as that)",
                "spec.tracing[0].providers[1].name: wasmgate has no MeshConfig extension providers: spans go to --otlp-endpoint (provider \"zipkin\" is read as that)",
                "spec.tracing[0].useRequestIdForTraceSampling: not implemented: wasmgate never samples by x-request-id (only by the caller's decision, else randomSamplingPercentage)",
                "spec.tracing[0].enableIstioTags: not implemented: wasmgate's spans always carry Istio's tags",
                "spec.tracing[0].disableContextPropagation: not implemented: wasmgate always propagates the trace context upstream",
                "spec.tracing[0].customTags.f.formatter: not implemented: wasmgate has no Envoy substitution formatters; this tag is not added",
                "spec.tracing[0].customTags.e: a custom tag without literal, environment or header adds nothing",
                "spec.tracing[1].match.mode: mode SERVER does not apply to a gateway, whose traffic is CLIENT (as in Istio); this entry is ignored",
                "spec.metrics[0].providers[0].name: wasmgate has no MeshConfig extension providers: metrics are served at /stats/prometheus (provider \"stackdriver\" is read as that)",
                "spec.metrics[0].reportingInterval: not implemented: wasmgate records a TCP connection's metrics when it closes",
                "spec.metrics[0].overrides[0].match.customMetric: wasmgate has no custom metric \"my_metric\"; this override does nothing",
                "spec.accessLogging[0].providers[0].name: wasmgate has no MeshConfig extension providers: access lines go to --access-log (provider \"otel\" is read as that)",
                "spec.accessLogging[0].filter: not implemented: wasmgate does not evaluate CEL filters; every request is logged",
                "spec.accessLogging[1].match.mode: mode SERVER does not apply to a gateway, whose traffic is CLIENT (as in Istio); this entry is ignored",
            ]
        );
        // What is implemented still applies; SERVER entries do not.
        let tracing = t.tracing.unwrap_or_default();
        assert_eq!(tracing.sampling, None);
        assert_eq!(tracing.custom_tags, Some(Vec::new()));
        assert!(t.metrics.is_empty());
        assert_eq!(t.access_logging, Some(true));
    }

    #[test]
    fn target_refs_to_kinds_wasmgate_cannot_bind_select_nothing() {
        let (t, w) = load(&doc(
            "default",
            "  targetRefs:\n  - {group: gateway.networking.k8s.io, kind: Gateway, name: gw}\n  accessLogging: [{disabled: true}]\n",
        ));
        assert_eq!(t.scope, PolicyScope::Targets(Vec::new()));
        assert_eq!(
            w,
            vec![
                "spec.targetRefs[0]: ignored by wasmgate: targetRef to gateway.networking.k8s.io/Gateway"
            ]
        );
    }
}
