//! ONNX Runtime for the stages that run models (image features,
//! translation): the process's environment, loaded once at run time from
//! `ORT_DYLIB_PATH`, else the `onnxruntime` Python package of a `.venv` next
//! to the working directory or the executable, else the system's
//! `libonnxruntime.so`; and the model files a `model` setting names.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use ort::environment::Environment;

static ENVIRONMENT: OnceLock<std::result::Result<Environment, String>> = OnceLock::new();

/// Where the ONNX Runtime library is looked for, in order.
fn library_candidates() -> Vec<PathBuf> {
    if let Some(p) = std::env::var_os("ORT_DYLIB_PATH") {
        return vec![PathBuf::from(p)];
    }
    let mut roots: Vec<PathBuf> = Vec::new();
    if let Ok(cwd) = std::env::current_dir() {
        roots.push(cwd);
    }
    if let Ok(exe) = std::env::current_exe() {
        roots.extend(exe.ancestors().skip(1).take(4).map(Path::to_path_buf));
    }
    let mut out = Vec::new();
    for root in roots {
        let pattern =
            root.join(".venv/lib/python3*/site-packages/onnxruntime/capi/libonnxruntime.so.*");
        if let Ok(paths) = glob::glob(&pattern.to_string_lossy()) {
            out.extend(paths.flatten());
        }
    }
    out.push(PathBuf::from("libonnxruntime.so"));
    out
}

/// The process's ONNX Runtime environment, loaded once.
pub fn environment() -> std::result::Result<&'static Environment, String> {
    ENVIRONMENT
        .get_or_init(|| {
            let mut errors = Vec::new();
            for lib in library_candidates() {
                match ort::init_from(&lib) {
                    Ok(builder) => {
                        return builder
                            .with_name("kiln")
                            .build()
                            .map_err(|e| format!("ONNX Runtime from {}: {e}", lib.display()));
                    }
                    Err(e) => errors.push(format!("{}: {e}", lib.display())),
                }
            }
            Err(format!(
                "cannot load ONNX Runtime 1.31 (run scripts/setup.sh, or set ORT_DYLIB_PATH to libonnxruntime.so): {}",
                errors.join("; ")
            ))
        })
        .as_ref()
        .map_err(Clone::clone)
}

/// The model file a `model` setting names.
pub fn resolve_model(model: &str) -> std::result::Result<PathBuf, String> {
    if model.ends_with(".onnx") || model.contains('/') {
        let p = PathBuf::from(model);
        return if p.is_file() {
            Ok(p)
        } else {
            Err(format!("no model file `{model}`"))
        };
    }
    let file = format!("{}.onnx", model.replace('-', "_"));
    let mut dirs: Vec<PathBuf> = Vec::new();
    if let Some(d) = std::env::var_os("KILN_MODELS") {
        dirs.push(PathBuf::from(d));
    }
    if let Ok(cwd) = std::env::current_dir() {
        dirs.push(cwd.join("models"));
    }
    if let Ok(exe) = std::env::current_exe() {
        dirs.extend(exe.ancestors().skip(1).take(4).map(|a| a.join("models")));
    }
    dirs.iter()
        .map(|d| d.join(&file))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            format!(
                "model `{model}` not found as {file} in KILN_MODELS, ./models or beside the executable; `scripts/setup.sh` builds it"
            )
        })
}
