//! Istio's own samples (bookinfo, httpbin, helloworld, cert-manager) load as they are.
//! Several are alternatives to each other (same VirtualService names), so each file is
//! loaded on its own, the way `kubectl apply -f FILE` would take it.

use std::path::{Path, PathBuf};

use wasmgate_config::{Config, load};

fn samples_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/data/istio/samples")
}

fn load_one(name: &str) -> Config {
    let path = samples_dir().join(name);
    match load(&[path]) {
        Ok(c) => c,
        Err(e) => panic!("{name} should load:\n{e}"),
    }
}

/// (file, gateways, virtual services, destination rules, service entries)
const EXPECTED: [(&str, usize, usize, usize, usize); 19] = [
    ("bookinfo-gateway.yaml", 1, 1, 0, 0),
    ("bookinfo-ingress.yaml", 0, 0, 0, 0),
    ("certmanager-gateway.yaml", 1, 1, 0, 0),
    ("destination-rule-all.yaml", 0, 0, 4, 0),
    ("destination-rule-reviews.yaml", 0, 0, 1, 0),
    ("egress-rule-google-apis.yaml", 0, 1, 1, 1),
    ("fault-injection-details-v1.yaml", 0, 1, 1, 0),
    ("helloworld-gateway.yaml", 1, 1, 0, 0),
    ("httpbin-gateway.yaml", 1, 1, 0, 0),
    ("virtual-service-all-v1.yaml", 0, 4, 0, 0),
    ("virtual-service-ratings-test-abort.yaml", 0, 1, 0, 0),
    ("virtual-service-ratings-test-delay.yaml", 0, 1, 0, 0),
    ("virtual-service-reviews-50-v3.yaml", 0, 1, 0, 0),
    ("virtual-service-reviews-80-20.yaml", 0, 1, 0, 0),
    ("virtual-service-reviews-90-10.yaml", 0, 1, 0, 0),
    ("virtual-service-reviews-jason-v2-v3.yaml", 0, 1, 0, 0),
    ("virtual-service-reviews-test-v2.yaml", 0, 1, 0, 0),
    ("virtual-service-reviews-v2-v3.yaml", 0, 1, 0, 0),
    ("virtual-service-reviews-v3.yaml", 0, 1, 0, 0),
];

#[test]
fn every_sample_loads() {
    let mut on_disk: Vec<String> = std::fs::read_dir(samples_dir())
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".yaml"))
        .collect();
    on_disk.sort();
    let listed: Vec<&str> = EXPECTED.iter().map(|e| e.0).collect();
    assert_eq!(on_disk, listed, "samples on disk and in EXPECTED differ");
    for (name, gw, vs, dr, se) in EXPECTED {
        let c = load_one(name);
        assert_eq!(
            (
                c.gateways.len(),
                c.virtual_services.len(),
                c.destination_rules.len(),
                c.service_entries.len()
            ),
            (gw, vs, dr, se),
            "{name}"
        );
    }
}

#[test]
fn kubernetes_ingress_is_ignored_with_a_warning() {
    let c = load_one("bookinfo-ingress.yaml");
    assert_eq!(c.warnings.len(), 1, "{:?}", c.warnings);
    let w = c.warnings[0].to_string();
    assert!(
        w.contains("ignored") && w.contains("networking.k8s.io/v1 Ingress"),
        "{w}"
    );
}

#[test]
fn bookinfo_gateway_model() {
    let c = load_one("bookinfo-gateway.yaml");
    let gw = &c.gateways[0];
    assert_eq!(gw.meta.id.to_string(), "Gateway default/bookinfo-gateway");
    assert_eq!(
        gw.selector.get("istio").map(String::as_str),
        Some("ingressgateway")
    );
    assert_eq!(gw.servers.len(), 1);
    let s = &gw.servers[0];
    assert_eq!(
        (s.port, s.protocol, s.port_name.as_str()),
        (8080, wasmgate_config::Protocol::Http, "http")
    );
    assert_eq!(s.hosts[0].host, "*");
    assert_eq!(
        s.hosts[0].namespace,
        wasmgate_config::NamespaceSelector::Any
    );
    let vs = &c.virtual_services[0];
    assert_eq!(vs.hosts, vec!["*".to_string()]);
    assert_eq!(vs.gateways.len(), 1);
    assert_eq!(vs.gateways[0].name, "bookinfo-gateway");
    assert_eq!(vs.gateways[0].namespace, "default");
    assert!(!vs.binds_mesh);
    assert_eq!(vs.http.len(), 1);
    // Destinations are not backed by ServiceEntries in the sample: a warning, not an error.
    assert!(c.warnings.iter().any(|w| {
        w.to_string()
            .contains("productpage.default.svc.cluster.local")
    }));
}

#[test]
fn a_set_of_samples_loads_together() {
    let dir = samples_dir();
    let files: Vec<PathBuf> = [
        "bookinfo-gateway.yaml",
        "destination-rule-all.yaml",
        "virtual-service-reviews-80-20.yaml",
        "egress-rule-google-apis.yaml",
    ]
    .iter()
    .map(|n| dir.join(n))
    .collect();
    let c = match load(&files) {
        Ok(c) => c,
        Err(e) => panic!("{e}"),
    };
    assert_eq!(c.destination_rules.len(), 5);
    // reviews v1/v2 are defined by destination-rule-all.yaml: no subset warnings.
    assert!(
        !c.warnings.iter().any(|w| w.message.contains("subset")),
        "{:?}",
        c.warnings
    );
}

#[test]
fn alternatives_conflict_when_loaded_together() {
    // The whole directory holds several VirtualServices named `reviews`.
    let err = match load(&[samples_dir()]) {
        Ok(_) => panic!("loading all samples together must report duplicates"),
        Err(e) => e,
    };
    let text = err.to_string();
    assert!(
        text.contains("VirtualService default/reviews: duplicate resource; first defined at"),
        "{text}"
    );
}

#[test]
fn missing_paths_are_named() {
    let missing = samples_dir().join("no-such-file.yaml");
    let err = match load(std::slice::from_ref(&missing)) {
        Ok(_) => panic!("a missing file must be an error"),
        Err(e) => e,
    };
    assert_eq!(err.0.len(), 1);
    assert_eq!(err.0[0].file, missing);
    assert!(err.to_string().starts_with(&missing.display().to_string()));
}

#[test]
fn directories_load_yaml_files_by_name_not_recursively() {
    let dir = std::env::temp_dir().join(format!("wasmgate-config-dir-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let write = |rel: &str, name: &str| {
        let path = dir.join(rel);
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).unwrap_or_else(|e| panic!("{e}"));
        }
        let text = format!(
            "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata: {{name: {name}}}\nspec:\n  hosts: [{name}.example.com]\n"
        );
        std::fs::write(&path, text).unwrap_or_else(|e| panic!("{e}"));
    };
    write("b.yaml", "b");
    write("a.yml", "a");
    write("c.txt", "c");
    write("sub/d.yaml", "d");
    let result = load(std::slice::from_ref(&dir));
    let _ = std::fs::remove_dir_all(&dir);
    let c = match result {
        Ok(c) => c,
        Err(e) => panic!("{e}"),
    };
    let names: Vec<&str> = c
        .service_entries
        .iter()
        .map(|s| s.meta.id.name.as_str())
        .collect();
    assert_eq!(names, vec!["a", "b"]);
    assert!(c.service_entries[0].meta.file.ends_with("a.yml"));
}
