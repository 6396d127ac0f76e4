#!/usr/bin/env bash
# meshca's demo (make demo): on the sandbox — a real kube-apiserver, kwok
# nodes and a real istiod; the envoy pods (waypoints, gateway) run the real
# pilot-agent with meshca's envoy stand-in, ztunnel is simulated; all under
# mTLS probe traffic — first show the problem (the field note's one-step
# rotation fails handshakes), then rotate a fresh mesh's CA in three proven phases and end
# with the probe's handshake count and the fleet summary.
#
# Environment: DEMO_DIR (default .sandbox/demo), DEMO_NODES (default 3),
# DEMO_KEEP=1 to leave the sandbox running afterwards.
set -euo pipefail
cd "$(dirname "$0")/.."
meshca=bin/meshca
dir=${DEMO_DIR:-.sandbox/demo}
nodes=${DEMO_NODES:-3}

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
run() { printf '$ %s\n' "$*"; "$@"; }

cleanup() {
	if [[ "${DEMO_KEEP:-}" != 1 ]]; then
		"$meshca" sandbox down --dir "$dir" >/dev/null 2>&1 || true
	fi
}
trap cleanup EXIT

start_sandbox() {
	"$meshca" sandbox down --dir "$dir" >/dev/null 2>&1 || true
	rm -rf "$dir"
	# A 10 s grace period instead of the charts' 30 s keeps the demo short:
	# a restarted ztunnel closes what it still holds after 9 s, not 25 s.
	run "$meshca" sandbox up --dir "$dir" --nodes "$nodes" --workloads $((nodes * 2)) --grace-period 10s --detach
}
kc="$dir/kubeconfig"

# Resets happen when restarted proxies reach their drain deadline: wait for
# every drain to end so that the probe's count is complete.
wait_drains() {
	printf 'waiting for restarted proxies to finish draining'
	until "$meshca" sandbox status --dir "$dir" -o json | grep -q '"draining": 0'; do
		printf '.'
		sleep 1
	done
	printf '\n'
}

step "The problem: the field note's one-step rotation, under mTLS probe traffic"
start_sandbox
run "$meshca" ca root --out "$dir/new-root" --key-type ecdsa-p256
run "$meshca" rotate --kubeconfig "$kc" --root "$dir/new-root" --key-type ecdsa-p256 --yes \
	--strategy one-step --i-accept-downtime --sandbox "$dir"
wait_drains
run "$meshca" sandbox probe --dir "$dir"

step "A fresh sandbox: $nodes kwok nodes, real istiod, ztunnel per node, waypoints, a gateway"
start_sandbox

step "The mesh as istioctl users know it, for the whole fleet"
run "$meshca" verify --kubeconfig "$kc"
run "$meshca" ztunnel certs --kubeconfig "$kc" --node sandbox-0

step "Is the mesh ready for a rotation?"
run "$meshca" check --kubeconfig "$kc" || true

step "A new root, made offline (the key stays on this disk)"
run "$meshca" ca root --out "$dir/new-root" --key-type ecdsa-p256

step "meshca's rotation: trust, issue, retire — each phase proven on every proxy"
run "$meshca" rotate --kubeconfig "$kc" --root "$dir/new-root" --key-type ecdsa-p256 --yes --sandbox "$dir"

step "Result"
run "$meshca" status --kubeconfig "$kc"
run "$meshca" verify --kubeconfig "$kc"
wait_drains
run "$meshca" sandbox probe --dir "$dir"
