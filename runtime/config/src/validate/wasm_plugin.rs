//! WasmPlugin rules (Istio's `ValidateWasmPlugin` and the CRD's schema): url and its
//! scheme, sha256, selector vs target references, VM env, traffic selectors; builds
//! [`model::WasmPlugin`].

use std::collections::BTreeSet;
#[cfg(test)]
use std::path::Path;
use std::path::PathBuf;

use super::{Report, port_u16, validate_port, validate_workload_selector};
use crate::LoadOptions;
use crate::model::{self, FailStrategy, Phase, PluginMatch, PluginSource, TargetRef};
use crate::raw::{self, EnvValueSource, PluginPhase, PluginType, WorkloadMode};
use crate::yaml::FieldPath;

pub(crate) const SCHEME_MESSAGE: &str = "url must have schema one of [http, https, file, oci]";

pub(crate) fn validate(
    meta: &model::Meta,
    spec: &raw::WasmPluginSpec,
    r: &mut Report,
) -> model::WasmPlugin {
    let p = FieldPath::root("spec");
    let ns = &meta.id.namespace;
    let targets = scope(
        spec.selector.as_ref(),
        spec.target_ref.as_ref(),
        &spec.target_refs,
        ns,
        r,
        PLUGIN_TARGETS,
    );

    let source = match parse_url(&spec.url) {
        Ok(s) => s,
        Err(e) => {
            r.err(&p.key("url"), e);
            PluginSource::Named(String::new())
        }
    };
    if !spec.sha256.is_empty() {
        if spec.sha256.len() != 64 {
            r.err(&p.key("sha256"), "sha256 field must be 64 characters long");
        } else if !spec
            .sha256
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            r.err(
                &p.key("sha256"),
                "sha256 field must match [a-f0-9]{64} pattern",
            );
        }
    }
    for (field, value, max) in [
        ("imagePullSecret", &spec.image_pull_secret, 253),
        ("pluginName", &spec.plugin_name, 256),
    ] {
        match value {
            Some(v) if v.is_empty() => {
                r.err(&p.key(field), format!("{field} must not be empty when set"))
            }
            Some(v) if v.len() > max => r.err(
                &p.key(field),
                format!("{field} must be at most {max} characters long"),
            ),
            _ => {}
        }
    }
    if let Some(cfg) = &spec.plugin_config
        && !cfg.is_object()
    {
        r.err(&p.key("pluginConfig"), "pluginConfig must be an object");
    }
    if let Some(vm) = &spec.vm_config {
        let ep = p.key("vmConfig").key("env");
        if vm.env.len() > 256 {
            r.err(&ep, "env may have at most 256 items");
        }
        let mut names = BTreeSet::new();
        for (i, e) in vm.env.iter().enumerate() {
            let vp = ep.index(i);
            if e.name.is_empty() {
                r.err(&vp.key("name"), "name must not be empty");
            } else if e.name.len() > 256 {
                r.err(&vp.key("name"), "name must be at most 256 characters long");
            } else if !names.insert(e.name.as_str()) {
                r.err(&vp.key("name"), format!("duplicate env name {:?}", e.name));
            }
            if e.value_from == Some(EnvValueSource::Host) && e.value.is_some() {
                r.err(
                    &vp.key("value"),
                    "value may only be set when valueFrom is INLINE",
                );
            }
            if e.value.as_ref().is_some_and(|v| v.len() > 2048) {
                r.err(
                    &vp.key("value"),
                    "value must be at most 2048 characters long",
                );
            }
        }
    }
    let traffic = traffic(spec, &p, r);
    let fail_strategy = match spec.fail_strategy {
        Some(raw::FailStrategy::FailOpen) => FailStrategy::FailOpen,
        // The rate limiter's state store can fail (Redis down, store full): by default a
        // request is then let through, and the failure counted.
        None if source == PluginSource::Builtin("ratelimit".into()) => FailStrategy::FailOpen,
        _ => FailStrategy::FailClose,
    };
    let mut capabilities = capabilities(meta, r);
    if let PluginSource::Builtin(name) = &source {
        builtin_grants(name, spec, &mut capabilities);
    }

    model::WasmPlugin {
        meta: meta.clone(),
        source,
        sha256: (!spec.sha256.is_empty()).then(|| spec.sha256.clone()),
        plugin_config: spec
            .plugin_config
            .clone()
            .unwrap_or(serde_json::Value::Null),
        phase: match spec.phase {
            Some(PluginPhase::Authn) => Phase::Authn,
            Some(PluginPhase::Authz) => Phase::Authz,
            Some(PluginPhase::Stats) => Phase::Stats,
            Some(PluginPhase::Unspecified) | None => Phase::Unspecified,
        },
        priority: i64::from(spec.priority.unwrap_or(0)),
        // FAIL_RELOAD only differs in replacing a crashed VM, which wasmgate always does.
        fail_strategy,
        targets,
        selector: spec
            .selector
            .as_ref()
            .map(|s| s.match_labels.clone())
            .unwrap_or_default(),
        traffic,
        capabilities,
        // Filled in by [`supported`], which knows what `--plugin-host-env` allows.
        env: Vec::new(),
        spec: spec.clone(),
    }
}

/// The annotation that grants a WasmPlugin host capabilities beyond log, random,
/// monotonic time and metrics.
pub const CAPABILITIES: &str = "wasmgate.io/capabilities";

/// What a first-party component carries without an annotation: the rate limiter keeps
/// its buckets in the state store (Redis, shared by replicas, with `scope: global`) and
/// reads the clock.
fn builtin_grants(name: &str, spec: &raw::WasmPluginSpec, caps: &mut model::Capabilities) {
    if name == "ratelimit" {
        caps.clock = true;
        caps.state = true;
        caps.global_state |= spec
            .plugin_config
            .as_ref()
            .and_then(|c| c.get("scope"))
            .and_then(serde_json::Value::as_str)
            == Some("global");
    }
}

/// [`CAPABILITIES`]: comma- or space-separated grants, `clock`, `state`, `state:global`
/// and `outbound:<host>` (repeatable; `*.example.com` grants subdomains; a call also needs
/// a ServiceEntry that defines the host). Unknown grants and malformed hosts are errors
/// naming the annotation.
fn capabilities(meta: &model::Meta, r: &mut Report) -> model::Capabilities {
    let mut caps = model::Capabilities::default();
    let Some(text) = meta.annotations.get(CAPABILITIES) else {
        return caps;
    };
    let p = FieldPath::root("metadata")
        .key("annotations")
        .key(CAPABILITIES);
    for grant in text.split([',', ' ', '\n', '\t']).filter(|g| !g.is_empty()) {
        match grant.split_once(':') {
            None if grant == "clock" => caps.clock = true,
            None if grant == "state" => caps.state = true,
            Some(("state", "global")) => {
                caps.state = true;
                caps.global_state = true;
            }
            Some(("outbound", host)) => {
                let host = host.to_ascii_lowercase();
                // `*` only as a whole first label: `*.example.com`.
                let name = host.strip_prefix("*.").unwrap_or(&host);
                if name.is_empty()
                    || !name
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"-.".contains(&b))
                {
                    r.err(
                        &p,
                        format!("outbound:{host}: not a host name (write outbound:<host>, no port or scheme)"),
                    );
                } else if !caps.outbound.contains(&host) {
                    caps.outbound.push(host);
                }
            }
            _ => r.err(
                &p,
                format!(
                    "unknown capability {grant:?}: the grants are clock, state, state:global and outbound:<host>"
                ),
            ),
        }
    }
    caps
}

/// `match`: Istio's rules for each entry's ports, then where the plugin runs. An entry
/// matches when its mode does and one of its ports (or it has none). Istio's gateways are
/// CLIENT workloads (`workloadModeForListenerClass`: a gateway listener is CLIENT; the
/// API: "if the workload is a gateway, selects this"), and so is wasmgate's mesh
/// listener (a sidecar's outbound side): CLIENT, CLIENT_AND_SERVER and UNDEFINED match,
/// SERVER (inbound to a workload) never does.
fn traffic(spec: &raw::WasmPluginSpec, p: &FieldPath, r: &mut Report) -> PluginMatch {
    let mut ports = Vec::new();
    let mut everywhere = spec.match_.is_empty();
    for (i, m) in spec.match_.iter().enumerate() {
        let mp = p.key("match").index(i);
        let mut seen = BTreeSet::new();
        let mut mine = Vec::new();
        for (j, port) in m.ports.iter().enumerate() {
            let pp = mp.key("ports").index(j).key("number");
            match port.number {
                None => r.err(&pp, "port number is required"),
                Some(n) => {
                    if let Err(e) = validate_port(n) {
                        r.err(&pp, e);
                    } else if !seen.insert(n) {
                        r.err(&pp, format!("duplicate port number {n}"));
                    } else {
                        mine.push(port_u16(n));
                    }
                }
            }
        }
        if m.mode == Some(WorkloadMode::Server) {
            continue;
        }
        if m.ports.is_empty() {
            everywhere = true;
        }
        for port in mine {
            if !ports.contains(&port) {
                ports.push(port);
            }
        }
    }
    if everywhere {
        PluginMatch::Everywhere
    } else if ports.is_empty() {
        r.warn(
            &p.key("match"),
            "every entry selects mode SERVER, which a gateway never is (Istio counts a \
             gateway as a CLIENT workload): this plugin runs nowhere",
        );
        PluginMatch::Nowhere
    } else {
        PluginMatch::Ports(ports)
    }
}

/// What Istio accepts but this wasmgate cannot run, as errors: `type: NETWORK`, an
/// `oci://` url, an `http(s)://` url without the `sha256` that pins it, and `vmConfig.env`
/// entries that read wasmgate's environment (`valueFrom: HOST`) without
/// `--plugin-host-env` allowing the name. Resolves the plugin's environment. Run by every
/// load (`run`, a reload, `validate`), not by [`crate::validate_document`], which checks
/// Istio's rules alone.
pub(crate) fn supported(plugin: &mut model::WasmPlugin, options: &LoadOptions, r: &mut Report) {
    let p = FieldPath::root("spec");
    let spec = &plugin.spec;
    if spec.type_ == Some(PluginType::Network) {
        r.err(
            &p.key("type"),
            "NETWORK plugins are not supported: wasmgate runs HTTP plugins only \
             (components of wasmgate:policy); remove type or set it to HTTP",
        );
    }
    if let PluginSource::Remote(url) = &plugin.source {
        let scheme = url
            .split_once("://")
            .map_or("", |(s, _)| s)
            .to_ascii_lowercase();
        if scheme == "oci" {
            r.err(
                &p.key("url"),
                "oci:// images are not supported: wasmgate does not pull OCI images; serve \
                 the module over https:// with its sha256, or put it in the --plugins \
                 directory and give its file name",
            );
        } else if spec.sha256.is_empty() {
            r.err(
                &p.key("sha256"),
                format!(
                    "sha256 is required with an {scheme}:// url: wasmgate runs a downloaded \
                     module only after checking it against the sha256 it was given"
                ),
            );
        }
    }
    let mut env = Vec::new();
    let entries = spec.vm_config.as_ref().map_or(&[][..], |vm| &vm.env[..]);
    for (i, e) in entries.iter().enumerate() {
        let ep = p.key("vmConfig").key("env").index(i);
        if e.name.contains(['=', '\0']) {
            r.err(
                &ep.key("name"),
                format!(
                    "{:?}: an environment variable name cannot hold '=' or NUL",
                    e.name
                ),
            );
            continue;
        }
        if e.value_from != Some(EnvValueSource::Host) {
            env.push((e.name.clone(), e.value.clone().unwrap_or_default()));
            continue;
        }
        if !options.host_env.contains(&e.name) {
            r.err(
                &ep.key("valueFrom"),
                format!(
                    "HOST: wasmgate passes its own environment variable {:?} to plugins only \
                     when it runs with --plugin-host-env {}",
                    e.name, e.name
                ),
            );
            continue;
        }
        match std::env::var(&e.name) {
            Ok(value) => env.push((e.name.clone(), value)),
            Err(std::env::VarError::NotPresent) => r.warn(
                &ep.key("valueFrom"),
                format!(
                    "HOST: {:?} is not set in wasmgate's environment; the plugin does not get it",
                    e.name
                ),
            ),
            Err(std::env::VarError::NotUnicode(_)) => r.err(
                &ep.key("valueFrom"),
                format!(
                    "HOST: wasmgate's environment variable {:?} is not UTF-8",
                    e.name
                ),
            ),
        }
    }
    plugin.env = env;
}

fn is_group(g: &str) -> bool {
    g.is_empty() || (g.len() <= 253 && crate::host::is_k8s_subdomain(g))
}

fn is_kind(k: &str) -> bool {
    let b = k.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b[0].is_ascii_alphabetic()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter().all(|c| c.is_ascii_alphanumeric() || *c == b'-')
}

/// The networking.istio.io kinds a WasmPlugin binds to (wasmgate's addition to the
/// kinds Istio allows).
pub(crate) const PLUGIN_TARGETS: &[&str] = &["VirtualService", "Gateway"];

/// A policy target. wasmgate binds policies to the `networking.istio.io` kinds in
/// `bindable` (for WasmPlugins VirtualServices and Gateways, for Telemetry Gateways); the
/// kinds Istio itself allows (Service, ServiceEntry, Gateway API Gateway and
/// GatewayClass) are accepted and ignored with a warning.
/// What a policy resource (WasmPlugin, Telemetry) applies to, as Istio checks it:
/// `selector`, `targetRef` or at most 16 `targetRefs`, only one of them; the targets
/// whose kind is in `bindable`.
pub(crate) fn scope(
    selector: Option<&raw::WorkloadSelector>,
    target_ref: Option<&raw::PolicyTargetReference>,
    target_refs: &[raw::PolicyTargetReference],
    ns: &str,
    r: &mut Report,
    bindable: &[&str],
) -> Vec<TargetRef> {
    let p = FieldPath::root("spec");
    let set = [
        selector.is_some(),
        target_ref.is_some(),
        !target_refs.is_empty(),
    ];
    if set.iter().filter(|b| **b).count() > 1 {
        r.err(&p, "only one of targetRefs or selector can be set");
    }
    if let Some(s) = selector {
        validate_workload_selector(r, &p.key("selector"), s);
    }
    let mut targets = Vec::new();
    if let Some(t) = target_ref {
        targets.extend(target(t, ns, &p.key("targetRef"), r, bindable));
    }
    if target_refs.len() > 16 {
        r.err(&p.key("targetRefs"), "targetRefs may have at most 16 items");
    }
    for (i, t) in target_refs.iter().enumerate() {
        targets.extend(target(t, ns, &p.key("targetRefs").index(i), r, bindable));
    }
    targets
}

/// Which workloads a policy resource selects, given the `targets` [`scope`] bound:
/// `targetRef(s)`, else `selector` labels, else its namespace (Istio: a selector
/// without labels is namespace-wide).
pub(crate) fn policy_scope(
    selector: Option<&raw::WorkloadSelector>,
    targeted: bool,
    targets: Vec<TargetRef>,
) -> model::PolicyScope {
    let labels = selector.map(|s| s.match_labels.clone()).unwrap_or_default();
    if targeted {
        model::PolicyScope::Targets(targets)
    } else if !labels.is_empty() {
        model::PolicyScope::Selector(labels)
    } else {
        model::PolicyScope::Namespace
    }
}

pub(crate) fn target(
    t: &raw::PolicyTargetReference,
    ns: &str,
    p: &FieldPath,
    r: &mut Report,
    bindable: &[&str],
) -> Option<TargetRef> {
    let before = r.errors.len();
    if t.kind.is_empty() {
        r.err(&p.key("kind"), "targetRef kind must be set");
    } else if !is_kind(&t.kind) {
        r.err(
            &p.key("kind"),
            format!("invalid targetRef kind {:?}", t.kind),
        );
    }
    if t.name.is_empty() {
        r.err(&p.key("name"), "targetRef name must be set");
    } else if t.name.len() > 253 {
        r.err(
            &p.key("name"),
            "targetRef name must be at most 253 characters long",
        );
    }
    if !is_group(&t.group) {
        r.err(
            &p.key("group"),
            format!("invalid targetRef group {:?}", t.group),
        );
    }
    if !t.namespace.is_empty() && t.namespace != ns {
        r.err(
            &p.key("namespace"),
            "targetRef namespace must not be set; cross namespace referencing is not supported",
        );
    }
    if r.errors.len() != before {
        return None;
    }
    let group = if t.group.is_empty() {
        "core"
    } else {
        t.group.as_str()
    };
    match (group, t.kind.as_str()) {
        ("networking.istio.io", kind) if bindable.contains(&kind) => Some(TargetRef {
            group: t.group.clone(),
            kind: t.kind.clone(),
            namespace: ns.to_string(),
            name: t.name.clone(),
        }),
        ("core", "Service")
        | ("networking.istio.io", "ServiceEntry")
        | ("gateway.networking.k8s.io", "Gateway" | "GatewayClass") => {
            r.warn(
                p,
                format!("ignored by wasmgate: targetRef to {group}/{}", t.kind),
            );
            None
        }
        _ => {
            let allowed: Vec<String> = bindable
                .iter()
                .map(|k| format!("networking.istio.io/{k}"))
                .chain(
                    [
                        "core/Service",
                        "networking.istio.io/ServiceEntry",
                        "gateway.networking.k8s.io/Gateway",
                        "gateway.networking.k8s.io/GatewayClass",
                    ]
                    .map(String::from),
                )
                .collect();
            r.err(
                p,
                format!(
                    "targetRef must be to one of {} but was {group}/{}",
                    allowed.join(", "),
                    t.kind
                ),
            );
            None
        }
    }
}

/// Classifies a plugin url. No scheme names a file in the plugins directory (wasmgate's
/// reading; Istio would pull an OCI image); `file://` a local path; `http(s)://` and
/// `oci://` are remote.
pub(crate) fn parse_url(url: &str) -> Result<PluginSource, String> {
    if url.is_empty() {
        return Err("url field needs to be set".into());
    }
    if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!("{SCHEME_MESSAGE}: {url:?} is not a valid URL"));
    }
    let bytes = url.as_bytes();
    for (i, b) in bytes.iter().enumerate() {
        if *b == b'%'
            && !(bytes.get(i + 1).is_some_and(u8::is_ascii_hexdigit)
                && bytes.get(i + 2).is_some_and(u8::is_ascii_hexdigit))
        {
            return Err(format!(
                "{SCHEME_MESSAGE}: {url:?} is not a valid URL (bad % escape)"
            ));
        }
    }
    let Some((scheme, rest)) = url.split_once("://") else {
        if url.starts_with('#') || url.starts_with('?') {
            return Err(format!("{SCHEME_MESSAGE}: {url:?} is not a valid URL"));
        }
        return Ok(PluginSource::Named(url.to_string()));
    };
    let valid_scheme = scheme
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic())
        && scheme
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
    if !valid_scheme {
        return Err(format!("{SCHEME_MESSAGE}: {url:?} is not a valid URL"));
    }
    match scheme.to_ascii_lowercase().as_str() {
        "file" => {
            if rest.is_empty() {
                return Err("file:// url has no path".into());
            }
            Ok(PluginSource::File(PathBuf::from(percent_decode(rest))))
        }
        "http" | "https" | "oci" => {
            if rest.is_empty() {
                return Err(format!("{SCHEME_MESSAGE}: {url:?} has no host"));
            }
            Ok(PluginSource::Remote(url.to_string()))
        }
        "builtin" => {
            let name = rest.trim_end_matches('/');
            if BUILTINS.contains(&name) {
                Ok(PluginSource::Builtin(name.to_string()))
            } else {
                Err(format!(
                    "builtin://{name}: no such first-party component; the ones a WasmPlugin binds are {}",
                    BUILTINS.map(|b| format!("builtin://{b}")).join(", ")
                ))
            }
        }
        other => Err(format!("{SCHEME_MESSAGE}: unsupported scheme {other:?}")),
    }
}

/// The first-party components a WasmPlugin binds with `builtin://<name>` (the others —
/// router, fault, traffic split, jwt-authn, authz — are bound by the gateway itself).
pub const BUILTINS: [&str; 1] = ["ratelimit"];

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            let hex = std::str::from_utf8(&b[i + 1..i + 3]).ok();
            if let Some(v) = hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Config, Errors, load_sources_with};

    fn load(spec: &str, options: &LoadOptions) -> Result<Config, Errors> {
        let yaml = format!(
            "apiVersion: extensions.istio.io/v1alpha1\nkind: WasmPlugin\n\
             metadata: {{name: p}}\nspec:\n{spec}"
        );
        load_sources_with(&[(PathBuf::from("p.yaml"), yaml)], options)
    }

    fn traffic_of(spec: &str) -> PluginMatch {
        match load(spec, &LoadOptions::default()) {
            Ok(c) => c.wasm_plugins[0].traffic.clone(),
            Err(e) => panic!("{e}"),
        }
    }

    fn errors(spec: &str, options: &LoadOptions) -> Vec<String> {
        match load(spec, options) {
            Ok(_) => Vec::new(),
            Err(e) => e.0.iter().map(ToString::to_string).collect(),
        }
    }

    fn capabilities_of(annotation: &str) -> Result<model::Capabilities, Vec<String>> {
        let yaml = format!(
            "apiVersion: extensions.istio.io/v1alpha1\nkind: WasmPlugin\nmetadata:\n  \
             name: p\n  annotations:\n    wasmgate.io/capabilities: \"{annotation}\"\n\
             spec:\n  url: a.wasm\n"
        );
        match load_sources_with(&[(PathBuf::from("p.yaml"), yaml)], &LoadOptions::default()) {
            Ok(c) => Ok(c.wasm_plugins[0].capabilities.clone()),
            Err(e) => Err(e.0.iter().map(|e| e.message.clone()).collect()),
        }
    }

    #[test]
    fn capabilities_are_granted_by_annotation_and_denied_by_default() {
        let none = load("  url: a.wasm\n", &LoadOptions::default()).expect("loads");
        assert_eq!(
            none.wasm_plugins[0].capabilities,
            model::Capabilities::default()
        );
        assert_eq!(
            capabilities_of("clock, state outbound:Auth.internal,outbound:*.example.com"),
            Ok(model::Capabilities {
                clock: true,
                state: true,
                global_state: false,
                outbound: vec!["auth.internal".into(), "*.example.com".into()],
            })
        );
        assert_eq!(
            capabilities_of("state:global"),
            Ok(model::Capabilities {
                state: true,
                global_state: true,
                ..model::Capabilities::default()
            })
        );
        assert_eq!(
            capabilities_of("state, sockets, outbound:http://x, outbound:*, outbound:a*.b"),
            Err(vec![
                "unknown capability \"sockets\": the grants are clock, state, state:global and outbound:<host>"
                    .to_string(),
                "outbound:http://x: not a host name (write outbound:<host>, no port or scheme)"
                    .to_string(),
                "outbound:*: not a host name (write outbound:<host>, no port or scheme)"
                    .to_string(),
                "outbound:a*.b: not a host name (write outbound:<host>, no port or scheme)"
                    .to_string(),
            ])
        );
    }

    #[test]
    fn match_modes_on_a_gateway() {
        assert_eq!(traffic_of("  url: a.wasm\n"), PluginMatch::Everywhere);
        assert_eq!(
            traffic_of("  url: a.wasm\n  match: [{ports: [{number: 80}, {number: 81}]}]\n"),
            PluginMatch::Ports(vec![80, 81])
        );
        // A gateway is a CLIENT workload: CLIENT, CLIENT_AND_SERVER and UNDEFINED match.
        for mode in ["CLIENT", "CLIENT_AND_SERVER", "UNDEFINED"] {
            assert_eq!(
                traffic_of(&format!(
                    "  url: a.wasm\n  match: [{{mode: {mode}, ports: [{{number: 80}}]}}]\n"
                )),
                PluginMatch::Ports(vec![80]),
                "{mode}"
            );
            assert_eq!(
                traffic_of(&format!("  url: a.wasm\n  match: [{{mode: {mode}}}]\n")),
                PluginMatch::Everywhere,
                "{mode}"
            );
        }
        // SERVER entries never match; the others still do.
        assert_eq!(
            traffic_of(
                "  url: a.wasm\n  match:\n  - {mode: SERVER, ports: [{number: 80}]}\n  \
                 - {mode: CLIENT, ports: [{number: 81}]}\n"
            ),
            PluginMatch::Ports(vec![81])
        );
        assert_eq!(
            traffic_of(
                "  url: a.wasm\n  match: [{mode: SERVER}, {mode: SERVER, ports: [{number: 1}]}]\n"
            ),
            PluginMatch::Nowhere
        );
        let Ok(c) = load(
            "  url: a.wasm\n  match: [{mode: SERVER}]\n",
            &LoadOptions::default(),
        ) else {
            panic!("SERVER is valid Istio");
        };
        assert_eq!(
            c.warnings[0].to_string(),
            "p.yaml:6: WasmPlugin default/p: spec.match: every entry selects mode SERVER, which \
             a gateway never is (Istio counts a gateway as a CLIENT workload): this plugin runs \
             nowhere"
        );
    }

    #[test]
    fn what_wasmgate_cannot_run_is_an_error_naming_the_field() {
        let none = LoadOptions::default();
        assert_eq!(
            errors("  url: a.wasm\n  type: NETWORK\n", &none),
            [
                "p.yaml:6: WasmPlugin default/p: spec.type: NETWORK plugins are not supported: \
              wasmgate runs HTTP plugins only (components of wasmgate:policy); remove type or \
              set it to HTTP"
            ]
        );
        assert_eq!(
            errors("  url: oci://ghcr.io/x/y:1\n", &none),
            [
                "p.yaml:5: WasmPlugin default/p: spec.url: oci:// images are not supported: \
              wasmgate does not pull OCI images; serve the module over https:// with its \
              sha256, or put it in the --plugins directory and give its file name"
            ]
        );
        assert_eq!(
            errors("  url: https://example.com/a.wasm\n", &none),
            [
                "p.yaml:4: WasmPlugin default/p: spec.sha256: sha256 is required with an https:// \
              url: wasmgate runs a downloaded module only after checking it against the sha256 \
              it was given"
            ]
        );
        let sha = "0".repeat(64);
        assert!(
            errors(
                &format!("  url: http://127.0.0.1:1/a.wasm\n  sha256: {sha}\n"),
                &none
            )
            .is_empty()
        );
        // Accepted, and not applicable: nothing is pulled from an image registry.
        assert!(
            errors(
                "  url: a.wasm\n  imagePullPolicy: Always\n  imagePullSecret: creds\n  type: HTTP\n",
                &none
            )
            .is_empty()
        );
        // Istio's rules alone (the fixtures) accept all of these.
        for spec in [
            "{url: \"oci://ghcr.io/x/y:1\"}",
            "{url: \"http://test\"}",
            "{url: a.wasm, type: NETWORK}",
            "{url: a.wasm, vmConfig: {env: [{name: HOME, valueFrom: HOST}]}}",
        ] {
            let doc = format!(
                "apiVersion: extensions.istio.io/v1alpha1\nkind: WasmPlugin\nmetadata: {{name: p}}\nspec: {spec}\n"
            );
            assert!(
                crate::validate_document(Path::new("p.yaml"), &doc).is_empty(),
                "{spec}"
            );
        }
    }

    #[test]
    fn env_literals_and_allowed_host_variables() {
        let spec = "  url: a.wasm\n  vmConfig:\n    env:\n    - {name: MODE, value: strict}\n    \
                    - {name: EMPTY, valueFrom: INLINE}\n    - {name: PATH, valueFrom: HOST}\n";
        assert_eq!(
            errors(spec, &LoadOptions::default()),
            [
                "p.yaml:10: WasmPlugin default/p: spec.vmConfig.env[2].valueFrom: HOST: wasmgate \
              passes its own environment variable \"PATH\" to plugins only when it runs with \
              --plugin-host-env PATH"
            ]
        );
        let allowed = LoadOptions {
            host_env: ["PATH".to_string()].into(),
            ..LoadOptions::default()
        };
        let c = match load(spec, &allowed) {
            Ok(c) => c,
            Err(e) => panic!("{e}"),
        };
        let path = std::env::var("PATH").unwrap_or_default();
        assert_eq!(
            c.wasm_plugins[0].env,
            [
                ("MODE".to_string(), "strict".to_string()),
                ("EMPTY".to_string(), String::new()),
                ("PATH".to_string(), path),
            ]
        );
        let unset = LoadOptions {
            host_env: ["WASMGATE_TEST_SURELY_UNSET".to_string()].into(),
            ..LoadOptions::default()
        };
        let c = match load(
            "  url: a.wasm\n  vmConfig: {env: [{name: WASMGATE_TEST_SURELY_UNSET, valueFrom: HOST}]}\n",
            &unset,
        ) {
            Ok(c) => c,
            Err(e) => panic!("{e}"),
        };
        assert!(c.wasm_plugins[0].env.is_empty());
        assert!(
            c.warnings[0]
                .to_string()
                .contains("is not set in wasmgate's environment")
        );
        assert_eq!(
            errors(
                "  url: a.wasm\n  vmConfig: {env: [{name: \"A=B\", value: x}]}\n",
                &unset
            ),
            [
                "p.yaml:6: WasmPlugin default/p: spec.vmConfig.env[0].name: \"A=B\": an environment \
              variable name cannot hold '=' or NUL"
            ]
        );
    }

    #[test]
    fn urls() {
        assert_eq!(
            parse_url("router.wasm"),
            Ok(PluginSource::Named("router.wasm".into()))
        );
        assert_eq!(
            parse_url("file:///opt/filters/my%20plugin.wasm"),
            Ok(PluginSource::File("/opt/filters/my plugin.wasm".into()))
        );
        assert_eq!(
            parse_url("oci://ghcr.io/x/y:1"),
            Ok(PluginSource::Remote("oci://ghcr.io/x/y:1".into()))
        );
        assert!(matches!(
            parse_url("HTTPS://example.com/x.wasm"),
            Ok(PluginSource::Remote(_))
        ));
        for bad in [
            "",
            "#%blah$#@",
            "fake://example.com",
            "a b",
            "http://",
            "1x://y",
            "50%",
        ] {
            assert!(parse_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn builtin_urls_name_first_party_components_with_their_grants() {
        let cfg = load(
            "  url: builtin://ratelimit\n  pluginConfig: {scope: global}\n",
            &LoadOptions::default(),
        )
        .expect("loads");
        let wp = &cfg.wasm_plugins[0];
        assert_eq!(wp.source, PluginSource::Builtin("ratelimit".into()));
        assert_eq!(wp.fail_strategy, FailStrategy::FailOpen);
        assert!(wp.capabilities.clock && wp.capabilities.state && wp.capabilities.global_state);
        let cfg = load(
            "  url: builtin://ratelimit\n  failStrategy: FAIL_CLOSE\n",
            &LoadOptions::default(),
        )
        .expect("loads");
        assert_eq!(cfg.wasm_plugins[0].fail_strategy, FailStrategy::FailClose);
        assert!(!cfg.wasm_plugins[0].capabilities.global_state);
        let e = load("  url: builtin://router\n", &LoadOptions::default())
            .err()
            .map(|e| e.0[0].message.clone());
        assert_eq!(
            e.as_deref(),
            Some(
                "builtin://router: no such first-party component; the ones a WasmPlugin binds are builtin://ratelimit"
            )
        );
    }
}
