//! Errors and warnings produced while loading configuration, and the identity of the
//! resource they belong to. Every message carries the file, the line when known, the
//! resource (`VirtualService default/reviews`) and the kubectl-style field path, so the
//! CLI, the admin API and reload logs can print them as they are.

use std::fmt;
use std::path::PathBuf;

/// The resource kinds wasmgate reads: Istio's networking kinds, Istio's `Telemetry` and
/// security policies (`RequestAuthentication`, `AuthorizationPolicy`), the
/// Kubernetes `Secret`s that hold TLS certificates and keys, and Kubernetes `Ingress`
/// (with the `IngressClass`es that name its controller).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Kind {
    Gateway,
    VirtualService,
    DestinationRule,
    ServiceEntry,
    WasmPlugin,
    Secret,
    Ingress,
    IngressClass,
    Telemetry,
    RequestAuthentication,
    AuthorizationPolicy,
}

impl Kind {
    /// Every kind, in the order resources are listed in [`crate::Config`].
    pub const ALL: [Kind; 11] = [
        Kind::Gateway,
        Kind::VirtualService,
        Kind::DestinationRule,
        Kind::ServiceEntry,
        Kind::WasmPlugin,
        Kind::Secret,
        Kind::Ingress,
        Kind::IngressClass,
        Kind::Telemetry,
        Kind::RequestAuthentication,
        Kind::AuthorizationPolicy,
    ];

    /// The kind's name as written in `kind:`.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Gateway => "Gateway",
            Kind::VirtualService => "VirtualService",
            Kind::DestinationRule => "DestinationRule",
            Kind::ServiceEntry => "ServiceEntry",
            Kind::WasmPlugin => "WasmPlugin",
            Kind::Secret => "Secret",
            Kind::Ingress => "Ingress",
            Kind::IngressClass => "IngressClass",
            Kind::Telemetry => "Telemetry",
            Kind::RequestAuthentication => "RequestAuthentication",
            Kind::AuthorizationPolicy => "AuthorizationPolicy",
        }
    }

    /// The API group the kind belongs to (`""` is Kubernetes' core group).
    pub fn group(self) -> &'static str {
        match self {
            Kind::WasmPlugin => "extensions.istio.io",
            Kind::Telemetry => "telemetry.istio.io",
            Kind::RequestAuthentication | Kind::AuthorizationPolicy => "security.istio.io",
            Kind::Secret => "",
            Kind::Ingress | Kind::IngressClass => "networking.k8s.io",
            Kind::Gateway | Kind::VirtualService | Kind::DestinationRule | Kind::ServiceEntry => {
                "networking.istio.io"
            }
        }
    }

    /// The API versions served for the kind.
    pub fn versions(self) -> &'static [&'static str] {
        match self {
            Kind::WasmPlugin => &["v1alpha1"],
            // Istio serves v1 (since 1.22) and v1alpha1; there is no v1beta1.
            Kind::Telemetry => &["v1", "v1alpha1"],
            Kind::RequestAuthentication | Kind::AuthorizationPolicy => &["v1", "v1beta1"],
            Kind::Secret | Kind::Ingress | Kind::IngressClass => &["v1"],
            Kind::Gateway | Kind::VirtualService | Kind::DestinationRule | Kind::ServiceEntry => {
                &["v1", "v1beta1", "v1alpha3"]
            }
        }
    }

    /// An `apiVersion` the kind accepts: `group/version`, or the bare version for the
    /// core group (`v1`).
    pub fn api_version(self, version: &str) -> String {
        match self.group() {
            "" => version.to_string(),
            group => format!("{group}/{version}"),
        }
    }

    /// Looks a kind up by its `kind:` name and API group.
    pub fn from_group_kind(group: &str, kind: &str) -> Option<Kind> {
        Kind::ALL
            .into_iter()
            .find(|k| k.as_str() == kind && k.group() == group)
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Identifies one resource: `VirtualService default/reviews`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ResourceId {
    pub kind: Kind,
    pub namespace: String,
    pub name: String,
}

impl fmt::Display for ResourceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}/{}", self.kind, self.namespace, self.name)
    }
}

/// Something that makes the configuration invalid; the whole load is rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}", render(file, *line, resource.as_ref(), field.as_deref(), message))]
pub struct ConfigError {
    pub file: PathBuf,
    pub line: Option<usize>,
    pub resource: Option<ResourceId>,
    pub field: Option<String>,
    pub message: String,
}

/// Something Istio accepts but that will not work (or not as written) in wasmgate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigWarning {
    pub file: PathBuf,
    pub line: Option<usize>,
    pub resource: Option<ResourceId>,
    pub field: Option<String>,
    pub message: String,
}

impl fmt::Display for ConfigWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&render(
            &self.file,
            self.line,
            self.resource.as_ref(),
            self.field.as_deref(),
            &self.message,
        ))
    }
}

impl From<ConfigError> for ConfigWarning {
    fn from(e: ConfigError) -> Self {
        ConfigWarning {
            file: e.file,
            line: e.line,
            resource: e.resource,
            field: e.field,
            message: e.message,
        }
    }
}

fn render(
    file: &std::path::Path,
    line: Option<usize>,
    resource: Option<&ResourceId>,
    field: Option<&str>,
    message: &str,
) -> String {
    let mut out = file.display().to_string();
    if let Some(line) = line {
        out.push_str(&format!(":{line}"));
    }
    if let Some(resource) = resource {
        out.push_str(&format!(": {resource}"));
    }
    if let Some(field) = field {
        out.push_str(&format!(": {field}"));
    }
    out.push_str(": ");
    out.push_str(message);
    out
}

/// All the errors of one load, in file and document order. `Display` prints one per line.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Errors(pub Vec<ConfigError>);

impl fmt::Display for Errors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Errors {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_omits_absent_parts() {
        let e = ConfigError {
            file: "gw.yaml".into(),
            line: Some(12),
            resource: Some(ResourceId {
                kind: Kind::VirtualService,
                namespace: "default".into(),
                name: "reviews".into(),
            }),
            field: Some("spec.http[1].route[0].weight".into()),
            message: "weight -1 must not be negative".into(),
        };
        assert_eq!(
            e.to_string(),
            "gw.yaml:12: VirtualService default/reviews: spec.http[1].route[0].weight: weight -1 must not be negative"
        );
        let bare = ConfigError {
            file: "x.yaml".into(),
            line: None,
            resource: None,
            field: None,
            message: "no such file".into(),
        };
        assert_eq!(bare.to_string(), "x.yaml: no such file");
        let two = Errors(vec![bare.clone(), bare]);
        assert_eq!(
            two.to_string(),
            "x.yaml: no such file\nx.yaml: no such file"
        );
    }

    #[test]
    fn kinds_know_their_group() {
        assert_eq!(
            Kind::from_group_kind("networking.istio.io", "Gateway"),
            Some(Kind::Gateway)
        );
        assert_eq!(
            Kind::from_group_kind("gateway.networking.k8s.io", "Gateway"),
            None
        );
        assert_eq!(
            Kind::from_group_kind("extensions.istio.io", "WasmPlugin"),
            Some(Kind::WasmPlugin)
        );
        assert_eq!(Kind::from_group_kind("", "Secret"), Some(Kind::Secret));
        assert_eq!(
            Kind::from_group_kind("telemetry.istio.io", "Telemetry"),
            Some(Kind::Telemetry)
        );
        assert_eq!(
            Kind::Telemetry.api_version("v1alpha1"),
            "telemetry.istio.io/v1alpha1"
        );
        assert_eq!(Kind::from_group_kind("networking.istio.io", "Secret"), None);
        assert_eq!(Kind::Secret.api_version("v1"), "v1");
        assert_eq!(Kind::Gateway.api_version("v1"), "networking.istio.io/v1");
    }
}
