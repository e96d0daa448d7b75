//! Connection-level routing and upstream TLS with the real binary: `tcp` routes split
//! per connection; `TLS` servers that terminate (SIMPLE, MUTUAL) and route with `tcp`
//! routes; TLS passthrough by SNI where the client verifies the backend's own
//! certificate; TLS origination (SIMPLE and MUTUAL) from DestinationRules, over
//! HTTP/1.1 and HTTP/2 with `:authority` set to the virtual host, and per subset
//! (`DISABLE`, `insecureSkipVerify`, `subjectAltNames`); gRPC unary and bidirectional
//! streaming (trailers, `grpc-status`) end to end over TLS and HTTP/2.

mod support;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use http::StatusCode;
use http_body_util::BodyExt;
use hyper::body::Frame;
use support::tls::{Ca, Leaf, TlsEcho, secret};
use support::{Echo, Gateway, TempDir, free_port};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// A TCP server that answers each line with `name:line`.
async fn tcp_echo(name: &'static str) -> (u16, tokio::task::JoinHandle<()>) {
    let (port, task, _) = tcp_echo_counting(name).await;
    (port, task)
}

/// [`tcp_echo`], also counting the connections it accepts.
async fn tcp_echo_counting(
    name: &'static str,
) -> (u16, tokio::task::JoinHandle<()>, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let accepted = Arc::new(AtomicUsize::new(0));
    let counter = accepted.clone();
    let task = tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                continue;
            };
            counter.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = [0u8; 1024];
                loop {
                    let n = match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => n,
                    };
                    let mut out = format!("{name}:").into_bytes();
                    out.extend_from_slice(&buf[..n]);
                    if s.write_all(&out).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (port, task, accepted)
}

fn tcp_service(name: &str, port: u16, backend: u16, protocol: &str) -> String {
    format!(
        "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata:\n  name: {name}\nspec:\n  hosts: [{name}.internal]\n  location: MESH_INTERNAL\n  resolution: STATIC\n  ports: [{{number: {port}, name: p, protocol: {protocol}}}]\n  endpoints: [{{address: 127.0.0.1, ports: {{p: {backend}}}}}]\n"
    )
}

/// A TCP server with a 50/50 `tcp` route: every connection goes to one backend for its
/// whole life, both backends get connections, and the access log counts the bytes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_routes_split_per_connection() {
    let (a, _ta) = tcp_echo("a").await;
    let (b, _tb) = tcp_echo("b").await;
    let port = free_port();
    let dir = TempDir::new("tcp");
    dir.write(
        "gw.yaml",
        &format!(
            "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata:\n  name: gw\nspec:\n  servers:\n  - port: {{number: {port}, name: tcp, protocol: TCP}}\n    hosts: [\"*\"]\n"
        ),
    );
    dir.write(
        "vs.yaml",
        &format!(
            "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: split\nspec:\n  hosts: [\"*\"]\n  gateways: [gw]\n  tcp:\n  - match: [{{port: {port}}}]\n    route:\n    - {{destination: {{host: a.internal, port: {{number: 9000}}}}, weight: 50}}\n    - {{destination: {{host: b.internal, port: {{number: 9000}}}}, weight: 50}}\n"
        ),
    );
    dir.write(
        "se.yaml",
        &format!(
            "{}---\n{}",
            tcp_service("a", 9000, a, "TCP"),
            tcp_service("b", 9000, b, "TCP")
        ),
    );
    let gw = Gateway::start(dir.path(), &["--random-seed", "7"]).await;
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for i in 0..40 {
        let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .expect("connect");
        let mut first = String::new();
        for msg in ["one", "two"] {
            s.write_all(msg.as_bytes()).await.expect("write");
            let mut buf = [0u8; 64];
            let n = s.read(&mut buf).await.expect("read");
            let answer = String::from_utf8_lossy(&buf[..n]).to_string();
            let (backend, echoed) = answer.split_once(':').expect("name:msg");
            assert_eq!(echoed, msg);
            if first.is_empty() {
                first = backend.to_string();
            } else {
                assert_eq!(backend, first, "connection {i} stayed on its backend");
            }
        }
        *seen.entry(first).or_default() += 1;
    }
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert!(seen.values().all(|n| *n >= 8), "{seen:?}");
    // Each line is written when its connection closes: route and byte counts.
    let tcp_lines = |lines: &[String]| -> Vec<String> {
        lines
            .iter()
            .filter(|l| l.contains("TCP "))
            .cloned()
            .collect()
    };
    let lines = tcp_lines(&gw.wait_for_access(|l| tcp_lines(l).len() == 40).await);
    assert_eq!(lines.len(), 40, "{lines:?}");
    assert!(
        lines
            .iter()
            .all(|l| l.contains("vs=default/split route=tcp[0]")
                && l.contains("bytes_received=6 bytes_sent=10")),
        "{lines:?}"
    );
}

/// A TLS connection to 127.0.0.1:`port` with SNI `sni` and no ALPN, as a TCP client
/// behind TLS makes it.
async fn tls_connect(
    port: u16,
    config: Arc<rustls::ClientConfig>,
    sni: &str,
) -> Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>, String> {
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let name =
        rustls::pki_types::ServerName::try_from(sni.to_string()).map_err(|e| e.to_string())?;
    tokio::time::timeout(
        std::time::Duration::from_secs(10),
        tokio_rustls::TlsConnector::from(config).connect(name, tcp),
    )
    .await
    .map_err(|_| "handshake timed out".to_string())?
    .map_err(|e| format!("handshake: {e}"))
}

/// Write `msg` and read the answer; an empty answer (the peer closed) is an error.
async fn exchange<S>(s: &mut S, msg: &str) -> Result<String, String>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    s.write_all(msg.as_bytes())
        .await
        .map_err(|e| format!("write: {e}"))?;
    s.flush().await.map_err(|e| format!("flush: {e}"))?;
    let mut buf = [0u8; 256];
    let n = tokio::time::timeout(std::time::Duration::from_secs(10), s.read(&mut buf))
        .await
        .map_err(|_| "read timed out".to_string())?
        .map_err(|e| format!("read: {e}"))?;
    if n == 0 {
        return Err("closed".into());
    }
    Ok(String::from_utf8_lossy(&buf[..n]).to_string())
}

/// `protocol: TLS` servers that terminate route the decrypted bytes with `tcp` routes:
/// SIMPLE and MUTUAL servers share a port (the SNI picks), the client's bytes reach a
/// plain TCP upstream and its answers come back over TLS with the server's own
/// certificate; MUTUAL refuses a client without a certificate (or with one from another
/// CA) before any upstream connection is made.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_servers_terminate_then_route_tcp() {
    let (db, _tdb, db_conns) = tcp_echo_counting("db").await;
    let (mdb, _tmdb, mdb_conns) = tcp_echo_counting("mdb").await;
    let ca = Ca::new("ca");
    let clients = Ca::new("client-ca");
    let stranger = Ca::new("stranger-ca");
    let port = free_port();
    let dir = TempDir::new("tls-tcp");
    dir.write(
        "gw.yaml",
        &format!(
            "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata:\n  name: gw\nspec:\n  servers:\n  - port: {{number: {port}, name: tls-db, protocol: TLS}}\n    hosts: [db.example.com]\n    tls: {{mode: SIMPLE, credentialName: db-cert}}\n  - port: {{number: {port}, name: tls-mdb, protocol: TLS}}\n    hosts: [mdb.example.com]\n    tls: {{mode: MUTUAL, credentialName: mdb-cert}}\n"
        ),
    );
    dir.write(
        "secret.yaml",
        &format!(
            "{}---\n{}",
            secret(
                "db-cert",
                "default",
                Some(&ca.server(&["db.example.com"])),
                None
            ),
            secret(
                "mdb-cert",
                "default",
                Some(&ca.server(&["mdb.example.com"])),
                Some(&clients.pem)
            )
        ),
    );
    dir.write(
        "vs.yaml",
        &format!(
            "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: db\nspec:\n  hosts: [db.example.com]\n  gateways: [gw]\n  tcp:\n  - match: [{{port: {port}}}]\n    route: [{{destination: {{host: db.internal, port: {{number: 9000}}}}}}]\n---\napiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: mdb\nspec:\n  hosts: [mdb.example.com]\n  gateways: [gw]\n  tcp:\n  - route: [{{destination: {{host: mdb.internal, port: {{number: 9000}}}}}}]\n"
        ),
    );
    dir.write(
        "se.yaml",
        &format!(
            "{}---\n{}",
            tcp_service("db", 9000, db, "TCP"),
            tcp_service("mdb", 9000, mdb, "TCP")
        ),
    );
    let gw = Gateway::start(dir.path(), &[]).await;

    let mut s = tls_connect(port, ca.client_config(None, &[]), "db.example.com")
        .await
        .expect("SIMPLE handshake");
    {
        let (_, session) = s.get_ref();
        let leaf = session
            .peer_certificates()
            .and_then(|c| c.first())
            .expect("a server certificate");
        assert_eq!(support::tls::dns_names(leaf), vec!["db.example.com"]);
        assert_eq!(session.alpn_protocol(), None, "no ALPN on a TCP server");
    }
    for msg in ["one", "two"] {
        assert_eq!(exchange(&mut s, msg).await, Ok(format!("db:{msg}")));
    }
    drop(s);
    assert_eq!(db_conns.load(Ordering::SeqCst), 1);

    // MUTUAL: refused without a certificate, or with one of another CA.
    let anonymous = async {
        let mut s = tls_connect(port, ca.client_config(None, &[]), "mdb.example.com").await?;
        exchange(&mut s, "anonymous").await
    }
    .await;
    assert!(anonymous.is_err(), "{anonymous:?}");
    let foreign: Leaf = stranger.client("stranger", &["stranger.example.com"], None);
    let refused = async {
        let mut s = tls_connect(
            port,
            ca.client_config(Some(&foreign), &[]),
            "mdb.example.com",
        )
        .await?;
        exchange(&mut s, "foreign").await
    }
    .await;
    assert!(refused.is_err(), "{refused:?}");
    assert_eq!(
        mdb_conns.load(Ordering::SeqCst),
        0,
        "no upstream connection"
    );

    let me = clients.client("me", &["me.example.com"], None);
    let mut s = tls_connect(port, ca.client_config(Some(&me), &[]), "mdb.example.com")
        .await
        .expect("MUTUAL handshake");
    assert_eq!(exchange(&mut s, "hi").await, Ok("mdb:hi".to_string()));
    drop(s);
    assert_eq!(mdb_conns.load(Ordering::SeqCst), 1);

    let routed = |sni: &str, vs: &str| {
        let (sni, vs) = (
            format!("sni={sni} "),
            format!("vs=default/{vs} route=tcp[0]"),
        );
        move |l: &String| l.contains(&sni) && l.contains(&vs)
    };
    let lines = gw
        .wait_for_access(|l| {
            l.iter().any(routed("db.example.com", "db"))
                && l.iter().any(routed("mdb.example.com", "mdb"))
        })
        .await;
    assert!(
        lines.iter().any(routed("db.example.com", "db"))
            && lines.iter().any(routed("mdb.example.com", "mdb")),
        "{lines:?}"
    );
}

/// PASSTHROUGH: the gateway holds no certificate; the SNI picks a `tls` route and the
/// client completes its handshake with the backend, verifying the backend's own
/// certificate. An SNI no route names is closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_passthrough_by_sni() {
    let ca = Ca::new("backend-ca");
    let backend = TlsEcho::start("nginx", &ca.server(&["nginx.example.com"]), None).await;
    let port = free_port();
    let dir = TempDir::new("passthrough");
    dir.write(
        "gw.yaml",
        &format!(
            "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata:\n  name: mygateway\nspec:\n  selector: {{istio: ingressgateway}}\n  servers:\n  - port: {{number: {port}, name: https, protocol: HTTPS}}\n    tls: {{mode: PASSTHROUGH}}\n    hosts: [\"*.example.com\"]\n"
        ),
    );
    dir.write(
        "vs.yaml",
        &format!(
            "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: nginx\nspec:\n  hosts: [nginx.example.com]\n  gateways: [mygateway]\n  tls:\n  - match:\n    - port: {port}\n      sniHosts: [nginx.example.com]\n    route:\n    - destination: {{host: my-nginx.internal, port: {{number: 443}}}}\n"
        ),
    );
    dir.write(
        "se.yaml",
        &tcp_service("my-nginx", 443, backend.port(), "TLS"),
    );
    let gw = Gateway::start(dir.path(), &[]).await;
    let host = "nginx.example.com";
    let seen = support::tls::get(
        port,
        ca.client_config(None, &[b"h2", b"http/1.1"]),
        host,
        host,
        "/passthrough",
        &[],
    )
    .await
    .expect("handshake with the backend through the gateway");
    assert_eq!(seen.server_names, vec!["nginx.example.com"]);
    let echo = seen.reply.echo();
    assert_eq!(echo["upstream"], "nginx");
    assert_eq!(echo["sni"], "nginx.example.com");
    assert_eq!(echo["version"], "HTTP/2.0", "ALPN went to the backend");
    let other = support::tls::get(
        port,
        ca.client_config(None, &[b"http/1.1"]),
        "other.example.com",
        "other.example.com",
        "/",
        &[],
    )
    .await;
    assert!(other.is_err(), "{other:?}");
    assert_eq!(backend.hits(), 1);
    let passed = |l: &String| l.contains("sni=nginx.example.com") && l.contains("route=tls[0]");
    let lines = gw.wait_for_access(|lines| lines.iter().any(passed)).await;
    assert!(lines.iter().any(passed), "{lines:?}");
}

/// DestinationRules originate TLS: SIMPLE with a CA file and the virtual host as SNI
/// (Istio's auto SNI) over HTTP/1.1; MUTUAL with a client certificate from a Secret
/// (per port) over HTTP/2, where `:authority` is the virtual host, not the endpoint.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_tls_origination() {
    let ca = Ca::new("upstream-ca");
    let clients = Ca::new("client-ca");
    let simple = TlsEcho::start("simple", &ca.server(&["api.example.com"]), None).await;
    let mutual = TlsEcho::start(
        "mutual",
        &ca.server(&["grpc.internal.example"]),
        Some(&clients),
    )
    .await;
    let port = free_port();
    let dir = TempDir::new("origination");
    let ca_file = dir.write("ca.pem", &ca.pem);
    dir.write(
        "gw.yaml",
        &format!(
            "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata:\n  name: gw\nspec:\n  servers:\n  - port: {{number: {port}, name: http, protocol: HTTP}}\n    hosts: [\"*\"]\n"
        ),
    );
    dir.write(
        "vs.yaml",
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: out\nspec:\n  hosts: [\"*\"]\n  gateways: [gw]\n  http:\n  - match: [{uri: {prefix: /simple}}]\n    route: [{destination: {host: simple.internal, port: {number: 443}}}]\n  - route: [{destination: {host: mutual.internal, port: {number: 8443}}}]\n",
    );
    dir.write(
        "se.yaml",
        &format!(
            "{}---\n{}",
            tcp_service("simple", 443, simple.port(), "HTTPS"),
            tcp_service("mutual", 8443, mutual.port(), "HTTP2")
        ),
    );
    let client_cert = clients.client("gateway", &["gateway.example.com"], None);
    dir.write(
        "dr.yaml",
        &format!(
            "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata:\n  name: simple\nspec:\n  host: simple.internal\n  trafficPolicy:\n    tls: {{mode: SIMPLE, caCertificates: {}}}\n---\napiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata:\n  name: mutual\nspec:\n  host: mutual.internal\n  trafficPolicy:\n    portLevelSettings:\n    - port: {{number: 8443}}\n      tls: {{mode: MUTUAL, credentialName: client-cert, sni: grpc.internal.example}}\n---\n{}",
            ca_file.display(),
            secret("client-cert", "default", Some(&client_cert), Some(&ca.pem))
        ),
    );
    let _gw = Gateway::start(dir.path(), &[]).await;

    let r = support::get(port, "api.example.com", "/simple/x", &[])
        .await
        .expect("request");
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let echo = r.echo();
    assert_eq!(echo["upstream"], "simple");
    assert_eq!(echo["sni"], "api.example.com", "auto SNI from the Host");
    assert_eq!(echo["version"], "HTTP/1.1");
    assert_eq!(echo["host"], "api.example.com");

    let r = support::get(port, "grpc.example.com", "/svc/Method", &[])
        .await
        .expect("request");
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    let echo = r.echo();
    assert_eq!(echo["upstream"], "mutual");
    assert_eq!(echo["sni"], "grpc.internal.example");
    assert_eq!(echo["version"], "HTTP/2.0");
    assert_eq!(
        echo["authority"], "grpc.example.com",
        ":authority is the virtual host"
    );
    assert_eq!(echo["client_names"][0], "gateway.example.com");

    // The virtual host is not among the upstream certificate's names: refused.
    let r = support::get(port, "wrong.example.com", "/simple/x", &[])
        .await
        .expect("request");
    assert_eq!(r.status, StatusCode::BAD_GATEWAY, "{}", r.text());
    assert_eq!(simple.hits(), 1);
}

/// DestinationRule TLS per subset against real upstreams: a subset's own `tls`
/// overrides the top-level one (`DISABLE` speaks plain HTTP to a plain upstream;
/// `insecureSkipVerify` accepts a certificate no trusted CA signed); a subset without
/// one inherits the top level (its CA and `sni`); `subjectAltNames` replace the name
/// check, so a certificate without them is refused (502 `UF`, the upstream's handshake
/// fails) and one with them is accepted whatever the SNI.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_tls_per_subset() {
    let ca = Ca::new("upstream-ca");
    let rogue_ca = Ca::new("rogue-ca");
    let secure = TlsEcho::start("secure", &ca.server(&["secure.internal.example"]), None).await;
    let rogue = TlsEcho::start("rogue", &rogue_ca.server(&["rogue.example"]), None).await;
    let plain = Echo::start("plain").await;
    let port = free_port();
    let dir = TempDir::new("upstream-subsets");
    let ca_file = dir.write("ca.pem", &ca.pem);
    let ca_file = ca_file.display();
    dir.write(
        "gw.yaml",
        &format!(
            "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata:\n  name: gw\nspec:\n  servers:\n  - port: {{number: {port}, name: http, protocol: HTTP}}\n    hosts: [\"*\"]\n"
        ),
    );
    let subsets = ["secure", "plain", "skip", "rogue", "badsan", "goodsan"];
    let routes: String = subsets
        .iter()
        .map(|s| {
            format!(
                "  - match: [{{uri: {{prefix: /{s}}}}}]\n    route: [{{destination: {{host: svc.internal, subset: {s}}}}}]\n"
            )
        })
        .collect();
    dir.write(
        "vs.yaml",
        &format!(
            "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: svc\nspec:\n  hosts: [\"*\"]\n  gateways: [gw]\n  http:\n{routes}"
        ),
    );
    dir.write(
        "se.yaml",
        &format!(
            "apiVersion: networking.istio.io/v1\nkind: ServiceEntry\nmetadata:\n  name: svc\nspec:\n  hosts: [svc.internal]\n  location: MESH_INTERNAL\n  resolution: STATIC\n  ports: [{{number: 443, name: https, protocol: HTTPS}}]\n  endpoints:\n  - {{address: 127.0.0.1, ports: {{https: {}}}, labels: {{v: secure}}}}\n  - {{address: 127.0.0.1, ports: {{https: {}}}, labels: {{v: rogue}}}}\n  - {{address: 127.0.0.1, ports: {{https: {}}}, labels: {{v: plain}}}}\n",
            secure.port(),
            rogue.port(),
            plain.port()
        ),
    );
    dir.write(
        "dr.yaml",
        &format!(
            "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata:\n  name: svc\nspec:\n  host: svc.internal\n  trafficPolicy:\n    tls: {{mode: SIMPLE, caCertificates: {ca_file}, sni: secure.internal.example}}\n  subsets:\n  - {{name: secure, labels: {{v: secure}}}}\n  - name: plain\n    labels: {{v: plain}}\n    trafficPolicy: {{tls: {{mode: DISABLE}}}}\n  - name: skip\n    labels: {{v: rogue}}\n    trafficPolicy: {{tls: {{mode: SIMPLE, insecureSkipVerify: true}}}}\n  - {{name: rogue, labels: {{v: rogue}}}}\n  - name: badsan\n    labels: {{v: secure}}\n    trafficPolicy: {{tls: {{mode: SIMPLE, caCertificates: {ca_file}, subjectAltNames: [other.example]}}}}\n  - name: goodsan\n    labels: {{v: secure}}\n    trafficPolicy: {{tls: {{mode: SIMPLE, caCertificates: {ca_file}, sni: anything.example, subjectAltNames: [secure.internal.example]}}}}\n"
        ),
    );
    let gw = Gateway::start(dir.path(), &[]).await;

    let r = support::get(port, "api.example.com", "/secure", &[])
        .await
        .expect("request");
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.echo()["upstream"], "secure");
    assert_eq!(
        r.echo()["sni"],
        "secure.internal.example",
        "the top-level sni"
    );

    let r = support::get(port, "api.example.com", "/plain", &[])
        .await
        .expect("request");
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.echo()["upstream"], "plain", "DISABLE: plain HTTP");

    let r = support::get(port, "api.example.com", "/skip", &[])
        .await
        .expect("request");
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.echo()["upstream"], "rogue", "insecureSkipVerify");

    let r = support::get(port, "api.example.com", "/goodsan", &[])
        .await
        .expect("request");
    assert_eq!(r.status, StatusCode::OK, "{}", r.text());
    assert_eq!(r.echo()["upstream"], "secure");
    assert_eq!(r.echo()["sni"], "anything.example");

    let hits = (secure.hits(), rogue.hits());
    for refused in ["/rogue", "/badsan"] {
        let r = support::get(port, "api.example.com", refused, &[])
            .await
            .expect("request");
        assert_eq!(r.status, StatusCode::BAD_GATEWAY, "{refused}: {}", r.text());
    }
    assert_eq!(
        (secure.hits(), rogue.hits()),
        hits,
        "no request got through"
    );
    let failed =
        |path: &'static str| move |l: &String| l.contains(&format!(" {path} 502 flags=UF"));
    let lines = gw
        .wait_for_access(|l| l.iter().any(failed("/rogue")) && l.iter().any(failed("/badsan")))
        .await;
    assert!(
        lines.iter().any(failed("/rogue")) && lines.iter().any(failed("/badsan")),
        "{lines:?}"
    );
}

/// gRPC over TLS and HTTP/2 through the gateway to an h2c `GRPC` upstream: a unary call
/// and a bidirectional stream where each reply arrives before the next message is
/// sent, with `grpc-status` in the trailers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_unary_and_streaming_end_to_end() {
    let (upstream, _task) = grpc_upstream().await;
    let ca = Ca::new("ca");
    let port = free_port();
    let dir = TempDir::new("grpc");
    dir.write(
        "gw.yaml",
        &format!(
            "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata:\n  name: gw\nspec:\n  servers:\n  - port: {{number: {port}, name: https, protocol: HTTPS}}\n    hosts: [grpc.example.com]\n    tls: {{mode: SIMPLE, credentialName: grpc-cert}}\n"
        ),
    );
    dir.write(
        "secret.yaml",
        &secret(
            "grpc-cert",
            "default",
            Some(&ca.server(&["grpc.example.com"])),
            None,
        ),
    );
    dir.write(
        "vs.yaml",
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: grpc\nspec:\n  hosts: [grpc.example.com]\n  gateways: [gw]\n  http:\n  - route: [{destination: {host: echo.internal, port: {number: 50051}}}]\n",
    );
    dir.write("se.yaml", &tcp_service("echo", 50051, upstream, "GRPC"));
    let _gw = Gateway::start(dir.path(), &[]).await;

    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    let tls = tokio_rustls::TlsConnector::from(ca.client_config(None, &[b"h2"]))
        .connect(
            rustls::pki_types::ServerName::try_from("grpc.example.com").expect("name"),
            tcp,
        )
        .await
        .expect("handshake");
    let (mut send, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tls),
    )
    .await
    .expect("h2");
    tokio::spawn(conn);

    // Unary.
    let req = grpc_request(
        "/echo.Echo/Unary",
        http_body_util::Full::new(frame(b"hello")).boxed(),
    );
    let resp = send.send_request(req).await.expect("unary");
    assert_eq!(resp.status(), StatusCode::OK);
    let collected = resp.into_body().collect().await.expect("body");
    let trailers = collected.trailers().cloned().expect("trailers");
    assert_eq!(trailers["grpc-status"], "0");
    assert_eq!(collected.to_bytes(), frame(b"unary:hello"));

    // Bidirectional streaming: one message at a time, each answered before the next.
    let (tx, rx) = tokio::sync::mpsc::channel::<Frame<Bytes>>(1);
    let body = ChannelBody(rx).boxed();
    let req = grpc_request("/echo.Echo/Chat", body);
    let mut resp = send.send_request(req).await.expect("stream");
    for word in ["one", "two", "three"] {
        tx.send(Frame::data(frame(word.as_bytes())))
            .await
            .expect("send");
        let got = loop {
            let f = resp
                .body_mut()
                .frame()
                .await
                .expect("a frame")
                .expect("frame ok");
            if let Ok(data) = f.into_data() {
                break data;
            }
        };
        assert_eq!(got, frame(format!("chat:{word}").as_bytes()));
    }
    drop(tx);
    let rest = resp.into_body().collect().await.expect("rest");
    assert_eq!(rest.trailers().expect("trailers")["grpc-status"], "0");
}

fn frame(msg: &[u8]) -> Bytes {
    let mut out = vec![0u8];
    out.extend_from_slice(&(msg.len() as u32).to_be_bytes());
    out.extend_from_slice(msg);
    Bytes::from(out)
}

type TestBody = http_body_util::combinators::BoxBody<Bytes, Infallible>;

fn grpc_request(path: &str, body: TestBody) -> http::Request<TestBody> {
    http::Request::builder()
        .method("POST")
        .uri(format!("https://grpc.example.com{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(body)
        .expect("request")
}

/// A body whose frames come from a channel, as they are sent.
struct ChannelBody(tokio::sync::mpsc::Receiver<Frame<Bytes>>);

impl hyper::body::Body for ChannelBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.0.poll_recv(cx).map(|f| f.map(Ok))
    }
}

/// An h2c gRPC-shaped server: `/echo.Echo/Unary` answers one message with
/// `unary:<msg>`, `/echo.Echo/Chat` answers each message with `chat:<msg>` as it
/// arrives; both end with `grpc-status: 0` in the trailers.
async fn grpc_upstream() -> (u16, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let task = tokio::spawn(async move {
        loop {
            let Ok((s, _)) = listener.accept().await else {
                continue;
            };
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(
                    |req: http::Request<hyper::body::Incoming>| async move {
                        let prefix = if req.uri().path().ends_with("Unary") {
                            "unary"
                        } else {
                            "chat"
                        };
                        let (tx, rx) = tokio::sync::mpsc::channel::<Frame<Bytes>>(4);
                        let mut body = req.into_body();
                        tokio::spawn(async move {
                            let mut pending = Vec::new();
                            while let Some(Ok(f)) = body.frame().await {
                                let Ok(data) = f.into_data() else { continue };
                                pending.extend_from_slice(&data);
                                while pending.len() >= 5 {
                                    let len = u32::from_be_bytes([
                                        pending[1], pending[2], pending[3], pending[4],
                                    ]) as usize;
                                    if pending.len() < 5 + len {
                                        break;
                                    }
                                    let msg: Vec<u8> = pending[5..5 + len].to_vec();
                                    pending.drain(..5 + len);
                                    let mut reply = format!("{prefix}:").into_bytes();
                                    reply.extend_from_slice(&msg);
                                    if tx.send(Frame::data(frame(&reply))).await.is_err() {
                                        return;
                                    }
                                }
                            }
                            let mut trailers = http::HeaderMap::new();
                            trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
                            let _ = tx.send(Frame::trailers(trailers)).await;
                        });
                        let mut resp = http::Response::new(ChannelBody(rx));
                        resp.headers_mut().insert(
                            "content-type",
                            http::HeaderValue::from_static("application/grpc"),
                        );
                        Ok::<_, Infallible>(resp)
                    },
                );
                let _ =
                    hyper::server::conn::http2::Builder::new(hyper_util::rt::TokioExecutor::new())
                        .serve_connection(hyper_util::rt::TokioIo::new(s), svc)
                        .await;
            });
        }
    });
    (port, task)
}
