#!/usr/bin/env bash
# Installs headless Chromium and tidy for the HTML rotation report's tests
# (internal/report/htmlreport): TestScreenshot opens the report in Debian's
# chromium over the DevTools protocol (also internal/cmd/rotate's
# TestRotationReports), TestValidHTML runs `tidy` (HTML5) on
# it. Only the binaries are wanted: no recommends, no fonts beyond the
# package's dependencies.
set -euo pipefail
missing=()
command -v chromium >/dev/null || missing+=(chromium)
command -v tidy >/dev/null || missing+=(tidy)
if ((${#missing[@]} == 0)); then
	exit 0
fi
if [[ $(id -u) -ne 0 ]]; then
	echo "chromium: please install Debian's ${missing[*]}: apt-get install --no-install-recommends ${missing[*]}" >&2
	exit 1
fi
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
chromium --version
tidy -version
