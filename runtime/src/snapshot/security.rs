//! Istio's security policies bound to a VirtualService's chain: which
//! RequestAuthentications and AuthorizationPolicies apply where it is served, and the
//! config the first-party `jwt-authn` and `authz` components get for them. JWKS named by
//! `jwksUri` are fetched here, at load, as istiod fetches them for Envoy; a fetch that
//! fails leaves the rule without keys, so its tokens are refused (401) and nothing else
//! changes, as in Istio.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;
use wasmgate_config::model::{AuthorizationAction, Config, PolicyScope, VirtualService};
use wasmgate_config::{AuthorizationPolicy, ConfigError, Meta, RequestAuthentication};

use super::{Via, fetch, in_scope, ns_name, selected, targeted};
use crate::plugin::types::Binding;
use crate::plugin::{CompiledPlugin, PluginError, PluginHost, PolicyPool, PreparedPolicy};

/// Istio refreshes remote JWKS every 20 minutes (`PILOT_JWT_PUB_KEY_REFRESH_INTERVAL`):
/// `--jwks-refresh-seconds`' default.
pub const JWKS_REFRESH: Duration = Duration::from_secs(20 * 60);
/// The largest JWKS document read.
const MAX_JWKS_BYTES: usize = 1 << 20;
/// A `jwksUri` that could not be fetched is not asked again for this long.
const RETRY_AFTER: Duration = Duration::from_secs(30);

/// Does a policy of namespace `ns` with `scope` apply to `vs` served through `via`?
/// Istio's rules with the gateway as the workload: `targetRefs` name the VirtualService
/// or the Gateway; a `selector` matches the labels of the Gateway's own selector (its
/// workload), from the Gateway's namespace or the root namespace; without either the
/// policy covers its namespace's workloads (the Gateway's namespace, or the
/// VirtualService's on the mesh listener), or all of them from the root namespace.
pub fn applies(ns: &str, scope: &PolicyScope, vs: &VirtualService, via: Via<'_>) -> bool {
    match scope {
        PolicyScope::Targets(targets) => targeted(targets, vs, via),
        PolicyScope::Selector(labels) => selected(ns, labels, via),
        PolicyScope::Namespace => match via {
            Via::Gateway(gw) => in_scope(ns, &gw.meta.id.namespace),
            Via::Mesh => in_scope(ns, &vs.meta.id.namespace),
        },
    }
}

/// When a JWKS was fetched, and what came of it.
type Fetched = (Instant, Result<String, String>);

/// Fetched JWKS by URI, kept across reloads for most of the refresh interval (so the
/// reload that interval's timer makes fetches them again).
#[derive(Debug, Clone)]
pub struct JwksCache {
    fetched: Arc<Mutex<HashMap<String, Fetched>>>,
    keep: Duration,
}

impl Default for JwksCache {
    fn default() -> Self {
        JwksCache::new(JWKS_REFRESH)
    }
}

impl JwksCache {
    pub fn new(refresh: Duration) -> Self {
        JwksCache {
            fetched: Arc::default(),
            keep: refresh.mul_f64(0.9),
        }
    }

    /// The JWKS at `uri` (`http(s)://` or `file://`), fetched within `timeout`, or why not.
    /// Kept for most of the refresh interval; a refetch that fails keeps serving the last keys that
    /// came (as istiod does), and a failure is not tried again for [`RETRY_AFTER`], so one
    /// build asks an unreachable URI once, not once per VirtualService.
    async fn get(&self, uri: &str, timeout: Duration) -> Result<String, String> {
        if let Some((at, got)) = self.lock().get(uri) {
            let fresh = match got {
                Ok(_) => at.elapsed() < self.keep,
                Err(_) => at.elapsed() < RETRY_AFTER,
            };
            if fresh {
                return got.clone();
            }
        }
        let got = match uri.strip_prefix("file://") {
            Some(path) => read_file(path),
            None => {
                match tokio::time::timeout(timeout, fetch::download_at_most(uri, MAX_JWKS_BYTES))
                    .await
                {
                    Ok(Ok(bytes)) => String::from_utf8(bytes).map_err(|_| "not UTF-8".to_string()),
                    Ok(Err(e)) => Err(e),
                    Err(_) => Err(format!("no answer within {timeout:?}")),
                }
            }
        };
        let mut fetched = self.lock();
        match (&got, fetched.get(uri)) {
            (Err(e), Some((_, Ok(last)))) => {
                tracing::warn!("jwksUri {uri}: {e}; serving the keys fetched before");
                let last = last.clone();
                fetched.insert(uri.to_string(), (Instant::now(), Ok(last.clone())));
                Ok(last)
            }
            _ => {
                fetched.insert(uri.to_string(), (Instant::now(), got.clone()));
                got
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Fetched>> {
        self.fetched.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A `file://` JWKS, at most [`MAX_JWKS_BYTES`].
fn read_file(path: &str) -> Result<String, String> {
    use std::io::Read as _;
    let file = std::fs::File::open(path).map_err(|e| format!("{path}: {e}"))?;
    let mut text = String::new();
    file.take(MAX_JWKS_BYTES as u64 + 1)
        .read_to_string(&mut text)
        .map_err(|e| format!("{path}: {e}"))?;
    if text.len() > MAX_JWKS_BYTES {
        return Err(format!("{path}: larger than {MAX_JWKS_BYTES} bytes"));
    }
    Ok(text)
}

/// The RequestAuthentications and AuthorizationPolicies that apply to one chain.
#[derive(Debug, Default)]
pub struct Applied<'a> {
    pub authn: Vec<&'a RequestAuthentication>,
    pub authz: Vec<&'a AuthorizationPolicy>,
}

impl<'a> Applied<'a> {
    pub fn of(config: &'a Config, vs: &VirtualService, via: Via<'_>) -> Self {
        Applied {
            authn: config
                .request_authentications
                .iter()
                .filter(|ra| applies(&ra.meta.id.namespace, &ra.scope, vs, via))
                .collect(),
            authz: config
                .authorization_policies
                .iter()
                .filter(|ap| applies(&ap.meta.id.namespace, &ap.scope, vs, via))
                .collect(),
        }
    }

    /// The key two chains share their prepared components by.
    pub fn key(&self) -> (Vec<String>, Vec<String>) {
        (
            self.authn.iter().map(|r| ns_name(&r.meta)).collect(),
            self.authz.iter().map(|p| ns_name(&p.meta)).collect(),
        )
    }
}

/// `jwt-authn`'s config: every rule of every RequestAuthentication that applies, each
/// with its policy's name and its keys (`jwks` inline, or fetched from `jwksUri`).
pub async fn authn_config(policies: &[&RequestAuthentication], jwks: &JwksCache) -> String {
    let mut rules = Vec::new();
    for ra in policies {
        for (rule, timeout) in ra.jwt_rules.iter().zip(&ra.fetch_timeouts) {
            let mut rule = rule.clone();
            let fetched = rule.jwks.is_none() && !rule.jwks_uri.is_empty();
            if fetched {
                match jwks.get(&rule.jwks_uri, *timeout).await {
                    Ok(keys) => rule.jwks = Some(keys),
                    Err(e) => warn_fetch(&ra.meta, &rule.jwks_uri, &e),
                }
            }
            let mut value = serde_json::to_value(&rule).unwrap_or_default();
            if let Some(map) = value.as_object_mut() {
                map.insert("policy".into(), json!(ns_name(&ra.meta)));
                map.insert("jwksFetched".into(), json!(fetched));
            }
            rules.push(value);
        }
    }
    json!({ "rules": rules }).to_string()
}

fn warn_fetch(meta: &Meta, uri: &str, why: &str) {
    tracing::warn!(
        "{}: {}: spec.jwtRules: cannot fetch jwksUri {uri}: {why}; tokens of this issuer \
         are refused until a reload fetches it",
        meta.file.display(),
        meta.id
    );
}

/// `authz`'s config: each policy's name, action and rules. A CUSTOM policy (no external
/// authorizer is called) denies what its rules match: a policy wasmgate cannot enforce
/// must not let through what it was meant to guard.
pub fn authz_config(policies: &[&AuthorizationPolicy], num_trusted_proxies: u32) -> String {
    let policies: Vec<serde_json::Value> = policies
        .iter()
        .map(|p| {
            let action = match p.action {
                AuthorizationAction::Custom => AuthorizationAction::Deny,
                other => other,
            };
            json!({
                "name": ns_name(&p.meta),
                "action": action.as_str(),
                "rules": p.rules.clone().unwrap_or_default(),
            })
        })
        .collect();
    json!({ "numTrustedProxies": num_trusted_proxies, "policies": policies }).to_string()
}

/// The compiled security components and their pools (`None`: no policy of that kind),
/// and what each chain's policies prepared into.
#[derive(Default)]
pub struct Guards {
    pub authn: Option<(CompiledPlugin, PolicyPool)>,
    pub authz: Option<(CompiledPlugin, PolicyPool)>,
    prepared: HashMap<(String, Vec<String>, Vec<String>), Prepared>,
}

type Prepared = (Option<PreparedPolicy>, Option<PreparedPolicy>);

impl Guards {
    /// The `jwt-authn` and `authz` bindings for `vs` served through `via` (`None` where no
    /// policy of that kind applies), prepared once per VirtualService and set of policies.
    pub async fn prepare(
        &mut self,
        host: &PluginHost,
        config: &Config,
        vs: &VirtualService,
        via: Via<'_>,
        jwks: &JwksCache,
        trusted_proxies: u32,
    ) -> Result<Prepared, ConfigError> {
        let applied = Applied::of(config, vs, via);
        let (authn_key, authz_key) = applied.key();
        let key = (ns_name(&vs.meta), authn_key, authz_key);
        if let Some(done) = self.prepared.get(&key) {
            return Ok(done.clone());
        }
        let binding = |plugin: &str| Binding {
            plugin: plugin.to_string(),
            virtual_service: ns_name(&vs.meta),
            namespace: vs.meta.id.namespace.clone(),
        };
        let mut done: Prepared = (None, None);
        if let (Some((c, pool)), false) = (&self.authn, applied.authn.is_empty()) {
            let cfg = authn_config(&applied.authn, jwks).await;
            let first = applied.authn[0];
            done.0 = Some(
                host.prepare(pool, c.name(), binding(c.name()), cfg)
                    .await
                    .map_err(|e| refused(&first.meta, "spec.jwtRules", e))?,
            );
        }
        if let (Some((c, pool)), false) = (&self.authz, applied.authz.is_empty()) {
            let cfg = authz_config(&applied.authz, trusted_proxies);
            let first = applied.authz[0];
            done.1 = Some(
                host.prepare(pool, c.name(), binding(c.name()), cfg)
                    .await
                    .map_err(|e| refused(&first.meta, "spec.rules", e))?,
            );
        }
        self.prepared.insert(key, done.clone());
        Ok(done)
    }
}

/// A component's refusal of a policy set, on the first policy of the set (a component
/// field path names the policy it is about).
fn refused(meta: &Meta, field: &str, e: PluginError) -> ConfigError {
    let message = match e {
        PluginError::Config {
            plugin,
            field: at,
            message,
        } => format!("{plugin} refused its config at {at}: {message}"),
        other => other.to_string(),
    };
    ConfigError {
        file: meta.file.clone(),
        line: None,
        resource: Some(meta.id.clone()),
        field: Some(field.to_string()),
        message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_failed_refetch_keeps_the_last_keys_and_failures_are_not_retried_at_once() {
        let dir = std::env::temp_dir().join(format!("wasmgate-jwks-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let path = dir.join("jwks.json");
        std::fs::write(&path, r#"{"keys":[]}"#).expect("write");
        let uri = format!("file://{}", path.display());
        let cache = JwksCache::default();
        let second = Duration::from_secs(1);
        assert_eq!(
            cache.get(&uri, second).await.as_deref(),
            Ok(r#"{"keys":[]}"#)
        );
        // Old enough to be fetched again, and gone: the last keys keep serving.
        let aged = Instant::now().checked_sub(cache.keep + second);
        if let (Some(aged), Some(entry)) = (aged, cache.lock().get_mut(&uri)) {
            entry.0 = aged;
        }
        std::fs::remove_file(&path).expect("remove");
        assert_eq!(
            cache.get(&uri, second).await.as_deref(),
            Ok(r#"{"keys":[]}"#)
        );
        // Never fetched: an error, remembered for a while (the file appearing now is not
        // read until RETRY_AFTER has passed).
        let missing = format!("file://{}", dir.join("none.json").display());
        assert!(cache.get(&missing, second).await.is_err());
        std::fs::write(dir.join("none.json"), "{}").expect("write");
        assert!(cache.get(&missing, second).await.is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
