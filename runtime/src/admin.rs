//! The admin endpoint (default 127.0.0.1:15000), for probes and operators:
//! `GET /healthz/ready` (200 once every listener is serving), `POST /reload`
//! (rebuild from the config paths; 200, or 400 with the reasons, one per line) and
//! `GET /routes` (listeners, their servers and domains, and the policy chain or
//! connection routes serving each, a quarantined plugin marked), `GET /stats/prometheus`
//! and `GET /metrics` (every metric in Prometheus' text format), and `GET /`, a page for
//! people (`page`).

mod page;

use std::convert::Infallible;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;

use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

use crate::gateway::Gateway;
use crate::plugin::breaker::State as BreakerState;
use crate::proxy::{Body, full};
use crate::snapshot::Serve;
use crate::snapshot::listeners::{HttpRoutes, L4Routes, Terminated, TlsAction, TlsServer};

/// Bind the admin address now (so a busy port fails start-up) and serve in the background.
pub async fn serve(addr: SocketAddr, gateway: Arc<Gateway>) -> Result<SocketAddr, String> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|e| format!("cannot listen on admin address {addr}: {e}"))?;
    let local = listener.local_addr().map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        let builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            };
            let gateway = gateway.clone();
            let builder = builder.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req| answer(gateway.clone(), req));
                let _ = builder
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok(local)
}

fn text(status: StatusCode, body: String) -> Response<Body> {
    let mut resp = Response::new(full(body));
    *resp.status_mut() = status;
    resp
}

async fn answer(
    gateway: Arc<Gateway>,
    req: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    Ok(match (req.method(), req.uri().path()) {
        (&Method::GET, "/healthz/ready") => {
            if gateway.is_ready() {
                text(StatusCode::OK, "ready\n".into())
            } else {
                text(StatusCode::SERVICE_UNAVAILABLE, "starting\n".into())
            }
        }
        (&Method::POST, "/reload") => match gateway.reload().await {
            Ok(()) => text(StatusCode::OK, "reloaded\n".into()),
            Err(errors) => text(StatusCode::BAD_REQUEST, errors.join("\n") + "\n"),
        },
        (&Method::GET, "/routes") => text(StatusCode::OK, routes(&gateway)),
        (&Method::GET, "/") => {
            let mut resp = text(StatusCode::OK, page::render(&routes(&gateway)));
            resp.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("text/html; charset=utf-8"),
            );
            resp
        }
        (&Method::GET, "/stats/prometheus" | "/metrics") => {
            let mut resp = text(StatusCode::OK, gateway.metrics().render());
            resp.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            resp
        }
        _ => text(StatusCode::NOT_FOUND, "not found\n".into()),
    })
}

fn routes(gateway: &Gateway) -> String {
    let snapshot = gateway.snapshot();
    let mut out = String::new();
    for (addr, listener) in &snapshot.listeners {
        let _ = writeln!(out, "listener {addr} {}", listener.serve.kind());
        match &listener.serve {
            Serve::Http(routes) => write_hosts(&mut out, "  ", routes),
            Serve::Tcp(routes) => write_l4(&mut out, "  ", routes),
            Serve::Tls(servers) => {
                let mut seen: Vec<*const TlsServer> = Vec::new();
                for server in servers.iter() {
                    if seen.contains(&Arc::as_ptr(server)) {
                        continue;
                    }
                    seen.push(Arc::as_ptr(server));
                    match &server.action {
                        TlsAction::Passthrough(routes) => {
                            let _ = writeln!(out, "  server {} passthrough", server.name);
                            write_l4(&mut out, "    ", routes);
                        }
                        TlsAction::Terminate {
                            then: Terminated::Http(routes),
                            ..
                        } => {
                            let _ = writeln!(out, "  server {} terminates HTTPS", server.name);
                            write_hosts(&mut out, "    ", routes);
                        }
                        TlsAction::Terminate {
                            then: Terminated::Tcp(routes),
                            ..
                        } => {
                            let _ = writeln!(out, "  server {} terminates TLS", server.name);
                            write_l4(&mut out, "    ", routes);
                        }
                    }
                }
            }
        }
    }
    out
}

fn write_hosts(out: &mut String, indent: &str, routes: &HttpRoutes) {
    for vhost in routes.hosts.iter() {
        let redirect = if vhost.https_redirect {
            " (httpsRedirect)"
        } else {
            ""
        };
        let _ = writeln!(out, "{indent}host {}{redirect}", vhost.domain);
        for chain in &vhost.chains {
            let links: Vec<String> = chain
                .links
                .iter()
                .map(|l| {
                    let name = l.policy.plugin_name();
                    match l.policy.breaker().state() {
                        BreakerState::Closed => name.to_string(),
                        BreakerState::Open(left) => {
                            format!("{name} (quarantined, {}s left)", left.as_secs() + 1)
                        }
                        BreakerState::HalfOpen => format!("{name} (quarantined, probing)"),
                    }
                })
                .collect();
            let _ = writeln!(
                out,
                "{indent}  {} via {}: {}",
                chain.virtual_service,
                chain.gateway,
                links.join(" -> ")
            );
        }
    }
}

fn write_l4(out: &mut String, indent: &str, routes: &L4Routes) {
    for r in &routes.routes {
        let dests: Vec<String> = r
            .destinations
            .iter()
            .map(|d| format!("{} (weight {})", d.host, d.weight))
            .collect();
        let _ = writeln!(
            out,
            "{indent}{} {}: {}",
            r.virtual_service,
            r.route,
            dests.join(", ")
        );
    }
}
