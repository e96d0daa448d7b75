//! The `wasmgate` command line, run as a real process: `validate` against every golden
//! file (exit code, stdout and stderr exactly), the Istio samples, and `run` refusing a
//! bad config with the file, resource and field in its log.

mod support;

use std::process::Command;

use support::{TempDir, binary, free_port, plugins_dir, repo};

fn validate(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(binary())
        .current_dir(repo())
        .arg("validate")
        .args(args)
        .output()
        .expect("run wasmgate validate");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn validate_prints_exactly_the_golden_lines() {
    let dir = repo().join("tests/golden/validation");
    let mut checked = 0;
    let mut entries: Vec<_> = std::fs::read_dir(&dir)
        .expect("golden dir")
        .flatten()
        .collect();
    entries.sort_by_key(|e| e.file_name());
    for entry in entries {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(stem) = name.strip_suffix(".yaml") else {
            continue;
        };
        let golden = std::fs::read_to_string(dir.join(format!("{stem}.golden"))).expect("golden");
        let rel = format!("tests/golden/validation/{name}");
        let (code, stdout, stderr) = validate(&["--config", &rel]);
        if let Some(warnings) = golden.strip_prefix("OK\n") {
            assert_eq!(code, 0, "{rel}: {stdout}");
            assert_eq!(stderr, warnings, "{rel}: warnings");
        } else {
            assert_eq!(code, 1, "{rel} was accepted");
            assert_eq!(stdout, golden, "{rel}: errors");
        }
        checked += 1;
    }
    assert!(checked >= 11, "only {checked} golden cases");
}

#[test]
fn validate_accepts_each_istio_sample() {
    // One at a time: the samples are alternative versions of the same resources.
    let dir = repo().join("tests/data/istio/samples");
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .expect("samples")
        .flatten()
        .map(|e| e.path())
        .collect();
    files.sort();
    assert!(files.len() >= 15);
    for file in files {
        let (code, stdout, stderr) = validate(&["--config", file.to_str().expect("utf-8")]);
        assert_eq!(code, 0, "{}: {stdout}", file.display());
        assert!(stdout.is_empty());
        if file.ends_with("bookinfo-ingress.yaml") {
            // A Kubernetes Ingress is not ours: a warning, not an error.
            assert!(stderr.contains("Ingress"), "{stderr}");
        }
    }
    // Together they clash, and validate says where.
    let (code, stdout, _) = validate(&["--config", "tests/data/istio/samples"]);
    assert_eq!(code, 1);
    assert!(
        stdout.contains("duplicate resource; first defined at"),
        "{stdout}"
    );
}

#[test]
fn validate_checks_plugin_config_when_given_plugins() {
    let dir = TempDir::new("validate-plugins");
    let plugins = plugins_dir(&[("add-headers.wasm", "add-headers")]);
    dir.write("gw.yaml", &support::gateway("gw", 8080, &["*"]));
    dir.write(
        "vs.yaml",
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: app\nspec:\n  hosts: [\"*\"]\n  gateways: [gw]\n  http:\n  - directResponse: {status: 200}\n",
    );
    let plugin = dir.write(
        "plugin.yaml",
        "apiVersion: extensions.istio.io/v1alpha1\nkind: WasmPlugin\nmetadata:\n  name: p\nspec:\n  url: add-headers.wasm\n  pluginConfig: {unknownKnob: 1}\n",
    );
    let config = dir.arg();
    let (code, _, _) = validate(&["--config", config]);
    assert_eq!(code, 0, "without --plugins only the YAML is checked");
    let (code, stdout, _) = validate(&["--config", config, "--plugins", plugins.arg()]);
    assert_eq!(code, 1);
    assert!(
        stdout.starts_with(&format!(
            "{}: WasmPlugin default/p: spec.pluginConfig: unknown field `unknownKnob`",
            plugin.display()
        )),
        "{stdout}"
    );
}

#[test]
fn run_refuses_a_bad_config_and_names_it() {
    let dir = TempDir::new("badrun");
    dir.write("gw.yaml", &support::gateway("gw", free_port(), &["*"]));
    dir.write(
        "vs.yaml",
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: bad\nspec:\n  hosts: [\"*\"]\n  gateways: [gw]\n  http:\n  - match:\n    - uri: {regex: \"([\"}\n    route:\n    - destination: {host: x}\n",
    );
    let admin = free_port();
    let out = Command::new(binary())
        .args(["run", "--config", dir.arg()])
        .args(["--admin", &format!("127.0.0.1:{admin}")])
        .output()
        .expect("run wasmgate");
    assert_eq!(out.status.code(), Some(1));
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(
        log.contains("vs.yaml:10: VirtualService default/bad: spec.http[0].match[0].uri.regex"),
        "{log}"
    );
}

#[test]
fn no_arguments_is_a_usage_error() {
    let out = Command::new(binary()).output().expect("run wasmgate");
    assert_eq!(out.status.code(), Some(2));
    let out = Command::new(binary())
        .args(["run"])
        .output()
        .expect("run wasmgate");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--config"));
}

/// `validate` loads certificates as `run` does: an expired certificate and a key that
/// belongs to another certificate are errors naming the Gateway field and the Secret or
/// file, and never print key material.
#[test]
fn validate_checks_certificates() {
    let ca = support::tls::Ca::new("ca");
    let dir = TempDir::new("validate-tls");
    let expired = ca.expired_server(&["old.example.com"]);
    let good = ca.server(&["new.example.com"]);
    let key_file = dir.write("other.key", &ca.server(&["x.example.com"]).key);
    let cert_file = dir.write("new.crt", &good.cert);
    dir.write(
        "tls.yaml",
        &format!(
            "{}---\napiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata:\n  name: gw\nspec:\n  servers:\n  - port: {{number: 443, name: https-old, protocol: HTTPS}}\n    hosts: [old.example.com]\n    tls: {{mode: SIMPLE, credentialName: old-cert}}\n  - port: {{number: 443, name: https-new, protocol: HTTPS}}\n    hosts: [new.example.com]\n    tls: {{mode: SIMPLE, serverCertificate: {}, privateKey: {}}}\n",
            support::tls::secret("old-cert", "default", Some(&expired), None),
            cert_file.display(),
            key_file.display()
        ),
    );
    let (code, stdout, _) = validate(&["--config", dir.arg()]);
    assert_eq!(code, 1, "{stdout}");
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 2, "{stdout}");
    assert!(
        lines[0].ends_with(
            "Gateway default/gw: spec.servers[0].tls.credentialName: Secret default/old-cert key tls.crt: certificate expired at 2021-01-01 00:00:00 UTC"
        ),
        "{stdout}"
    );
    assert!(
        lines[1].ends_with(&format!(
            "Gateway default/gw: spec.servers[1].tls.privateKey: file {}: private key does not match the certificate (file {})",
            key_file.display(),
            cert_file.display()
        )),
        "{stdout}"
    );
    assert!(!stdout.contains("PRIVATE KEY"));
}
