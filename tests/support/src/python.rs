//! The Python that scripts/provision.sh installs with Confluent's client (tests/python/requirements.txt),
//! for tests that read sluice's topics as a Python consumer does.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{bail, Context, Result};

/// The venv's interpreter: `$SLUICE_PYTHON`, else where scripts/provision.sh installs it.
pub fn python_binary() -> Result<PathBuf> {
    let path = match std::env::var_os("SLUICE_PYTHON") {
        Some(path) => PathBuf::from(path),
        None => crate::cache_dir()?
            .join("python")
            .join("bin")
            .join("python"),
    };
    if !path.is_file() {
        bail!(
            "the Python test packages are not installed at {}: run scripts/provision.sh (or set SLUICE_PYTHON)",
            path.display()
        );
    }
    Ok(path)
}

/// Runs `script` (a path under tests/python) with `args`; its standard output, or an error with its
/// standard error.
pub fn run(script: &str, args: &[&str]) -> Result<String> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join("python")
        .join(script);
    let output = Command::new(python_binary()?)
        .arg(&path)
        .args(args)
        .output()
        .with_context(|| format!("running {}", path.display()))?;
    if !output.status.success() {
        bail!(
            "{} failed ({}):\n{}",
            path.display(),
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(String::from_utf8(output.stdout)?)
}
