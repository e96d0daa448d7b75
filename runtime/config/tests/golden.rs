//! Golden tests: each `tests/golden/validation/NAME.yaml` (at the repository root) is
//! loaded on its own and the exact output is compared with `NAME.golden`: the `Display`
//! of the errors, or `OK` followed by the warnings. Regenerate after an intended change
//! with `UPDATE_GOLDEN=1 cargo test -p wasmgate-config --test golden`, then review the diff.

use std::path::{Path, PathBuf};

use wasmgate_config::load_sources;

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/golden/validation")
}

fn render(name: &str, text: String) -> String {
    // Paths as seen from the repository root, so the output is stable.
    let file = PathBuf::from(format!("tests/golden/validation/{name}.yaml"));
    match load_sources(&[(file, text)]) {
        Err(errors) => format!("{errors}\n"),
        Ok(config) => {
            let mut out = String::from("OK\n");
            for w in &config.warnings {
                out.push_str(&format!("warning: {w}\n"));
            }
            out
        }
    }
}

#[test]
fn golden_files_match() {
    let dir = golden_dir();
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()))
        .filter_map(Result::ok)
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            name.strip_suffix(".yaml").map(str::to_string)
        })
        .collect();
    names.sort();
    for required in [
        "unknown-field",
        "wrong-type",
        "yaml-syntax",
        "missing-name",
        "bad-regex",
        "bad-weight",
        "bad-fault-percentage",
        "bad-duration",
        "duplicate-resource",
        "bad-gateway-host",
        "unknown-api-version",
    ] {
        assert!(
            names.iter().any(|n| n == required),
            "missing golden case {required}"
        );
    }
    let update = std::env::var_os("UPDATE_GOLDEN").is_some_and(|v| v == "1");
    let mut failures = Vec::new();
    for name in &names {
        let input = dir.join(format!("{name}.yaml"));
        let golden = dir.join(format!("{name}.golden"));
        let text = std::fs::read_to_string(&input)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", input.display()));
        let actual = render(name, text);
        if update {
            std::fs::write(&golden, &actual)
                .unwrap_or_else(|e| panic!("cannot write {}: {e}", golden.display()));
            continue;
        }
        match std::fs::read_to_string(&golden) {
            Ok(expected) if expected == actual => {}
            Ok(expected) => failures.push(format!(
                "{name}: output differs\n--- expected\n{expected}--- actual\n{actual}"
            )),
            Err(e) => failures.push(format!("{name}: cannot read {}: {e}", golden.display())),
        }
    }
    assert!(
        failures.is_empty(),
        "{}\n(run with UPDATE_GOLDEN=1 to accept)",
        failures.join("\n")
    );
}

#[test]
fn invalid_cases_are_rejected() {
    // Every case except the warnings-only one must fail to load.
    let dir = golden_dir();
    for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(stem) = name.strip_suffix(".yaml") else {
            continue;
        };
        let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
        let out = render(stem, text);
        assert_eq!(
            out.starts_with("OK\n"),
            stem.starts_with("warnings"),
            "{stem}:\n{out}"
        );
    }
}
