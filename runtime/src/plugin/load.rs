//! Turning bytes into a checked plugin: core modules become components (with the WASI
//! preview1 adapter when they import WASI), the component's world is compared with
//! `wasmgate:policy@0.3.0` (0.2 plugins are refused: 0.3 replaced the lowered request
//! head and whole decisions with the `request` resource and edits), and wasmtime's errors
//! are put in words a plugin author can act on.

use wasmtime::component::Component;
use wasmtime::{Engine, Trap};

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

/// A component as is; a core module made into one.
pub fn to_component(bytes: &[u8]) -> Result<Vec<u8>, String> {
    if is_component(bytes) {
        return Ok(bytes.to_vec());
    }
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
        assert!(!is_component(b"\0asm\x01\0\0\0"));
        assert!(is_component(b"\0asm\x0d\0\x01\0"));
    }
}
