//! Istio's own validation fixtures (pkg/config/validation/testdata/crds): every document
//! of a `-valid` file must validate cleanly, every document of an `-invalid` file must be
//! rejected, and where Istio's expected error starts with a field path our error must
//! name the same field.

use std::path::{Path, PathBuf};

use wasmgate_config::split_documents;
use wasmgate_config::validate_document;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/data/istio/validation")
        .join(name)
}

/// The non-blank documents of a fixture file.
fn documents(name: &str) -> (PathBuf, Vec<String>) {
    let path = fixture(name);
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    let docs = split_documents(&text)
        .into_iter()
        .filter(|d| !d.is_blank())
        .map(|d| d.text)
        .collect();
    (path, docs)
}

/// The field path Istio's message starts with (`spec.x.y: ...` or `spec.x in body ...`).
fn expected_field(err: &str) -> Option<String> {
    let token = err.split([':', ' ']).next()?;
    (token == "spec" || token.starts_with("spec.")).then(|| token.to_string())
}

fn check_valid(name: &str, expected_docs: usize) {
    let (path, docs) = documents(name);
    assert_eq!(docs.len(), expected_docs, "{name}: document count");
    for (i, doc) in docs.iter().enumerate() {
        let errors = validate_document(&path, doc);
        assert!(
            errors.is_empty(),
            "{name} document {i} should be valid but got:\n{}\n---\n{doc}",
            errors
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
}

fn check_invalid(name: &str, expected_docs: usize) -> usize {
    let (path, docs) = documents(name);
    assert_eq!(docs.len(), expected_docs, "{name}: document count");
    let mut field_checks = 0;
    for (i, doc) in docs.iter().enumerate() {
        let errors = validate_document(&path, doc);
        assert!(
            !errors.is_empty(),
            "{name} document {i} should be rejected:\n{doc}"
        );
        let value: serde_yaml::Value = serde_yaml::from_str(doc)
            .unwrap_or_else(|e| panic!("{name} document {i} is not YAML: {e}"));
        let expected = value
            .get("_err")
            .and_then(serde_yaml::Value::as_str)
            .unwrap_or_else(|| panic!("{name} document {i} has no _err"));
        if let Some(field) = expected_field(expected) {
            field_checks += 1;
            assert!(
                errors
                    .iter()
                    .any(|e| e.field.as_deref() == Some(field.as_str())),
                "{name} document {i}: Istio says {expected:?}; expected an error at {field}, got:\n{}",
                errors
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join("\n")
            );
        }
    }
    field_checks
}

#[test]
fn destination_rule_fixtures() {
    check_valid("destinationrule-valid.yaml", 4);
    assert_eq!(check_invalid("destinationrule-invalid.yaml", 3), 3);
}

#[test]
fn service_entry_fixtures() {
    check_valid("serviceentry-valid.yaml", 5);
    assert_eq!(check_invalid("serviceentry-invalid.yaml", 12), 2);
}

#[test]
fn wasm_plugin_fixtures() {
    check_valid("wasm-valid.yaml", 4);
    assert_eq!(check_invalid("wasm-invalid.yaml", 15), 8);
}

#[test]
fn telemetry_fixtures() {
    check_valid("telemetry-valid.yaml", 3);
    // Istio's messages here are the CRD's, without a field path.
    assert_eq!(check_invalid("telemetry-invalid.yaml", 4), 0);
}

#[test]
fn expected_fields_are_read_from_istio_messages() {
    assert_eq!(
        expected_field("spec: Required value").as_deref(),
        Some("spec")
    );
    assert_eq!(
        expected_field("spec.url in body should be at least").as_deref(),
        Some("spec.url")
    );
    assert_eq!(expected_field("Duplicate value"), None);
    assert_eq!(expected_field("specification: x"), None);
}
