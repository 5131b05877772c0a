#!/usr/bin/env bash
# Runs every test of the workspace: unit, integration (against private MariaDB instances the
# harness starts) and doc tests. On a fresh Debian machine, as root, it first installs MariaDB
# when mariadbd is missing. With CI=true a missing MariaDB fails the run; tests never skip it.
set -euo pipefail
cd "$(dirname "$0")/.."

have_mariadbd() {
  command -v mariadbd >/dev/null 2>&1 || [ -x /usr/sbin/mariadbd ]
}

if ! have_mariadbd; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "test.sh: mariadbd not found; installing mariadb-server-core mariadb-client-core" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq mariadb-server-core mariadb-client-core >/dev/null
  fi
fi
if ! have_mariadbd; then
  echo "test.sh: mariadbd is missing and could not be installed (need root and apt-get);" \
       "install mariadb-server-core and mariadb-client-core" >&2
  exit 1
fi
export PATH="$PATH:/usr/sbin"

# One build of every target first, so the tests' own binary builds (tests/src/binary.rs) are
# no-ops and compile errors show before any test runs.
cargo build --workspace --all-targets --locked
cargo test --workspace --locked --no-fail-fast
# `scripts/dev-mysql.sh up` next to a running cluster with a paused component leaves it running.
scripts/dev-mysql-check.sh
