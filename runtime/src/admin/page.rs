//! The admin port's `/`: one HTML page with no external assets, for a person to look at
//! the gateway: its listeners, servers, virtual hosts and chains (what `/routes` says),
//! and the live request rate per VirtualService, computed in the page from the router's
//! call counter on `/metrics` every two seconds.

/// The page, with `routes` (the `/routes` text) shown as it is.
pub fn render(routes: &str) -> String {
    let escaped = routes
        .replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;");
    PAGE.replace("{{routes}}", &escaped)
}

const PAGE: &str = r##"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>wasmgate admin</title>
<style>
body { font: 14px/1.4 system-ui, sans-serif; margin: 2em; color: #222; }
h1 { font-size: 1.4em; } h2 { font-size: 1.1em; margin-top: 1.5em; }
pre { background: #f5f5f5; padding: 1em; overflow-x: auto; }
table { border-collapse: collapse; } td, th { padding: .3em .8em; border-bottom: 1px solid #ddd; text-align: left; }
td.n { text-align: right; font-variant-numeric: tabular-nums; }
</style>
</head>
<body>
<h1>wasmgate</h1>
<p><a href="/routes">/routes</a> · <a href="/stats/prometheus">/stats/prometheus</a> · <a href="/healthz/ready">/healthz/ready</a></p>
<h2>Requests per second, per VirtualService</h2>
<table id="rates"><thead><tr><th>VirtualService</th><th>req/s</th><th>total</th></tr></thead><tbody></tbody></table>
<h2>Listeners, servers, hosts and chains</h2>
<pre id="routes">{{routes}}</pre>
<script>
"use strict";
let last = null;
function parse(text) {
  const out = new Map();
  const re = /^wasmgate_plugin_calls_total\{plugin="wasmgate\/router",virtual_service="([^"]*)"\} (\d+)/;
  for (const line of text.split("\n")) {
    const m = re.exec(line);
    if (m) out.set(m[1], Number(m[2]));
  }
  return out;
}
async function tick() {
  try {
    const now = performance.now();
    const counts = parse(await (await fetch("/metrics")).text());
    const body = document.querySelector("#rates tbody");
    body.textContent = "";
    for (const [vs, total] of [...counts.entries()].sort()) {
      const prev = last && last.counts.get(vs);
      const rate = prev === undefined ? 0 : (total - prev) / ((now - last.at) / 1000);
      const row = body.insertRow();
      row.insertCell().textContent = vs;
      const r = row.insertCell(); r.className = "n"; r.textContent = rate.toFixed(1);
      const t = row.insertCell(); t.className = "n"; t.textContent = total;
    }
    last = { at: now, counts };
  } catch (e) { /* the gateway may be restarting */ }
}
tick();
setInterval(tick, 2000);
</script>
</body>
</html>
"##;

#[cfg(test)]
mod tests {
    #[test]
    fn routes_are_escaped() {
        let page = super::render("host <a>&b");
        assert!(page.contains("host &lt;a&gt;&amp;b"));
        assert!(
            !page.contains("http://") && !page.contains("https://"),
            "no external assets"
        );
    }
}
