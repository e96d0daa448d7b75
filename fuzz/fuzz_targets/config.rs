//! Any text through the YAML loader and validator: an error or a config, never a panic,
//! and every error names the file it is about.
#![no_main]

use std::path::PathBuf;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data).into_owned();
    let file = PathBuf::from("fuzz.yaml");
    // Loading validates every resource, the set as a whole, and runs the analyzers.
    match wasmgate_config::load_sources(&[(file.clone(), text.clone())]) {
        Ok(_) => {}
        Err(errors) => {
            assert!(!errors.0.is_empty(), "an error without a line");
            for e in &errors.0 {
                assert_eq!(e.file, file, "an error that does not name its file: {e}");
                assert!(!e.message.is_empty(), "an error without a message");
            }
        }
    }
    let _ = wasmgate_config::validate_document(&file, &text);
});
