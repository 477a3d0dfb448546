#!/usr/bin/env bash
# Make sure the programs the integration tests run are installed: prosody,
# prosodyctl, openssl, and lua-dbi-sqlite3 (the SQLite driver of Prosody's
# SQL storage, which the test servers use). Missing ones are installed from
# the Debian packages, as root or through passwordless sudo.
#
# The tests start Prosody themselves from a config of their own, so the
# system service must not start during the install: a policy-rc.d that
# forbids service starts is in place for the duration of apt-get install.
# A system service that runs anyway is left alone, because the tests use
# their own ports.
set -euo pipefail

POLICY_RC=/usr/sbin/policy-rc.d

have() {
    command -v "$1" >/dev/null 2>&1
}

packages=()
if ! have prosody || ! have prosodyctl; then
    packages+=(prosody)
fi
if ! have openssl; then
    packages+=(openssl)
fi
if ! dpkg-query -W -f '${Status}' lua-dbi-sqlite3 2>/dev/null | grep -q "ok installed"; then
    packages+=(lua-dbi-sqlite3)
fi
if [ "${#packages[@]}" -eq 0 ]; then
    exit 0
fi

if [ "$(id -u)" -eq 0 ]; then
    as_root=()
elif have sudo && sudo -n true 2>/dev/null; then
    as_root=(sudo -n)
else
    for package in "${packages[@]}"; do
        echo "$package is missing: install the Debian package $package," \
            "e.g. sudo apt-get install $package" >&2
    done
    exit 1
fi

created_policy=false
remove_policy() {
    if [ "$created_policy" = true ]; then
        "${as_root[@]}" rm -f "$POLICY_RC"
    fi
}
trap remove_policy EXIT

if [ ! -e "$POLICY_RC" ]; then
    echo "writing $POLICY_RC so that installed services do not start"
    printf '#!/bin/sh\n# Written by scripts/ensure-prosody.sh during apt-get install.\nexit 101\n' \
        | "${as_root[@]}" tee "$POLICY_RC" >/dev/null
    created_policy=true
    "${as_root[@]}" chmod 755 "$POLICY_RC"
fi

echo "installing ${packages[*]} with apt-get"
"${as_root[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq
"${as_root[@]}" env DEBIAN_FRONTEND=noninteractive \
    apt-get install -y -qq --no-upgrade "${packages[@]}"

for program in prosody prosodyctl openssl; do
    if ! have "$program"; then
        echo "$program is still not on PATH after installing ${packages[*]}" >&2
        exit 1
    fi
done
