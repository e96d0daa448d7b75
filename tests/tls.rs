//! TLS at the edge with the real binary and real handshakes (certificates made in the
//! test with rcgen): SNI picks the server and its certificate on a shared port; SIMPLE,
//! MUTUAL and OPTIONAL_MUTUAL; `x-forwarded-client-cert`; `httpsRedirect`; HTTP/2 by
//! ALPN (curl too); client certificate pins (`verifyCertificateSpki`/`Hash`);
//! certificates replaced by a reload while clients keep connecting; bad certificates
//! refused with the Secret named; reloads that switch a kept address between HTTP and
//! HTTPS or MUTUAL and SIMPLE; Gateways that share a port, on different bind addresses
//! or on one (picked by Host), with per-Gateway routes and plugins.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use http::StatusCode;
use support::tls::{Ca, Leaf, secret};
use support::{Echo, Gateway, TempDir, free_port, plugins_dir, service_entry};

const ALPN_BOTH: [&[u8]; 2] = [b"h2", b"http/1.1"];

/// A VirtualService in `default` bound to `istio-system/gw` for `hosts`, to `svc`.
fn vs(name: &str, hosts: &[&str], svc: &str) -> String {
    let hosts: Vec<String> = hosts.iter().map(|h| format!("\"{h}\"")).collect();
    format!(
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: {name}\nspec:\n  hosts: [{}]\n  gateways: [istio-system/gw]\n  http:\n  - route:\n    - destination: {{host: {svc}}}\n",
        hosts.join(", ")
    )
}

fn gateway_yaml(servers: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata:\n  name: gw\n  namespace: istio-system\nspec:\n  selector: {{istio: ingressgateway}}\n  servers:\n{servers}"
    )
}

/// Two HTTPS servers on one port: SNI picks the certificate (one from a Secret, one
/// from files) and the server; a Host of the other server is a 404; HTTP/2 by ALPN;
/// x-forwarded-proto is https and a client's own x-forwarded-client-cert is dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sni_picks_certificate_and_server_on_a_shared_port() {
    let a = Echo::start("a").await;
    let b = Echo::start("b").await;
    let ca = Ca::new("test-ca");
    let cert_a = ca.server(&["a.example.com"]);
    let cert_b = ca.server(&["b.example.com"]);
    let port = free_port();
    let dir = TempDir::new("sni");
    let b_cert = dir.write("b.crt", &cert_b.cert);
    let b_key = dir.write("b.key", &cert_b.key);
    dir.write(
        "gw.yaml",
        &gateway_yaml(&format!(
            "  - port: {{number: {port}, name: https-a, protocol: HTTPS}}\n    hosts: [a.example.com]\n    tls: {{mode: SIMPLE, credentialName: a-cert}}\n  - port: {{number: {port}, name: https-b, protocol: HTTPS}}\n    hosts: [b.example.com]\n    tls: {{mode: SIMPLE, serverCertificate: {}, privateKey: {}}}\n",
            b_cert.display(),
            b_key.display()
        )),
    );
    dir.write(
        "secret.yaml",
        &secret("a-cert", "istio-system", Some(&cert_a), None),
    );
    dir.write("vs-a.yaml", &vs("a", &["a.example.com"], "a-svc"));
    dir.write("vs-b.yaml", &vs("b", &["b.example.com"], "b-svc"));
    dir.write(
        "se.yaml",
        &format!(
            "{}---\n{}",
            service_entry("a", "a-svc", 80, &[(a.port(), &[])]),
            service_entry("b", "b-svc", 80, &[(b.port(), &[])])
        ),
    );
    let gw = Gateway::start(dir.path(), &[]).await;
    let config = ca.client_config(None, &ALPN_BOTH);

    let seen = support::tls::get(
        port,
        config.clone(),
        "a.example.com",
        "a.example.com",
        "/x",
        &[("x-forwarded-client-cert", "By=forged")],
    )
    .await
    .expect("request to a");
    assert_eq!(seen.reply.status, StatusCode::OK, "{}", seen.reply.text());
    assert_eq!(seen.server_names, vec!["a.example.com"]);
    assert_eq!(seen.alpn.as_deref(), Some(&b"h2"[..]), "HTTP/2 by ALPN");
    assert_eq!(seen.reply.upstream().as_deref(), Some("a"));
    let echo = seen.reply.echo();
    assert_eq!(echo["headers"]["x-forwarded-proto"], "https");
    assert!(
        echo["headers"].get("x-forwarded-client-cert").is_none(),
        "a client's own XFCC never reaches the upstream: {echo}"
    );

    let seen = support::tls::get(
        port,
        ca.client_config(None, &[b"http/1.1"]),
        "b.example.com",
        "b.example.com",
        "/y",
        &[],
    )
    .await
    .expect("request to b");
    assert_eq!(seen.server_names, vec!["b.example.com"]);
    assert_eq!(seen.alpn.as_deref(), Some(&b"http/1.1"[..]));
    assert_eq!(seen.reply.upstream().as_deref(), Some("b"));

    // Terminated for a.example.com, asking for b.example.com: not this server's host.
    let seen = support::tls::get(
        port,
        config.clone(),
        "a.example.com",
        "b.example.com",
        "/y",
        &[],
    )
    .await
    .expect("request");
    assert_eq!(seen.reply.status, StatusCode::NOT_FOUND);
    assert_eq!(b.hits(), 1);

    // An SNI no server has: the connection is closed, as Envoy does.
    let refused = support::tls::get(port, config, "c.example.com", "c.example.com", "/", &[]).await;
    assert!(refused.is_err(), "{refused:?}");
    assert!(
        !gw.log_text().contains("BEGIN PRIVATE KEY"),
        "key material is never logged"
    );
}

fn mutual_config(port: u16, dir: &TempDir, mode: &str, extra: &str, app: &Echo) {
    dir.write(
        "gw.yaml",
        &gateway_yaml(&format!(
            "  - port: {{number: {port}, name: https, protocol: HTTPS}}\n    hosts: [secure.example.com]\n    tls:\n      mode: {mode}\n      credentialName: secure-cert\n{extra}"
        )),
    );
    dir.write("vs.yaml", &vs("secure", &["secure.example.com"], "app"));
    dir.write(
        "se.yaml",
        &service_entry("app", "app", 80, &[(app.port(), &[])]),
    );
}

/// MUTUAL: a client without a certificate, or with one from another CA, or one
/// without the required SAN, never reaches the upstream; one with a good certificate
/// does, and the upstream gets Envoy's x-forwarded-client-cert for it. The client CA
/// comes from the separate `<name>-cacert` Secret.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_refuses_clients_without_a_good_certificate() {
    let app = Echo::start("app").await;
    let ca = Ca::new("server-ca");
    let clients = Ca::new("client-ca");
    let other = Ca::new("other-ca");
    let port = free_port();
    let dir = TempDir::new("mtls");
    mutual_config(
        port,
        &dir,
        "MUTUAL",
        "      subjectAltNames: [spiffe://cluster.local/ns/default/sa/client, trusted.example.com]\n",
        &app,
    );
    dir.write(
        "secret.yaml",
        &format!(
            "{}---\n{}",
            secret(
                "secure-cert",
                "istio-system",
                Some(&ca.server(&["secure.example.com"])),
                None
            ),
            secret(
                "secure-cert-cacert",
                "istio-system",
                None,
                Some(&clients.pem)
            )
        ),
    );
    let _gw = Gateway::start(dir.path(), &[]).await;
    let host = "secure.example.com";

    let anonymous = support::tls::get(
        port,
        ca.client_config(None, &ALPN_BOTH),
        host,
        host,
        "/",
        &[],
    )
    .await;
    assert!(anonymous.is_err(), "no client certificate: {anonymous:?}");
    let stranger = other.client("stranger", &["trusted.example.com"], None);
    let foreign = support::tls::get(
        port,
        ca.client_config(Some(&stranger), &ALPN_BOTH),
        host,
        host,
        "/",
        &[],
    )
    .await;
    assert!(foreign.is_err(), "certificate from another CA: {foreign:?}");
    let unnamed = clients.client("nobody", &["nobody.example.com"], None);
    let wrong_san = support::tls::get(
        port,
        ca.client_config(Some(&unnamed), &ALPN_BOTH),
        host,
        host,
        "/",
        &[],
    )
    .await;
    assert!(
        wrong_san.is_err(),
        "SAN not in subjectAltNames: {wrong_san:?}"
    );
    assert_eq!(app.hits(), 0, "refused clients never reach the upstream");

    let good = clients.client(
        "client-1",
        &["trusted.example.com"],
        Some("spiffe://cluster.local/ns/default/sa/client"),
    );
    let seen = support::tls::get(
        port,
        ca.client_config(Some(&good), &[b"http/1.1"]),
        host,
        host,
        "/who",
        &[],
    )
    .await
    .expect("request with a certificate");
    assert_eq!(seen.reply.status, StatusCode::OK, "{}", seen.reply.text());
    let echo = seen.reply.echo();
    let xfcc = echo["headers"]["x-forwarded-client-cert"]
        .as_str()
        .expect("XFCC set")
        .to_string();
    assert!(xfcc.starts_with("Hash="), "{xfcc}");
    assert!(
        xfcc.ends_with(
            ";Subject=\"CN=client-1\";URI=spiffe://cluster.local/ns/default/sa/client;DNS=trusted.example.com"
        ),
        "{xfcc}"
    );
    assert_eq!(app.hits(), 1);
}

/// OPTIONAL_MUTUAL serves clients with and without certificates; only the former get
/// an x-forwarded-client-cert. The CA is in the same Secret (`ca.crt`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn optional_mutual_serves_both() {
    let app = Echo::start("app").await;
    let ca = Ca::new("ca");
    let port = free_port();
    let dir = TempDir::new("optional");
    mutual_config(port, &dir, "OPTIONAL_MUTUAL", "", &app);
    dir.write(
        "secret.yaml",
        &secret(
            "secure-cert",
            "istio-system",
            Some(&ca.server(&["secure.example.com"])),
            Some(&ca.pem),
        ),
    );
    let _gw = Gateway::start(dir.path(), &[]).await;
    let host = "secure.example.com";
    let seen = support::tls::get(
        port,
        ca.client_config(None, &ALPN_BOTH),
        host,
        host,
        "/",
        &[],
    )
    .await
    .expect("anonymous client");
    assert_eq!(seen.reply.status, StatusCode::OK);
    assert!(
        seen.reply.echo()["headers"]
            .get("x-forwarded-client-cert")
            .is_none()
    );
    let me = ca.client("me", &["me.example.com"], None);
    let seen = support::tls::get(
        port,
        ca.client_config(Some(&me), &ALPN_BOTH),
        host,
        host,
        "/",
        &[],
    )
    .await
    .expect("client with a certificate");
    let xfcc = seen.reply.echo()["headers"]["x-forwarded-client-cert"]
        .as_str()
        .map(str::to_string)
        .expect("XFCC");
    assert!(
        xfcc.contains(";Subject=\"CN=me\";URI=;DNS=me.example.com"),
        "{xfcc}"
    );
}

/// `verifyCertificateSpki` and `verifyCertificateHash` pin client certificates on a
/// MUTUAL server: a certificate that matches is served; another from the same CA is
/// refused in the handshake and never reaches the upstream. With both lists, a match in
/// either is enough (Envoy's rule). Each change is a reload, and a reload from MUTUAL
/// to SIMPLE serves clients without a certificate on the next connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_certificate_pins_and_a_reload_to_simple() {
    let app = Echo::start("app").await;
    let ca = Ca::new("server-ca");
    let clients = Ca::new("client-ca");
    let pinned = clients.client("pinned", &["pinned.example.com"], None);
    let hashed = clients.client("hashed", &["hashed.example.com"], None);
    let other = clients.client("other", &["other.example.com"], None);
    let port = free_port();
    let dir = TempDir::new("pins");
    dir.write(
        "secret.yaml",
        &secret(
            "secure-cert",
            "istio-system",
            Some(&ca.server(&["secure.example.com"])),
            Some(&clients.pem),
        ),
    );
    let spki = format!(
        "      verifyCertificateSpki: [\"{}\"]\n",
        pinned.spki_sha256()
    );
    mutual_config(port, &dir, "MUTUAL", &spki, &app);
    let gw = Gateway::start(dir.path(), &[]).await;
    let host = "secure.example.com";
    let call = |leaf: Option<&Leaf>| {
        support::tls::get(
            port,
            ca.client_config(leaf, &[b"http/1.1"]),
            host,
            host,
            "/",
            &[],
        )
    };
    let served = |r: &Result<support::tls::Seen, String>| matches!(r, Ok(s) if s.reply.status == StatusCode::OK);

    let r = call(Some(&pinned)).await;
    assert!(served(&r), "the pinned key: {r:?}");
    let r = call(Some(&other)).await;
    assert!(r.is_err(), "another key of the same CA: {r:?}");
    assert_eq!(app.hits(), 1);

    // The certificate's SHA-256 as openssl prints it (uppercase, colons).
    let hash = format!(
        "      verifyCertificateHash: [\"{}\"]\n",
        hashed.cert_sha256()
    );
    mutual_config(port, &dir, "MUTUAL", &hash, &app);
    let r = gw.reload().await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let r = call(Some(&hashed)).await;
    assert!(served(&r), "the pinned certificate: {r:?}");
    for refused in [&pinned, &other] {
        let r = call(Some(refused)).await;
        assert!(r.is_err(), "not the pinned certificate: {r:?}");
    }
    assert_eq!(app.hits(), 2);

    // Both lists: either one admits (lowercase hex without colons works too).
    let both = format!(
        "{spki}      verifyCertificateHash: [{}]\n",
        hashed.cert_sha256().replace(':', "").to_lowercase()
    );
    mutual_config(port, &dir, "MUTUAL", &both, &app);
    let r = gw.reload().await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    for admitted in [&pinned, &hashed] {
        let r = call(Some(admitted)).await;
        assert!(served(&r), "a match in either list: {r:?}");
    }
    let r = call(Some(&other)).await;
    assert!(r.is_err(), "in neither list: {r:?}");
    let r = call(None).await;
    assert!(r.is_err(), "no certificate: {r:?}");
    assert_eq!(app.hits(), 4);

    // MUTUAL to SIMPLE on the same socket: clients without a certificate are served.
    mutual_config(port, &dir, "SIMPLE", "", &app);
    let r = gw.reload().await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let r = call(None).await;
    assert!(served(&r), "SIMPLE after the reload: {r:?}");
    assert_eq!(app.hits(), 5);
}

/// A reload that turns a kept address from plain HTTP into HTTPS, and back, applies to
/// the next connections on the same socket.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_switches_a_kept_address_between_http_and_https() {
    let app = Echo::start("app").await;
    let ca = Ca::new("ca");
    let port = free_port();
    let dir = TempDir::new("switch");
    let http = gateway_yaml(&format!(
        "  - port: {{number: {port}, name: http, protocol: HTTP}}\n    hosts: [app.example.com]\n"
    ));
    let https = gateway_yaml(&format!(
        "  - port: {{number: {port}, name: https, protocol: HTTPS}}\n    hosts: [app.example.com]\n    tls: {{mode: SIMPLE, credentialName: app-cert}}\n"
    ));
    dir.write("gw.yaml", &http);
    dir.write(
        "secret.yaml",
        &secret(
            "app-cert",
            "istio-system",
            Some(&ca.server(&["app.example.com"])),
            None,
        ),
    );
    dir.write("vs.yaml", &vs("app", &["app.example.com"], "app"));
    dir.write(
        "se.yaml",
        &service_entry("app", "app", 80, &[(app.port(), &[])]),
    );
    let gw = Gateway::start(dir.path(), &[]).await;
    let host = "app.example.com";
    let tls = || {
        support::tls::get(
            port,
            ca.client_config(None, &ALPN_BOTH),
            host,
            host,
            "/",
            &[],
        )
    };
    assert_eq!(plain_get(port, host).await, Ok(StatusCode::OK));
    assert!(tls().await.is_err());

    dir.write("gw.yaml", &https);
    let r = gw.reload().await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let seen = tls().await.expect("HTTPS after the reload");
    assert_eq!(seen.reply.status, StatusCode::OK);
    assert_eq!(seen.server_names, vec!["app.example.com"]);
    assert!(
        plain_get(port, host).await.is_err(),
        "plain HTTP on a TLS listener"
    );

    dir.write("gw.yaml", &http);
    let r = gw.reload().await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(plain_get(port, host).await, Ok(StatusCode::OK));
    assert!(tls().await.is_err(), "TLS on a plain HTTP listener");
    assert_eq!(app.hits(), 3);
    assert_eq!(
        gw.log_text()
            .matches(&format!("listening on 127.0.0.1:{port} "))
            .count(),
        1,
        "the socket was kept"
    );
}

/// `GET /` with `Host: host` on a new plain connection to 127.0.0.1:`port`.
async fn plain_get(port: u16, host: &str) -> Result<StatusCode, String> {
    use http_body_util::BodyExt;
    let stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let (mut send, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| format!("handshake: {e}"))?;
    tokio::spawn(conn);
    let req = http::Request::builder()
        .uri("/")
        .header("host", host)
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .map_err(|e| e.to_string())?;
    let resp = tokio::time::timeout(std::time::Duration::from_secs(10), send.send_request(req))
        .await
        .map_err(|_| "timed out".to_string())?
        .map_err(|e| e.to_string())?;
    let status = resp.status();
    let _ = resp.into_body().collect().await;
    Ok(status)
}

/// `httpsRedirect: true` answers 301 to the https URL with path and query kept, for
/// every request of the server's hosts, with or without a VirtualService; TLS
/// protocol versions are enforced (a TLS 1.3-only server refuses a TLS 1.2 client).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_redirect_and_protocol_versions() {
    let app = Echo::start("app").await;
    let ca = Ca::new("ca");
    let http_port = free_port();
    let https_port = free_port();
    let dir = TempDir::new("redirect");
    dir.write(
        "gw.yaml",
        &gateway_yaml(&format!(
            "  - port: {{number: {http_port}, name: http, protocol: HTTP}}\n    hosts: [shop.example.com]\n    tls: {{httpsRedirect: true}}\n  - port: {{number: {https_port}, name: https, protocol: HTTPS}}\n    hosts: [shop.example.com]\n    tls: {{mode: SIMPLE, credentialName: shop, minProtocolVersion: TLSV1_3}}\n"
        )),
    );
    dir.write(
        "secret.yaml",
        &secret(
            "shop",
            "istio-system",
            Some(&ca.server(&["shop.example.com"])),
            None,
        ),
    );
    dir.write("vs.yaml", &vs("shop", &["shop.example.com"], "app"));
    dir.write(
        "se.yaml",
        &service_entry("app", "app", 80, &[(app.port(), &[])]),
    );
    let _gw = Gateway::start(dir.path(), &[]).await;

    let r = support::get(http_port, "shop.example.com", "/cart?item=1&x=%20", &[])
        .await
        .expect("request");
    assert_eq!(r.status, StatusCode::MOVED_PERMANENTLY);
    assert_eq!(
        r.headers["location"],
        "https://shop.example.com/cart?item=1&x=%20"
    );
    let r = support::get(http_port, "shop.example.com:8080", "/", &[])
        .await
        .expect("request");
    assert_eq!(r.headers["location"], "https://shop.example.com:8080/");
    assert_eq!(app.hits(), 0);

    let host = "shop.example.com";
    let seen = support::tls::get(
        https_port,
        ca.client_config(None, &ALPN_BOTH),
        host,
        host,
        "/",
        &[],
    )
    .await
    .expect("TLS 1.3 client");
    assert_eq!(seen.reply.status, StatusCode::OK);
    let tls12_only = {
        let config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_protocol_versions(&[&rustls::version::TLS12])
        .expect("versions")
        .with_root_certificates(ca.roots())
        .with_no_client_auth();
        Arc::new(config)
    };
    let old = support::tls::get(https_port, tls12_only, host, host, "/", &[]).await;
    assert!(
        old.is_err(),
        "TLS 1.2 refused by minProtocolVersion TLSV1_3: {old:?}"
    );
}

/// curl, a client the tests do not control, speaks HTTP/2 over TLS to the gateway.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_over_http2() {
    let app = Echo::start("app").await;
    let ca = Ca::new("ca");
    let port = free_port();
    let dir = TempDir::new("curl");
    let ca_file = dir.write("ca.pem", &ca.pem);
    dir.write(
        "gw.yaml",
        &gateway_yaml(&format!(
            "  - port: {{number: {port}, name: https, protocol: HTTPS}}\n    hosts: [\"*.example.com\"]\n    tls: {{mode: SIMPLE, credentialName: wild}}\n"
        )),
    );
    dir.write(
        "secret.yaml",
        &secret(
            "wild",
            "istio-system",
            Some(&ca.server(&["*.example.com"])),
            None,
        ),
    );
    dir.write("vs.yaml", &vs("web", &["web.example.com"], "app"));
    dir.write(
        "se.yaml",
        &service_entry("app", "app", 80, &[(app.port(), &[])]),
    );
    let _gw = Gateway::start(dir.path(), &[]).await;
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new("curl")
            .args(["-sS", "--http2", "--cacert"])
            .arg(&ca_file)
            .args([
                "--resolve",
                &format!("web.example.com:{port}:127.0.0.1"),
                "-w",
                "\n%{http_version} %{http_code}",
                &format!("https://web.example.com:{port}/hello"),
            ])
            .output()
    })
    .await
    .expect("join")
    .expect("run curl");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.ends_with("\n2 200"), "{stdout}");
    assert!(stdout.contains("\"path\":\"/hello\""), "{stdout}");
}

/// A certificate replaced by a reload serves new handshakes at once, while clients
/// that keep connecting see no failure; a key that does not match its certificate, an
/// expired certificate or a missing Secret are refused by name and the last good
/// certificate keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_change_with_a_reload() {
    let app = Echo::start("app").await;
    let ca = Ca::new("ca");
    let port = free_port();
    let dir = TempDir::new("rotate");
    dir.write(
        "gw.yaml",
        &gateway_yaml(&format!(
            "  - port: {{number: {port}, name: https, protocol: HTTPS}}\n    hosts: [app.example.com]\n    tls: {{mode: SIMPLE, credentialName: app-cert}}\n"
        )),
    );
    dir.write("vs.yaml", &vs("app", &["app.example.com"], "app"));
    dir.write(
        "se.yaml",
        &service_entry("app", "app", 80, &[(app.port(), &[])]),
    );
    let first = ca.server(&["app.example.com"]);
    dir.write(
        "secret.yaml",
        &secret("app-cert", "istio-system", Some(&first), None),
    );
    let gw = Gateway::start(dir.path(), &[]).await;
    let config = ca.client_config(None, &[b"http/1.1"]);
    let host = "app.example.com";

    // Clients connect again and again during the rotation.
    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(AtomicUsize::new(0));
    let served = Arc::new(AtomicUsize::new(0));
    let load = {
        let (stop, failures, served, config) = (
            stop.clone(),
            failures.clone(),
            served.clone(),
            config.clone(),
        );
        tokio::spawn(async move {
            while !stop.load(Ordering::SeqCst) {
                match support::tls::get(port, config.clone(), host, host, "/", &[]).await {
                    Ok(s) if s.reply.status == StatusCode::OK => {
                        served.fetch_add(1, Ordering::SeqCst);
                    }
                    other => {
                        eprintln!("failed during rotation: {other:?}");
                        failures.fetch_add(1, Ordering::SeqCst);
                    }
                }
            }
        })
    };
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let second = ca.server(&["app.example.com", "v2.example.com"]);
    dir.write(
        "secret.yaml",
        &secret("app-cert", "istio-system", Some(&second), None),
    );
    let r = gw.reload().await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let seen = support::tls::get(port, config.clone(), host, host, "/", &[])
        .await
        .expect("after reload");
    assert_eq!(seen.server_names, vec!["app.example.com", "v2.example.com"]);

    // A key that belongs to another certificate.
    let mismatched = support::tls::Leaf {
        cert: ca.server(&["app.example.com"]).cert,
        key: first.key.clone(),
    };
    dir.write(
        "secret.yaml",
        &secret("app-cert", "istio-system", Some(&mismatched), None),
    );
    let r = gw.reload().await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    let text = r.text();
    assert!(
        text.contains("Gateway istio-system/gw: spec.servers[0].tls.credentialName")
            && text.contains("Secret istio-system/app-cert")
            && text.contains("does not match the certificate"),
        "{text}"
    );
    assert!(!text.contains("PRIVATE KEY"), "{text}");

    let expired = ca.expired_server(&["app.example.com"]);
    dir.write(
        "secret.yaml",
        &secret("app-cert", "istio-system", Some(&expired), None),
    );
    let r = gw.reload().await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(
        r.text().contains("certificate expired at 2021-01-01"),
        "{}",
        r.text()
    );

    std::fs::remove_file(dir.path().join("secret.yaml")).expect("remove");
    let r = gw.reload().await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(r.text().contains("app-cert"), "{}", r.text());

    stop.store(true, Ordering::SeqCst);
    load.await.expect("load task");
    assert_eq!(failures.load(Ordering::SeqCst), 0, "no client failed");
    assert!(served.load(Ordering::SeqCst) > 5);
    let seen = support::tls::get(port, config, host, host, "/", &[])
        .await
        .expect("still serving");
    assert_eq!(
        seen.server_names,
        vec!["app.example.com", "v2.example.com"],
        "the last good certificate"
    );
}

/// Two Gateways serve one port on different bind addresses: each is its own listener,
/// the VirtualService bound to both runs a chain per Gateway, so `match.gateways` and a
/// WasmPlugin that targets one Gateway apply there only. A reload that changes a `bind`
/// opens the new socket and closes the old; a `unix://` bind is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateways_sharing_a_port_on_different_addresses() {
    let one = Echo::start("one").await;
    let two = Echo::start("two").await;
    let port = free_port();
    let dir = TempDir::new("binds");
    let gateway_doc = |name: &str, bind: &str| {
        format!(
            "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata:\n  name: {name}\nspec:\n  selector: {{istio: {name}}}\n  servers:\n  - port: {{number: {port}, name: http, protocol: HTTP}}\n    bind: {bind}\n    hosts: [\"*\"]\n"
        )
    };
    dir.write(
        "gw.yaml",
        &format!(
            "{}---\n{}",
            gateway_doc("inner", "127.0.0.1"),
            gateway_doc("outer", "127.0.0.2")
        ),
    );
    dir.write(
        "vs.yaml",
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: app\nspec:\n  hosts: [\"*\"]\n  gateways: [inner, outer]\n  http:\n  - match: [{gateways: [inner]}]\n    route: [{destination: {host: one}}]\n  - route: [{destination: {host: two}}]\n",
    );
    dir.write(
        "se.yaml",
        &format!(
            "{}---\n{}",
            service_entry("one", "one", 80, &[(one.port(), &[])]),
            service_entry("two", "two", 80, &[(two.port(), &[])])
        ),
    );
    dir.write(
        "plugin.yaml",
        "apiVersion: extensions.istio.io/v1alpha1\nkind: WasmPlugin\nmetadata:\n  name: outer-only\nspec:\n  url: add-headers.wasm\n  targetRefs:\n  - {group: networking.istio.io, kind: Gateway, name: outer}\n  pluginConfig:\n    responseHeaders: {x-outer: \"yes\"}\n",
    );
    let plugins = plugins_dir(&[("add-headers.wasm", "add-headers")]);
    let gw = Gateway::start(dir.path(), &["--plugins", plugins.arg()]).await;

    let inner = support::get(port, "x.test", "/", &[]).await.expect("inner");
    assert_eq!(inner.upstream().as_deref(), Some("one"));
    assert!(inner.headers.get("x-outer").is_none());
    let outer = get_at("127.0.0.2", port, "/").await;
    assert_eq!(outer.0, StatusCode::OK);
    assert_eq!(
        outer.1.as_deref(),
        Some("two"),
        "match.gateways [inner] skipped"
    );
    assert_eq!(
        outer.2.as_deref(),
        Some("yes"),
        "the plugin of the outer Gateway ran"
    );
    assert!(gw.log_text().contains("listening on 127.0.0.2:"));

    // A reload moves the outer Gateway to another address: a new socket, the old one
    // closed.
    dir.write(
        "gw.yaml",
        &format!(
            "{}---\n{}",
            gateway_doc("inner", "127.0.0.1"),
            gateway_doc("outer", "127.0.0.3")
        ),
    );
    let r = gw.reload().await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let moved = get_at("127.0.0.3", port, "/").await;
    assert_eq!(moved.2.as_deref(), Some("yes"));
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(2);
    while tokio::net::TcpStream::connect(("127.0.0.2", port))
        .await
        .is_ok()
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the old address still accepts"
        );
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }

    dir.write(
        "gw.yaml",
        &format!(
            "{}---\n{}",
            gateway_doc("inner", "127.0.0.1"),
            gateway_doc("outer", "unix:///tmp/wasmgate.sock")
                .replace(&format!("number: {port}"), "number: 0")
        ),
    );
    let r = gw.reload().await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(
        r.text()
            .contains("Gateway default/outer: spec.servers[0].bind")
            && r.text()
                .contains("unix domain socket listeners are not served"),
        "{}",
        r.text()
    );
    let still = get_at("127.0.0.3", port, "/").await;
    assert_eq!(
        still.1.as_deref(),
        Some("two"),
        "the last good config serves"
    );
}

/// Two Gateways on one address and port over plain HTTP: the Host picks the server, and
/// so the Gateway. A VirtualService bound to both runs once per Gateway, so
/// `match.gateways` tells them apart and a WasmPlugin that targets one Gateway applies
/// to its requests only; on a host both Gateways serve, the first Gateway's chain is
/// tried first and the second's takes what it leaves (Istio merges the routes of one
/// domain in that order).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateways_sharing_an_address_pick_servers_by_host() {
    let one = Echo::start("one").await;
    let two = Echo::start("two").await;
    let port = free_port();
    let dir = TempDir::new("shared-http");
    let gateway_doc = |name: &str, hosts: &str| {
        format!(
            "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata:\n  name: {name}\nspec:\n  selector: {{istio: {name}}}\n  servers:\n  - port: {{number: {port}, name: http, protocol: HTTP}}\n    hosts: [{hosts}]\n"
        )
    };
    dir.write(
        "gw.yaml",
        &format!(
            "{}---\n{}",
            gateway_doc("alpha", "a.example.com, both.example.com"),
            gateway_doc("beta", "b.example.com, both.example.com")
        ),
    );
    dir.write(
        "vs.yaml",
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: app\nspec:\n  hosts: [\"*.example.com\"]\n  gateways: [alpha, beta]\n  http:\n  - match:\n    - {gateways: [alpha], authority: {exact: a.example.com}}\n    - {gateways: [alpha], uri: {prefix: /only-alpha}}\n    route: [{destination: {host: one}}]\n  - match: [{gateways: [beta]}]\n    route: [{destination: {host: two}}]\n",
    );
    dir.write(
        "se.yaml",
        &format!(
            "{}---\n{}",
            service_entry("one", "one", 80, &[(one.port(), &[])]),
            service_entry("two", "two", 80, &[(two.port(), &[])])
        ),
    );
    dir.write(
        "plugin.yaml",
        "apiVersion: extensions.istio.io/v1alpha1\nkind: WasmPlugin\nmetadata:\n  name: beta-only\nspec:\n  url: add-headers.wasm\n  targetRefs:\n  - {group: networking.istio.io, kind: Gateway, name: beta}\n  pluginConfig:\n    responseHeaders: {x-beta: \"yes\"}\n",
    );
    let plugins = plugins_dir(&[("add-headers.wasm", "add-headers")]);
    let gw = Gateway::start(dir.path(), &["--plugins", plugins.arg()]).await;
    assert_eq!(
        gw.log_text()
            .matches(&format!("listening on 127.0.0.1:{port} "))
            .count(),
        1,
        "one socket for both Gateways"
    );

    // (Host, path) -> (upstream, the beta plugin ran).
    for (host, path, upstream, beta) in [
        ("a.example.com", "/x", "one", false),
        ("b.example.com", "/x", "two", true),
        ("b.example.com", "/only-alpha", "two", true),
        ("both.example.com", "/only-alpha", "one", false),
        ("both.example.com", "/x", "two", true),
    ] {
        let r = support::get(port, host, path, &[]).await.expect("request");
        assert_eq!(r.status, StatusCode::OK, "{host}{path}: {}", r.text());
        assert_eq!(r.upstream().as_deref(), Some(upstream), "{host}{path}");
        assert_eq!(
            r.headers.get("x-beta").is_some(),
            beta,
            "{host}{path}: the beta Gateway's plugin"
        );
    }
    // A host neither Gateway serves.
    let r = support::get(port, "c.example.com", "/", &[])
        .await
        .expect("request");
    assert_eq!(r.status, StatusCode::NOT_FOUND);
}

/// GET http://{ip}:{port}{path}: (status, x-upstream, x-outer).
async fn get_at(ip: &str, port: u16, path: &str) -> (StatusCode, Option<String>, Option<String>) {
    use http_body_util::BodyExt;
    let stream = tokio::net::TcpStream::connect((ip, port))
        .await
        .expect("connect");
    let (mut send, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .expect("handshake");
    tokio::spawn(conn);
    let req = http::Request::builder()
        .uri(path)
        .header("host", "x.test")
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .expect("request");
    let resp = send.send_request(req).await.expect("response");
    let header = |n: &str| {
        resp.headers()
            .get(n)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let out = (resp.status(), header("x-upstream"), header("x-outer"));
    let _ = resp.into_body().collect().await;
    out
}

/// A keep-alive HTTP/1.1 connection over TLS (SNI and Host `host`), for sending several
/// requests on one handshake.
async fn keep_alive(
    port: u16,
    config: Arc<rustls::ClientConfig>,
    host: &str,
) -> hyper::client::conn::http1::SendRequest<http_body_util::Full<bytes::Bytes>> {
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    let name = rustls::pki_types::ServerName::try_from(host.to_string()).expect("name");
    let tls = tokio_rustls::TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .expect("handshake");
    let (send, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
        .await
        .expect("http/1.1");
    tokio::spawn(conn);
    send
}

async fn send_on(
    send: &mut hyper::client::conn::http1::SendRequest<http_body_util::Full<bytes::Bytes>>,
    host: &str,
) -> Result<StatusCode, String> {
    send.ready().await.map_err(|e| e.to_string())?;
    let req = http::Request::get("/")
        .header("host", host)
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .map_err(|e| e.to_string())?;
    let resp = send.send_request(req).await.map_err(|e| e.to_string())?;
    Ok(resp.status())
}

/// A connection keeps the handshake it was accepted with, so a reload that changes a
/// kept listener's TLS settings drains the connections accepted before it (as Envoy
/// drains a listener whose filter chains change): a client that connected under SIMPLE
/// cannot go on without a certificate after the server turns MUTUAL. A reload that only
/// rotates the certificate or changes routes keeps them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_that_changes_tls_settings_drains_older_connections() {
    let app = Echo::start("app").await;
    let ca = Ca::new("server-ca");
    let clients = Ca::new("client-ca");
    let port = free_port();
    let dir = TempDir::new("tlsdrain");
    let host = "secure.example.com";
    let write_secret = || {
        dir.write(
            "secret.yaml",
            &secret(
                "secure-cert",
                "istio-system",
                Some(&ca.server(&[host])),
                Some(&clients.pem),
            ),
        )
    };
    write_secret();
    mutual_config(port, &dir, "SIMPLE", "", &app);
    let gw = Gateway::start(dir.path(), &["--drain-seconds", "5"]).await;
    let mut old = keep_alive(port, ca.client_config(None, &[b"http/1.1"]), host).await;
    assert_eq!(send_on(&mut old, host).await, Ok(StatusCode::OK));

    // A new certificate, same settings: the connection stays.
    write_secret();
    let r = gw.reload().await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(send_on(&mut old, host).await, Ok(StatusCode::OK));

    // SIMPLE to MUTUAL: the connection made without a certificate is closed.
    mutual_config(port, &dir, "MUTUAL", "", &app);
    let r = gw.reload().await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while !old.is_closed() {
        assert!(
            std::time::Instant::now() < deadline,
            "the old connection is still open:\n{}",
            gw.log_text()
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    assert!(send_on(&mut old, host).await.is_err());
    assert!(
        gw.log_text()
            .contains("listener settings changed; draining the connections accepted before"),
        "{}",
        gw.log_text()
    );
    let fresh = support::tls::get(
        port,
        ca.client_config(None, &[b"http/1.1"]),
        host,
        host,
        "/",
        &[],
    )
    .await;
    assert!(
        fresh.is_err(),
        "MUTUAL refuses a client without a certificate: {fresh:?}"
    );
    assert_eq!(app.hits(), 2);
}
