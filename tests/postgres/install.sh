#!/usr/bin/env bash
# Installs the PostgreSQL server the test suite runs its throwaway clusters with (Debian's
# `postgresql` package), when no server binaries are found. The tests run it themselves on
# first use (tests/it/common/postgres.rs), one at a time under a lock; .ci/run runs it
# first to show its cost. Prints the directory holding initdb and postgres.
set -euo pipefail

find_bindir() {
    if [ -n "${QUBS_BRIDGE_TEST_PG_BINDIR:-}" ] && [ -x "$QUBS_BRIDGE_TEST_PG_BINDIR/initdb" ]; then
        echo "$QUBS_BRIDGE_TEST_PG_BINDIR"
        return 0
    fi
    if command -v pg_config >/dev/null 2>&1; then
        local dir
        dir=$(pg_config --bindir)
        if [ -x "$dir/initdb" ] && [ -x "$dir/postgres" ]; then
            echo "$dir"
            return 0
        fi
    fi
    # Debian and Ubuntu keep each major version apart; take the newest.
    local newest
    newest=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
    if [ -n "$newest" ] && [ -x "$newest/initdb" ] && [ -x "$newest/postgres" ]; then
        echo "$newest"
        return 0
    fi
    return 1
}

if find_bindir; then
    exit 0
fi

echo "[tests/postgres/install] no PostgreSQL server binaries found; installing Debian's postgresql package" >&2
if ! command -v apt-get >/dev/null 2>&1; then
    echo "[tests/postgres/install] error: no apt-get here. Install a PostgreSQL server (initdb, postgres) and set QUBS_BRIDGE_TEST_PG_BINDIR to its bin directory, or point QUBS_BRIDGE_TEST_DATABASE_URL at a server the tests may create databases on" >&2
    exit 1
fi
sudo=""
if [ "$(id -u)" -ne 0 ]; then
    if sudo -n true 2>/dev/null; then
        sudo="sudo -n"
    else
        echo "[tests/postgres/install] error: installing needs root: run 'apt-get install postgresql' as root (or with sudo), or set QUBS_BRIDGE_TEST_DATABASE_URL to a server the tests may create databases on" >&2
        exit 1
    fi
fi
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq >&2
# The package's own cluster is not used (and need not start): the tests make their own.
$sudo apt-get install -y -qq --no-install-recommends postgresql >&2

if find_bindir; then
    exit 0
fi
echo "[tests/postgres/install] error: the postgresql package is installed but initdb was not found" >&2
exit 1
