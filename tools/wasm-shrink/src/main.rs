//! `wasm-shrink IN OUT --remove-exports a,b,c [--oz]`: the last step of `scripts/build.sh`.
//!
//! 1. Drops the named exports. The Rust proxy-wasm SDK exports every callback, and Envoy
//!    enters the VM for each exported one (it skips those a module does not export), so a
//!    callback the filter does not implement costs a VM entry per request for nothing.
//! 2. Removes what only those exports reached (walrus's dead-code pass, pure Rust): the
//!    default build needs cargo alone and takes about a minute from nothing.
//! 3. With `--oz` (`make build-small`, the `binaryen` feature), optimises for size with
//!    binaryen as well (the `wasm-opt` crate compiles it from C++ the first time, several
//!    minutes on two cores). docs/architecture.md gives both builds' size and speed.

use std::process::ExitCode;

/// The module with the exports named in `drop` removed, and every function, global, table
/// entry or data segment no remaining export reaches removed with them.
fn remove_exports(input: &[u8], drop: &[&str]) -> Result<(Vec<u8>, usize), String> {
    let mut config = walrus::ModuleConfig::new();
    config.generate_producers_section(false);
    let mut module = config.parse(input).map_err(|e| format!("not a valid module: {e}"))?;
    let gone: Vec<walrus::ExportId> =
        module.exports.iter().filter(|e| drop.contains(&e.name.as_str())).map(|e| e.id()).collect();
    for id in &gone {
        module.exports.delete(*id);
    }
    walrus::passes::gc::run(&mut module);
    Ok((module.emit_wasm(), gone.len()))
}

#[cfg(feature = "binaryen")]
fn optimise_for_size(pruned: &[u8], output: &str) -> Result<(), String> {
    use wasm_opt::{Feature, OptimizationOptions};
    let tmp = format!("{output}.pruned");
    std::fs::write(&tmp, pruned).map_err(|e| format!("{tmp}: {e}"))?;
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
    result.map_err(|e| format!("wasm-opt: {e}"))
}

#[cfg(not(feature = "binaryen"))]
fn optimise_for_size(_: &[u8], _: &str) -> Result<(), String> {
    Err("--oz needs binaryen: build wasm-shrink with `--features binaryen` (make build-small)".into())
}

fn run(args: &[String]) -> Result<String, String> {
    let usage = "usage: wasm-shrink IN.wasm OUT.wasm --remove-exports name,name,... [--oz]";
    let (input, output, names, oz) = match args {
        [i, o, flag, names] if flag == "--remove-exports" => (i, o, names, false),
        [i, o, flag, names, oz] if flag == "--remove-exports" && oz == "--oz" => (i, o, names, true),
        _ => return Err(usage.into()),
    };
    let drop: Vec<&str> = names.split(',').filter(|s| !s.is_empty()).collect();
    let bytes = std::fs::read(input).map_err(|e| format!("{input}: {e}"))?;
    let (pruned, removed) = remove_exports(&bytes, &drop)?;
    if removed != drop.len() {
        // A name that is not exported is a typo or a callback the SDK stopped exporting.
        return Err(format!("{} of the {} exports to remove are not in the module", drop.len() - removed, drop.len()));
    }
    if oz {
        optimise_for_size(&pruned, output)?;
    } else {
        std::fs::write(output, &pruned).map_err(|e| format!("{output}: {e}"))?;
    }
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
