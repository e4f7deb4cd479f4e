#!/usr/bin/env bash
# Installs the headless browsers the console's browser tests drive, when they are missing:
# Chromium and chromedriver (Debian's `chromium` and `chromium-driver` packages), Firefox
# (Debian's `firefox-esr`) and its WebDriver, geckodriver, which Debian does not package:
# built once from crates.io with `cargo install` (a pinned version) into the target
# directory's scratch space, where later runs find it. Never downloads a browser build of
# its own: only the distribution's packages. The tests run it themselves on first use
# (tests/it/common/browser.rs), one install at a time under a lock; .ci/run runs it first
# to show its cost.
#
#   bash tests/browser/install.sh [chromium|firefox]...    (both when none is named)
#
# Prints, for each browser named, the path of the browser and of its WebDriver, one per line.
set -euo pipefail

GECKODRIVER_VERSION=0.37.1
root=$(cd "$(dirname "$0")/../.." && pwd)
# The test binary's scratch directory (the tests pass theirs), as for the Python venv.
scratch="${CARGO_TARGET_TMPDIR:-${CARGO_TARGET_DIR:-$root/target}/tmp}"
geckodriver_root="$scratch/geckodriver-$GECKODRIVER_VERSION"
built_geckodriver="$geckodriver_root/bin/geckodriver"

say() { echo "[tests/browser/install] $*" >&2; }

# Each prints the browser's and the driver's paths, or fails when either is missing.
find_chromium() {
    local browser driver
    browser="${QUBS_BRIDGE_TEST_CHROMIUM:-}"
    driver="${QUBS_BRIDGE_TEST_CHROMEDRIVER:-}"
    [ -n "$browser" ] || browser=$(command -v chromium 2>/dev/null || command -v chromium-browser 2>/dev/null || true)
    [ -n "$driver" ] || driver=$(command -v chromedriver 2>/dev/null || true)
    [ -n "$browser" ] && [ -x "$browser" ] && [ -n "$driver" ] && [ -x "$driver" ] || return 1
    echo "$browser"
    echo "$driver"
}

find_firefox() {
    local browser driver
    browser="${QUBS_BRIDGE_TEST_FIREFOX:-}"
    [ -n "$browser" ] || browser=$(command -v firefox-esr 2>/dev/null || command -v firefox 2>/dev/null || true)
    driver=$(find_geckodriver) || true
    [ -n "$browser" ] && [ -x "$browser" ] && [ -n "$driver" ] || return 1
    echo "$browser"
    echo "$driver"
}

# QUBS_BRIDGE_TEST_GECKODRIVER, else the pinned build, else a geckodriver on the PATH.
find_geckodriver() {
    local driver="${QUBS_BRIDGE_TEST_GECKODRIVER:-}"
    if [ -z "$driver" ] && [ -x "$built_geckodriver" ]; then
        driver="$built_geckodriver"
    fi
    [ -n "$driver" ] || driver=$(command -v geckodriver 2>/dev/null || true)
    [ -n "$driver" ] && [ -x "$driver" ] || return 1
    echo "$driver"
}

# What to do instead where this script cannot install a browser.
by_hand() {
    case "$1" in
    chromium) echo "install Chromium and its WebDriver (chromedriver) of the same version, and set QUBS_BRIDGE_TEST_CHROMIUM and QUBS_BRIDGE_TEST_CHROMEDRIVER to them" ;;
    firefox) echo "install Firefox and set QUBS_BRIDGE_TEST_FIREFOX to it" ;;
    esac
}

apt_install() {
    local engine="$1"
    shift
    say "$engine not found; installing Debian's $*"
    if ! command -v apt-get >/dev/null 2>&1; then
        say "error: no apt-get here: $(by_hand "$engine")"
        exit 1
    fi
    local sudo=""
    if [ "$(id -u)" -ne 0 ]; then
        if sudo -n true 2>/dev/null; then
            sudo="sudo -n"
        else
            say "error: installing needs root: run 'apt-get install $*' as root (or with sudo), or $(by_hand "$engine")"
            exit 1
        fi
    fi
    export DEBIAN_FRONTEND=noninteractive
    $sudo apt-get update -qq >&2
    $sudo apt-get install -y -qq --no-install-recommends "$@" fonts-dejavu-core >&2
}

# geckodriver from crates.io, built in a throwaway directory (never the project's own
# target directory, which a running `cargo test` holds locked).
build_geckodriver() {
    local cargo="${CARGO:-cargo}"
    if ! command -v "$cargo" >/dev/null 2>&1; then
        say "error: no cargo to build geckodriver with. Run 'cargo install --locked --version $GECKODRIVER_VERSION geckodriver', or set QUBS_BRIDGE_TEST_GECKODRIVER to a geckodriver"
        exit 1
    fi
    say "geckodriver not found; building geckodriver $GECKODRIVER_VERSION from crates.io into $geckodriver_root (a few minutes)"
    local build
    build=$(mktemp -d)
    if ! "$cargo" install --locked --quiet --version "=$GECKODRIVER_VERSION" geckodriver \
        --root "$geckodriver_root" --target-dir "$build" >&2; then
        rm -rf "$build"
        say "error: 'cargo install geckodriver' failed (see above); set QUBS_BRIDGE_TEST_GECKODRIVER to a geckodriver"
        exit 1
    fi
    rm -rf "$build"
}

# A variable naming a program that is not there is a mistake to report, not to install around.
for var in QUBS_BRIDGE_TEST_CHROMIUM QUBS_BRIDGE_TEST_CHROMEDRIVER QUBS_BRIDGE_TEST_FIREFOX QUBS_BRIDGE_TEST_GECKODRIVER; do
    if [ -n "${!var:-}" ] && [ ! -x "${!var}" ]; then
        say "error: $var is set to ${!var}, which is not an executable file"
        exit 1
    fi
done

engines=("$@")
[ ${#engines[@]} -gt 0 ] || engines=(chromium firefox)
for engine in "${engines[@]}"; do
    case "$engine" in
    chromium)
        find_chromium >/dev/null || apt_install chromium chromium chromium-driver
        ;;
    firefox)
        find_geckodriver >/dev/null || build_geckodriver
        find_firefox >/dev/null || apt_install firefox firefox-esr
        ;;
    *)
        say "error: unknown browser '$engine' (chromium or firefox)"
        exit 2
        ;;
    esac
    if ! find_"$engine" >/dev/null; then
        say "error: the packages are installed but $engine or its WebDriver was not found on the PATH"
        exit 1
    fi
done
for engine in "${engines[@]}"; do
    find_"$engine"
done
