//! The raw types are the wire format between the runtime and the router/fault plugins:
//! serialising a parsed spec to JSON and reading it back must give the same value, and
//! the JSON must say exactly what the YAML said (nothing lost, nothing invented).

use std::path::PathBuf;

use serde::Serialize;
use serde::de::DeserializeOwned;
use wasmgate_config::{load_sources, raw};

const KITCHEN_SINK: &str = r#"
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata:
  name: shop
  namespace: prod
  labels: {app: shop}
  annotations: {owner: team-a}
spec:
  hosts: [shop.example.com, "*.shop.example.com"]
  gateways: [prod/public, mesh]
  exportTo: ["."]
  http:
  - name: api
    match:
    - name: v2
      uri: {prefix: /api/v2}
      scheme: {exact: https}
      method: {regex: "GET|HEAD"}
      authority: {prefix: shop}
      headers:
        x-user: {exact: jason}
        x-present: {}
      withoutHeaders:
        x-debug: {regex: "*"}
      queryParams:
        lang: {exact: en}
      port: 8080
      sourceLabels: {app: web}
      gateways: [prod/public]
      ignoreUriCase: true
      sourceNamespace: web
      statPrefix: shop_api
    route:
    - destination: {host: api, subset: v2, port: {number: 9080}}
      weight: 75
      headers:
        request: {set: {x-version: v2}, add: {x-trace: "on"}, remove: [x-internal]}
        response: {set: {cache-control: no-store}}
    - destination: {host: api, subset: v1}
      weight: 25
    rewrite: {uriRegexRewrite: {match: "^/api/v2/(.*)", rewrite: "/\\1"}, authority: api.internal}
    timeout: 1.5s
    retries: {attempts: 3, perTryTimeout: 500ms, retryOn: "5xx,reset", retryRemoteLocalities: true, backoff: 25ms}
    fault:
      delay: {percentage: {value: 0.5}, fixedDelay: 2s}
      abort: {percentage: {value: 10.0}, httpStatus: 503}
    mirrors:
    - destination: {host: shadow}
      percentage: {value: 5.0}
    corsPolicy:
      allowOrigins: [{exact: "https://shop.example.com"}, {regex: "https://.*\\.example\\.com"}]
      allowMethods: [GET, POST]
      allowHeaders: [x-user]
      exposeHeaders: [x-version]
      maxAge: 24h
      allowCredentials: false
      unmatchedPreflights: IGNORE
    headers:
      request: {set: {x-shop: "1"}}
  - name: old
    match: [{uri: {exact: /old}}]
    redirect: {uri: /new, authority: shop.example.com, derivePort: FROM_REQUEST_PORT, scheme: https, redirectCode: 308}
  - name: legacy
    match: [{uri: {prefix: /legacy}}]
    redirect: {prefixRewrite: /v1, port: 8443}
  - name: teapot
    match: [{uri: {exact: /teapot}}]
    directResponse: {status: 418, body: {string: "I'm a teapot"}}
  - name: blob
    match: [{uri: {exact: /blob}}]
    directResponse: {status: 200, body: {bytes: aGVsbG8=}}
  - name: mirror
    match: [{uri: {prefix: /m}}]
    route: [{destination: {host: web}}]
    mirror: {host: shadow, subset: v1}
    mirrorPercentage: {value: 50.0}
  - name: delegate
    match: [{uri: {prefix: /d}}]
    delegate: {name: child, namespace: prod}
  - route: [{destination: {host: web}}]
  tls:
  - match: [{sniHosts: [shop.example.com], port: 443, destinationSubnets: [10.0.0.0/8]}]
    route: [{destination: {host: web, port: {number: 443}}}]
  tcp:
  - match: [{port: 5432, sourceSubnet: 10.1.0.0/16}]
    route: [{destination: {host: db}, weight: 100}]
"#;

fn roundtrip<T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug>(value: &T) {
    let json = match serde_json::to_string(value) {
        Ok(j) => j,
        Err(e) => panic!("serialise: {e}"),
    };
    let back: T = match serde_json::from_str(&json) {
        Ok(b) => b,
        Err(e) => panic!("deserialise {json}: {e}"),
    };
    assert_eq!(&back, value, "round trip through {json}");
}

/// The YAML document's `spec` as JSON, for comparison with what the types write.
fn yaml_spec(text: &str) -> serde_json::Value {
    let v: serde_json::Value = match serde_yaml::from_str(text) {
        Ok(v) => v,
        Err(e) => panic!("{e}"),
    };
    v.get("spec").cloned().unwrap_or_default()
}

#[test]
fn virtual_service_round_trips_losslessly() {
    let cfg = match load_sources(&[(PathBuf::from("vs.yaml"), KITCHEN_SINK.to_string())]) {
        Ok(c) => c,
        Err(e) => panic!("{e}"),
    };
    assert_eq!(cfg.virtual_services.len(), 1);
    let vs = &cfg.virtual_services[0];
    roundtrip(&vs.spec);
    for route in &vs.http {
        roundtrip(route);
    }
    let written = match serde_json::to_value(&vs.spec) {
        Ok(v) => v,
        Err(e) => panic!("{e}"),
    };
    // The route delegating to prod/child (which is not loaded) is dropped at load, as
    // Istio drops it; everything else is as written.
    let mut expected = yaml_spec(KITCHEN_SINK);
    if let Some(http) = expected.get_mut("http").and_then(|h| h.as_array_mut()) {
        http.retain(|r| r.get("delegate").is_none());
    }
    assert_eq!(written, expected);
    roundtrip(&raw::HTTPRoute {
        delegate: Some(raw::Delegate {
            name: "child".into(),
            namespace: "prod".into(),
        }),
        ..raw::HTTPRoute::default()
    });
    // The model keeps the routes as written.
    assert_eq!(vs.http, vs.spec.http);
    assert_eq!(vs.hosts, vec!["shop.example.com", "*.shop.example.com"]);
    assert!(vs.binds_mesh);
}

#[test]
fn other_kinds_round_trip() {
    let text = r#"
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: api}
spec:
  host: api
  trafficPolicy:
    loadBalancer:
      simple: LEAST_REQUEST
      warmup: {duration: 60s, minimumPercent: 10.0, aggression: 1.5}
      localityLbSetting: {enabled: true, distribute: [{from: us-east/*, to: {"us-east/*": 80, "us-west/*": 20}}]}
    connectionPool:
      tcp: {maxConnections: 100, connectTimeout: 30ms, tcpKeepalive: {time: 7200s, interval: 75s, probes: 9}}
      http: {http1MaxPendingRequests: 10, http2MaxRequests: 100, maxRequestsPerConnection: 1, idleTimeout: 1h, h2UpgradePolicy: UPGRADE, http2KeepAlive: {interval: 15s, timeout: 5s}}
    outlierDetection: {consecutive5xxErrors: 7, interval: 5m, baseEjectionTime: 15m, maxEjectionPercent: 50, outlierDetectionHttpErrorCodes: [503]}
    tls: {mode: SIMPLE, sni: api.example.com, insecureSkipVerify: true}
    portLevelSettings:
    - port: {number: 80}
      loadBalancer: {simple: RANDOM}
  subsets:
  - name: v1
    labels: {version: v1}
    trafficPolicy: {loadBalancer: {simple: ROUND_ROBIN}}
  - name: v2
    labels: {version: v2}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: api}
spec:
  hosts: [api.example.com]
  addresses: [192.0.2.10]
  ports: [{number: 443, name: https, protocol: TLS, targetPort: 8443}]
  location: MESH_INTERNAL
  resolution: STATIC
  endpoints:
  - {address: 192.0.2.11, ports: {https: 9443}, labels: {version: v1}, weight: 3, locality: us-east}
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: public}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 443, name: https, protocol: HTTPS}
    hosts: ["./api.example.com", "*/shop.example.com"]
    tls: {mode: SIMPLE, credentialName: api-cert, minProtocolVersion: TLSV1_2}
    name: https
---
apiVersion: extensions.istio.io/v1alpha1
kind: WasmPlugin
metadata: {name: auth}
spec:
  url: file:///plugins/auth.wasm
  phase: AUTHZ
  priority: 10
  failStrategy: FAIL_OPEN
  pluginConfig: {realm: shop, rules: [{path: /admin, allow: false}], limit: 1.5}
  targetRefs: [{group: networking.istio.io, kind: VirtualService, name: api}]
  match: [{mode: SERVER, ports: [{number: 443}]}]
  vmConfig: {env: [{name: TOKEN, valueFrom: INLINE, value: abc}, {name: MODE, value: strict}]}
---
apiVersion: v1
kind: Secret
metadata: {name: api-cert}
type: kubernetes.io/tls
stringData: {tls.crt: "-----BEGIN CERTIFICATE-----", tls.key: "-----BEGIN PRIVATE KEY-----"}
"#;
    let cfg = match load_sources(&[(PathBuf::from("all.yaml"), text.to_string())]) {
        Ok(c) => c,
        Err(e) => panic!("{e}"),
    };
    let docs: Vec<String> = wasmgate_config::split_documents(text)
        .into_iter()
        .map(|d| d.text)
        .collect();
    let dr = &cfg.destination_rules[0].spec;
    let se = &cfg.service_entries[0].spec;
    let gw = &cfg.gateways[0].spec;
    let wp = &cfg.wasm_plugins[0].spec;
    roundtrip(dr);
    roundtrip(se);
    roundtrip(gw);
    roundtrip(wp);
    let as_json = |v: &dyn erased::Ser| v.json();
    assert_eq!(as_json(dr), yaml_spec(&docs[0]));
    assert_eq!(as_json(se), yaml_spec(&docs[1]));
    assert_eq!(as_json(gw), yaml_spec(&docs[2]));
    assert_eq!(as_json(wp), yaml_spec(&docs[3]));
    let _: &raw::WasmPluginSpec = wp;
}

/// A tiny object-safe wrapper so the comparisons above read as one list.
mod erased {
    pub trait Ser {
        fn json(&self) -> serde_json::Value;
    }
    impl<T: serde::Serialize> Ser for T {
        fn json(&self) -> serde_json::Value {
            serde_json::to_value(self).unwrap_or_default()
        }
    }
}
