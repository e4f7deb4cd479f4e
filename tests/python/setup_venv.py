#!/usr/bin/env python3
"""Sets up the Python venv the test suite's foreign tools run in (a gRPC client speaking
reflection, hl7apy), from requirements.txt: pinned versions, every file checked against its
hash, wheels only. Idempotent and safe to run concurrently: a second run that finds the
venv up to date returns at once.

    python3 tests/python/setup_venv.py [VENV_DIR]      # default: target/tmp/python-venv

Prints the venv's python on stdout; progress and errors go to stderr. Exits non-zero with
what to install when it cannot set the venv up (no venv module, no network to PyPI...).
"""

import fcntl
import hashlib
import os
import subprocess
import sys
import venv
from pathlib import Path

HERE = Path(__file__).resolve().parent
REQUIREMENTS = HERE / "requirements.txt"


def log(msg: str) -> None:
    print(f"[tests/python/setup_venv] {msg}", file=sys.stderr, flush=True)


def fail(msg: str) -> "None":
    log(f"error: {msg}")
    sys.exit(1)


def main() -> None:
    if sys.version_info < (3, 10):
        fail(
            f"Python {sys.version.split()[0]} is too old: the pinned grpcio needs 3.10 or "
            "later (set PYTHON to a newer interpreter)"
        )
    target = Path(sys.argv[1] if len(sys.argv) > 1 else HERE.parents[1] / "target/tmp/python-venv")
    target.parent.mkdir(parents=True, exist_ok=True)
    python = target / "bin" / "python"
    wanted = hashlib.sha256(REQUIREMENTS.read_bytes()).hexdigest()
    stamp = target / ".requirements-sha256"
    # One set-up at a time (tests run in parallel, and CI may have started one already).
    with open(target.parent / f".{target.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if python.exists() and stamp.exists() and stamp.read_text().strip() == wanted:
            print(python)
            return
        log(f"creating {target}")
        try:
            venv.EnvBuilder(clear=True, with_pip=True).create(target)
        except Exception as e:  # ensurepip missing (Debian without python3-venv) and the like
            fail(
                f"cannot create a venv with pip in {target}: {e}. Install the venv module "
                "(Debian/Ubuntu: apt-get install python3-venv)"
            )
        log(f"installing {REQUIREMENTS.relative_to(HERE.parents[1])} (pinned, hash-checked)")
        pip = [
            str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
            "--no-input", "--require-hashes", "--only-binary", ":all:", "-r", str(REQUIREMENTS),
        ]
        done = subprocess.run(pip, stdout=sys.stderr)
        if done.returncode != 0:
            fail(
                "pip could not install the pinned packages (above: why). It needs PyPI (or a "
                "mirror configured for pip) and a wheel of each pin for this platform and "
                f"Python {sys.version_info.major}.{sys.version_info.minor}"
            )
        check = subprocess.run(
            [str(python), "-c", "import grpc, grpc_reflection, google.protobuf, hl7apy, jq"],
            stdout=sys.stderr,
        )
        if check.returncode != 0:
            fail("the installed packages do not import (above: why)")
        stamp.write_text(wanted + "\n")
        log("ready")
    print(python)


if __name__ == "__main__":
    main()
