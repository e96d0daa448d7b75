//! Stage one: serde types that mirror Istio's YAML exactly, field for field, following the
//! istio/api protos (including fields wasmgate does not act on, so real Istio YAML parses).
//! Closed schemas deny unknown fields. Values keep their proto3 JSON shape: durations stay
//! strings, absent scalars are their zero value, wrapper types are `Option`. The types also
//! serialise, skipping absent and empty values, so that the runtime can hand a
//! `VirtualServiceSpec` or `HTTPRoute` to a Wasm plugin as JSON and the plugin (which
//! depends on this crate) can read it back unchanged.

mod common;
mod destination_rule;
mod gateway;
mod ingress;
mod security;
mod service_entry;
mod telemetry;
mod virtual_service;
mod wasm_plugin;

pub use common::*;
pub use destination_rule::*;
pub use gateway::*;
pub use ingress::*;
pub use security::*;
pub use service_entry::*;
pub use telemetry::*;
pub use virtual_service::*;
pub use wasm_plugin::*;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// A whole Kubernetes-style resource: the envelope around one kind's spec.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Resource<S> {
    pub api_version: String,
    pub kind: String,
    #[serde(default)]
    pub metadata: ObjectMeta,
    pub spec: S,
    /// Written by the control plane; ignored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<serde_json::Value>,
    /// Istio's validation fixtures carry the expected error here; ignored.
    #[serde(default, rename = "_err", skip_serializing)]
    pub expected_error: Option<serde_json::Value>,
}

/// Kubernetes object metadata. Only name, namespace, labels and annotations mean anything
/// to wasmgate; the fields the API server fills in are accepted and ignored.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields, rename_all = "camelCase")]
pub struct ObjectMeta {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub generate_name: Option<serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub uid: Option<serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resource_version: Option<serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub generation: Option<serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub creation_timestamp: Option<serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deletion_timestamp: Option<serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deletion_grace_period_seconds: Option<serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub owner_references: Option<serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finalizers: Option<serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub managed_fields: Option<serde_json::Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub self_link: Option<serde_json::Value>,
}

// `skip_serializing_if` helpers: proto3 zero values are not written out.
pub(crate) fn is_false(b: &bool) -> bool {
    !*b
}
pub(crate) fn is_zero_u32(n: &u32) -> bool {
    *n == 0
}
pub(crate) fn is_zero_i32(n: &i32) -> bool {
    *n == 0
}
pub(crate) fn is_zero_u64(n: &u64) -> bool {
    *n == 0
}
