//! `--workers`: several threads, each with its own accept queue (`SO_REUSEPORT`), serve
//! one listener; the kernel spreads new connections across them, every one is served,
//! and the address is still the gateway's alone.

mod support;

use std::time::Duration;

use support::{Echo, Gateway, TempDir, free_port, gateway, service_entry};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// An origin and a config folder routing every host on a free port to it.
async fn setup(tag: &str) -> (Echo, TempDir, u16) {
    let app = Echo::start("app").await;
    let dir = TempDir::new(tag);
    let port = free_port();
    dir.write("gw.yaml", &gateway("gw", port, &["*"]));
    dir.write(
        "se.yaml",
        &service_entry("app", "app", 80, &[(app.port(), &[])]),
    );
    dir.write(
        "vs.yaml",
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: app\nspec:\n  hosts: [\"*\"]\n  gateways: [gw]\n  http:\n  - route: [{destination: {host: app}}]\n",
    );
    (app, dir, port)
}

/// One request on a connection of its own; the status line.
async fn one_connection(port: u16) -> String {
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    stream
        .write_all(b"GET /w HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
        .await
        .expect("write");
    let mut reply = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), stream.read_to_end(&mut reply))
        .await
        .expect("answered in time")
        .expect("read");
    String::from_utf8_lossy(&reply)
        .lines()
        .next()
        .unwrap_or_default()
        .to_string()
}

/// `wasmgate_worker_connections_accepted_total` per worker, in worker order.
fn accepted(metrics: &str) -> Vec<u64> {
    metrics
        .lines()
        .filter(|l| l.starts_with("wasmgate_worker_connections_accepted_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse().ok())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_are_spread_over_the_workers_and_all_served() {
    let (app, dir, port) = setup("workers").await;
    let gw = Gateway::start(dir.path(), &["--workers", "3"]).await;
    assert!(
        gw.log_text().contains("3 accept queues"),
        "{}",
        gw.log_text()
    );

    let mut statuses = Vec::new();
    for _ in 0..60 {
        statuses.push(one_connection(port).await);
    }
    assert!(
        statuses.iter().all(|s| s == "HTTP/1.1 200 OK"),
        "{statuses:?}"
    );
    let counts = accepted(&gw.scrape().await);
    assert_eq!(counts.len(), 3, "one series per worker: {counts:?}");
    assert_eq!(counts.iter().sum::<u64>(), 60, "{counts:?}");
    // SO_REUSEPORT hashes each connection's ports to a queue: with 60 connections a
    // worker left out has odds of (2/3)^60, about 3e-11.
    assert!(counts.iter().all(|&n| n > 0), "{counts:?}");
    assert_eq!(app.hits(), 60);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_port_held_by_another_gateway_is_not_shared() {
    let (_app, dir, port) = setup("workers-busy").await;
    let first = Gateway::start(dir.path(), &["--workers", "2"]).await;
    // Its sockets have SO_REUSEPORT; a second gateway must still be refused the port
    // rather than silently take half of its connections.
    let second = Gateway::try_start(dir.path(), &["--workers", "2"]).await;
    let log = match second {
        Ok(g) => panic!("a second gateway started on a held port:\n{}", g.log_text()),
        Err(log) => log,
    };
    assert!(
        log.contains(&format!("cannot listen on 127.0.0.1:{port}")),
        "{log}"
    );
    assert!(log.contains("in use"), "{log}");
    assert_eq!(one_connection(port).await, "HTTP/1.1 200 OK");
    drop(first);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_worker_serves_as_before() {
    let (_app, dir, port) = setup("workers-one").await;
    let gw = Gateway::start(dir.path(), &["--workers", "1"]).await;
    assert!(
        gw.log_text().contains("1 accept queue)"),
        "{}",
        gw.log_text()
    );
    for _ in 0..5 {
        assert_eq!(one_connection(port).await, "HTTP/1.1 200 OK");
    }
    assert_eq!(accepted(&gw.scrape().await), vec![5]);
}

#[test]
fn a_worker_count_out_of_range_is_refused_by_name() {
    for bad in ["0", "1025", "many"] {
        let out = std::process::Command::new(support::binary())
            .args(["run", "--config", "/nonexistent", "--workers", bad])
            .output()
            .expect("run wasmgate");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{bad}: {stderr}");
        assert!(stderr.contains("--workers"), "{bad}: {stderr}");
        assert!(stderr.contains(bad), "{bad}: {stderr}");
    }
}
