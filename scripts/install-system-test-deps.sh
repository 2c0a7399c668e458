#!/usr/bin/env bash
# What tests/system needs from the operating system: PostgreSQL's server programs (initdb, pg_ctl,
# postgres, createdb) from Debian's packages, and runuser to run them as the postgres account.
# Idempotent: when initdb is already installed, apt is left alone. The Python side (psycopg2,
# asyncpg) comes with the project's dev extra.
set -euo pipefail

find_initdb() {
    ls /usr/lib/postgresql/*/bin/initdb 2>/dev/null | sort -V | tail -n 1
}

initdb=$(find_initdb || true)
if [ -z "$initdb" ]; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "PostgreSQL is not installed and installing it needs root: apt-get install -y postgresql" >&2
        exit 1
    fi
    echo "Installing PostgreSQL from Debian's packages..."
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends postgresql >/dev/null
    initdb=$(find_initdb || true)
    if [ -z "$initdb" ]; then
        echo "apt-get installed postgresql, but no /usr/lib/postgresql/*/bin/initdb was found" >&2
        exit 1
    fi
fi

if ! id postgres >/dev/null 2>&1; then
    echo "There is no postgres account (Debian's postgresql package creates it); initdb refuses to run as root" >&2
    exit 1
fi
command -v runuser >/dev/null || { echo "runuser (util-linux) is missing" >&2; exit 1; }

echo "PostgreSQL for the system test: $(dirname "$initdb") ($("$initdb" --version))"
