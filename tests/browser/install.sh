#!/usr/bin/env bash
# Installs the headless browser the console's browser tests drive (Debian's `chromium` and
# `chromium-driver` packages), when they are missing. The tests run it themselves on first
# use (tests/it/common/browser.rs), one at a time under a lock; .ci/run runs it first to
# show its cost. Never downloads a browser build of its own: only the distribution's
# packages. Prints the paths of chromium and chromedriver, one per line.
set -euo pipefail

find_both() {
    local browser driver
    browser="${QUBS_BRIDGE_TEST_CHROMIUM:-}"
    driver="${QUBS_BRIDGE_TEST_CHROMEDRIVER:-}"
    [ -n "$browser" ] || browser=$(command -v chromium 2>/dev/null || command -v chromium-browser 2>/dev/null || true)
    [ -n "$driver" ] || driver=$(command -v chromedriver 2>/dev/null || true)
    if [ -n "$browser" ] && [ -x "$browser" ] && [ -n "$driver" ] && [ -x "$driver" ]; then
        echo "$browser"
        echo "$driver"
        return 0
    fi
    return 1
}

if find_both; then
    exit 0
fi

say() { echo "[tests/browser/install] $*" >&2; }
say "chromium or chromedriver not found; installing Debian's chromium and chromium-driver packages"
if ! command -v apt-get >/dev/null 2>&1; then
    say "error: no apt-get here. Install Chromium and its WebDriver (chromedriver) of the same version, and set QUBS_BRIDGE_TEST_CHROMIUM and QUBS_BRIDGE_TEST_CHROMEDRIVER to them"
    exit 1
fi
sudo=""
if [ "$(id -u)" -ne 0 ]; then
    if sudo -n true 2>/dev/null; then
        sudo="sudo -n"
    else
        say "error: installing needs root: run 'apt-get install chromium chromium-driver' as root (or with sudo), or set QUBS_BRIDGE_TEST_CHROMIUM and QUBS_BRIDGE_TEST_CHROMEDRIVER"
        exit 1
    fi
fi
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq >&2
$sudo apt-get install -y -qq --no-install-recommends chromium chromium-driver fonts-dejavu-core >&2

if find_both; then
    exit 0
fi
say "error: the packages are installed but chromium or chromedriver was not found on the PATH"
exit 1
