//! The loader: reads files and directories, splits them into documents, runs each
//! document through parse (stage one), validation (stage two) and model building (stage
//! three), then checks the set as a whole (duplicates are errors; TLS credentials are read
//! from the Secrets and files they name, and a missing one is an error; the analyzers of
//! `crate::analyze` report what `istioctl analyze` would, as warnings, and resolve
//! `delegate` routes). Binds nothing and
//! compiles nothing, so `wasmgate validate` and a reload run exactly this.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;

use crate::credentials;
use crate::ingress::{self, IngressPorts};
use crate::model::{self, Config};
use crate::raw;
use crate::validate::{self, Issue, Report};
use crate::yaml::{FieldPath, Outline, Seg, YamlDocument, serde_failure, split_documents};
use crate::{ConfigError, ConfigWarning, Errors, Kind, ResourceId};

/// Fields whose CRD schema is `nullable`: `null` there means absent.
const NULLABLE: [&str; 21] = [
    "aggression",
    "allowCredentials",
    "consecutive5xxErrors",
    "consecutiveGatewayErrors",
    "consecutiveLocalOriginFailures",
    "disableContextPropagation",
    "disableSpanReporting",
    "disabled",
    "enableIstioTags",
    "enabled",
    "insecureSkipVerify",
    "minClusterSize",
    "minimumPercent",
    "mirrorPercent",
    "mirror_percent",
    "percent",
    "priority",
    "randomSamplingPercentage",
    "retryIgnorePreviousHosts",
    "retryRemoteLocalities",
    "useRequestIdForTraceSampling",
];

/// A validated resource of any kind.
#[derive(Debug)]
enum Loaded {
    Gateway(Box<model::Gateway>),
    VirtualService(Box<model::VirtualService>),
    DestinationRule(Box<model::DestinationRule>),
    ServiceEntry(Box<model::ServiceEntry>),
    WasmPlugin(Box<model::WasmPlugin>),
    Secret(Box<model::Secret>),
    Ingress(Box<model::Ingress>),
    IngressClass(Box<model::IngressClass>),
    Telemetry(Box<model::Telemetry>),
    RequestAuthentication(Box<model::RequestAuthentication>),
    AuthorizationPolicy(Box<model::AuthorizationPolicy>),
}

/// What loading needs beyond the files.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LoadOptions {
    /// Where the Gateways generated for Kubernetes Ingresses listen.
    pub ingress: IngressPorts,
    /// `--workload-namespace`: where `credentialName` Secrets are looked for after the
    /// namespace of the resource naming them.
    pub workload_namespace: credentials::WorkloadNamespace,
    /// `--plugin-host-env`: the names of wasmgate's environment variables a WasmPlugin may
    /// pass to its plugin with `vmConfig.env[].valueFrom: HOST`; any other is an error.
    pub host_env: BTreeSet<String>,
}

/// What came of one document.
#[derive(Debug)]
struct DocOutcome {
    file: PathBuf,
    id: Option<ResourceId>,
    line: usize,
    outline: Outline,
    errors: Vec<ConfigError>,
    warnings: Vec<ConfigWarning>,
    resource: Option<Loaded>,
}

impl DocOutcome {
    fn error(&mut self, path: Option<String>, line: Option<usize>, message: impl Into<String>) {
        self.errors.push(ConfigError {
            file: self.file.clone(),
            line: line.or(Some(self.line)),
            resource: self.id.clone(),
            field: path,
            message: message.into(),
        });
    }

    fn warning(&mut self, message: impl Into<String>) {
        self.warnings.push(ConfigWarning {
            file: self.file.clone(),
            line: Some(self.line),
            resource: self.id.clone(),
            field: None,
            message: message.into(),
        });
    }

    fn issue(&self, issue: &Issue) -> ConfigError {
        let line = match &issue.path {
            Some(p) => self.outline.line_of(&p.0),
            None => self.line,
        };
        ConfigError {
            file: self.file.clone(),
            line: Some(line),
            resource: self.id.clone(),
            field: issue.path.as_ref().map(ToString::to_string),
            message: issue.message.clone(),
        }
    }
}

/// Splits an `apiVersion` into group and version (`v1` alone is the core group).
fn split_api_version(api_version: &str) -> (&str, &str) {
    api_version.rsplit_once('/').unwrap_or(("", api_version))
}

fn get_str<'a>(map: &'a serde_yaml::Mapping, key: &str) -> Option<&'a str> {
    map.get(key).and_then(serde_yaml::Value::as_str)
}

/// Reports `null` values under `spec`, except where the schema allows them.
fn find_nulls(value: &serde_yaml::Value, path: &FieldPath, out: &mut Vec<FieldPath>) {
    match value {
        serde_yaml::Value::Mapping(m) => {
            for (k, v) in m {
                let key = match k {
                    serde_yaml::Value::String(s) => s.clone(),
                    other => serde_yaml::to_string(other)
                        .unwrap_or_default()
                        .trim()
                        .to_string(),
                };
                if key == "pluginConfig" && !v.is_null() {
                    continue;
                }
                let p = path.key(&key);
                if v.is_null() {
                    if !NULLABLE.contains(&key.as_str()) {
                        out.push(p);
                    }
                } else {
                    find_nulls(v, &p, out);
                }
            }
        }
        serde_yaml::Value::Sequence(items) => {
            for (i, v) in items.iter().enumerate() {
                let p = path.index(i);
                if v.is_null() {
                    out.push(p);
                } else {
                    find_nulls(v, &p, out);
                }
            }
        }
        serde_yaml::Value::Tagged(t) => find_nulls(&t.value, path, out),
        _ => {}
    }
}

fn resource_from_outline(outline: &Outline) -> Option<ResourceId> {
    let key = |k: &str| Seg::Key(k.to_string());
    let api = outline.scalar(&[key("apiVersion")])?;
    let kind = Kind::from_group_kind(split_api_version(&api).0, &outline.scalar(&[key("kind")])?)?;
    Some(ResourceId {
        kind,
        name: outline.scalar(&[key("metadata"), key("name")])?,
        namespace: outline
            .scalar(&[key("metadata"), key("namespace")])
            .unwrap_or_else(|| "default".into()),
    })
}

/// One document through stages one to three. With `options` (a load), also what this
/// wasmgate cannot run although Istio accepts it (`validate::wasm_plugin::supported`).
fn process_document(
    file: &Path,
    doc: &YamlDocument,
    options: Option<&LoadOptions>,
) -> Option<DocOutcome> {
    if doc.is_blank() {
        return None;
    }
    let mut out = DocOutcome {
        file: file.to_path_buf(),
        id: None,
        line: doc.start_line(),
        outline: Outline::parse(doc),
        errors: Vec::new(),
        warnings: Vec::new(),
        resource: None,
    };
    let abs = |l: usize| doc.first_line + l - 1;
    let mut doc = doc.clone();
    let mut attempts = 0;
    let value: serde_yaml::Value = loop {
        match serde_yaml::from_str(&doc.text) {
            Ok(v) => break v,
            Err(e) => {
                // Quoting a scalar changes no line, so positions stay right.
                if attempts < 32
                    && let Some(fixed) = crate::yaml::quote_flow_scalar(&doc.text, &e)
                {
                    doc.text = fixed;
                    attempts += 1;
                    continue;
                }
                out.id = resource_from_outline(&out.outline);
                let f = serde_failure(&e);
                // An error at the end of input is better shown where the unfinished
                // construct began.
                let end = doc.end_line();
                let line = match f.line.map(abs) {
                    Some(l) if l > end => f.context_line.map(abs).or(Some(end)),
                    other => other,
                };
                out.error(f.path, line, format!("invalid YAML: {}", f.message));
                return Some(out);
            }
        }
    };
    let doc = &doc;
    let map = match value {
        serde_yaml::Value::Null => return None,
        serde_yaml::Value::Mapping(m) => m,
        _ => {
            out.error(None, None, "expected a Kubernetes resource (a mapping with apiVersion, kind, metadata and spec)");
            return Some(out);
        }
    };
    let (Some(api_version), Some(kind_name)) = (get_str(&map, "apiVersion"), get_str(&map, "kind"))
    else {
        for field in ["apiVersion", "kind"] {
            if get_str(&map, field).is_none() {
                let line = out.outline.line_of(&[Seg::Key(field.into())]);
                out.error(
                    Some(field.into()),
                    Some(line),
                    format!("{field} is required"),
                );
            }
        }
        return Some(out);
    };
    let metadata = map.get("metadata").and_then(serde_yaml::Value::as_mapping);
    let name = metadata.and_then(|m| get_str(m, "name"));
    let namespace = metadata
        .and_then(|m| get_str(m, "namespace"))
        .unwrap_or("default");
    let display_name = format!("{namespace}/{}", name.unwrap_or("<unnamed>"));
    let (group, version) = split_api_version(api_version);
    let Some(kind) = Kind::from_group_kind(group, kind_name) else {
        let ours = Kind::ALL.into_iter().find(|k| k.as_str() == kind_name);
        match ours {
            Some(k) if group.ends_with("istio.io") => {
                out.id = name.map(|n| ResourceId {
                    kind: k,
                    namespace: namespace.to_string(),
                    name: n.to_string(),
                });
                let line = out.outline.line_of(&[Seg::Key("apiVersion".into())]);
                let home = match k.group() {
                    "" => "the core API group (apiVersion: v1)",
                    g => g,
                };
                out.error(
                    Some("apiVersion".into()),
                    Some(line),
                    format!("{kind_name} belongs to {home}, not {group}"),
                );
            }
            _ if group.ends_with("istio.io") => {
                out.warning(format!("ignored: wasmgate does not implement {kind_name} ({display_name})"));
            }
            _ => out.warning(format!(
                "ignored: {api_version} {kind_name} {display_name} is not an Istio resource wasmgate implements"
            )),
        }
        return Some(out);
    };
    out.id = name.map(|n| ResourceId {
        kind,
        namespace: namespace.to_string(),
        name: n.to_string(),
    });
    if !kind.versions().contains(&version) {
        let expected: Vec<String> = kind
            .versions()
            .iter()
            .map(|v| kind.api_version(v))
            .collect();
        let line = out.outline.line_of(&[Seg::Key("apiVersion".into())]);
        out.error(
            Some("apiVersion".into()),
            Some(line),
            format!(
                "unknown apiVersion {api_version:?} for {kind}; expected one of {}",
                expected.join(", ")
            ),
        );
        return Some(out);
    }
    if name.is_none() {
        let line = out
            .outline
            .line_of(&[Seg::Key("metadata".into()), Seg::Key("name".into())]);
        out.error(
            Some("metadata.name".into()),
            Some(line),
            format!("name is required for {kind}"),
        );
    }
    if kind == Kind::Secret {
        // A Secret has no spec: its data sits at the top level.
        typed_resource(
            kind,
            doc,
            &mut out,
            validate::secret::metadata,
            validate::secret::validate,
            |m| Loaded::Secret(Box::new(m)),
        );
        return Some(out);
    }
    match map.get("spec") {
        None => {
            out.error(Some("spec".into()), None, "spec is required");
            return Some(out);
        }
        Some(serde_yaml::Value::Null) => {
            let line = out.outline.line_of(&[Seg::Key("spec".into())]);
            out.error(
                Some("spec".into()),
                Some(line),
                "spec must be an object, not null",
            );
            return Some(out);
        }
        Some(spec) => {
            let mut nulls = Vec::new();
            find_nulls(spec, &FieldPath::root("spec"), &mut nulls);
            for p in &nulls {
                let line = out.outline.line_of(&p.0);
                out.error(Some(p.to_string()), Some(line), "must not be null");
            }
            if !nulls.is_empty() {
                return Some(out);
            }
        }
    }
    match kind {
        Kind::Gateway => {
            typed::<raw::GatewaySpec, _>(kind, doc, &mut out, validate::gateway::validate, |m| {
                Loaded::Gateway(Box::new(m))
            })
        }
        Kind::VirtualService => typed::<raw::VirtualServiceSpec, _>(
            kind,
            doc,
            &mut out,
            validate::virtual_service::validate,
            |m| Loaded::VirtualService(Box::new(m)),
        ),
        Kind::DestinationRule => typed::<raw::DestinationRuleSpec, _>(
            kind,
            doc,
            &mut out,
            validate::destination_rule::validate,
            |m| Loaded::DestinationRule(Box::new(m)),
        ),
        Kind::ServiceEntry => typed::<raw::ServiceEntrySpec, _>(
            kind,
            doc,
            &mut out,
            validate::service_entry::validate,
            |m| Loaded::ServiceEntry(Box::new(m)),
        ),
        Kind::WasmPlugin => typed_resource::<raw::Resource<raw::WasmPluginSpec>, _>(
            kind,
            doc,
            &mut out,
            |r| &r.metadata,
            |meta, r, report| {
                let mut plugin = validate::wasm_plugin::validate(meta, &r.spec, report);
                if let Some(options) = options {
                    validate::wasm_plugin::supported(&mut plugin, options, report);
                }
                plugin
            },
            |m| Loaded::WasmPlugin(Box::new(m)),
        ),
        Kind::Ingress => {
            typed::<raw::IngressSpec, _>(kind, doc, &mut out, validate::ingress::validate, |m| {
                Loaded::Ingress(Box::new(m))
            })
        }
        Kind::IngressClass => typed::<raw::IngressClassSpec, _>(
            kind,
            doc,
            &mut out,
            validate::ingress::validate_class,
            |m| Loaded::IngressClass(Box::new(m)),
        ),
        Kind::Telemetry => typed::<raw::TelemetrySpec, _>(
            kind,
            doc,
            &mut out,
            validate::telemetry::validate,
            |m| Loaded::Telemetry(Box::new(m)),
        ),
        Kind::RequestAuthentication => typed::<raw::RequestAuthenticationSpec, _>(
            kind,
            doc,
            &mut out,
            validate::security::validate_request_authentication,
            |m| Loaded::RequestAuthentication(Box::new(m)),
        ),
        Kind::AuthorizationPolicy => typed::<raw::AuthorizationPolicySpec, _>(
            kind,
            doc,
            &mut out,
            validate::security::validate_authorization_policy,
            |m| Loaded::AuthorizationPolicy(Box::new(m)),
        ),
        Kind::Secret => {}
    }
    Some(out)
}

/// Stage one for a kind with a `spec`, then metadata checks, stage two and stage three.
fn typed<S: DeserializeOwned, M>(
    kind: Kind,
    doc: &YamlDocument,
    out: &mut DocOutcome,
    validate: fn(&model::Meta, &S, &mut Report) -> M,
    wrap: fn(M) -> Loaded,
) {
    typed_resource::<raw::Resource<S>, M>(
        kind,
        doc,
        out,
        |r| &r.metadata,
        |meta, r, report| validate(meta, &r.spec, report),
        wrap,
    );
}

/// Stage one for a known kind as the whole document `R`, then metadata checks, stage two
/// and stage three.
fn typed_resource<R: DeserializeOwned, M>(
    kind: Kind,
    doc: &YamlDocument,
    out: &mut DocOutcome,
    metadata: impl Fn(&R) -> &raw::ObjectMeta,
    validate: impl Fn(&model::Meta, &R, &mut Report) -> M,
    wrap: fn(M) -> Loaded,
) {
    let resource: R = match serde_yaml::from_str(&doc.text) {
        Ok(r) => r,
        Err(e) => {
            let f = serde_failure(&e);
            out.error(f.path, f.line.map(|l| doc.first_line + l - 1), f.message);
            return;
        }
    };
    let metadata = metadata(&resource);
    let mut report = Report::default();
    validate_metadata(metadata, &mut report);
    // Without a name the error is already recorded; the spec is still checked.
    let id = out.id.clone().unwrap_or_else(|| ResourceId {
        kind,
        namespace: "default".into(),
        name: "unnamed".into(),
    });
    let meta = model::Meta {
        id,
        file: out.file.clone(),
        labels: metadata.labels.clone(),
        annotations: metadata.annotations.clone(),
    };
    let built = validate(&meta, &resource, &mut report);
    let errors: Vec<ConfigError> = report.errors.iter().map(|i| out.issue(i)).collect();
    let warnings: Vec<ConfigWarning> = report
        .warnings
        .iter()
        .map(|i| out.issue(i).into())
        .collect();
    out.errors.extend(errors);
    out.warnings.extend(warnings);
    // Report in file order; the sort is stable, so one line keeps rule order.
    out.errors.sort_by_key(|e| e.line);
    out.warnings.sort_by_key(|w| w.line);
    if out.errors.is_empty() && out.id.is_some() {
        out.resource = Some(wrap(built));
    }
}

fn validate_metadata(meta: &raw::ObjectMeta, r: &mut Report) {
    let p = FieldPath::root("metadata");
    if let Some(name) = &meta.name
        && !crate::host::is_k8s_subdomain(name)
    {
        r.err(
                &p.key("name"),
                format!("invalid name {name:?}: must be lowercase letters, digits, '-' and '.' (a DNS-1123 subdomain)"),
            );
    }
    if let Some(ns) = &meta.namespace
        && !crate::host::is_k8s_label(ns)
    {
        r.err(
            &p.key("namespace"),
            format!("invalid namespace {ns:?}: must be a DNS-1123 label"),
        );
    }
    validate::validate_labels(r, &p.key("labels"), &meta.labels);
    if meta.annotations.contains_key("istio.io/dry-run") {
        r.err(
            &p.key("annotations").key("istio.io/dry-run"),
            "unsupported annotation istio.io/dry-run, please remove the annotation",
        );
    }
}

/// Validates one YAML text (one or more documents) on its own: syntax, schema and each
/// resource's rules (Istio's), but nothing that needs the other resources, nor what only
/// a load checks against how wasmgate runs (a WasmPlugin's remote url and host
/// environment, see [`LoadOptions`]).
pub fn validate_document(file: &Path, yaml: &str) -> Vec<ConfigError> {
    split_documents(yaml)
        .iter()
        .filter_map(|d| process_document(file, d, None))
        .flat_map(|o| o.errors)
        .collect()
}

/// Loads YAML texts (in order), validates every resource and the set as a whole.
pub fn load_sources(sources: &[(PathBuf, String)]) -> Result<Config, Errors> {
    load_sources_with(sources, &LoadOptions::default())
}

/// [`load_sources`] with options.
pub fn load_sources_with(
    sources: &[(PathBuf, String)],
    options: &LoadOptions,
) -> Result<Config, Errors> {
    let outcomes: Vec<DocOutcome> = sources
        .iter()
        .flat_map(|(file, text)| {
            split_documents(text)
                .into_iter()
                .filter_map(|d| process_document(file, &d, Some(options)))
                .collect::<Vec<_>>()
        })
        .collect();
    assemble(outcomes, Vec::new(), options)
}

/// Loads files, and directories (every `*.yaml` / `*.yml` directly inside, by name).
pub fn load(paths: &[PathBuf]) -> Result<Config, Errors> {
    load_with(paths, &LoadOptions::default())
}

/// [`load`] with options.
pub fn load_with(paths: &[PathBuf], options: &LoadOptions) -> Result<Config, Errors> {
    load_with_documents(paths, &[], options)
}

/// [`load_with`], then `documents` after the files: YAML texts that come from a config
/// store (etcd), each named as its errors should name it (`etcd:/prefix/key`).
pub fn load_with_documents(
    paths: &[PathBuf],
    documents: &[(PathBuf, String)],
    options: &LoadOptions,
) -> Result<Config, Errors> {
    let mut io_errors = Vec::new();
    let mut sources = Vec::new();
    let mut notes = Vec::new();
    let io_error = |file: &Path, e: std::io::Error| ConfigError {
        file: file.to_path_buf(),
        line: None,
        resource: None,
        field: None,
        message: e.to_string(),
    };
    for path in paths {
        let files = if path.is_dir() {
            match std::fs::read_dir(path) {
                Ok(entries) => {
                    let mut files: Vec<PathBuf> = entries
                        .filter_map(Result::ok)
                        .map(|e| e.path())
                        .filter(|p| {
                            p.is_file() && p.extension().is_some_and(|e| e == "yaml" || e == "yml")
                        })
                        .collect();
                    files.sort();
                    if files.is_empty() {
                        notes.push(ConfigWarning {
                            file: path.clone(),
                            line: None,
                            resource: None,
                            field: None,
                            message: "directory has no *.yaml or *.yml files".into(),
                        });
                    }
                    files
                }
                Err(e) => {
                    io_errors.push(io_error(path, e));
                    continue;
                }
            }
        } else {
            vec![path.clone()]
        };
        for file in files {
            match std::fs::read_to_string(&file) {
                Ok(text) => sources.push((file, text)),
                Err(e) => io_errors.push(io_error(&file, e)),
            }
        }
    }
    sources.extend(documents.iter().cloned());
    let result = load_sources_with(&sources, options);
    match (result, io_errors.is_empty()) {
        (Ok(mut cfg), true) => {
            notes.append(&mut cfg.warnings);
            cfg.warnings = notes;
            Ok(cfg)
        }
        (Ok(_), false) => Err(Errors(io_errors)),
        (Err(Errors(mut rest)), _) => {
            io_errors.append(&mut rest);
            Err(Errors(io_errors))
        }
    }
}

fn assemble(
    outcomes: Vec<DocOutcome>,
    mut warnings: Vec<ConfigWarning>,
    options: &LoadOptions,
) -> Result<Config, Errors> {
    let mut errors = Vec::new();
    let mut first_seen: BTreeMap<ResourceId, (PathBuf, usize)> = BTreeMap::new();
    for o in &outcomes {
        if let Some(id) = &o.id {
            match first_seen.get(id) {
                Some((file, line)) => errors.push(ConfigError {
                    file: o.file.clone(),
                    line: Some(o.line),
                    resource: Some(id.clone()),
                    field: None,
                    message: format!(
                        "duplicate resource; first defined at {}:{line}",
                        file.display()
                    ),
                }),
                None => {
                    first_seen.insert(id.clone(), (o.file.clone(), o.line));
                }
            }
        }
        errors.extend(o.errors.iter().cloned());
    }
    if !errors.is_empty() {
        return Err(Errors(errors));
    }
    let mut cfg = Config::default();
    let mut outlines: BTreeMap<ResourceId, &Outline> = BTreeMap::new();
    for o in &outcomes {
        warnings.extend(o.warnings.iter().cloned());
        if let Some(id) = &o.id {
            outlines.insert(id.clone(), &o.outline);
        }
    }
    for o in &outcomes {
        match &o.resource {
            Some(Loaded::Gateway(g)) => cfg.gateways.push((**g).clone()),
            Some(Loaded::VirtualService(v)) => cfg.virtual_services.push((**v).clone()),
            Some(Loaded::DestinationRule(d)) => cfg.destination_rules.push((**d).clone()),
            Some(Loaded::ServiceEntry(s)) => cfg.service_entries.push((**s).clone()),
            Some(Loaded::WasmPlugin(w)) => cfg.wasm_plugins.push((**w).clone()),
            Some(Loaded::Secret(s)) => cfg.secrets.push((**s).clone()),
            Some(Loaded::Ingress(i)) => cfg.ingresses.push((**i).clone()),
            Some(Loaded::IngressClass(c)) => cfg.ingress_classes.push((**c).clone()),
            Some(Loaded::Telemetry(t)) => cfg.telemetries.push((**t).clone()),
            Some(Loaded::RequestAuthentication(ra)) => {
                cfg.request_authentications.push((**ra).clone());
            }
            Some(Loaded::AuthorizationPolicy(ap)) => {
                cfg.authorization_policies.push((**ap).clone());
            }
            None => {}
        }
    }
    // Ingresses become Gateways and VirtualServices before credentials are resolved,
    // so their TLS Secrets are found like any Gateway's.
    let translated = ingress::translate(&cfg, options.ingress);
    for (meta, report) in &translated.notes {
        let outline = outlines.get(&meta.id);
        warnings.extend(report.warnings.iter().map(|issue| {
            ConfigWarning::from(ConfigError {
                file: meta.file.clone(),
                line: match (&issue.path, outline) {
                    (Some(p), Some(o)) => Some(o.line_of(&p.0)),
                    _ => None,
                },
                resource: Some(meta.id.clone()),
                field: issue.path.as_ref().map(ToString::to_string),
                message: issue.message.clone(),
            })
        }));
    }
    let mut generated_errors = Vec::new();
    for (meta, report) in &translated.issues {
        let at = |issue: &Issue| ConfigError {
            file: meta.file.clone(),
            line: outlines.get(&meta.id).map(|o| o.line_of(&[])),
            resource: Some(meta.id.clone()),
            field: None,
            message: format!(
                "the generated configuration is invalid: {}{}",
                issue
                    .path
                    .as_ref()
                    .map(|p| format!("{p}: "))
                    .unwrap_or_default(),
                issue.message
            ),
        };
        generated_errors.extend(report.errors.iter().map(at));
        warnings.extend(report.warnings.iter().map(|i| at(i).into()));
    }
    for generated in translated
        .gateways
        .iter()
        .map(|g| &g.meta)
        .chain(translated.virtual_services.iter().map(|v| &v.meta))
    {
        if let Some((file, line)) = first_seen.get(&generated.id) {
            generated_errors.push(ConfigError {
                file: generated.file.clone(),
                line: None,
                resource: Some(generated.id.clone()),
                field: None,
                message: format!(
                    "the name Istio gives a resource generated for Ingresses is taken by {}:{line}",
                    file.display()
                ),
            });
        }
    }
    if !generated_errors.is_empty() {
        return Err(Errors(generated_errors));
    }
    cfg.gateways.extend(translated.gateways);
    cfg.virtual_services.extend(translated.virtual_services);
    // Credentials need every Secret; what they cannot find is an error, reported in
    // document order like the rest.
    let order: BTreeMap<&ResourceId, usize> = outcomes
        .iter()
        .enumerate()
        .filter_map(|(i, o)| o.id.as_ref().map(|id| (id, i)))
        .collect();
    let mut found: Vec<(usize, ConfigError)> = Vec::new();
    // An Ingress's missing Secret is reported on its `tls` entry.
    let resolved = credentials::resolve(&mut cfg, &options.workload_namespace);
    for (meta, report) in ingress::blame(&translated.tls_sources, resolved) {
        let outline = outlines.get(&meta.id);
        let at = |issue: &Issue| ConfigError {
            file: meta.file.clone(),
            line: match (&issue.path, outline) {
                (Some(p), Some(o)) => Some(o.line_of(&p.0)),
                _ => None,
            },
            resource: Some(meta.id.clone()),
            field: issue.path.as_ref().map(ToString::to_string),
            message: issue.message.clone(),
        };
        let index = order.get(&meta.id).copied().unwrap_or(usize::MAX);
        found.extend(report.errors.iter().map(|i| (index, at(i))));
        warnings.extend(report.warnings.iter().map(|i| at(i).into()));
    }
    if !found.is_empty() {
        found.sort_by_key(|(index, e)| (*index, e.line));
        return Err(Errors(found.into_iter().map(|(_, e)| e).collect()));
    }
    // Checks between resources (`istioctl analyze`), then `delegate` routes resolved.
    warnings.extend(crate::analyze::run(&mut cfg, &outlines, &order));
    cfg.telemetry = crate::telemetry::settings(&cfg);
    cfg.warnings = warnings;
    Ok(cfg)
}
