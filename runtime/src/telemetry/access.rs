//! Access logs: one line per request (written when its response has gone out, so sizes
//! and durations are complete) and one per TCP connection. `--access-log-format text`
//! is wasmgate's line (through the log, target `wasmgate::access`); `json` is one JSON
//! object per line with Envoy's default fields. `--access-log PATH|stderr|off` chooses
//! where; a Telemetry resource may turn it off on reload.

use std::io::Write as _;
use std::path::PathBuf;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::SystemTime;

/// `--access-log-format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Text,
    Json,
}

/// `--access-log`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Destination {
    Stderr,
    Off,
    File(PathBuf),
}

impl std::str::FromStr for Destination {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "stderr" | "-" => Destination::Stderr,
            "off" => Destination::Off,
            path => Destination::File(PathBuf::from(path)),
        })
    }
}

/// Where access lines go.
#[derive(Debug)]
pub struct AccessLog {
    format: Format,
    file: Option<Mutex<std::fs::File>>,
    off: bool,
    /// Cleared by a Telemetry resource's `accessLogging: [{disabled: true}]`.
    enabled: AtomicBool,
}

/// One request's line.
#[derive(Debug, Default)]
pub struct Entry {
    pub start_time: Option<SystemTime>,
    pub method: String,
    pub path: String,
    /// The path as received, when normalization changed it.
    pub raw_path: Option<String>,
    pub protocol: String,
    pub response_code: u16,
    pub response_flags: String,
    pub bytes_received: u64,
    pub bytes_sent: u64,
    pub duration_ms: u64,
    pub upstream_service_time_ms: Option<u64>,
    pub x_forwarded_for: String,
    pub user_agent: String,
    pub request_id: String,
    pub authority: String,
    pub upstream_host: String,
    pub upstream_cluster: String,
    pub route_name: String,
    pub virtual_service: String,
    pub trace_id: String,
    pub attempts: u32,
    pub client: String,
    /// Extra fields (plugins' log fields, details).
    pub extra: Vec<(String, String)>,
}

impl AccessLog {
    /// Open the destination (a file is appended to).
    pub fn open(format: Format, destination: &Destination) -> Result<Self, String> {
        let file = match destination {
            Destination::File(path) => Some(Mutex::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .map_err(|e| format!("--access-log {}: {e}", path.display()))?,
            )),
            _ => None,
        };
        Ok(AccessLog {
            format,
            file,
            off: *destination == Destination::Off,
            enabled: AtomicBool::new(true),
        })
    }

    /// For tests and tools: text lines through the log.
    pub fn text_to_log() -> Self {
        AccessLog {
            format: Format::Text,
            file: None,
            off: false,
            enabled: AtomicBool::new(true),
        }
    }

    /// Turn lines on or off (a Telemetry resource's `accessLogging`).
    pub fn set_enabled(&self, on: bool) {
        self.enabled.store(on, Ordering::Relaxed);
    }

    /// Is anything written? (The line's bookkeeping costs allocations: skip it when not.)
    pub fn enabled(&self) -> bool {
        if self.off || !self.enabled.load(Ordering::Relaxed) {
            return false;
        }
        self.file.is_some()
            || self.format == Format::Json
            || tracing::enabled!(target: "wasmgate::access", tracing::Level::INFO)
    }

    /// Write one request's line.
    pub fn request(&self, e: &Entry) {
        match self.format {
            Format::Json => self.raw(&json_line(e)),
            Format::Text => self.text(&text_line(e)),
        }
    }

    /// Write one TCP connection's line (text: `TCP ...`).
    pub fn connection(&self, text: &str, json: impl FnOnce() -> String) {
        match self.format {
            Format::Json => self.raw(&json()),
            Format::Text => self.text(text),
        }
    }

    fn text(&self, line: &str) {
        match &self.file {
            None => tracing::info!(target: "wasmgate::access", "{line}"),
            Some(_) => self.raw(&format!("{} {line}", rfc3339(SystemTime::now()))),
        }
    }

    fn raw(&self, line: &str) {
        match &self.file {
            Some(file) => {
                if let Ok(mut f) = file.lock() {
                    let _ = writeln!(f, "{line}");
                }
            }
            None => {
                let _ = writeln!(std::io::stderr().lock(), "{line}");
            }
        }
    }
}

fn or_dash(s: &str) -> &str {
    if s.is_empty() { "-" } else { s }
}

/// wasmgate's text line.
fn text_line(e: &Entry) -> String {
    let mut extra = String::new();
    if let Some(raw) = &e.raw_path {
        extra.push_str(&format!(" raw_path={raw}"));
    }
    for (k, v) in &e.extra {
        extra.push_str(&format!(" {k}={v}"));
    }
    format!(
        "{} {} {} {} flags={} vs={} route={} cluster={} upstream={} attempts={} duration_ms={} bytes_received={} bytes_sent={} client={} id={}{extra}",
        or_dash(&e.method),
        or_dash(&e.authority),
        or_dash(&e.path),
        e.response_code,
        or_dash(&e.response_flags),
        or_dash(&e.virtual_service),
        or_dash(&e.route_name),
        or_dash(&e.upstream_cluster),
        or_dash(&e.upstream_host),
        e.attempts,
        e.duration_ms,
        e.bytes_received,
        e.bytes_sent,
        or_dash(&e.client),
        or_dash(&e.request_id),
    )
}

/// Envoy's default JSON access log fields (as Istio's `accessLogEncoding: JSON` has
/// them), plus wasmgate's.
fn json_line(e: &Entry) -> String {
    let null_or = |s: &str| {
        if s.is_empty() {
            serde_json::Value::Null
        } else {
            serde_json::Value::String(s.to_string())
        }
    };
    let mut v = serde_json::json!({
        "start_time": e.start_time.map(rfc3339),
        "method": null_or(&e.method),
        "path": null_or(&e.path),
        "protocol": null_or(&e.protocol),
        "response_code": e.response_code,
        "response_flags": or_dash(&e.response_flags),
        "bytes_received": e.bytes_received,
        "bytes_sent": e.bytes_sent,
        "duration": e.duration_ms,
        "upstream_service_time": e.upstream_service_time_ms,
        "x_forwarded_for": null_or(&e.x_forwarded_for),
        "user_agent": null_or(&e.user_agent),
        "request_id": null_or(&e.request_id),
        "authority": null_or(&e.authority),
        "upstream_host": null_or(&e.upstream_host),
        "upstream_cluster": null_or(&e.upstream_cluster),
        "route_name": null_or(&e.route_name),
        "trace_id": null_or(&e.trace_id),
        "virtual_service": null_or(&e.virtual_service),
        "downstream_remote_address": null_or(&e.client),
        "attempts": e.attempts,
    });
    if let Some(obj) = v.as_object_mut() {
        if let Some(raw) = &e.raw_path {
            obj.insert("raw_path".into(), raw.clone().into());
        }
        for (k, val) in &e.extra {
            obj.entry(k.clone()).or_insert_with(|| val.clone().into());
        }
    }
    v.to_string()
}

/// `2026-12-01T23:18:41.123Z`.
pub fn rfc3339(t: SystemTime) -> String {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let secs = i64::try_from(d.as_secs()).unwrap_or(i64::MAX);
    let (year, month, day, h, m, sec) = crate::time::civil(secs);
    format!(
        "{year:04}-{month:02}-{day:02}T{h:02}:{m:02}:{sec:02}.{:03}Z",
        d.subsec_millis()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times() {
        assert_eq!(rfc3339(SystemTime::UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let t = SystemTime::UNIX_EPOCH + std::time::Duration::from_millis(951_782_400_250);
        assert_eq!(rfc3339(t), "2000-02-29T00:00:00.250Z");
    }

    #[test]
    fn json_lines_carry_envoys_fields() {
        let e = Entry {
            method: "GET".into(),
            path: "/a".into(),
            protocol: "HTTP/1.1".into(),
            response_code: 200,
            bytes_sent: 12,
            request_id: "id-1".into(),
            extra: vec![("user".into(), "x".into())],
            ..Entry::default()
        };
        let v: serde_json::Value = serde_json::from_str(&json_line(&e)).expect("json");
        assert_eq!(v["method"], "GET");
        assert_eq!(v["response_code"], 200);
        assert_eq!(v["response_flags"], "-");
        assert_eq!(v["bytes_sent"], 12);
        assert_eq!(v["user_agent"], serde_json::Value::Null);
        assert_eq!(v["user"], "x");
        for field in [
            "start_time",
            "duration",
            "upstream_service_time",
            "x_forwarded_for",
            "upstream_host",
            "upstream_cluster",
            "route_name",
            "trace_id",
            "authority",
        ] {
            assert!(v.get(field).is_some(), "{field}");
        }
    }
}
