//! The plugin platform of `wasmgate:policy@0.3.0` through the real binary, with real
//! plugins built from `plugins/testing/`: the response phase (reverse order, header
//! changes, a replaced response, a rewritten body), request bodies within and over a
//! plugin's limit (413 when it fails closed, streamed on when it fails open), per-request
//! properties, phase and priority order, prepared edits, a plugin's pick over the
//! weights, the log phase, the capabilities a WasmPlugin grants (state shared by
//! instances and kept across a trap, the wall clock, outbound calls to a loopback service
//! and the refusal of a host not granted), isolation between namespaces, and a 0.2
//! plugin refused naming both versions.

mod support;

use std::time::Duration;

use bytes::Bytes;
use http::StatusCode;
use support::{Echo, Gateway, TempDir, free_port, get, plugins_dir, request, service_entry};

/// A Gateway on `port` and a VirtualService `app` routing every host to `echo.internal`.
fn routed(dir: &TempDir, port: u16, echo: &Echo) {
    dir.write("gw.yaml", &support::gateway("gw", port, &["*"]));
    dir.write(
        "se.yaml",
        &service_entry("echo", "echo.internal", 80, &[(echo.port(), &[])]),
    );
    dir.write(
        "vs.yaml",
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: app\nspec:\n  hosts: [\"*\"]\n  gateways: [gw]\n  http:\n  - route:\n    - destination: {host: echo.internal}\n",
    );
}

/// A Gateway on `port` and a VirtualService `app` splitting every host 90/10 between
/// `heavy` (`heavy.internal`) and `light` (`light.internal`).
fn weighted(dir: &TempDir, port: u16, heavy: &Echo, light: &Echo) {
    dir.write("gw.yaml", &support::gateway("gw", port, &["*"]));
    dir.write(
        "se.yaml",
        &[
            service_entry("heavy", "heavy.internal", 80, &[(heavy.port(), &[])]),
            service_entry("light", "light.internal", 80, &[(light.port(), &[])]),
        ]
        .join("---\n"),
    );
    dir.write(
        "vs.yaml",
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: app\nspec:\n  hosts: [\"*\"]\n  gateways: [gw]\n  http:\n  - route:\n    - destination: {host: heavy.internal}\n      weight: 90\n    - destination: {host: light.internal}\n      weight: 10\n",
    );
}

/// [`weighted`]'s gateway, started with `--plugins` holding `wasm` (file name, testing
/// crate) and `args`; with `authn_phases`, the `phases` probe bound as `a` (AUTHN).
async fn weighted_gateway(
    tag: &str,
    wasm: (&str, &str),
    authn_phases: bool,
    args: &[&str],
) -> (Gateway, u16, Echo, Echo, TempDir, TempDir) {
    let (heavy, light) = (Echo::start("heavy").await, Echo::start("light").await);
    let port = free_port();
    let dir = TempDir::new(tag);
    weighted(&dir, port, &heavy, &light);
    if authn_phases {
        bind_authn_probe(&dir);
    }
    let plugins = plugins_dir(&[wasm]);
    let mut all = vec!["--plugins", plugins.arg()];
    all.extend_from_slice(args);
    let gw = Gateway::start(dir.path(), &all).await;
    (gw, port, heavy, light, dir, plugins)
}

/// The `phases` probe bound as `a` (AUTHN) on `app`.
fn bind_authn_probe(dir: &TempDir) {
    dir.write(
        "plugins.yaml",
        &plugin("a", "phases.wasm", "", "{name: a}").replace("spec:\n", "spec:\n  phase: AUTHN\n"),
    );
}

/// The calls of first-party component `name` (`wasmgate/<name>`) so far, from the admin
/// port's metrics (the series must be there: the component is bound to `app`).
async fn component_calls(gw: &Gateway, name: &str) -> u64 {
    let text = gw.scrape().await;
    let series = format!("wasmgate_plugin_calls_total{{plugin=\"wasmgate/{name}\"");
    text.lines()
        .find(|l| l.starts_with(&series))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or_else(|| panic!("no {name} call count:\n{text}"))
}

/// A WasmPlugin `name` of `url` on VirtualService `app`.
fn plugin(name: &str, url: &str, extra: &str, config: &str) -> String {
    format!(
        "apiVersion: extensions.istio.io/v1alpha1\nkind: WasmPlugin\nmetadata:\n  name: {name}\n{extra}spec:\n  url: {url}\n  targetRefs:\n  - {{group: networking.istio.io, kind: VirtualService, name: app}}\n  pluginConfig: {config}\n"
    )
}

/// `phases` bindings: `a` (AUTHN), `b` (no phase) and `c` (AUTHN, priority 10, so
/// before `a`), with `b` reading response bodies.
async fn phases_gateway(tag: &str) -> (Gateway, u16, Echo, TempDir, TempDir) {
    let echo = Echo::start("echo").await;
    let port = free_port();
    let dir = TempDir::new(tag);
    routed(&dir, port, &echo);
    dir.write(
        "plugins.yaml",
        &[
            plugin("b", "phases.wasm", "", r#"{name: b, responseBody: 4096}"#),
            plugin(
                "a",
                "phases.wasm",
                "",
                r#"{name: a, requestBody: 16, log: true}"#,
            )
            .replace("spec:\n", "spec:\n  phase: AUTHN\n"),
            plugin("c", "phases.wasm", "", r#"{name: c, log: true}"#)
                .replace("spec:\n", "spec:\n  phase: AUTHN\n  priority: 10\n"),
        ]
        .join("---\n"),
    );
    let plugins = plugins_dir(&[("phases.wasm", "phases")]);
    let gw = Gateway::start(dir.path(), &["--plugins", plugins.arg()]).await;
    (gw, port, echo, dir, plugins)
}

fn header(reply: &support::Reply, name: &str) -> String {
    reply
        .headers
        .get(name)
        .map(|v| v.to_str().unwrap_or_default().to_string())
        .unwrap_or_default()
}

/// A plugin's `pick` routes the request to the destination it picked, whatever the
/// weights: `a` (AUTHN, before the traffic split) picks the 10 % destination of a 90/10
/// split by index, and every request so picked reaches it; requests it leaves alone go
/// by weight.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugins_pick_wins_over_the_weights() {
    let (_gw, port, _heavy, light, _dir, _plugins) =
        weighted_gateway("pick", ("phases.wasm", "phases"), true, &[]).await;
    let upstream = |r: &support::Reply| header(r, "x-upstream");
    for _ in 0..20 {
        let r = get(port, "a.test", "/", &[("x-pick", "a=1")])
            .await
            .expect("picked request");
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(upstream(&r), "light", "picked by the plugin");
    }
    // Another binding's name, or an index past the list: no pick, the weights decide.
    let mut by_weight = std::collections::BTreeMap::new();
    for i in 0..40 {
        let pick = if i % 2 == 0 { "b=1" } else { "a=7" };
        let r = get(port, "a.test", "/", &[("x-pick", pick)])
            .await
            .expect("request");
        assert_eq!(r.status, StatusCode::OK);
        *by_weight.entry(upstream(&r)).or_insert(0) += 1;
    }
    assert!(
        by_weight.get("heavy").copied().unwrap_or(0) > 20,
        "{by_weight:?}"
    );
    assert_eq!(
        light.hits.load(std::sync::atomic::Ordering::SeqCst) - 20,
        by_weight.get("light").copied().unwrap_or(0)
    );
}

/// The router picks among its own route's weighted destinations, in the traffic split's
/// place: a plugin that replaces the forward (`a`, AUTHN) drops that pick, and the
/// traffic split picks from the new destinations (1:1 here, where the route says 90/10);
/// requests it leaves alone never call the split.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rewritten_forward_is_split_by_the_traffic_split() {
    let (gw, port, _heavy, _light, _dir, _plugins) = weighted_gateway(
        "rewritten",
        ("phases.wasm", "phases"),
        true,
        &["--random-seed", "5"],
    )
    .await;
    for _ in 0..20 {
        let r = get(port, "a.test", "/", &[]).await.expect("request");
        assert_eq!(r.status, StatusCode::OK);
    }
    assert_eq!(
        component_calls(&gw, "traffic-split").await,
        0,
        "the router picked"
    );
    let mut light_hits = 0;
    for _ in 0..60 {
        let r = get(
            port,
            "a.test",
            "/",
            &[("x-forward", "a=heavy.internal,light.internal")],
        )
        .await
        .expect("rewritten request");
        assert_eq!(r.status, StatusCode::OK);
        if header(&r, "x-upstream") == "light" {
            light_hits += 1;
        }
    }
    // 1:1 over 60 requests: 30 expected; the route's 90/10 pick, wrongly kept, gives 6.
    assert!(
        (15..=45).contains(&light_hits),
        "light got {light_hits} of 60"
    );
    assert_eq!(
        component_calls(&gw, "traffic-split").await,
        60,
        "the split picked each"
    );
}

/// A user's `traffic-split.wasm` (here the `phases` probe) replaces the embedded split and
/// is called for every split request: the router's pick is dropped for it, so its own
/// pick (`x-pick: phases=1`, the 10 % destination) is the one that holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replaced_traffic_split_is_called_and_its_pick_holds() {
    let (gw, port, _heavy, _light, _dir, _plugins) =
        weighted_gateway("own-split", ("traffic-split.wasm", "phases"), false, &[]).await;
    for _ in 0..20 {
        let r = get(port, "a.test", "/", &[("x-pick", "phases=1")])
            .await
            .expect("request");
        assert_eq!(r.status, StatusCode::OK, "{}", gw.log_text());
        assert_eq!(header(&r, "x-upstream"), "light", "picked by the split");
    }
    assert_eq!(component_calls(&gw, "traffic-split").await, 20);
}

/// `--random-seed` makes a run repeatable: the router's weighted picks and its route's
/// fault (each a draw from the host's one seeded stream, whichever worker and instance
/// serve the request) come out the same in two gateways started with one seed, request
/// by request, and differently with another.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_seeded_run_repeats_its_picks() {
    async fn picks(seed: &str) -> Vec<String> {
        let (heavy, light) = (Echo::start("heavy").await, Echo::start("light").await);
        let port = free_port();
        let dir = TempDir::new("seeded");
        weighted(&dir, port, &heavy, &light);
        let vs = std::fs::read_to_string(dir.path().join("vs.yaml")).expect("vs.yaml");
        let vs = vs.replace("weight: 90", "weight: 10").replace(
            "  http:\n  - route:",
            "  http:\n  - fault: {abort: {httpStatus: 503, percentage: {value: 50}}}\n    route:",
        );
        dir.write("vs.yaml", &vs);
        let gw = Gateway::start(dir.path(), &["--random-seed", seed]).await;
        let mut seen = Vec::new();
        for _ in 0..40 {
            let r = get(port, "a.test", "/", &[]).await.expect("request");
            seen.push(match r.status {
                StatusCode::OK => header(&r, "x-upstream"),
                StatusCode::SERVICE_UNAVAILABLE => "aborted".to_string(),
                other => panic!("{other}: {}", gw.log_text()),
            });
        }
        seen
    }
    let first = picks("9").await;
    for outcome in ["heavy", "light", "aborted"] {
        assert!(first.iter().any(|u| u == outcome), "{outcome}: {first:?}");
    }
    assert_eq!(picks("9").await, first, "the same seed, the same picks");
    assert_ne!(picks("10").await, first, "another seed, other picks");
}

/// A Gateway on `port` and a VirtualService `app` routing every host to `echo.internal`
/// by three routes: `plain` (`/plain`, no fault), `other` (`/other`, a fault aborting
/// every request with 429) and the rest (a fault aborting every request with 418);
/// started with `--plugins` holding `wasm` (file name, testing crate); with
/// `authn_phases`, the `phases` probe bound as `a` (AUTHN).
async fn faulted_gateway(
    tag: &str,
    wasm: (&str, &str),
    authn_phases: bool,
) -> (Gateway, u16, Echo, TempDir, TempDir) {
    let echo = Echo::start("echo").await;
    let port = free_port();
    let dir = TempDir::new(tag);
    routed(&dir, port, &echo);
    dir.write(
        "vs.yaml",
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: app\nspec:\n  hosts: [\"*\"]\n  gateways: [gw]\n  http:\n  - name: plain\n    match: [{uri: {prefix: /plain}}]\n    route: [{destination: {host: echo.internal}}]\n  - name: other\n    match: [{uri: {prefix: /other}}]\n    fault: {abort: {httpStatus: 429, percentage: {value: 100}}}\n    route: [{destination: {host: echo.internal}}]\n  - fault: {abort: {httpStatus: 418, percentage: {value: 100}}}\n    route: [{destination: {host: echo.internal}}]\n",
    );
    if authn_phases {
        bind_authn_probe(&dir);
    }
    let plugins = plugins_dir(&[wasm]);
    let gw = Gateway::start(dir.path(), &["--plugins", plugins.arg()]).await;
    (gw, port, echo, dir, plugins)
}

/// The router draws its route's fault when it matches, and the chain holds it back to
/// the fault's place: the AUTHN plugin `a` still sees the forward (`x-read-decision`
/// answers with its header names, not "not a forward"), its own answer wins, and the
/// fault component is not called. A new forward on the same route keeps the drawn
/// fault (its route's fault applies, as it did when the fault component was called
/// for it); a plugin that routes elsewhere (`x-route`) drops it, and the fault
/// component is called for the new route's fault (429).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drawn_fault_is_held_past_the_authn_plugins() {
    let (gw, port, echo, _dir, _plugins) =
        faulted_gateway("drawn-fault", ("phases.wasm", "phases"), true).await;
    for _ in 0..5 {
        let r = get(port, "a.test", "/", &[]).await.expect("request");
        assert_eq!(r.status, StatusCode::IM_A_TEAPOT, "{}", gw.log_text());
    }
    let r = get(port, "a.test", "/", &[("x-read-decision", "a")])
        .await
        .expect("request");
    assert_eq!(r.status, StatusCode::OK, "the plugin's answer wins");
    assert_ne!(&r.body[..], b"not a forward", "the plugin saw the forward");
    for _ in 0..2 {
        let r = get(port, "a.test", "/", &[("x-forward", "a=echo.internal")])
            .await
            .expect("rewritten request");
        assert_eq!(r.status, StatusCode::IM_A_TEAPOT, "the route's fault");
    }
    let r = get(port, "a.test", "/plain", &[]).await.expect("request");
    assert_eq!(r.status, StatusCode::OK, "no fault on `plain`");
    assert_eq!(
        component_calls(&gw, "fault").await,
        0,
        "the router drew each"
    );
    for _ in 0..3 {
        let r = get(port, "a.test", "/", &[("x-route", "a=1")])
            .await
            .expect("rerouted request");
        assert_eq!(
            r.status,
            StatusCode::TOO_MANY_REQUESTS,
            "aborted by the fault component, with the new route's fault"
        );
    }
    assert_eq!(
        component_calls(&gw, "fault").await,
        3,
        "called for each rerouted request"
    );
    assert_eq!(echo.hits.load(std::sync::atomic::Ordering::SeqCst), 1);
    let lines = gw
        .wait_for_access(|l| l.iter().filter(|x| x.contains("fault=abort")).count() >= 10)
        .await;
    assert_eq!(
        lines.iter().filter(|x| x.contains("fault=abort")).count(),
        10,
        "each aborted request's access line says so: {lines:?}"
    );
}

/// A user's `fault.wasm` (here the `phases` probe, which injects nothing) replaces the
/// embedded fault and is called for every request of a route with a fault, and only
/// those; the route's own faults (a 418 or 429 for every request) are its to apply, so
/// the probe's answer, none, holds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replaced_fault_is_called_for_the_routes_with_one() {
    let (gw, port, echo, _dir, _plugins) =
        faulted_gateway("own-fault", ("fault.wasm", "phases"), false).await;
    for path in ["/", "/other", "/", "/other", "/plain"] {
        let r = get(port, "a.test", path, &[]).await.expect("request");
        assert_eq!(r.status, StatusCode::OK, "{path}: {}", gw.log_text());
    }
    assert_eq!(component_calls(&gw, "fault").await, 4, "not for `plain`");
    assert_eq!(echo.hits.load(std::sync::atomic::Ordering::SeqCst), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn phases_properties_and_order() {
    let (gw, port, _echo, _dir, _plugins) = phases_gateway("phases").await;

    // Istio's order: AUTHN by priority (c before a), then the rest (b).
    let reply = get(port, "x", "/", &[("x-order", "1")])
        .await
        .expect("reply");
    assert_eq!(reply.text(), "c,a,b", "{}", gw.log_text());

    // A property set by one plugin is seen by a later one, not by an earlier one; each
    // plugin's request header reaches the upstream.
    let reply = get(port, "x", "/", &[("x-read-property", "phases.b")])
        .await
        .expect("reply");
    assert_eq!(reply.status, StatusCode::OK, "{}", gw.log_text());
    let seen = reply.echo();
    assert_eq!(seen["headers"]["x-phases-c"], "none");
    assert_eq!(seen["headers"]["x-phases-b"], "seen");
    let reply = get(port, "x", "/", &[("x-read-property", "phases.c")])
        .await
        .expect("reply");
    assert_eq!(reply.echo()["headers"]["x-phases-b"], "seen");
    // A later plugin reading the decision sees the header operations the earlier ones
    // joined to the forward, in chain order.
    let reply = get(port, "x", "/", &[("x-read-decision", "b")])
        .await
        .expect("reply");
    assert_eq!(reply.text(), "x-phases-c,x-phases-a", "{}", gw.log_text());

    // b answers with the edit it prepared, kept by the host and named per request
    // (`host.prepare-edit`, `request.use-edit`), with a header laid over it; one made on
    // the request is refused by the host and kept by the plugin, with the same answer.
    for (who, kept) in [("b", "true"), ("b", "true"), ("late-b", "false")] {
        let reply = get(port, "x", "/", &[("x-prepared", who)])
            .await
            .expect("reply");
        assert_eq!(reply.status, StatusCode::OK, "{}", gw.log_text());
        assert_eq!(reply.text(), "prepared by b");
        assert_eq!(header(&reply, "x-prepared"), "b");
        assert_eq!(header(&reply, "x-host-kept"), kept, "{who}");
    }

    // The response phase runs in reverse: b sees the upstream's 200, then c's view.
    for name in ["a", "b", "c"] {
        assert_eq!(header(&reply, &format!("x-phases-{name}-status")), "200");
    }
    // b (last on the request, first on the response) replaces the response; a and c,
    // after it, see the replacement.
    let reply = get(port, "x", "/", &[("x-replace", "b")])
        .await
        .expect("reply");
    assert_eq!(reply.status.as_u16(), 418);
    assert_eq!(reply.text(), "replaced by b");
    assert_eq!(header(&reply, "x-phases-b-status"), "200");
    assert_eq!(header(&reply, "x-phases-a-status"), "418");
    assert_eq!(header(&reply, "x-phases-c-status"), "418");
    // A local reply goes through the response phase too.
    let reply = get(port, "x", "/", &[("x-order", "1")])
        .await
        .expect("reply");
    assert_eq!(header(&reply, "x-phases-c-status"), "200");

    // b asked for response bodies: it rewrites the upstream's, and the length follows.
    let reply = get(port, "x", "/", &[("x-upper", "1")])
        .await
        .expect("reply");
    assert!(
        reply.text().contains("\"UPSTREAM\":\"ECHO\""),
        "{}",
        reply.text()
    );
    assert_eq!(
        header(&reply, "content-length"),
        reply.body.len().to_string()
    );

    // The log phase: a counts every request it saw, once the response is out.
    let mut text = String::new();
    for _ in 0..50 {
        text = gw.scrape().await;
        if text.contains(
            r#"wasmgate_plugin_phases_logged_total{plugin="default/a",name="a",status="418"} 1"#,
        ) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        text.contains(
            r#"wasmgate_plugin_phases_logged_total{plugin="default/a",name="a",status="418"} 1"#
        ),
        "{text}"
    );
    assert!(
        !text.contains(r#"name="b""#),
        "b asked for no log phase: {text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_bodies_within_and_over_a_plugins_limit() {
    let (gw, port, echo, dir, plugins) = phases_gateway("bodies").await;
    let post = |body: &'static str, headers: &'static [(&'static str, &'static str)]| {
        request(
            port,
            "POST",
            "x",
            "/",
            headers,
            Bytes::from_static(body.as_bytes()),
        )
    };
    // Within a's 16 bytes: a reads it (and answers with it).
    let reply = post("sixteen bytes ok", &[("x-read-body", "a")])
        .await
        .expect("reply");
    assert_eq!(reply.text(), "sixteen bytes ok", "{}", gw.log_text());
    // Over it: a fails closed, so the request gets 413 and never reaches the upstream.
    let before = echo.hits();
    let reply = post("seventeen bytes!!", &[]).await.expect("reply");
    assert_eq!(reply.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(echo.hits(), before);
    // c ran before a failed the request: its log phase sees the 413 (a's does not: it
    // never ran).
    let logged =
        r#"wasmgate_plugin_phases_logged_total{plugin="default/c",name="c",status="413"} 1"#;
    let mut text = String::new();
    for _ in 0..50 {
        text = gw.scrape().await;
        if text.contains(logged) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(text.contains(logged), "{text}");
    assert!(!text.contains(r#"name="a",status="413""#), "{text}");
    // Bodies the plugins do not need go upstream whole.
    let reply = post("fine", &[]).await.expect("reply");
    assert_eq!(reply.echo()["body"], "fine");
    // A response body over b's 4096 bytes fails b, which fails closed.
    let pad = "p".repeat(5000);
    let reply = get(port, "x", "/", &[("x-pad", &pad)])
        .await
        .expect("reply");
    assert_eq!(reply.status, StatusCode::INTERNAL_SERVER_ERROR);
    drop(gw);

    // Failing open, a and b are skipped: the whole body streams on to the upstream and
    // the whole answer back.
    let text = std::fs::read_to_string(dir.path().join("plugins.yaml")).expect("read");
    dir.write(
        "plugins.yaml",
        &text.replace("spec:\n", "spec:\n  failStrategy: FAIL_OPEN\n"),
    );
    let gw = Gateway::start(dir.path(), &["--plugins", plugins.arg()]).await;
    let big = "x".repeat(100_000);
    let reply = request(
        port,
        "POST",
        "x",
        "/",
        &[("x-read-body", "a")],
        Bytes::from(big.clone()),
    )
    .await
    .expect("reply");
    assert_eq!(reply.status, StatusCode::OK, "{}", gw.log_text());
    assert_eq!(reply.echo()["body"].as_str().map(str::len), Some(big.len()));
}

/// The `stateful` plugin on `app` with these capabilities, and `other.internal` (a
/// ServiceEntry too, but not granted) beside `auth.internal`.
async fn stateful_gateway(tag: &str, capabilities: &str) -> (Gateway, u16, Echo, TempDir, TempDir) {
    let echo = Echo::start("auth").await;
    let port = free_port();
    let dir = TempDir::new(tag);
    routed(&dir, port, &echo);
    dir.write(
        "se-auth.yaml",
        &service_entry("auth", "auth.internal", 80, &[(echo.port(), &[])]),
    );
    dir.write(
        "se-other.yaml",
        &service_entry("other", "other.internal", 80, &[(echo.port(), &[])]),
    );
    // A short host, as Kubernetes services are named.
    dir.write(
        "se-short.yaml",
        &service_entry("authz", "authz", 80, &[(echo.port(), &[])]),
    );
    let annotation = if capabilities.is_empty() {
        String::new()
    } else {
        format!("  annotations:\n    wasmgate.io/capabilities: \"{capabilities}\"\n")
    };
    dir.write(
        "plugins.yaml",
        &plugin("stateful", "stateful.wasm", &annotation, "{}"),
    );
    let plugins = plugins_dir(&[("stateful.wasm", "stateful")]);
    let gw = Gateway::start(dir.path(), &["--plugins", plugins.arg()]).await;
    (gw, port, echo, dir, plugins)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_is_shared_by_instances_and_kept_across_a_trap() {
    let (gw, port, _echo, _dir, _plugins) =
        stateful_gateway("state", "state, clock, outbound:auth.internal").await;
    for n in 1..=3 {
        let reply = get(port, "x", "/count", &[]).await.expect("reply");
        assert_eq!(reply.text(), n.to_string(), "{}", gw.log_text());
    }
    // The instance traps and is dropped; the count lives in the host.
    let reply = get(port, "x", "/panic-after-count", &[])
        .await
        .expect("reply");
    assert_eq!(reply.status, StatusCode::INTERNAL_SERVER_ERROR);
    let reply = get(port, "x", "/count", &[]).await.expect("reply");
    assert_eq!(reply.text(), "5");
    // Concurrent requests use several instances; no increment is lost.
    let all: Vec<_> = (0..24)
        .map(|_| tokio::spawn(async move { get(port, "x", "/count", &[]).await }))
        .collect();
    for one in all {
        let reply = one.await.expect("task").expect("reply");
        assert_eq!(reply.status, StatusCode::OK);
    }
    let reply = get(port, "x", "/count", &[]).await.expect("reply");
    assert_eq!(reply.text(), "30");
    // Compare-and-swap: only the first write of an absent key wins.
    let first = get(port, "x", "/cas?key=lock&value=me", &[])
        .await
        .expect("reply");
    let second = get(port, "x", "/cas?key=lock&value=you", &[])
        .await
        .expect("reply");
    assert_eq!(
        (first.text(), second.text()),
        ("true".into(), "false".into())
    );
    let reply = get(port, "x", "/get?key=lock", &[]).await.expect("reply");
    assert_eq!(reply.text(), "me");

    // The wall clock, granted.
    let reply = get(port, "x", "/clock", &[]).await.expect("reply");
    let nanos: u128 = reply.text().parse().expect("nanoseconds");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_nanos();
    assert!(now.abs_diff(nanos) < 60_000_000_000, "{nanos} vs {now}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbound_calls_reach_granted_hosts_only() {
    let (gw, port, echo, _dir, _plugins) =
        stateful_gateway("outbound", "outbound:auth.internal, outbound:authz").await;
    let reply = get(
        port,
        "x",
        "/call?host=auth.internal&path=/check%3Fuser%3D7",
        &[],
    )
    .await
    .expect("reply");
    assert_eq!(reply.status, StatusCode::OK, "{}", gw.log_text());
    let answer: serde_json::Value = serde_json::from_slice(&reply.body).expect("echo JSON");
    assert_eq!(answer["path"], "/check?user=7");
    assert_eq!(answer["headers"]["host"], "auth.internal");
    // A short host expands in the VirtualService's namespace, as route destinations do.
    let reply = get(port, "x", "/call?host=authz&path=/short", &[])
        .await
        .expect("reply");
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let hits = echo.hits();
    // A ServiceEntry alone is not a grant.
    let reply = get(port, "x", "/call?host=other.internal", &[])
        .await
        .expect("reply");
    assert_eq!(reply.status, StatusCode::BAD_GATEWAY);
    assert!(reply.text().contains("not granted"), "{}", reply.text());
    assert_eq!(echo.hits(), hits, "the call was sent");
    // A granted host needs a ServiceEntry as well... here state is not granted.
    let reply = get(port, "x", "/count", &[]).await.expect("reply");
    assert_eq!(reply.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert!(
        reply.text().contains("wasmgate.io/capabilities"),
        "{}",
        reply.text()
    );
    let reply = get(port, "x", "/clock", &[]).await.expect("reply");
    assert_eq!(reply.status, StatusCode::INTERNAL_SERVER_ERROR);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn namespaces_share_no_state() {
    let port = free_port();
    let dir = TempDir::new("namespaces");
    dir.write("gw.yaml", &support::gateway("gw", port, &["*"]));
    for ns in ["team-a", "team-b"] {
        dir.write(
            &format!("vs-{ns}.yaml"),
            &format!(
                "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: app\n  namespace: {ns}\nspec:\n  hosts: [\"{ns}.example\"]\n  gateways: [default/gw]\n  http:\n  - directResponse: {{status: 200, body: {{string: ok}}}}\n"
            ),
        );
    }
    // In the root namespace: bound to every namespace's VirtualServices.
    dir.write(
        "plugin.yaml",
        "apiVersion: extensions.istio.io/v1alpha1\nkind: WasmPlugin\nmetadata:\n  name: stateful\n  namespace: istio-system\n  annotations:\n    wasmgate.io/capabilities: state\nspec:\n  url: stateful.wasm\n",
    );
    let plugins = plugins_dir(&[("stateful.wasm", "stateful")]);
    let gw = Gateway::start(dir.path(), &["--plugins", plugins.arg()]).await;
    for n in 1..=3 {
        let reply = get(port, "team-a.example", "/count", &[])
            .await
            .expect("reply");
        assert_eq!(reply.text(), n.to_string(), "{}", gw.log_text());
    }
    let reply = get(port, "team-b.example", "/count", &[])
        .await
        .expect("reply");
    assert_eq!(reply.text(), "1", "team-b saw team-a's state");
    // A reload that keeps the plugin keeps its state.
    assert_eq!(gw.reload().await.status, StatusCode::OK);
    let reply = get(port, "team-a.example", "/count", &[])
        .await
        .expect("reply");
    assert_eq!(reply.text(), "4");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_previous_version_plugin_and_an_unknown_grant_are_refused() {
    let echo = Echo::start("echo").await;
    let port = free_port();
    let dir = TempDir::new("refused");
    routed(&dir, port, &echo);
    dir.write(
        "plugins.yaml",
        &plugin("old", "previous-version.wasm", "", "{}"),
    );
    let plugins = plugins_dir(&[
        ("previous-version.wasm", "previous-version"),
        ("stateful.wasm", "stateful"),
    ]);
    let Err(log) = Gateway::try_start(dir.path(), &["--plugins", plugins.arg()]).await else {
        panic!("a 0.2 plugin loaded");
    };
    assert!(
        log.contains(
            "built against wasmgate:policy@0.2.1, but this wasmgate speaks wasmgate:policy@0.3.0"
        ),
        "{log}"
    );
    dir.write(
        "plugins.yaml",
        &plugin(
            "greedy",
            "stateful.wasm",
            "  annotations:\n    wasmgate.io/capabilities: \"state, sockets\"\n",
            "{}",
        ),
    );
    let Err(log) = Gateway::try_start(dir.path(), &["--plugins", plugins.arg()]).await else {
        panic!("an unknown capability was accepted");
    };
    assert!(
        log.contains("plugins.yaml:6: WasmPlugin default/greedy: metadata.annotations.wasmgate.io/capabilities: unknown capability \"sockets\""),
        "{log}"
    );
}

/// The response phase runs only for policies that ran on the request (a WasmPlugin's
/// `match.ports` decides where), and it sees the gateway's own error replies too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn later_phases_follow_the_request_phase() {
    let (port, other) = (free_port(), free_port());
    let dir = TempDir::new("ports");
    dir.write(
        "gw.yaml",
        &format!(
            "apiVersion: networking.istio.io/v1\nkind: Gateway\nmetadata:\n  name: gw\nspec:\n  selector: {{istio: ingressgateway}}\n  servers:\n  - port: {{number: {port}, name: a, protocol: HTTP}}\n    hosts: [\"*\"]\n  - port: {{number: {other}, name: b, protocol: HTTP}}\n    hosts: [\"*\"]\n"
        ),
    );
    // Nothing listens on the endpoint: the gateway answers 503 itself.
    dir.write(
        "se.yaml",
        &service_entry("down", "down.internal", 80, &[(free_port(), &[])]),
    );
    dir.write(
        "vs.yaml",
        "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: app\nspec:\n  hosts: [\"*\"]\n  gateways: [gw]\n  http:\n  - route:\n    - destination: {host: down.internal}\n",
    );
    dir.write(
        "plugins.yaml",
        &plugin("a", "phases.wasm", "", r#"{name: a}"#).replace(
            "spec:\n",
            &format!("spec:\n  match: [{{ports: [{{number: {other}}}]}}]\n"),
        ),
    );
    let plugins = plugins_dir(&[("phases.wasm", "phases")]);
    let gw = Gateway::start(dir.path(), &["--plugins", plugins.arg()]).await;
    let on = get(other, "x", "/", &[]).await.expect("reply");
    assert!(on.status.is_server_error(), "{}", gw.log_text());
    assert_eq!(
        header(&on, "x-phases-a-status"),
        on.status.as_u16().to_string()
    );
    let off = get(port, "x", "/", &[]).await.expect("reply");
    assert!(off.status.is_server_error());
    assert_eq!(
        header(&off, "x-phases-a-status"),
        "",
        "a never ran on {port}"
    );
}

/// An outbound call past its timeout is stopped, and its connection let go: a slow
/// service cannot pile up the gateway's sockets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outbound_call_that_times_out_lets_its_connection_go() {
    // A service that accepts and never answers; it reports when the gateway hangs up.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let slow = listener.local_addr().expect("addr").port();
    let (hung_up, mut closed) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            let hung_up = hung_up.clone();
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                use tokio::io::AsyncReadExt;
                while matches!(conn.read(&mut buf).await, Ok(n) if n > 0) {}
                let _ = hung_up.send(());
            });
        }
    });
    let (gw, port, _echo, dir, _plugins) =
        stateful_gateway("timeout", "outbound:slow.internal").await;
    dir.write(
        "se-slow.yaml",
        &service_entry("slow", "slow.internal", 80, &[(slow, &[])]),
    );
    assert_eq!(gw.reload().await.status, StatusCode::OK);
    let t0 = std::time::Instant::now();
    let reply = get(port, "x", "/call?host=slow.internal", &[])
        .await
        .expect("reply");
    assert_eq!(reply.status, StatusCode::BAD_GATEWAY, "{}", reply.text());
    assert!(reply.text().contains("timed out"), "{}", reply.text());
    assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
    tokio::time::timeout(Duration::from_secs(5), closed.recv())
        .await
        .expect("the gateway kept the connection to the slow service")
        .expect("closed");
}

/// Two WasmPlugins of one module keep their own budgets, and idle instances never
/// count against a reload: both load, serve and reload with one instance in use each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_wasm_plugins_of_one_module_load_serve_and_reload_with_one_instance_each() {
    let port = free_port();
    let dir = TempDir::new("budgets");
    dir.write("gw.yaml", &support::gateway("gw", port, &["*"]));
    for ns in ["team-a", "team-b"] {
        dir.write(
            &format!("{ns}.yaml"),
            &format!(
                "apiVersion: networking.istio.io/v1\nkind: VirtualService\nmetadata:\n  name: app\n  namespace: {ns}\nspec:\n  hosts: [\"{ns}.example\"]\n  gateways: [default/gw]\n  http:\n  - directResponse: {{status: 200, body: {{string: ok}}}}\n---\napiVersion: extensions.istio.io/v1alpha1\nkind: WasmPlugin\nmetadata:\n  name: stateful\n  namespace: {ns}\n  annotations:\n    wasmgate.io/capabilities: state\nspec:\n  url: stateful.wasm\n"
            ),
        );
    }
    let plugins = plugins_dir(&[("stateful.wasm", "stateful")]);
    let gw = Gateway::start(
        dir.path(),
        &["--plugins", plugins.arg(), "--plugin-max-instances", "1"],
    )
    .await;
    for round in 1..=2 {
        for ns in ["team-a", "team-b"] {
            let reply = get(port, &format!("{ns}.example"), "/count", &[])
                .await
                .expect("reply");
            assert_eq!(reply.text(), round.to_string(), "{}", gw.log_text());
        }
        assert_eq!(
            gw.reload().await.status,
            StatusCode::OK,
            "{}",
            gw.log_text()
        );
    }
}
