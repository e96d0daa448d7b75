//! `delegate` VirtualServices: the golden case `warnings-delegate.yaml` loaded, and the
//! root's routes checked after the merge (what the router plugin receives in `spec`).

use std::path::{Path, PathBuf};

use wasmgate_config::raw::{HTTPRoute, StringMatch};
use wasmgate_config::{Config, VirtualService, load_sources};

fn load(text: &str) -> Config {
    match load_sources(&[(PathBuf::from("d.yaml"), text.to_string())]) {
        Ok(c) => c,
        Err(e) => panic!("{e}"),
    }
}

fn golden() -> Config {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/golden/validation/warnings-delegate.yaml");
    load(&std::fs::read_to_string(&path).expect("golden case"))
}

fn vs<'c>(c: &'c Config, ns: &str, name: &str) -> &'c VirtualService {
    c.virtual_services
        .iter()
        .find(|v| v.meta.id.namespace == ns && v.meta.id.name == name)
        .unwrap_or_else(|| panic!("no VirtualService {ns}/{name}"))
}

fn prefix(r: &HTTPRoute) -> Vec<Option<String>> {
    r.match_
        .iter()
        .map(|m| m.uri.as_ref().and_then(|u| u.prefix.clone()))
        .collect()
}

fn destination(r: &HTTPRoute) -> (String, String) {
    let d = r.route[0].destination.as_ref().expect("destination");
    (d.host.clone(), d.subset.clone())
}

#[test]
fn the_root_carries_the_merged_routes() {
    let c = golden();
    let shop = vs(&c, "default", "shop");
    // reviews-v2 and reviews-rest from the delegate (its "ratings" route falls outside
    // /reviews and is dropped); the three other delegations are dropped; the last route
    // is the root's own.
    let names: Vec<&str> = shop.http.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, vec!["reviews-v2", "reviews-rest", ""]);
    assert_eq!(
        shop.spec.http, shop.http,
        "the router plugin gets the same routes"
    );
    assert!(shop.http.iter().all(|r| r.delegate.is_none()));

    let v2 = &shop.http[0];
    assert_eq!(prefix(v2), vec![Some("/reviews/v2".to_string())]);
    assert_eq!(
        destination(v2),
        (
            "reviews.team.svc.cluster.local".to_string(),
            "v2".to_string()
        ),
        "short names resolve in the delegate's namespace"
    );
    assert_eq!(v2.timeout.as_deref(), Some("5s"), "inherited from the root");

    let rest = &shop.http[1];
    assert_eq!(
        prefix(rest),
        vec![Some("/reviews".to_string())],
        "a delegate route without matches takes the root's"
    );
    assert_eq!(
        destination(rest),
        (
            "reviews.team.svc.cluster.local".to_string(),
            "v1".to_string()
        )
    );
    assert_eq!(destination(&shop.http[2]).0, "web.example.com");

    // The delegate is kept as loaded (no hosts: nothing serves it on its own).
    let delegate = vs(&c, "team", "reviews");
    assert!(delegate.hosts.is_empty());
    assert_eq!(delegate.http.len(), 3);
}

#[test]
fn a_root_without_matches_hands_over_everything() {
    let c = load(
        "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: root}
spec:
  hosts: [shop.example.com]
  http:
  - headers: {request: {set: {x-root: '1'}}}
    delegate: {name: leaf}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: leaf}
spec:
  http:
  - match: [{uri: {exact: /a}, method: {exact: GET}}]
    route: [{destination: {host: a.example.com}}]
  - route: [{destination: {host: b.example.com}}]
",
    );
    let root = vs(&c, "default", "root");
    assert_eq!(root.http.len(), 2);
    assert_eq!(
        root.http[0].match_[0].uri,
        Some(StringMatch {
            exact: Some("/a".into()),
            ..StringMatch::default()
        })
    );
    assert!(root.http[1].match_.is_empty());
    assert!(
        root.http
            .iter()
            .all(|r| r.headers == root.spec.http[0].headers && r.headers.is_some()),
        "header operations inherited"
    );
}

#[test]
fn a_delegate_that_delegates_is_an_error() {
    let text = "apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: root}
spec:
  hosts: [shop.example.com]
  http:
  - delegate: {name: middle}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: middle}
spec:
  http:
  - match: [{uri: {prefix: /x}}]
    delegate: {name: leaf}
";
    let Err(e) = load_sources(&[(PathBuf::from("d.yaml"), text.to_string())]) else {
        panic!("accepted");
    };
    // Istio allows one level: validation rejects the middle VirtualService.
    assert!(
        e.to_string().contains(
            "d.yaml:15: VirtualService default/middle: spec.http[0].delegate: delegate HTTP route cannot contain delegate"
        ),
        "{e}"
    );
}
