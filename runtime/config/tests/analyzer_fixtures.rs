//! Istio's analyzer fixtures (`analyzer-*.yaml`, copied from istio/istio
//! `pkg/config/analysis/analyzers/testdata`, in `shared/testdata/istio/validation` beside
//! the repository) as tests of `wasmgate validate`'s findings. Each fixture's row lists
//! what wasmgate reports for it, exactly: the documents it rejects on their own, errors of
//! the set, and every finding as (code, resource). Beside it, what Istio's analyzer test
//! (`analyzers_test.go`) expects; each of those must be among wasmgate's findings unless
//! the row lists it as missing, with the reason (mostly: Istio's finding is about
//! Kubernetes objects wasmgate has no notion of, such as Pods, Services and Nodes).
//!
//! `WASMGATE_PRINT_FIXTURES=1 cargo test -p wasmgate-config --test analyzer_fixtures`
//! prints what wasmgate gives for every fixture, in the table's syntax.

use std::path::{Path, PathBuf};

use wasmgate_config::{load_sources, split_documents, validate_document};

struct Case {
    fixture: &'static str,
    /// Text replaced before loading, when the fixture breaks one of Istio's validation
    /// rules that the analyzer test does not run (the reason is in `why`).
    patch: &'static [(&'static str, &'static str)],
    /// Resources whose documents wasmgate rejects on their own (as Istio's validation
    /// would, which `istioctl analyze` reports as IST0106).
    rejected: &'static [&'static str],
    /// Resources named by errors of the remaining set as a whole.
    errors: &'static [&'static str],
    /// wasmgate's findings, in the order reported: (code, resource).
    found: &'static [(&'static str, &'static str)],
    /// Istio's expected findings for the fixture: (code, resource).
    istio: &'static [(&'static str, &'static str)],
    /// Istio's findings wasmgate does not report.
    missing: &'static [(&'static str, &'static str)],
    /// Why wasmgate's findings differ from Istio's, if they do.
    why: &'static str,
}

/// What loading a fixture gives.
#[derive(Debug, Default, PartialEq)]
struct Outcome {
    rejected: Vec<String>,
    errors: Vec<String>,
    found: Vec<(String, String)>,
}

fn fixtures_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/testdata/istio/validation")
}

fn resource(r: Option<&wasmgate_config::ResourceId>) -> String {
    r.map_or_else(|| "<document>".to_string(), ToString::to_string)
}

fn run(name: &str, patch: &[(&str, &str)]) -> Outcome {
    let path = fixtures_dir().join(name);
    let mut text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
    for (from, to) in patch {
        assert!(text.contains(from), "{name}: patch {from:?} does not apply");
        text = text.replace(from, to);
    }
    let file = PathBuf::from(name);
    let mut out = Outcome::default();
    let mut kept = Vec::new();
    for doc in split_documents(&text) {
        if doc.is_blank() {
            continue;
        }
        match validate_document(&file, &doc.text).first() {
            None => kept.push(doc.text.clone()),
            Some(e) => out.rejected.push(resource(e.resource.as_ref())),
        }
    }
    match load_sources(&[(file, kept.join("\n---\n"))]) {
        Ok(config) => {
            for w in &config.warnings {
                let Some((code, _)) = w.message.split_once(": ") else {
                    continue;
                };
                if code.len() == 7 && code.starts_with("IST") {
                    out.found
                        .push((code.to_string(), resource(w.resource.as_ref())));
                }
            }
        }
        Err(errors) => {
            out.errors = errors
                .0
                .iter()
                .map(|e| resource(e.resource.as_ref()))
                .collect();
        }
    }
    out
}

fn strings(list: &[&str]) -> Vec<String> {
    list.iter().map(ToString::to_string).collect()
}

fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect()
}

fn print_row(name: &str, o: &Outcome) {
    let list = |v: &[String]| {
        v.iter()
            .map(|s| format!("{s:?}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    println!("    fixture: {name:?},");
    println!("    rejected: &[{}],", list(&o.rejected));
    println!("    errors: &[{}],", list(&o.errors));
    println!("    found: &[");
    for (c, r) in &o.found {
        println!("        ({c:?}, {r:?}),");
    }
    println!("    ],");
}

#[test]
fn analyzer_fixtures() {
    let dir = fixtures_dir();
    let Ok(entries) = std::fs::read_dir(&dir) else {
        // shared/ sits beside the repository; without it there is nothing to check.
        eprintln!("skipped: no {}", dir.display());
        return;
    };
    let mut names: Vec<String> = entries
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("analyzer-") && n.ends_with(".yaml"))
        .collect();
    names.sort();
    if std::env::var_os("WASMGATE_PRINT_FIXTURES").is_some() {
        for name in &names {
            let patch = CASES
                .iter()
                .find(|c| c.fixture == name.as_str())
                .map_or(&[][..], |c| c.patch);
            print_row(name, &run(name, patch));
        }
        return;
    }
    let listed: Vec<&str> = CASES.iter().map(|c| c.fixture).collect();
    assert_eq!(listed, names, "one row per fixture, in file name order");
    let mut failures = Vec::new();
    for case in CASES {
        let got = run(case.fixture, case.patch);
        let want = Outcome {
            rejected: strings(case.rejected),
            errors: strings(case.errors),
            found: pairs(case.found),
        };
        if got != want {
            failures.push(format!(
                "{}:\n  want {want:?}\n  got  {got:?}",
                case.fixture
            ));
            continue;
        }
        for expected in pairs(case.istio) {
            let is_missing = pairs(case.missing).contains(&expected);
            if is_missing == got.found.contains(&expected) {
                failures.push(format!(
                    "{}: Istio's {expected:?} is {} wasmgate's findings, but the row says it is {}",
                    case.fixture,
                    if is_missing { "among" } else { "not among" },
                    if is_missing { "missing" } else { "found" }
                ));
            }
        }
        let differs = !case.missing.is_empty()
            || !case.rejected.is_empty()
            || !case.errors.is_empty()
            || !case.patch.is_empty();
        if differs && case.why.is_empty() {
            failures.push(format!("{}: the row must say why", case.fixture));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

const CASES: &[Case] = &[
    Case {
        fixture: "analyzer-conflicting-gateways-invalid-port.yaml",
        patch: &[],
        rejected: &["Gateway default/beta", "Gateway default/alpha"],
        errors: &[],
        found: &[],
        istio: &[],
        missing: &[],
        why: "a server without a port is invalid for Istio's validation too (IST0106); nothing is left to analyze",
    },
    Case {
        fixture: "analyzer-conflicting-gateways-multiple-ports.yaml",
        patch: &[
            (
                "      number: 90\n      name: tcp",
                "      number: 90\n      name: tcp-90",
            ),
            (
                "      number: 90\n      name: http",
                "      number: 90\n      name: http-90",
            ),
        ],
        rejected: &[],
        errors: &[],
        found: &[
            ("IST0145", "Gateway default/beta"),
            ("IST0145", "Gateway default/alpha"),
        ],
        istio: &[
            ("IST0145", "Gateway default/alpha"),
            ("IST0145", "Gateway default/beta"),
        ],
        missing: &[],
        why: "patched: port names repeat within a Gateway, which Istio's validation rejects (the analyzer test does not validate)",
    },
    Case {
        fixture: "analyzer-conflicting-gateways-subSelector.yaml",
        patch: &[],
        rejected: &[],
        errors: &[],
        found: &[
            ("IST0145", "Gateway default/beta"),
            ("IST0145", "Gateway default/alpha"),
        ],
        istio: &[
            ("IST0145", "Gateway default/alpha"),
            ("IST0145", "Gateway default/beta"),
        ],
        missing: &[],
        why: "",
    },
    Case {
        fixture: "analyzer-conflicting-gateways.yaml",
        patch: &[],
        rejected: &[],
        errors: &[],
        found: &[
            ("IST0145", "Gateway default/beta"),
            ("IST0145", "Gateway default/alpha"),
        ],
        istio: &[
            ("IST0145", "Gateway default/alpha"),
            ("IST0145", "Gateway default/beta"),
        ],
        missing: &[],
        why: "",
    },
    Case {
        fixture: "analyzer-destinationrule-compound-mutual-simple.yaml",
        patch: &[],
        rejected: &[],
        errors: &[
            "DestinationRule default/db-mtls",
            "DestinationRule default/db-mtls",
        ],
        found: &[],
        istio: &[
            ("IST0129", "DestinationRule default/db-mtls"),
            ("IST0128", "DestinationRule default/db-mtls"),
        ],
        missing: &[
            ("IST0129", "DestinationRule default/db-mtls"),
            ("IST0128", "DestinationRule default/db-mtls"),
        ],
        why: "the clientCertificate/privateKey/caCertificates files do not exist here, and wasmgate reads them at load (errors); IST0128/IST0129 are not reported: without caCertificates wasmgate still verifies the server, against the system trust store (docs/istio.md), so the identity is checked",
    },
    Case {
        fixture: "analyzer-destinationrule-compound-simple-mutual.yaml",
        patch: &[],
        rejected: &[],
        errors: &[
            "DestinationRule default/db-mtls",
            "DestinationRule default/db-mtls",
        ],
        found: &[],
        istio: &[
            ("IST0128", "DestinationRule default/db-mtls"),
            ("IST0129", "DestinationRule default/db-mtls"),
        ],
        missing: &[
            ("IST0128", "DestinationRule default/db-mtls"),
            ("IST0129", "DestinationRule default/db-mtls"),
        ],
        why: "the clientCertificate/privateKey/caCertificates files do not exist here, and wasmgate reads them at load (errors); IST0128/IST0129 are not reported: without caCertificates wasmgate still verifies the server, against the system trust store (docs/istio.md), so the identity is checked",
    },
    Case {
        fixture: "analyzer-destinationrule-empty-topology-labels.yaml",
        patch: &[],
        rejected: &[],
        errors: &[],
        found: &[("IST0174", "DestinationRule default/empty-topology-labels")],
        istio: &[("IST0173", "DestinationRule default/empty-topology-labels")],
        missing: &[("IST0173", "DestinationRule default/empty-topology-labels")],
        why: "IST0173 is about Pods (and Nodes): wasmgate's subsets select ServiceEntry endpoints and there is no ServiceEntry here; wasmgate sees no Kubernetes Service, so the host is declared by no ServiceEntry (IST0174)",
    },
    Case {
        fixture: "analyzer-destinationrule-mutual-destination.yaml",
        patch: &[],
        rejected: &[],
        errors: &[
            "DestinationRule default/db-mtls",
            "DestinationRule default/db-mtls",
        ],
        found: &[],
        istio: &[("IST0128", "DestinationRule default/db-mtls")],
        missing: &[("IST0128", "DestinationRule default/db-mtls")],
        why: "the clientCertificate/privateKey/caCertificates files do not exist here, and wasmgate reads them at load (errors); IST0128/IST0129 are not reported: without caCertificates wasmgate still verifies the server, against the system trust store (docs/istio.md), so the identity is checked",
    },
    Case {
        fixture: "analyzer-destinationrule-mutual-port.yaml",
        patch: &[],
        rejected: &[],
        errors: &[
            "DestinationRule default/db-mtls",
            "DestinationRule default/db-mtls",
        ],
        found: &[],
        istio: &[("IST0129", "DestinationRule default/db-mtls")],
        missing: &[("IST0129", "DestinationRule default/db-mtls")],
        why: "the clientCertificate/privateKey/caCertificates files do not exist here, and wasmgate reads them at load (errors); IST0128/IST0129 are not reported: without caCertificates wasmgate still verifies the server, against the system trust store (docs/istio.md), so the identity is checked",
    },
    Case {
        fixture: "analyzer-destinationrule-simple-destination-credentialname-selector.yaml",
        patch: &[],
        rejected: &[],
        errors: &["DestinationRule default/db-tls"],
        found: &[],
        istio: &[],
        missing: &[],
        why: "the Secret it names is not in the config, and wasmgate reads credentials at load (an error, not a finding)",
    },
    Case {
        fixture: "analyzer-destinationrule-simple-destination-credentialname.yaml",
        patch: &[],
        rejected: &[],
        errors: &["DestinationRule default/db-tls"],
        found: &[],
        istio: &[("IST0128", "DestinationRule default/db-tls")],
        missing: &[("IST0128", "DestinationRule default/db-tls")],
        why: "the Secret it names is not in the config, and wasmgate reads credentials at load (an error, not a finding); IST0128/IST0129 are not reported: without caCertificates wasmgate still verifies the server, against the system trust store (docs/istio.md), so the identity is checked",
    },
    Case {
        fixture: "analyzer-destinationrule-simple-destination.yaml",
        patch: &[],
        rejected: &[],
        errors: &[],
        found: &[("IST0174", "DestinationRule default/db-tls")],
        istio: &[("IST0128", "DestinationRule default/db-tls")],
        missing: &[("IST0128", "DestinationRule default/db-tls")],
        why: "IST0128/IST0129 are not reported: without caCertificates wasmgate still verifies the server, against the system trust store (docs/istio.md), so the identity is checked; wasmgate sees no Kubernetes Service, so the host is declared by no ServiceEntry (IST0174)",
    },
    Case {
        fixture: "analyzer-destinationrule-simple-port-credentialname-selector.yaml",
        patch: &[],
        rejected: &[],
        errors: &["DestinationRule default/db-tls"],
        found: &[],
        istio: &[],
        missing: &[],
        why: "the Secret it names is not in the config, and wasmgate reads credentials at load (an error, not a finding)",
    },
    Case {
        fixture: "analyzer-destinationrule-simple-port-credentialname.yaml",
        patch: &[],
        rejected: &[],
        errors: &["DestinationRule default/db-tls"],
        found: &[],
        istio: &[("IST0129", "DestinationRule default/db-tls")],
        missing: &[("IST0129", "DestinationRule default/db-tls")],
        why: "the Secret it names is not in the config, and wasmgate reads credentials at load (an error, not a finding); IST0128/IST0129 are not reported: without caCertificates wasmgate still verifies the server, against the system trust store (docs/istio.md), so the identity is checked",
    },
    Case {
        fixture: "analyzer-destinationrule-simple-port.yaml",
        patch: &[],
        rejected: &[],
        errors: &[],
        found: &[("IST0174", "DestinationRule default/db-tls")],
        istio: &[("IST0129", "DestinationRule default/db-tls")],
        missing: &[("IST0129", "DestinationRule default/db-tls")],
        why: "IST0128/IST0129 are not reported: without caCertificates wasmgate still verifies the server, against the system trust store (docs/istio.md), so the identity is checked; wasmgate sees no Kubernetes Service, so the host is declared by no ServiceEntry (IST0174)",
    },
    Case {
        fixture: "analyzer-destinationrule-subsets-not-select-pods.yaml",
        patch: &[],
        rejected: &[],
        errors: &[],
        found: &[("IST0174", "DestinationRule default/subsets-not-select-pods")],
        istio: &[("IST0173", "DestinationRule default/subsets-not-select-pods")],
        missing: &[("IST0173", "DestinationRule default/subsets-not-select-pods")],
        why: "IST0173 is about Pods (and Nodes): wasmgate's subsets select ServiceEntry endpoints and there is no ServiceEntry here; wasmgate sees no Kubernetes Service, so the host is declared by no ServiceEntry (IST0174)",
    },
    Case {
        fixture: "analyzer-destinationrule-subsets-with-topology-labels.yaml",
        patch: &[],
        rejected: &[],
        errors: &[],
        found: &[(
            "IST0174",
            "DestinationRule default/subsets-with-topology-labels",
        )],
        istio: &[],
        missing: &[],
        why: "wasmgate sees no Kubernetes Service, so the host is declared by no ServiceEntry (IST0174)",
    },
    Case {
        fixture: "analyzer-destinationrule-with-ca.yaml",
        patch: &[],
        rejected: &[],
        errors: &[
            "DestinationRule default/db-mtls",
            "DestinationRule default/db-mtls",
            "DestinationRule default/db-mtls",
            "DestinationRule default/db-mtls",
        ],
        found: &[],
        istio: &[],
        missing: &[],
        why: "the clientCertificate/privateKey/caCertificates files do not exist here, and wasmgate reads them at load (errors)",
    },
    Case {
        fixture: "analyzer-destinationrule-with-fake-host.yaml",
        patch: &[],
        rejected: &[],
        errors: &[],
        found: &[("IST0174", "DestinationRule default/fake-host")],
        istio: &[("IST0174", "DestinationRule default/fake-host")],
        missing: &[],
        why: "",
    },
    Case {
        fixture: "analyzer-gateway-api-crd-version-old.yaml",
        patch: &[],
        rejected: &[],
        errors: &[],
        found: &[],
        istio: &[(
            "IST0176",
            "CustomResourceDefinition tlsroutes.gateway.networking.k8s.io",
        )],
        missing: &[(
            "IST0176",
            "CustomResourceDefinition tlsroutes.gateway.networking.k8s.io",
        )],
        why: "not applicable: wasmgate implements no Kubernetes Gateway API; the CRDs are skipped with a warning",
    },
    Case {
        fixture: "analyzer-gateway-correct-port.yaml",
        patch: &[],
        rejected: &[],
        errors: &[],
        found: &[],
        istio: &[],
        missing: &[],
        why: "",
    },
    Case {
        fixture: "analyzer-gateway-custom-ingressgateway-badport-notarget.yaml",
        patch: &[],
        rejected: &[],
        errors: &[],
        found: &[],
        istio: &[("IST0162", "Gateway default/httpbin-gateway")],
        missing: &[("IST0162", "Gateway default/httpbin-gateway")],
        why: "not applicable: IST0162 compares the server port with the gateway's Kubernetes Service: wasmgate listens on the server's port itself, there is no Service in front of it",
    },
    Case {
        fixture: "analyzer-gateway-custom-ingressgateway-badport.yaml",
        patch: &[],
        rejected: &[],
        errors: &[],
        found: &[],
        istio: &[("IST0162", "Gateway default/httpbin-gateway")],
        missing: &[("IST0162", "Gateway default/httpbin-gateway")],
        why: "not applicable: IST0162 compares the server port with the gateway's Kubernetes Service: wasmgate listens on the server's port itself, there is no Service in front of it",
    },
    Case {
        fixture: "analyzer-gateway-custom-ingressgateway-svcselector.yaml",
        patch: &[],
        rejected: &[],
        errors: &[],
        found: &[],
        istio: &[("IST0162", "Gateway default/httpbin8002-gateway")],
        missing: &[("IST0162", "Gateway default/httpbin8002-gateway")],
        why: "not applicable: IST0162 compares the server port with the gateway's Kubernetes Service: wasmgate listens on the server's port itself, there is no Service in front of it",
    },
    Case {
        fixture: "analyzer-gateway-custom-ingressgateway-translation.yaml",
        patch: &[],
        rejected: &[],
        errors: &[],
        found: &[],
        istio: &[],
        missing: &[],
        why: "",
    },
    Case {
        fixture: "analyzer-gateway-custom-ingressgateway.yaml",
        patch: &[],
        rejected: &[],
        errors: &[],
        found: &[],
        istio: &[],
        missing: &[],
        why: "",
    },
    Case {
        fixture: "analyzer-gateway-different-port.yaml",
        patch: &[],
        rejected: &[],
        errors: &[],
        found: &[],
        istio: &[],
        missing: &[],
        why: "",
    },
    Case {
        fixture: "analyzer-gateway-duplicate-certificate.yaml",
        patch: &[],
        rejected: &[],
        errors: &[],
        found: &[
            ("IST0138", "Gateway istio-system/gateway-01-test-01"),
            ("IST0138", "Gateway istio-system/gateway-02-test-01"),
            ("IST0138", "Gateway istio-system/gateway-01-test-02"),
            ("IST0138", "Gateway istio-system/gateway-02-test-02"),
            ("IST0138", "Gateway default/gateway-01-test-03"),
            ("IST0138", "Gateway istio-system/gateway-02-test-03"),
        ],
        istio: &[
            ("IST0138", "Gateway istio-system/gateway-01-test-01"),
            ("IST0138", "Gateway istio-system/gateway-02-test-01"),
            ("IST0138", "Gateway istio-system/gateway-01-test-02"),
            ("IST0138", "Gateway default/gateway-01-test-03"),
        ],
        missing: &[],
        why: "the Secrets are in istio-system, the gateway workload's namespace, where wasmgate looks after the Gateway's own (default). wasmgate also reports gateway-02-test-02 and gateway-02-test-03: Istio skips a Gateway whose selector is not a subset of the other's (type: internal), wasmgate compares listener addresses, and all of these share port 443",
    },
    Case {
        fixture: "analyzer-gateway-no-port.yaml",
        patch: &[],
        rejected: &[],
        errors: &[],
        found: &[],
        istio: &[("IST0162", "Gateway default/httpbin-gateway")],
        missing: &[("IST0162", "Gateway default/httpbin-gateway")],
        why: "not applicable: IST0162 compares the server port with the gateway's Kubernetes Service: wasmgate listens on the server's port itself, there is no Service in front of it",
    },
    Case {
        fixture: "analyzer-gateway-no-workload.yaml",
        patch: &[],
        rejected: &["Gateway default/httpbin-gateway"],
        errors: &[],
        found: &[],
        istio: &[("IST0101", "Gateway default/httpbin-gateway")],
        missing: &[("IST0101", "Gateway default/httpbin-gateway")],
        why: "not applicable: wasmgate is the workload of every Gateway, so a Gateway selector never matches nothing (the Gateway is also invalid: no servers, IST0106 in Istio)",
    },
    Case {
        fixture: "analyzer-gateway-secrets-validation.yaml",
        patch: &[],
        rejected: &[],
        errors: &[
            "Gateway default/defaultgateway-missing-keys",
            "Gateway default/defaultgateway-invalid-cert",
        ],
        found: &[],
        istio: &[
            ("IST0161", "Gateway default/defaultgateway-invalid-keys"),
            ("IST0161", "Gateway default/defaultgateway-missing-keys"),
            ("IST0161", "Gateway default/defaultgateway-invalid-cert"),
            ("IST0161", "Gateway default/defaultgateway-expired"),
        ],
        missing: &[
            ("IST0161", "Gateway default/defaultgateway-invalid-keys"),
            ("IST0161", "Gateway default/defaultgateway-missing-keys"),
            ("IST0161", "Gateway default/defaultgateway-invalid-cert"),
            ("IST0161", "Gateway default/defaultgateway-expired"),
        ],
        why: "wasmgate reads every credential at load (from istio-system here, the gateway workload's namespace) and refuses a bad one with an error naming the Gateway, not a finding: a Secret without tls.crt or cert (missing-keys, invalid-cert: tls.cert) here; a certificate that does not parse or has expired (invalid-keys, expired) in wasmgate validate's certificate check, which this crate does not run",
    },
    Case {
        fixture: "analyzer-gateway-secrets.yaml",
        patch: &[],
        rejected: &[
            "Gateway default/defaultgateway-bogusCredentialName",
            "Gateway default/defaultgateway-nocredential",
        ],
        errors: &[],
        found: &[
            ("IST0145", "Gateway default/defaultgateway-noerrors"),
            ("IST0138", "Gateway default/defaultgateway-noerrors"),
            ("IST0138", "Gateway default/defaultgateway-noerrors"),
            ("IST0145", "Gateway default/customgateway-wrongnamespace"),
            ("IST0138", "Gateway default/customgateway-wrongnamespace"),
            ("IST0138", "Gateway default/customgateway-wrongnamespace"),
            ("IST0145", "Gateway default/bogusgateway"),
            ("IST0138", "Gateway default/bogusgateway"),
            ("IST0138", "Gateway default/bogusgateway"),
        ],
        istio: &[
            (
                "IST0101",
                "Gateway default/defaultgateway-bogusCredentialName",
            ),
            ("IST0101", "Gateway default/customgateway-wrongnamespace"),
            ("IST0101", "Gateway default/bogusgateway"),
        ],
        missing: &[
            (
                "IST0101",
                "Gateway default/defaultgateway-bogusCredentialName",
            ),
            ("IST0101", "Gateway default/customgateway-wrongnamespace"),
            ("IST0101", "Gateway default/bogusgateway"),
        ],
        why: "the Secret is found in istio-system, the gateway workload's namespace. Istio's two IST0101 on customgateway-wrongnamespace and bogusgateway come from their selector matching no Pod (so no namespace to read the Secret from): wasmgate is the workload of every Gateway, so it serves them with that Secret, and reports what serving three Gateways with one host on one port means (IST0145, IST0138). defaultgateway-bogusCredentialName is not a valid Kubernetes name and defaultgateway-nocredential has SIMPLE TLS without a certificate (IST0106 in Istio)",
    },
    Case {
        fixture: "analyzer-k8sgateway-selector.yaml",
        patch: &[],
        rejected: &["Telemetry default/telemetry-effective"],
        errors: &[],
        found: &[
            ("IST0101", "WasmPlugin default/wasmplugin-ineffective"),
            ("IST0101", "Telemetry default/telemetry-ineffective"),
        ],
        istio: &[
            ("IST0166", "RequestAuthentication default/ra-ineffective"),
            ("IST0166", "AuthorizationPolicy default/ap-ineffective"),
            ("IST0166", "WasmPlugin default/wasmplugin-ineffective"),
            ("IST0166", "Telemetry default/telemetry-ineffective"),
        ],
        missing: &[
            ("IST0166", "RequestAuthentication default/ra-ineffective"),
            ("IST0166", "AuthorizationPolicy default/ap-ineffective"),
            ("IST0166", "WasmPlugin default/wasmplugin-ineffective"),
            ("IST0166", "Telemetry default/telemetry-ineffective"),
        ],
        why: "wasmgate implements no Kubernetes Gateway API and skips RequestAuthentication and AuthorizationPolicy; the WasmPlugin's and telemetry-ineffective's selectors match no Gateway's, which is IST0101 instead; telemetry-effective sets both selector and targetRef, which Istio's validation rejects (the analyzer test does not validate)",
    },
    Case {
        fixture: "analyzer-serviceentry-address-allocated-mesh-cfg.yaml",
        patch: &[],
        rejected: &["<document>"],
        errors: &[],
        found: &[],
        istio: &[],
        missing: &[],
        why: "not a resource: a mesh config the analyzer test loads beside serviceentry-address-allocated",
    },
    Case {
        fixture: "analyzer-serviceentry-address-allocated.yaml",
        patch: &[],
        rejected: &[],
        errors: &[],
        found: &[],
        istio: &[],
        missing: &[],
        why: "",
    },
    Case {
        fixture: "analyzer-serviceentry-address-required-lowercase.yaml",
        patch: &[],
        rejected: &[],
        errors: &[],
        found: &[],
        istio: &[("IST0134", "ServiceEntry default/address-missing-lowercase")],
        missing: &[("IST0134", "ServiceEntry default/address-missing-lowercase")],
        why: "not applicable: IST0134 is about sidecars capturing TCP traffic by destination address; wasmgate's mesh listener proxies by Host or CONNECT authority",
    },
    Case {
        fixture: "analyzer-serviceentry-address-required-uppercase.yaml",
        patch: &[],
        rejected: &[],
        errors: &[],
        found: &[],
        istio: &[("IST0134", "ServiceEntry default/address-missing-uppercase")],
        missing: &[("IST0134", "ServiceEntry default/address-missing-uppercase")],
        why: "not applicable: IST0134 is about sidecars capturing TCP traffic by destination address; wasmgate's mesh listener proxies by Host or CONNECT authority",
    },
    Case {
        fixture: "analyzer-serviceentry-conflicting-exportto.yaml",
        patch: &[],
        rejected: &[],
        errors: &[],
        found: &[
            ("IST0177", "ServiceEntry ns1/se-ns1"),
            ("IST0177", "ServiceEntry ns2/se-ns2"),
        ],
        istio: &[],
        missing: &[],
        why: "wasmgate ignores exportTo (one proxy sees every resource): the first ServiceEntry for example.com serves both namespaces, so the protocols do conflict",
    },
    Case {
        fixture: "analyzer-serviceentry-conflicting-protocol.yaml",
        patch: &[],
        rejected: &[],
        errors: &[],
        found: &[
            ("IST0177", "ServiceEntry default/se-https"),
            ("IST0177", "ServiceEntry default/se-http"),
        ],
        istio: &[
            ("IST0177", "ServiceEntry default/se-http"),
            ("IST0177", "ServiceEntry default/se-https"),
        ],
        missing: &[],
        why: "",
    },
    Case {
        fixture: "analyzer-serviceentry-missing-addresses-protocol-mesh-cfg.yaml",
        patch: &[],
        rejected: &["<document>"],
        errors: &[],
        found: &[],
        istio: &[],
        missing: &[],
        why: "not a resource: a mesh config the analyzer test loads beside serviceentry-missing-addresses-protocol",
    },
    Case {
        fixture: "analyzer-serviceentry-missing-addresses-protocol.yaml",
        patch: &[],
        rejected: &[],
        errors: &[],
        found: &[
            ("IST0177", "ServiceEntry default/service-entry-test-01"),
            ("IST0177", "ServiceEntry default/service-entry-test-02"),
            ("IST0177", "ServiceEntry default/service-entry-test-03"),
            ("IST0177", "ServiceEntry default/service-entry-test-04"),
            ("IST0177", "ServiceEntry default/service-entry-test-05"),
            ("IST0177", "ServiceEntry default/service-entry-test-06"),
            ("IST0177", "ServiceEntry default/service-entry-test-07"),
        ],
        istio: &[
            ("IST0134", "ServiceEntry default/service-entry-test-03"),
            ("IST0134", "ServiceEntry default/service-entry-test-04"),
            ("IST0134", "ServiceEntry default/service-entry-test-07"),
        ],
        missing: &[
            ("IST0134", "ServiceEntry default/service-entry-test-03"),
            ("IST0134", "ServiceEntry default/service-entry-test-04"),
            ("IST0134", "ServiceEntry default/service-entry-test-07"),
        ],
        why: "not applicable: IST0134 is about sidecars capturing TCP traffic by destination address. All seven entries declare istio.io:443 with different protocols, and wasmgate uses the first: IST0177 (Istio's analyzer test runs only the addresses analyzer on this file)",
    },
    Case {
        fixture: "analyzer-serviceentry-no-conflict-protocol.yaml",
        patch: &[],
        rejected: &[],
        errors: &[],
        found: &[],
        istio: &[],
        missing: &[],
        why: "",
    },
    Case {
        fixture: "analyzer-virtualservice_conflictingmeshgatewayhosts.yaml",
        patch: &[],
        rejected: &[],
        errors: &[],
        found: &[
            ("IST0109", "VirtualService foo/productpage"),
            ("IST0101", "VirtualService foo/productpage"),
            ("IST0109", "VirtualService foo/bogus-productpage"),
            ("IST0101", "VirtualService foo/bogus-productpage"),
            ("IST0101", "VirtualService foo/reviews"),
            ("IST0101", "VirtualService bar/reviews"),
            ("IST0101", "VirtualService bar/reviews"),
            ("IST0109", "VirtualService foo/ratings"),
            ("IST0101", "VirtualService foo/ratings"),
            ("IST0109", "VirtualService bar/ratings"),
            ("IST0101", "VirtualService bar/ratings"),
            ("IST0101", "VirtualService bar/ratings"),
            ("IST0109", "VirtualService team1/ratings"),
            ("IST0101", "VirtualService team1/ratings"),
            ("IST0109", "VirtualService team2/ratings"),
            ("IST0101", "VirtualService team2/ratings"),
            ("IST0101", "VirtualService team2/ratings"),
            ("IST0109", "VirtualService team3/ratings"),
            ("IST0101", "VirtualService team3/ratings"),
            ("IST0109", "VirtualService team4/ratings"),
            ("IST0101", "VirtualService team4/ratings"),
            ("IST0101", "VirtualService team4/ratings"),
        ],
        istio: &[
            ("IST0109", "VirtualService team3/ratings"),
            ("IST0109", "VirtualService team4/ratings"),
            ("IST0109", "VirtualService foo/ratings"),
            ("IST0109", "VirtualService bar/ratings"),
            ("IST0109", "VirtualService foo/productpage"),
            ("IST0109", "VirtualService foo/bogus-productpage"),
            ("IST0109", "VirtualService team2/ratings"),
        ],
        missing: &[],
        why: "wasmgate ignores exportTo (the mesh listener is one client and sees every VirtualService), so team1/ratings conflicts with team2/ratings too; the Gateway istio-ingressgateway and the Kubernetes Services are not in the file (IST0101)",
    },
    Case {
        fixture: "analyzer-virtualservice_conflictingmeshgatewayhosts_with_exportto.yaml",
        patch: &[],
        rejected: &[],
        errors: &[],
        found: &[
            ("IST0109", "VirtualService foo/productpage"),
            ("IST0101", "VirtualService foo/productpage"),
            ("IST0109", "VirtualService bar/productpage"),
            ("IST0101", "VirtualService bar/productpage"),
            ("IST0109", "VirtualService foo/productpage-b"),
            ("IST0101", "VirtualService foo/productpage-b"),
            ("IST0109", "VirtualService bar/productpage-b"),
            ("IST0101", "VirtualService bar/productpage-b"),
            ("IST0109", "VirtualService foo/productpage-c"),
            ("IST0101", "VirtualService foo/productpage-c"),
            ("IST0109", "VirtualService bar/productpage-c"),
            ("IST0101", "VirtualService bar/productpage-c"),
            ("IST0101", "VirtualService foo/productpage-d"),
            ("IST0101", "VirtualService bar/productpage-d"),
        ],
        istio: &[
            ("IST0109", "VirtualService foo/productpage"),
            ("IST0109", "VirtualService bar/productpage"),
            ("IST0109", "VirtualService foo/productpage-c"),
            ("IST0109", "VirtualService bar/productpage-c"),
            ("IST0109", "VirtualService foo/productpage-d"),
            ("IST0109", "VirtualService bar/productpage-d"),
        ],
        missing: &[
            ("IST0109", "VirtualService foo/productpage-d"),
            ("IST0109", "VirtualService bar/productpage-d"),
        ],
        why: "wasmgate ignores exportTo, so the productpage-b pair conflicts too; *.productpage.d and *.d are two virtual hosts to the mesh listener (the longer suffix wins), so the productpage-d pair does not",
    },
    Case {
        fixture: "analyzer-virtualservice_destinationhosts.yaml",
        patch: &[("    - {} # test destination null\n", "")],
        rejected: &["ServiceEntry default-ignore/service-entry-ignore"],
        errors: &[],
        found: &[
            ("IST0101", "VirtualService default/reviews"),
            ("IST0101", "VirtualService default/reviews"),
            ("IST0101", "VirtualService default/reviews-bogushost"),
            ("IST0101", "VirtualService default/reviews-bogushost"),
            ("IST0101", "VirtualService default/reviews-fqdn"),
            ("IST0101", "VirtualService default/reviews-fqdn"),
            ("IST0101", "VirtualService default/reviews-mirror"),
            ("IST0101", "VirtualService default/reviews-mirror"),
            ("IST0101", "VirtualService default/reviews-mirror"),
            ("IST0101", "VirtualService default/reviews-mirror"),
            ("IST0101", "VirtualService default/reviews-mirror-bogushost"),
            ("IST0101", "VirtualService default/reviews-mirror-bogushost"),
            ("IST0101", "VirtualService default/reviews-mirror-bogushost"),
            ("IST0101", "VirtualService default/reviews-mirror-bogushost"),
            ("IST0101", "VirtualService default/reviews-bogusport"),
            ("IST0101", "VirtualService default/reviews-bogusport"),
            ("IST0101", "VirtualService default/reviews-2port-missing"),
            ("IST0101", "VirtualService default/reviews-2port-missing"),
            ("IST0101", "VirtualService default/reviews-2port-present"),
            ("IST0101", "VirtualService default/reviews-2port-present"),
            ("IST0101", "VirtualService istio-system/cross-namespace"),
            (
                "IST0101",
                "VirtualService istio-system/cross-namespace-details",
            ),
            ("IST0101", "VirtualService banana/banana-details"),
            ("IST0101", "VirtualService hello1/hello"),
            ("IST0101", "VirtualService hello2/hello"),
            ("IST0109", "VirtualService hello/hello"),
            ("IST0101", "VirtualService hello/hello"),
            ("IST0109", "VirtualService hello/hello-export-to-bogus"),
            ("IST0101", "VirtualService hello/hello-export-to-bogus"),
        ],
        istio: &[
            ("IST0101", "VirtualService default/reviews-bogushost"),
            ("IST0101", "VirtualService default/reviews-bookinfo-other"),
            ("IST0101", "VirtualService default/reviews-mirror-bogushost"),
            ("IST0101", "VirtualService default/reviews-bogusport"),
            ("IST0112", "VirtualService default/reviews-2port-missing"),
            (
                "IST0101",
                "VirtualService istio-system/cross-namespace-details",
            ),
            ("IST0101", "VirtualService hello/hello-export-to-bogus"),
        ],
        missing: &[
            ("IST0101", "VirtualService default/reviews-bookinfo-other"),
            ("IST0112", "VirtualService default/reviews-2port-missing"),
        ],
        why: "patched: the null destination is invalid for Istio's validation too. wasmgate sees no Kubernetes Service, so every destination that is a Service is IST0101 (reviews-2port-missing too, instead of IST0112); it ignores exportTo, so other.bookinfo.com is found; a ServiceEntry host \"*\" is invalid (IST0106)",
    },
    Case {
        fixture: "analyzer-virtualservice_destinationrules.yaml",
        patch: &[],
        rejected: &[],
        errors: &[],
        found: &[
            ("IST0174", "DestinationRule default/reviews"),
            ("IST0101", "VirtualService default/reviews"),
            ("IST0101", "VirtualService default/reviews-bogussubset"),
            ("IST0101", "VirtualService default/reviews-bogussubset"),
            ("IST0101", "VirtualService default/reviews-fqdn"),
            ("IST0101", "VirtualService default/reviews-mirror"),
            ("IST0101", "VirtualService default/reviews-mirror"),
            (
                "IST0101",
                "VirtualService default/reviews-mirror-bogussubset",
            ),
            (
                "IST0101",
                "VirtualService default/reviews-mirror-bogussubset",
            ),
            (
                "IST0101",
                "VirtualService default/reviews-mirror-bogussubset",
            ),
        ],
        istio: &[
            ("IST0101", "VirtualService default/reviews-bogussubset"),
            (
                "IST0101",
                "VirtualService default/reviews-mirror-bogussubset",
            ),
        ],
        missing: &[],
        why: "the host reviews is a Kubernetes Service in Istio; wasmgate sees no Kubernetes Service, so the host is declared by no ServiceEntry (IST0174), and routes to it are IST0101",
    },
    Case {
        fixture: "analyzer-virtualservice_dupmatches.yaml",
        patch: &[],
        rejected: &[],
        errors: &[],
        found: &[
            ("IST0101", "VirtualService foo/sample-foo-cluster01"),
            ("IST0130", "VirtualService foo/sample-foo-cluster01"),
            ("IST0101", "VirtualService foo/sample-foo-cluster01"),
            ("IST0101", "VirtualService foo/sample-foo-cluster01"),
            ("IST0101", "VirtualService foo/sample-foo-cluster01"),
            ("IST0101", "VirtualService default/duplicate-match"),
            ("IST0130", "VirtualService default/duplicate-match"),
            ("IST0131", "VirtualService default/duplicate-match"),
            ("IST0101", "VirtualService default/duplicate-match"),
            ("IST0101", "VirtualService default/duplicate-match"),
            ("IST0101", "VirtualService default/almost-duplicate-match"),
            ("IST0131", "VirtualService default/almost-duplicate-match"),
            ("IST0101", "VirtualService default/almost-duplicate-match"),
            ("IST0101", "VirtualService default/almost-duplicate-match"),
            ("IST0101", "VirtualService default/duplicate-tcp-match"),
            ("IST0101", "VirtualService default/duplicate-tcp-match"),
            ("IST0101", "VirtualService default/duplicate-tcp-match"),
            ("IST0130", "VirtualService default/duplicate-tcp-match"),
            ("IST0131", "VirtualService default/duplicate-tcp-match"),
            ("IST0101", "VirtualService default/duplicate-tcp-match"),
            ("IST0101", "VirtualService default/duplicate-tcp-match"),
            ("IST0101", "VirtualService default/duplicate-empty-tcp"),
            ("IST0101", "VirtualService default/duplicate-empty-tcp"),
            ("IST0101", "VirtualService default/duplicate-empty-tcp"),
            ("IST0130", "VirtualService default/duplicate-empty-tcp"),
            ("IST0101", "VirtualService default/duplicate-empty-tcp"),
            ("IST0101", "VirtualService default/duplicate-empty-tcp"),
            (
                "IST0101",
                "VirtualService default/almost-duplicate-tcp-match",
            ),
            (
                "IST0101",
                "VirtualService default/almost-duplicate-tcp-match",
            ),
            (
                "IST0101",
                "VirtualService default/almost-duplicate-tcp-match",
            ),
            (
                "IST0131",
                "VirtualService default/almost-duplicate-tcp-match",
            ),
            (
                "IST0101",
                "VirtualService default/almost-duplicate-tcp-match",
            ),
            (
                "IST0101",
                "VirtualService default/almost-duplicate-tcp-match",
            ),
            ("IST0101", "VirtualService none/tls-routing"),
            ("IST0130", "VirtualService none/tls-routing"),
            ("IST0131", "VirtualService none/tls-routing"),
            ("IST0101", "VirtualService none/tls-routing"),
            ("IST0101", "VirtualService none/tls-routing-almostmatch"),
            ("IST0131", "VirtualService none/tls-routing-almostmatch"),
            ("IST0101", "VirtualService none/tls-routing-almostmatch"),
        ],
        istio: &[
            ("IST0130", "VirtualService default/duplicate-match"),
            ("IST0130", "VirtualService foo/sample-foo-cluster01"),
            ("IST0131", "VirtualService default/almost-duplicate-match"),
            ("IST0131", "VirtualService default/duplicate-match"),
            ("IST0130", "VirtualService default/duplicate-tcp-match"),
            ("IST0130", "VirtualService default/duplicate-empty-tcp"),
            (
                "IST0131",
                "VirtualService default/almost-duplicate-tcp-match",
            ),
            ("IST0131", "VirtualService default/duplicate-tcp-match"),
            ("IST0130", "VirtualService none/tls-routing"),
            ("IST0131", "VirtualService none/tls-routing-almostmatch"),
            ("IST0131", "VirtualService none/tls-routing"),
        ],
        missing: &[],
        why: "the hosts, subsets and the Gateway tcp-echo-gateway are not in the file (IST0101)",
    },
    Case {
        fixture: "analyzer-virtualservice_gateways.yaml",
        patch: &[],
        rejected: &[
            "Gateway default/httpbin-gateway",
            "Gateway another/crossnamespace-gw",
            "VirtualService default/httpbin",
            "VirtualService default/httpbin-bogus",
            "VirtualService default/httpbin-mesh",
            "VirtualService default/cross-test",
        ],
        errors: &[],
        found: &[],
        istio: &[
            ("IST0101", "VirtualService default/httpbin-bogus"),
            ("IST0132", "VirtualService default/cross-test"),
            ("IST0132", "VirtualService default/httpbin-bogus"),
            ("IST0132", "VirtualService default/httpbin"),
        ],
        missing: &[
            ("IST0101", "VirtualService default/httpbin-bogus"),
            ("IST0132", "VirtualService default/cross-test"),
            ("IST0132", "VirtualService default/httpbin-bogus"),
            ("IST0132", "VirtualService default/httpbin"),
        ],
        why: "every document is invalid for Istio's validation too (IST0106): Gateways without servers, VirtualServices without routes, and * on the mesh. The same findings are pinned by the goldens warnings-ist0101-references and warnings-ist0132-gateway-hosts and by the host_not_found fixtures",
    },
    Case {
        fixture: "analyzer-virtualservice_host_not_found_gateway.yaml",
        patch: &[(
            "    - 'web.testing-02-04.com'\n    port:\n      name: http",
            "    - 'web.testing-02-04.com'\n    port:\n      name: http-web",
        )],
        rejected: &[],
        errors: &[],
        found: &[
            (
                "IST0101",
                "VirtualService default/testing-service-01-test-01",
            ),
            (
                "IST0132",
                "VirtualService default/testing-service-02-test-01",
            ),
            (
                "IST0101",
                "VirtualService default/testing-service-02-test-01",
            ),
            (
                "IST0101",
                "VirtualService default/testing-service-01-test-02",
            ),
            (
                "IST0132",
                "VirtualService default/testing-service-02-test-02",
            ),
            (
                "IST0101",
                "VirtualService default/testing-service-02-test-02",
            ),
            (
                "IST0101",
                "VirtualService default/testing-service-01-test-03",
            ),
            (
                "IST0132",
                "VirtualService default/testing-service-02-test-03",
            ),
            (
                "IST0101",
                "VirtualService default/testing-service-02-test-03",
            ),
            (
                "IST0101",
                "VirtualService default/testing-service-01-test-04",
            ),
            (
                "IST0101",
                "VirtualService default/testing-service-02-test-04",
            ),
            (
                "IST0132",
                "VirtualService default/testing-service-03-test-04",
            ),
            (
                "IST0101",
                "VirtualService default/testing-service-03-test-04",
            ),
        ],
        istio: &[
            (
                "IST0132",
                "VirtualService default/testing-service-02-test-01",
            ),
            (
                "IST0132",
                "VirtualService default/testing-service-02-test-02",
            ),
            (
                "IST0132",
                "VirtualService default/testing-service-02-test-03",
            ),
            (
                "IST0132",
                "VirtualService default/testing-service-03-test-04",
            ),
        ],
        missing: &[],
        why: "patched: port names repeat within a Gateway, which Istio's validation rejects; the destination ratings is a Kubernetes Service (IST0101 here)",
    },
    Case {
        fixture: "analyzer-virtualservice_host_not_found_gateway_beta.yaml",
        patch: &[(
            "    - 'web.testing-02-04.com'\n    port:\n      name: http",
            "    - 'web.testing-02-04.com'\n    port:\n      name: http-web",
        )],
        rejected: &[],
        errors: &[],
        found: &[
            (
                "IST0101",
                "VirtualService default/testing-service-01-test-01",
            ),
            (
                "IST0132",
                "VirtualService default/testing-service-02-test-01",
            ),
            (
                "IST0101",
                "VirtualService default/testing-service-02-test-01",
            ),
            (
                "IST0101",
                "VirtualService default/testing-service-01-test-02",
            ),
            (
                "IST0132",
                "VirtualService default/testing-service-02-test-02",
            ),
            (
                "IST0101",
                "VirtualService default/testing-service-02-test-02",
            ),
            (
                "IST0101",
                "VirtualService default/testing-service-01-test-03",
            ),
            (
                "IST0132",
                "VirtualService default/testing-service-02-test-03",
            ),
            (
                "IST0101",
                "VirtualService default/testing-service-02-test-03",
            ),
            (
                "IST0101",
                "VirtualService default/testing-service-01-test-04",
            ),
            (
                "IST0101",
                "VirtualService default/testing-service-02-test-04",
            ),
            (
                "IST0132",
                "VirtualService default/testing-service-03-test-04",
            ),
            (
                "IST0101",
                "VirtualService default/testing-service-03-test-04",
            ),
        ],
        istio: &[
            (
                "IST0132",
                "VirtualService default/testing-service-02-test-01",
            ),
            (
                "IST0132",
                "VirtualService default/testing-service-02-test-02",
            ),
            (
                "IST0132",
                "VirtualService default/testing-service-02-test-03",
            ),
            (
                "IST0132",
                "VirtualService default/testing-service-03-test-04",
            ),
        ],
        missing: &[],
        why: "patched: port names repeat within a Gateway, which Istio's validation rejects; the destination ratings is a Kubernetes Service (IST0101 here)",
    },
    Case {
        fixture: "analyzer-virtualservice_host_not_found_gateway_with_ns_prefix.yaml",
        patch: &[],
        rejected: &[],
        errors: &[],
        found: &[
            (
                "IST0101",
                "VirtualService istio-system/testing-service-01-test-01",
            ),
            (
                "IST0132",
                "VirtualService default/testing-service-01-test-01",
            ),
            (
                "IST0101",
                "VirtualService default/testing-service-01-test-01",
            ),
            (
                "IST0101",
                "VirtualService istio-system/testing-service-01-test-02",
            ),
            (
                "IST0101",
                "VirtualService default/testing-service-01-test-02",
            ),
            (
                "IST0101",
                "VirtualService istio-system/testing-service-01-test-03",
            ),
            (
                "IST0101",
                "VirtualService default/testing-service-01-test-03",
            ),
            (
                "IST0101",
                "VirtualService istio-system/testing-service-01-test-04",
            ),
            (
                "IST0101",
                "VirtualService default/testing-service-01-test-04",
            ),
        ],
        istio: &[(
            "IST0132",
            "VirtualService default/testing-service-01-test-01",
        )],
        missing: &[],
        why: "the destination ratings is a Kubernetes Service in Istio (IST0101 here)",
    },
    Case {
        fixture: "analyzer-virtualservice_host_not_found_gateway_with_ns_prefix_beta.yaml",
        patch: &[],
        rejected: &[],
        errors: &[],
        found: &[
            (
                "IST0101",
                "VirtualService istio-system/testing-service-01-test-01",
            ),
            (
                "IST0132",
                "VirtualService default/testing-service-01-test-01",
            ),
            (
                "IST0101",
                "VirtualService default/testing-service-01-test-01",
            ),
            (
                "IST0101",
                "VirtualService istio-system/testing-service-01-test-02",
            ),
            (
                "IST0101",
                "VirtualService default/testing-service-01-test-02",
            ),
            (
                "IST0101",
                "VirtualService istio-system/testing-service-01-test-03",
            ),
            (
                "IST0101",
                "VirtualService default/testing-service-01-test-03",
            ),
            (
                "IST0101",
                "VirtualService istio-system/testing-service-01-test-04",
            ),
            (
                "IST0101",
                "VirtualService default/testing-service-01-test-04",
            ),
        ],
        istio: &[(
            "IST0132",
            "VirtualService default/testing-service-01-test-01",
        )],
        missing: &[],
        why: "the destination ratings is a Kubernetes Service in Istio (IST0101 here)",
    },
    Case {
        fixture: "analyzer-virtualservice_internal_gateway_ref.yaml",
        patch: &[],
        rejected: &["VirtualService default/httpbin"],
        errors: &[],
        found: &[],
        istio: &[("IST0165", "VirtualService default/httpbin")],
        missing: &[("IST0165", "VirtualService default/httpbin")],
        why: "not applicable: a gateway name with ~ is invalid for Istio's validation too (IST0106); wasmgate generates no internal Gateways",
    },
    Case {
        fixture: "analyzer-virtualservice_jwtclaimroute.yaml",
        patch: &[],
        rejected: &[],
        errors: &[],
        found: &[
            ("IST0149", "VirtualService default/foo"),
            ("IST0101", "VirtualService default/foo"),
        ],
        istio: &[("IST0149", "VirtualService default/foo")],
        missing: &[],
        why: "the destination istiod is not declared by a ServiceEntry (IST0101)",
    },
    Case {
        fixture: "analyzer-virtualservice_kubernetes_gateways.yaml",
        patch: &[],
        rejected: &[],
        errors: &[],
        found: &[
            ("IST0101", "VirtualService default/my-vs"),
            ("IST0101", "VirtualService default/my-vs"),
            ("IST0101", "VirtualService default/my-vs-host-mismatch"),
            ("IST0101", "VirtualService default/my-vs-host-mismatch"),
        ],
        istio: &[("IST0132", "VirtualService default/my-vs-host-mismatch")],
        missing: &[("IST0132", "VirtualService default/my-vs-host-mismatch")],
        why: "wasmgate implements no Kubernetes Gateway API: the gateway.networking.k8s.io Gateway is skipped, so both VirtualServices name a Gateway that does not exist (IST0101); my-service is a Kubernetes Service",
    },
    Case {
        fixture: "analyzer-virtualservice_overlappingmatches.yaml",
        patch: &[],
        rejected: &[],
        errors: &[],
        found: &[
            ("IST0109", "VirtualService default/non-method-get"),
            ("IST0131", "VirtualService default/non-method-get"),
            ("IST0101", "VirtualService default/non-method-get"),
            ("IST0109", "VirtualService default/uri-with-prefix-exact"),
            ("IST0101", "VirtualService default/uri-with-prefix-exact"),
            (
                "IST0109",
                "VirtualService default/overlapping-in-single-match",
            ),
            (
                "IST0131",
                "VirtualService default/overlapping-in-single-match",
            ),
            (
                "IST0101",
                "VirtualService default/overlapping-in-single-match",
            ),
            (
                "IST0109",
                "VirtualService default/overlapping-in-two-matches",
            ),
            (
                "IST0101",
                "VirtualService default/overlapping-in-two-matches",
            ),
            (
                "IST0131",
                "VirtualService default/overlapping-in-two-matches",
            ),
            (
                "IST0101",
                "VirtualService default/overlapping-in-two-matches",
            ),
            (
                "IST0101",
                "VirtualService default/overlapping-in-two-matches",
            ),
            (
                "IST0109",
                "VirtualService default/overlapping-mathes-with-different-methods",
            ),
            (
                "IST0101",
                "VirtualService default/overlapping-mathes-with-different-methods",
            ),
            (
                "IST0131",
                "VirtualService default/overlapping-mathes-with-different-methods",
            ),
            (
                "IST0101",
                "VirtualService default/overlapping-mathes-with-different-methods",
            ),
            (
                "IST0101",
                "VirtualService default/overlapping-mathes-with-different-methods",
            ),
        ],
        istio: &[
            ("IST0131", "VirtualService default/non-method-get"),
            (
                "IST0131",
                "VirtualService default/overlapping-in-single-match",
            ),
            (
                "IST0131",
                "VirtualService default/overlapping-in-two-matches",
            ),
            (
                "IST0131",
                "VirtualService default/overlapping-mathes-with-different-methods",
            ),
        ],
        missing: &[],
        why: "the five VirtualServices share one mesh host (IST0109; Istio's test runs only the validation analyzer on this file) and their destinations are not declared (IST0101)",
    },
    Case {
        fixture: "analyzer-virtualservice_route_rule_no_effects_ingress.yaml",
        patch: &[],
        rejected: &[],
        errors: &[],
        found: &[
            (
                "IST0101",
                "VirtualService default/testing-service-01-test-01",
            ),
            (
                "IST0140",
                "VirtualService default/testing-service-01-test-01",
            ),
            (
                "IST0101",
                "VirtualService default/testing-service-02-test-02",
            ),
            ("IST0101", "VirtualService default/ratings-01"),
            ("IST0174", "DestinationRule default/ratings"),
        ],
        istio: &[(
            "IST0140",
            "VirtualService default/testing-service-01-test-01",
        )],
        missing: &[],
        why: "ratings is a Kubernetes Service in Istio; wasmgate sees no Kubernetes Service, so the host is declared by no ServiceEntry (IST0174), and routes to it are IST0101",
    },
];
