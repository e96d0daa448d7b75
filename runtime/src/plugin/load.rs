//! Turning bytes into a checked plugin: core modules become components (with the WASI
//! preview1 adapter when they import WASI), the component's world is compared with
//! `wasmgate:policy@0.3.0` (0.2 plugins are refused: 0.3 replaced the lowered request
//! head and whole decisions with the `request` resource and edits), and wasmtime's errors
//! are put in words a plugin author can act on.

use std::borrow::Cow;

use sha2::{Digest, Sha256};
use wasmtime::component::Component;
use wasmtime::{Engine, Trap};

use super::builtin::Builtin;

/// A plugin's bytes and their SHA-256, computed once: the compile caches (in memory and on
/// disk) are keyed by it and a WasmPlugin's `sha256` is checked against it. An embedded
/// component's digest was computed when the binary was built, so a start that finds it
/// compiled never reads its bytes.
#[derive(Debug, Clone)]
pub struct PluginBytes {
    bytes: Cow<'static, [u8]>,
    sha256: [u8; 32],
    /// Known to be a component without reading its header: an embedded one (`build.rs`
    /// made it one).
    embedded: bool,
}

impl PluginBytes {
    pub fn new(bytes: Vec<u8>) -> Self {
        let sha256 = Sha256::digest(&bytes).into();
        PluginBytes {
            bytes: Cow::Owned(bytes),
            sha256,
            embedded: false,
        }
    }

    pub fn embedded(b: Builtin) -> Self {
        PluginBytes {
            bytes: Cow::Borrowed(b.bytes),
            sha256: *b.sha256,
            embedded: true,
        }
    }

    /// The SHA-256 of the bytes as given (a WasmPlugin's `sha256` names this one).
    pub fn sha256(&self) -> &[u8; 32] {
        &self.sha256
    }

    /// The component these bytes are (as they are), or make (a core module), and the
    /// component's SHA-256: the compile cache's entry is named by it. Reads only the
    /// header of a component, and nothing of an embedded one.
    pub fn component(&self) -> Result<(Cow<'_, [u8]>, [u8; 32]), String> {
        if self.embedded || is_component(&self.bytes) {
            return Ok((Cow::Borrowed(&self.bytes), self.sha256));
        }
        let made = to_component(&self.bytes)?;
        let sha256 = Sha256::digest(&made).into();
        Ok((Cow::Owned(made), sha256))
    }
}

/// The WIT package this host implements.
pub const WIT_PACKAGE: &str = "wasmgate:policy";
/// Its version. Plugins built against it, or an earlier step of its line down to
/// [`OLDEST`], load; anything else is refused by name.
const WIT_VERSION: (u64, u64, u64) = (0, 3, 0);
/// The oldest version still loaded: 0.3.0 started a new line.
const OLDEST: (u64, u64, u64) = (0, 3, 0);
const WASI_P1: &str = "wasi_snapshot_preview1";

/// True for a component (binary layer 1), false for a core module or anything else.
pub fn is_component(bytes: &[u8]) -> bool {
    bytes.len() >= 8 && bytes[0..4] == *b"\0asm" && bytes[6..8] == [1, 0]
}

fn is_core_module(bytes: &[u8]) -> bool {
    bytes.len() >= 8 && bytes[0..4] == *b"\0asm" && bytes[6..8] == [0, 0]
}

/// A core module made into a component (a component is taken as it is by
/// [`PluginBytes::component`], which calls this only for anything else).
fn to_component(bytes: &[u8]) -> Result<Vec<u8>, String> {
    if !is_core_module(bytes) {
        return Err("not a Wasm file (no `\\0asm` header)".into());
    }
    let wasi = imports_module(bytes, WASI_P1)?;
    crate::toolchain::componentize(bytes, wasi).map_err(|e| {
        format!(
            "a core module that could not be made a component ({e}); build it with the \
             wasmgate-plugin-sdk crate, or make a component with `wasm-tools component new`"
        )
    })
}

fn imports_module(bytes: &[u8], module: &str) -> Result<bool, String> {
    for payload in wasmparser::Parser::new(0).parse_all(bytes) {
        let payload = payload.map_err(|e| format!("invalid Wasm module: {e}"))?;
        if let wasmparser::Payload::ImportSection(reader) = payload {
            for import in reader.into_imports() {
                let import = import.map_err(|e| format!("invalid Wasm module: {e}"))?;
                if import.module == module {
                    return Ok(true);
                }
            }
        }
    }
    Ok(false)
}

fn parse_version(name: &str) -> Option<(u64, u64, u64)> {
    let v = name.split_once('@')?.1;
    let mut parts = v.split(['.', '-', '+']).map(|p| p.parse::<u64>());
    Some((
        parts.next()?.ok()?,
        parts.next()?.ok()?,
        parts.next()?.ok()?,
    ))
}

/// Built against a version this host implements: not older than [`OLDEST`] (another
/// line), not newer than [`WIT_VERSION`] (it may use what this host lacks).
fn compatible(v: (u64, u64, u64)) -> bool {
    (OLDEST..=WIT_VERSION).contains(&v)
}

fn show(v: (u64, u64, u64)) -> String {
    format!("{}.{}.{}", v.0, v.1, v.2)
}

/// What this host speaks, for messages.
fn speaks() -> String {
    if OLDEST == WIT_VERSION {
        format!("{WIT_PACKAGE}@{}", show(WIT_VERSION))
    } else {
        format!(
            "{WIT_PACKAGE}@{} (and loads plugins built against {} to {})",
            show(WIT_VERSION),
            show(OLDEST),
            show(WIT_VERSION)
        )
    }
}

/// Check the component exports `wasmgate:policy/policy` at a compatible version and
/// imports nothing but the host interface and WASI.
pub fn check_world(engine: &Engine, component: &Component) -> Result<(), String> {
    let ty = component.component_type();
    let exports: Vec<String> = ty.exports(engine).map(|(n, _)| n.to_string()).collect();
    let export = exports
        .iter()
        .find(|n| n.starts_with(&format!("{WIT_PACKAGE}/policy")));
    let Some(export) = export else {
        let listed = if exports.is_empty() {
            "nothing".to_string()
        } else {
            exports.join(", ")
        };
        return Err(format!(
            "not a wasmgate policy plugin: it exports {listed}, not \
             `{WIT_PACKAGE}/policy@{}`; build it with wasmgate-plugin-sdk",
            show(WIT_VERSION)
        ));
    };
    let wanted = speaks();
    match parse_version(export) {
        Some(v) if compatible(v) => {}
        Some(v) => {
            return Err(format!(
                "built against {WIT_PACKAGE}@{}, but this wasmgate speaks {wanted}; rebuild \
                 it with a matching wasmgate-plugin-sdk",
                show(v)
            ));
        }
        None => {
            return Err(format!(
                "exports `{export}` without a version; this wasmgate speaks {wanted}"
            ));
        }
    }
    for (name, _) in ty.imports(engine) {
        if name.starts_with(&format!("{WIT_PACKAGE}/")) {
            if let Some(v) = parse_version(name)
                && !compatible(v)
            {
                return Err(format!(
                    "imports `{name}`, but this wasmgate speaks {wanted}"
                ));
            }
        } else if !name.starts_with("wasi:") {
            return Err(format!(
                "imports `{name}`, which wasmgate does not provide (plugins get \
                 `{WIT_PACKAGE}/host`, `metrics`, `clock`, `state`, `outbound` and a WASI \
                 that grants nothing)"
            ));
        }
    }
    Ok(())
}

/// A link failure (usually an import wasmgate lacks), in one line.
pub fn explain_link_error(e: &wasmtime::Error) -> String {
    format!("cannot link: {e:#}")
}

/// One line saying why a call failed.
pub fn describe_trap(e: &wasmtime::Error) -> String {
    match e.downcast_ref::<Trap>() {
        Some(Trap::Interrupt) => "ran past its time budget and was stopped".into(),
        Some(Trap::UnreachableCodeReached) => {
            "trapped: unreachable code (a Rust panic in the plugin)".into()
        }
        Some(trap) => format!("trapped: {trap}"),
        None => {
            let text = format!("{e:#}");
            if text.contains("memory") && text.contains("grow") {
                format!("ran out of memory: {text}")
            } else {
                text
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions() {
        assert_eq!(
            parse_version("wasmgate:policy/policy@0.1.0"),
            Some((0, 1, 0))
        );
        assert_eq!(
            parse_version("wasmgate:policy/policy@0.1.3-rc1"),
            Some((0, 1, 3))
        );
        assert_eq!(parse_version("wasmgate:policy/policy"), None);
        assert!(compatible((0, 3, 0)));
        assert!(
            !compatible((0, 3, 1)),
            "newer than the host: may import what it lacks"
        );
        assert!(!compatible((0, 2, 1)), "0.2 plugins must be rebuilt");
        assert!(!compatible((0, 1, 0)));
        assert!(!compatible((0, 4, 0)));
        assert!(!compatible((1, 1, 0)));
    }

    #[test]
    fn garbage_is_not_wasm() {
        assert!(to_component(b"hello world").is_err());
        assert!(
            PluginBytes::new(b"hello world".to_vec())
                .component()
                .is_err()
        );
        assert!(!is_component(b"\0asm\x01\0\0\0"));
        assert!(is_component(b"\0asm\x0d\0\x01\0"));
    }

    #[test]
    fn a_component_is_its_own_bytes_and_digest() {
        let router = super::super::builtin::CHAIN[0];
        let plugin = PluginBytes::embedded(router);
        let (component, sha256) = plugin.component().expect("a component");
        assert!(matches!(component, Cow::Borrowed(b) if std::ptr::eq(b, router.bytes)));
        assert_eq!(&sha256, router.sha256);
        assert_eq!(
            PluginBytes::new(router.bytes.to_vec()).sha256,
            *router.sha256
        );
    }
}
