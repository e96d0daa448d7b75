//! Test plugin built against the previous version of the policy world,
//! `wasmgate:policy@0.2.1` (`wit/policy.wit` here is that version, kept as it was), with
//! wit-bindgen directly rather than the SDK, which follows the current WIT. 0.3.0 replaced
//! 0.2's lowered request head and whole-decision answers, so a 0.3 host must refuse it,
//! naming both versions (the one it found, 0.2.1, and the one it speaks, 0.3.0). It
//! imports `host@0.2.1` only (not `metrics`). Were it loaded, it would answer `/previous`
//! itself (with a number from the host's `random-u64`, so the import is really used) and
//! pass everything else on.
#![allow(unsafe_code)]

wit_bindgen::generate!({
    world: "plugin",
    path: "wit",
});

use exports::wasmgate::policy::policy::{Guest, GuestPrepared, Prepared};
use wasmgate::policy::host::{LogLevel, log, random_u64};
use wasmgate::policy::types::{
    Action, Binding, ConfigError, Decision, DirectResponse, HeaderInterest, Interest, PluginError,
    RequestHead,
};

struct Previous;

impl GuestPrepared for Previous {
    fn prepare(binding: Binding, _config: String) -> Result<Prepared, ConfigError> {
        log(
            LogLevel::Info,
            &format!(
                "built against 0.2.1, prepared for {}",
                binding.virtual_service
            ),
        );
        Ok(Prepared::new(Previous))
    }

    fn interest(&self) -> Interest {
        Interest {
            headers: HeaderInterest::None,
        }
    }

    fn on_request(
        &self,
        request: RequestHead,
        current: Decision,
    ) -> Result<Option<Decision>, PluginError> {
        if request.path != "/previous" {
            return Ok(None);
        }
        let body = format!(
            "built against wasmgate:policy@0.2.1 ({})",
            random_u64() % 10
        );
        Ok(Some(Decision {
            action: Action::Respond(DirectResponse {
                status: 200,
                headers: Vec::new(),
                body: body.into_bytes(),
            }),
            ..current
        }))
    }
}

struct Component;

impl Guest for Component {
    type Prepared = Previous;
}

#[cfg(target_arch = "wasm32")]
export!(Component);
