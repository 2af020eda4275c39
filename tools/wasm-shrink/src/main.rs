//! `wasm-shrink IN OUT --remove-exports a,b,c`: the last step of `scripts/build.sh`.
//!
//! 1. Drops the named exports. The Rust proxy-wasm SDK exports every callback, and Envoy
//!    enters the VM for each exported one (it skips those a module does not export), so a
//!    callback the filter does not implement costs a VM entry per request for nothing.
//! 2. Optimises for size with binaryen (`-Oz`, through the `wasm-opt` crate, which builds
//!    binaryen from source with the C++ compiler cargo already uses): the code only those
//!    exports reached goes too.
//!
//! Everything comes from crates.io: the filter builds with cargo alone.

use std::process::ExitCode;
use wasm_encoder::{ExportKind, ExportSection, Module, RawSection};
use wasm_opt::{Feature, OptimizationOptions};
use wasmparser::{Encoding, ExternalKind, Parser, Payload};

/// The module with the exports named in `drop` removed; every other section as it was.
fn remove_exports(input: &[u8], drop: &[&str]) -> Result<(Vec<u8>, usize), String> {
    let mut module = Module::new();
    let mut removed = 0;
    for payload in Parser::new(0).parse_all(input) {
        let payload = payload.map_err(|e| format!("not a valid module: {e}"))?;
        match &payload {
            Payload::Version { encoding, .. } if *encoding != Encoding::Module => {
                return Err("a component, not a core module".into());
            }
            Payload::ExportSection(reader) => {
                let mut exports = ExportSection::new();
                for export in reader.clone() {
                    let export = export.map_err(|e| format!("export section: {e}"))?;
                    if drop.contains(&export.name) {
                        removed += 1;
                        continue;
                    }
                    let kind = match export.kind {
                        ExternalKind::Func | ExternalKind::FuncExact => ExportKind::Func,
                        ExternalKind::Table => ExportKind::Table,
                        ExternalKind::Memory => ExportKind::Memory,
                        ExternalKind::Global => ExportKind::Global,
                        ExternalKind::Tag => ExportKind::Tag,
                    };
                    exports.export(export.name, kind, export.index);
                }
                module.section(&exports);
            }
            other => {
                // Function bodies are inside the code section, which is copied whole.
                if let (false, Some((id, range))) = (matches!(other, Payload::CodeSectionEntry(_)), other.as_section())
                {
                    let range = usize::try_from(range.start).unwrap_or(usize::MAX)
                        ..usize::try_from(range.end).unwrap_or(usize::MAX);
                    let data = input.get(range).ok_or("a section past the end of the module")?;
                    module.section(&RawSection { id, data });
                }
            }
        }
    }
    Ok((module.finish(), removed))
}

fn run(args: &[String]) -> Result<String, String> {
    let usage = "usage: wasm-shrink IN.wasm OUT.wasm --remove-exports name,name,...";
    let (input, output) = match args {
        [i, o, flag, _] if flag == "--remove-exports" => (i, o),
        _ => return Err(usage.into()),
    };
    let drop: Vec<&str> = args[3].split(',').filter(|s| !s.is_empty()).collect();
    let bytes = std::fs::read(input).map_err(|e| format!("{input}: {e}"))?;
    let (pruned, removed) = remove_exports(&bytes, &drop)?;
    let tmp = format!("{output}.pruned");
    std::fs::write(&tmp, &pruned).map_err(|e| format!("{tmp}: {e}"))?;
    // The features rustc's wasm32-wasip1 target emits.
    let result = OptimizationOptions::new_optimize_for_size_aggressively()
        // Repeat the passes while the module still shrinks (binaryen's --converge).
        .set_converge()
        .enable_feature(Feature::BulkMemory)
        .enable_feature(Feature::SignExt)
        .enable_feature(Feature::MutableGlobals)
        .enable_feature(Feature::TruncSat)
        .run(&tmp, output);
    let _ = std::fs::remove_file(&tmp);
    result.map_err(|e| format!("wasm-opt: {e}"))?;
    let after = std::fs::metadata(output).map_err(|e| format!("{output}: {e}"))?.len();
    Ok(format!("{removed} exports removed, {} -> {after} bytes", bytes.len()))
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(summary) => {
            println!("wasm-shrink: {summary}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("wasm-shrink: {e}");
            ExitCode::FAILURE
        }
    }
}
