//! The mesh listener (`--mesh-listener`), as applications use it: their HTTP proxy.
//! Bookinfo's own `virtual-service-*.yaml` and `destination-rule-all.yaml`, unchanged,
//! steer calls between services by `Host` and absolute-form URI; and Istio's "egress
//! gateway with TLS origination" task, from its YAML, with the external service on
//! loopback: application -> mesh listener -> egress gateway -> TLS to the service.

mod support;

use std::collections::BTreeMap;

use http::StatusCode;
use support::tls::{Ca, TlsEcho};
use support::{Echo, Gateway, TempDir, data, free_port, service_entry};

/// `GET {url}` through the proxy at 127.0.0.1:`proxy` (absolute-form request line):
/// (status, x-upstream of the answer).
async fn via_proxy(proxy: u16, url: &str, headers: &[(&str, &str)]) -> (StatusCode, String) {
    use http_body_util::BodyExt;
    let stream = tokio::net::TcpStream::connect(("127.0.0.1", proxy))
        .await
        .expect("connect to the mesh listener");
    let (mut send, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .expect("handshake");
    tokio::spawn(conn);
    let uri: http::Uri = url.parse().expect("url");
    let mut req = http::Request::builder().uri(uri.clone()).header(
        "host",
        uri.authority().map(|a| a.as_str()).unwrap_or_default(),
    );
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .expect("request");
    let resp = send.send_request(req).await.expect("response");
    let status = resp.status();
    let upstream = resp
        .headers()
        .get("x-upstream")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let _ = resp.into_body().collect().await;
    (status, upstream)
}

/// Bookinfo's services as ServiceEntries with versioned endpoints on loopback.
struct Bookinfo {
    _echoes: Vec<Echo>,
    entries: String,
}

async fn bookinfo() -> Bookinfo {
    let mut echoes = Vec::new();
    let mut entries = Vec::new();
    for (service, versions) in [
        ("productpage", &["v1"][..]),
        ("details", &["v1"][..]),
        ("ratings", &["v1"][..]),
        ("reviews", &["v1", "v2", "v3"][..]),
    ] {
        let mut endpoints = Vec::new();
        for v in versions {
            let echo = Echo::start(&format!("{service}-{v}")).await;
            endpoints.push(echo.port());
            echoes.push(echo);
        }
        let eps: Vec<(u16, &[(&str, &str)])> = endpoints
            .iter()
            .zip(versions.iter())
            .map(|(p, v)| {
                let labels: &[(&str, &str)] = match *v {
                    "v1" => &[("version", "v1")],
                    "v2" => &[("version", "v2")],
                    _ => &[("version", "v3")],
                };
                (*p, labels)
            })
            .collect();
        entries.push(service_entry(service, service, 9080, &eps));
    }
    Bookinfo {
        _echoes: echoes,
        entries: entries.join("---\n"),
    }
}

/// Bookinfo's files steer calls made through the mesh listener: all-v1, then jason to
/// v2 and everyone else to v3, then 80/20; short names, namespaced names and absolute
/// URIs all reach the service; an undeclared host is not proxied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bookinfo_virtual_services_steer_calls_between_services() {
    let services = bookinfo().await;
    let mesh = free_port();
    let dir = TempDir::new("mesh");
    dir.write("services.yaml", &services.entries);
    dir.write(
        "destination-rule-all.yaml",
        &data("istio/samples/destination-rule-all.yaml"),
    );
    dir.write(
        "virtual-service-all-v1.yaml",
        &data("istio/samples/virtual-service-all-v1.yaml"),
    );
    let mesh_addr = format!("127.0.0.1:{mesh}");
    let gw = Gateway::start(
        dir.path(),
        &["--mesh-listener", &mesh_addr, "--random-seed", "3"],
    )
    .await;

    for url in [
        "http://reviews:9080/reviews/0",
        "http://reviews.default:9080/reviews/0",
        "http://reviews.default.svc.cluster.local:9080/reviews/0",
    ] {
        let (status, upstream) = via_proxy(mesh, url, &[]).await;
        assert_eq!(status, StatusCode::OK, "{url}");
        assert_eq!(upstream, "reviews-v1", "{url}");
    }
    let (_, upstream) = via_proxy(mesh, "http://ratings:9080/ratings/0", &[]).await;
    assert_eq!(upstream, "ratings-v1");
    // Origin-form with a Host header, as an application configured with the mesh
    // listener as its HTTP proxy may also send.
    let r = support::get(mesh, "details:9080", "/details/0", &[])
        .await
        .expect("request");
    assert_eq!(r.upstream().as_deref(), Some("details-v1"));
    let (status, _) = via_proxy(mesh, "http://www.example.com/", &[]).await;
    assert_eq!(status, StatusCode::NOT_FOUND, "not an open proxy");

    // Jason to v2, everyone else to v3.
    std::fs::remove_file(dir.path().join("virtual-service-all-v1.yaml")).expect("rm");
    dir.write(
        "virtual-service-reviews-jason-v2-v3.yaml",
        &data("istio/samples/virtual-service-reviews-jason-v2-v3.yaml"),
    );
    let r = gw.reload().await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let (_, upstream) = via_proxy(
        mesh,
        "http://reviews:9080/reviews/0",
        &[("end-user", "jason")],
    )
    .await;
    assert_eq!(upstream, "reviews-v2");
    let (_, upstream) = via_proxy(mesh, "http://reviews:9080/reviews/0", &[]).await;
    assert_eq!(upstream, "reviews-v3");
    // Services no VirtualService names any more get Istio's default route.
    let (status, upstream) = via_proxy(mesh, "http://ratings:9080/ratings/0", &[]).await;
    assert_eq!(status, StatusCode::OK);
    assert!(upstream.starts_with("ratings-"), "{upstream}");

    // 80/20 between v1 and v2.
    std::fs::remove_file(dir.path().join("virtual-service-reviews-jason-v2-v3.yaml")).expect("rm");
    dir.write(
        "virtual-service-reviews-80-20.yaml",
        &data("istio/samples/virtual-service-reviews-80-20.yaml"),
    );
    let r = gw.reload().await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for _ in 0..200 {
        let (_, upstream) = via_proxy(mesh, "http://reviews:9080/reviews/0", &[]).await;
        *seen.entry(upstream).or_default() += 1;
    }
    let v1 = seen.get("reviews-v1").copied().unwrap_or(0);
    let v2 = seen.get("reviews-v2").copied().unwrap_or(0);
    assert_eq!(v1 + v2, 200, "{seen:?}");
    assert!((140..=180).contains(&v1), "about 80% to v1: {seen:?}");
}

/// Istio's egress task: the application sends plain HTTP for edition.cnn.com to the mesh
/// listener; the mesh routes it to the egress gateway (`match.gateways: [mesh]`), whose
/// route sends it to port 443, where the DestinationRule originates TLS, verified
/// against the system trust store (`SSL_CERT_FILE` here) with the Host as SNI.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn egress_gateway_with_tls_origination() {
    let ca = Ca::new("public-ca");
    let cnn = TlsEcho::start("edition.cnn.com", &ca.server(&["edition.cnn.com"]), None).await;
    let egress = free_port();
    let mesh = free_port();
    let dir = TempDir::new("egress");
    let ca_file = dir.write("ca.pem", &ca.pem);
    // The task's YAML; port 80 becomes a free port (the egress gateway's and the one the
    // application calls), and the external service is on loopback instead of DNS.
    let task = data("istio/tasks/egress-gateway-tls-origination.yaml")
        .replace("number: 80\n", &format!("number: {egress}\n"))
        .replace("port: 80\n", &format!("port: {egress}\n"))
        .replace(
            "  resolution: DNS\n",
            &format!(
                "  resolution: STATIC\n  endpoints:\n  - address: 127.0.0.1\n    ports: {{https: {}}}\n",
                cnn.port()
            ),
        );
    assert_eq!(task.matches(&egress.to_string()).count(), 5, "{task}");
    dir.write("task.yaml", &task);
    // What Kubernetes would hold: the egress gateway's Service.
    dir.write(
        "egress-service.yaml",
        &service_entry(
            "istio-egressgateway",
            "istio-egressgateway.istio-system.svc.cluster.local",
            egress,
            &[(egress, &[])],
        ),
    );
    let mesh_addr = format!("127.0.0.1:{mesh}");
    let gw = Gateway::start_with_env(
        dir.path(),
        &["--mesh-listener", &mesh_addr],
        &[("SSL_CERT_FILE", ca_file.to_str().expect("utf-8 path"))],
    )
    .await;

    let url = format!("http://edition.cnn.com:{egress}/politics");
    let (status, _) = via_proxy(mesh, &url, &[]).await;
    assert_eq!(status, StatusCode::OK, "{}", gw.log_text());
    assert_eq!(cnn.hits(), 1);
    let lines = gw.access_lines();
    assert!(
        lines.iter().any(|l| l
            .contains("vs=default/direct-cnn-through-egress-gateway route=http[0]")
            && l.contains("cluster=outbound|")
            && l.contains("|cnn|istio-egressgateway.istio-system.svc.cluster.local")),
        "mesh hop: {lines:?}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains("route=http[1]")
                && l.contains("cluster=outbound|443||edition.cnn.com")),
        "egress hop: {lines:?}"
    );
}

/// Send `CONNECT target` to the proxy; the stream once the proxy answered, and its
/// status line.
async fn connect_via(proxy: u16, target: &str) -> (tokio::net::TcpStream, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", proxy))
        .await
        .expect("connect");
    s.write_all(format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n").as_bytes())
        .await
        .expect("write");
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match s.read(&mut byte).await {
            Ok(1) => head.push(byte[0]),
            _ => break,
        }
    }
    let text = String::from_utf8_lossy(&head).to_string();
    let status = text.lines().next().unwrap_or_default().to_string();
    (s, status)
}

/// CONNECT on the mesh listener: a `tls` route of a mesh VirtualService by the SNI the
/// client sends through the tunnel (the client verifies the backend's certificate); a
/// declared service's own port when no route names it; 404 for anything undeclared.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_tunnels_routed_by_sni_and_port() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let ca = Ca::new("ca");
    let backend = TlsEcho::start("secure-backend", &ca.server(&["secure.example.com"]), None).await;
    // A plain TCP service that answers first line with "db:".
    let db = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let db_port = db.local_addr().expect("addr").port();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = db.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 64];
                if let Ok(n) = s.read(&mut buf).await {
                    let _ = s.write_all(&[b"db:", &buf[..n]].concat()).await;
                }
            });
        }
    });
    let mesh = free_port();
    let dir = TempDir::new("connect");
    dir.write(
        "vs.yaml",
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: secure\nspec:\n  hosts: [secure.example.com]\n  tls:\n  - match: [{port: 443, sniHosts: [secure.example.com]}]\n    route: [{destination: {host: secure-backend.internal, port: {number: 8443}}}]\n",
    );
    dir.write(
        "se.yaml",
        &format!(
            "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata:\n  name: secure\nspec:\n  hosts: [secure-backend.internal]\n  resolution: STATIC\n  ports: [{{number: 8443, name: tls, protocol: TLS}}]\n  endpoints: [{{address: 127.0.0.1, ports: {{tls: {}}}}}]\n---\napiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata:\n  name: db\nspec:\n  hosts: [db.internal]\n  resolution: STATIC\n  ports: [{{number: 5432, name: tcp, protocol: TCP}}]\n  endpoints: [{{address: 127.0.0.1, ports: {{tcp: {db_port}}}}}]\n",
            backend.port()
        ),
    );
    let mesh_addr = format!("127.0.0.1:{mesh}");
    let gw = Gateway::start(dir.path(), &["--mesh-listener", &mesh_addr]).await;

    let (tunnel, status) = connect_via(mesh, "secure.example.com:443").await;
    assert!(status.contains(" 200"), "{status}");
    let tls = tokio_rustls::TlsConnector::from(ca.client_config(None, &[b"http/1.1"]))
        .connect(
            rustls::pki_types::ServerName::try_from("secure.example.com").expect("name"),
            tunnel,
        )
        .await
        .unwrap_or_else(|e| panic!("handshake through the tunnel: {e}\n{}", gw.log_text()));
    let (mut send, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
        .await
        .expect("h1");
    tokio::spawn(conn);
    let resp = send
        .send_request(
            http::Request::builder()
                .uri("/through")
                .header("host", "secure.example.com")
                .body(http_body_util::Empty::<bytes::Bytes>::new())
                .expect("req"),
        )
        .await
        .expect("response");
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(backend.hits(), 1);

    let (mut tunnel, status) = connect_via(mesh, "db.internal:5432").await;
    assert!(status.contains(" 200"), "{status}");
    tunnel.write_all(b"ping").await.expect("write");
    let mut buf = [0u8; 16];
    let n = tunnel.read(&mut buf).await.expect("read");
    assert_eq!(&buf[..n], b"db:ping");

    let (_, status) = connect_via(mesh, "unknown.example.com:443").await;
    assert!(status.contains(" 404"), "{status}");
    drop(send);
    let lines = gw
        .wait_for_access(|l| l.iter().any(|l| l.contains("sni=secure.example.com")))
        .await;
    assert!(
        lines.iter().any(|l| l.contains("sni=secure.example.com")
            && l.contains("vs=default/secure route=tls[0]")),
        "{lines:?}"
    );
}
