//! The Python tools some tests run (a foreign gRPC client, hl7apy): a venv set up from
//! `tests/python/requirements.txt` (pinned, hash-checked) by `tests/python/setup_venv.py`,
//! once per test run. No Python, no venv module or no way to PyPI fails the test with
//! what to install; it never skips.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The venv's interpreter, setting the venv up on first use.
pub fn python() -> &'static Path {
    static PYTHON: OnceLock<PathBuf> = OnceLock::new();
    PYTHON.get_or_init(|| {
        let venv = Path::new(env!("CARGO_TARGET_TMPDIR")).join("python-venv");
        // The interpreter that creates the venv: `PYTHON`, else python3 on the PATH.
        let base = std::env::var("PYTHON").unwrap_or_else(|_| "python3".into());
        let out = Command::new(&base)
            .arg("tests/python/setup_venv.py")
            .arg(&venv)
            .output()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot run `{base}` to set up the test venv: {e}. These tests need \
                     Python 3.10+ with the venv module (Debian/Ubuntu: apt-get install \
                     python3 python3-venv), or PYTHON set to such an interpreter"
                )
            });
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            out.status.success(),
            "tests/python/setup_venv.py could not set up {}:\n{stderr}",
            venv.display()
        );
        PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
    })
}

/// Runs `tests/python/<script>` with `args` in the venv; returns its stdout, or panics
/// with its stderr when it failed.
pub fn run(script: &str, args: &[&str]) -> String {
    let out = Command::new(python())
        .arg(Path::new("tests/python").join(script))
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {script}: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{script} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}
