#!/usr/bin/env bash
# What the browser test of the Airflow UI needs from the operating system: Debian's Chromium, which
# the playwright package (from the project's dev extra) drives headless. Playwright's own browser
# download is not used. Idempotent: when /usr/bin/chromium exists, apt is left alone.
set -euo pipefail

CHROMIUM=/usr/bin/chromium

if [ ! -x "$CHROMIUM" ]; then
    if [ "$(id -u)" -ne 0 ]; then
        echo "Chromium is not installed and installing it needs root: apt-get install -y chromium" >&2
        exit 1
    fi
    echo "Installing Chromium from Debian's packages..."
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core >/dev/null
fi

[ -x "$CHROMIUM" ] || { echo "apt-get installed chromium, but $CHROMIUM is missing" >&2; exit 1; }
echo "Chromium for the browser test: $("$CHROMIUM" --version)"
