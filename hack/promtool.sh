#!/usr/bin/env bash
# Installs promtool, which tests deploy/prometheus/ (internal/exporter's
# TestPrometheusRules runs `promtool check rules` and `promtool test rules`).
# Debian's prometheus package ships it as /usr/bin/promtool (2.42 in bookworm,
# new enough for rule unit tests); only the binary is wanted, so the package is
# installed without recommends and its service is never started here.
set -euo pipefail
if command -v promtool >/dev/null; then
	exit 0
fi
if [[ $(id -u) -ne 0 ]]; then
	echo "promtool: not found; install Debian's prometheus package (it ships promtool): apt-get install --no-install-recommends prometheus" >&2
	exit 1
fi
apt-get update -qq
# policy-rc.d 101 keeps the package's postinst from starting the daemon.
policy=/usr/sbin/policy-rc.d
created=
if [[ ! -e $policy ]]; then
	printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod 0755 "$policy" && created=1
fi
trap '[[ -n $created ]] && rm -f "$policy"' EXIT
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus
promtool --version | head -1
