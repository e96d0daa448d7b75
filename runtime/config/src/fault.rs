//! Istio's `HTTPFaultInjection` as the first-party components apply it: compiled once per
//! route at prepare, drawn per request. Shared by the router (which draws the fault of
//! the route it matched, in the same call) and the fault component (called when a plugin
//! changed the route or the action after the router, or when a `fault.wasm` replaces
//! it): both draw the same way, delay first, then abort.

use crate::parse_duration;
use crate::raw::HTTPFaultInjection;

/// The access-log field a fault that fired adds (`fault=delay`, `fault=abort`), as the
/// fault component and the host (for the router's draw) write it.
pub const LOG_FIELD: &str = "fault";
pub const LOG_DELAY: &str = "delay";
pub const LOG_ABORT: &str = "abort";

/// `fixedDelay` for `percent` of requests.
#[derive(Debug, Clone, PartialEq)]
pub struct DelayFault {
    pub ms: u64,
    pub percent: f64,
}

/// `httpStatus` (or a gRPC status) for `percent` of requests.
#[derive(Debug, Clone, PartialEq)]
pub struct AbortFault {
    pub status: u16,
    pub grpc_status: Option<String>,
    pub percent: f64,
}

/// A route's fault, as compiled.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RouteFault {
    pub delay: Option<DelayFault>,
    pub abort: Option<AbortFault>,
}

/// A fault the config cannot mean: `field` is its path in the VirtualService spec.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FaultError {
    pub field: String,
    pub message: String,
}

/// What one draw gave: the delay to add and the abort to answer with, if any.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Drawn<'a> {
    pub delay_ms: Option<u64>,
    pub abort: Option<&'a AbortFault>,
}

impl Drawn<'_> {
    /// Nothing fired.
    pub fn is_none(&self) -> bool {
        self.delay_ms.is_none() && self.abort.is_none()
    }
}

/// Compile route `i`'s fault. A fault without `percentage` never fires (Istio's rule; the
/// deprecated integer `percent` of a delay still counts).
pub fn compile(i: usize, f: &HTTPFaultInjection) -> Result<RouteFault, FaultError> {
    let field = format!("http[{i}].fault");
    let delay = match &f.delay {
        Some(d) => {
            let percent = d
                .percentage
                .as_ref()
                .map(|p| p.value)
                .or((d.percent > 0).then_some(f64::from(d.percent)));
            match (percent, &d.fixed_delay) {
                (Some(percent), Some(text)) => {
                    let dur = parse_duration(text).map_err(|message| FaultError {
                        field: format!("{field}.delay.fixedDelay"),
                        message,
                    })?;
                    Some(DelayFault {
                        ms: u64::try_from(dur.as_millis()).unwrap_or(u64::MAX),
                        percent,
                    })
                }
                _ => None,
            }
        }
        None => None,
    };
    let abort = match &f.abort {
        Some(a) => match a.percentage.as_ref().map(|p| p.value) {
            Some(percent) => {
                let (status, grpc_status) = match (a.http_status, &a.grpc_status) {
                    (Some(s), _) => (
                        u16::try_from(s).map_err(|_| FaultError {
                            field: format!("{field}.abort.httpStatus"),
                            message: format!("{s} is not an HTTP status"),
                        })?,
                        None,
                    ),
                    // gRPC aborts travel as HTTP 200 with a grpc-status.
                    (None, Some(g)) => (200, Some(g.clone())),
                    (None, None) => (503, None),
                };
                Some(AbortFault {
                    status,
                    grpc_status,
                    percent,
                })
            }
            None => None,
        },
        None => None,
    };
    Ok(RouteFault { delay, abort })
}

impl RouteFault {
    /// Whether any part of it can fire: a `percentage` of 0 never does, so such a fault
    /// is dropped at prepare and draws nothing.
    pub fn can_fire(&self) -> bool {
        self.delay.as_ref().is_some_and(|d| d.percent > 0.0)
            || self.abort.as_ref().is_some_and(|a| a.percent > 0.0)
    }

    /// Draw it: `chance(percent)` says whether one part fires (a random draw each, the
    /// delay's first).
    pub fn draw(&self, mut chance: impl FnMut(f64) -> bool) -> Drawn<'_> {
        Drawn {
            delay_ms: self
                .delay
                .as_ref()
                .filter(|d| chance(d.percent))
                .map(|d| d.ms),
            abort: self.abort.as_ref().filter(|a| chance(a.percent)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fault(json: &str) -> HTTPFaultInjection {
        serde_json::from_str(json).expect("a fault")
    }

    #[test]
    fn compiles_istio_faults() {
        let f = compile(
            0,
            &fault(r#"{"delay":{"fixedDelay":"1.5s","percentage":{"value":10}},"abort":{"grpcStatus":"UNAVAILABLE","percentage":{"value":5}}}"#),
        )
        .expect("compiles");
        assert_eq!(
            f.delay,
            Some(DelayFault {
                ms: 1500,
                percent: 10.0
            })
        );
        assert_eq!(
            f.abort,
            Some(AbortFault {
                status: 200,
                grpc_status: Some("UNAVAILABLE".into()),
                percent: 5.0
            })
        );
        assert!(f.can_fire());
        // No percentage: never fires; the deprecated integer percent of a delay counts.
        let f = compile(0, &fault(r#"{"abort":{"httpStatus":500}}"#)).expect("compiles");
        assert!(f.abort.is_none() && !f.can_fire());
        let f =
            compile(0, &fault(r#"{"delay":{"fixedDelay":"1s","percent":100}}"#)).expect("compiles");
        assert_eq!(f.delay.map(|d| d.percent), Some(100.0));
        let zero = r#"{"delay":{"fixedDelay":"1s","percentage":{"value":0}},"abort":{"httpStatus":500,"percentage":{"value":0}}}"#;
        assert!(!compile(0, &fault(zero)).expect("compiles").can_fire());
    }

    #[test]
    fn errors_name_the_field() {
        let e = compile(
            3,
            &fault(r#"{"delay":{"fixedDelay":"soon","percentage":{"value":1}}}"#),
        )
        .expect_err("not a duration");
        assert_eq!(e.field, "http[3].fault.delay.fixedDelay");
        let e = compile(
            1,
            &fault(r#"{"abort":{"httpStatus":70000,"percentage":{"value":1}}}"#),
        )
        .expect_err("not a status");
        assert_eq!(e.field, "http[1].fault.abort.httpStatus");
    }

    #[test]
    fn draws_the_delay_first_then_the_abort() {
        let f = compile(
            0,
            &fault(r#"{"delay":{"fixedDelay":"2s","percentage":{"value":50}},"abort":{"httpStatus":503,"percentage":{"value":25}}}"#),
        )
        .expect("compiles");
        let mut asked = Vec::new();
        let d = f.draw(|p| {
            asked.push(p);
            p > 30.0
        });
        assert_eq!(asked, [50.0, 25.0]);
        assert_eq!(d.delay_ms, Some(2000));
        assert!(d.abort.is_none() && !d.is_none());
        assert!(f.draw(|_| false).is_none());
    }
}
