//! Runs the project's install scripts (`tests/*/install.sh`) one at a time, across test
//! processes too: apt and dpkg take one installer at a time, and two tests may need one
//! at once (a browser and PostgreSQL, or both browsers).

use std::os::fd::AsRawFd;
use std::process::{Command, Output};

/// Runs `script` under the machine-wide install lock; its output when it has ended.
pub fn run_locked(script: &mut Command) -> Output {
    let lock_path = std::env::temp_dir().join("qubs-bridge-test-install.lock");
    let lock = std::fs::File::create(&lock_path).expect("install lock file");
    // SAFETY: flock on a file descriptor we own; released when the file is closed.
    unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) };
    let out = script
        .output()
        .unwrap_or_else(|e| panic!("cannot run {script:?}: {e}"));
    drop(lock);
    out
}
