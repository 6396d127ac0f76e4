#!/usr/bin/env bash
# Installs the few system packages meshca's tests use that Go modules cannot
# provide: openssl (compatibility tests against the tools/certs Makefile).
set -euo pipefail
missing=()
command -v openssl >/dev/null || missing+=(openssl)
if ((${#missing[@]})); then
	if [[ $(id -u) -ne 0 ]]; then
		echo "deps: please install: ${missing[*]}" >&2
		exit 1
	fi
	apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
fi
# promtool tests the alert rules of deploy/prometheus (see hack/promtool.sh).
"$(dirname "$0")/promtool.sh"
# chromium and tidy test the HTML rotation report (see hack/chromium.sh).
"$(dirname "$0")/chromium.sh"
