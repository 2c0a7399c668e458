#!/usr/bin/env bash
# What tests/system needs from the operating system: PostgreSQL's server programs (initdb, pg_ctl,
# postgres, createdb) from Debian's packages, and runuser to run them as the postgres account;
# tests/cluster also needs redis-server, its Celery broker.
# Idempotent: when initdb and redis-server are already installed, apt is left alone. The Python side
# (psycopg2, asyncpg, the Celery provider) comes with the project's dev extra.
set -euo pipefail

find_initdb() {
    ls /usr/lib/postgresql/*/bin/initdb 2>/dev/null | sort -V | tail -n 1
}

initdb=$(find_initdb || true)
missing=()
[ -n "$initdb" ] || missing+=(postgresql)
command -v redis-server >/dev/null || missing+=(redis-server)
if [ ${#missing[@]} -gt 0 ]; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "${missing[*]} not installed, and installing needs root: apt-get install -y ${missing[*]}" >&2
        exit 1
    fi
    echo "Installing ${missing[*]} from Debian's packages..."
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
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

command -v redis-server >/dev/null || { echo "apt-get installed redis-server, but it is not on PATH" >&2; exit 1; }

echo "PostgreSQL for the system test: $(dirname "$initdb") ($("$initdb" --version))"
echo "Redis for the cluster test: $(command -v redis-server) ($(redis-server --version | cut -d' ' -f1-3))"
