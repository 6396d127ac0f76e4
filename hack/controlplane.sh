#!/usr/bin/env bash
# Builds the sandbox's control-plane binaries (etcd as "server", kube-apiserver,
# kube-controller-manager, kube-scheduler, kubectl, kwok, pilot-discovery and
# pilot-agent, the real istio-agent the sandbox runs behind envoy pods) into
# bin/ from the pinned tools/ module, and copies the assets the sandbox needs
# (kwok's fast stages and PortForward CRD, istio's CRDs) into bin/assets/.
#
# Idempotent: the build is skipped when bin/ holds every binary and bin/.stamp
# matches sha256(tools/go.mod + tools/go.sum + this script). A cold build takes
# ~9 minutes on 2 cores and ~10 GB of disk (module cache ~1.1 GB, build cache
# ~6 GB, binaries ~0.6 GB); a warm one 20-40 s.
#
# Environment: MESHCA_SKIP_DISK_CHECK=1 skips the free-space check (warm cache).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

binaries=(server kube-apiserver kube-controller-manager kube-scheduler kubectl kwok pilot-discovery pilot-agent)
required_gb=10

stamp="$(cat tools/go.mod tools/go.sum hack/controlplane.sh | sha256sum | cut -d' ' -f1)"

up_to_date() {
	[[ -f bin/.stamp && "$(cat bin/.stamp)" == "$stamp" ]] || return 1
	local b
	for b in "${binaries[@]}"; do
		[[ -x "bin/$b" ]] || return 1
	done
}

# free_gb PATH: free space in whole GB on the filesystem holding PATH (or its
# nearest existing parent).
free_gb() {
	local p="$1"
	while [[ ! -e "$p" ]]; do p="$(dirname "$p")"; done
	df -Pk "$p" | awk 'NR==2 { printf "%d", $4 / 1024 / 1024 }'
}

check_disk() {
	if [[ "${MESHCA_SKIP_DISK_CHECK:-}" == 1 ]]; then
		return
	fi
	local gocache gomodcache path free
	gocache="$(cd tools && go env GOCACHE)"
	gomodcache="$(cd tools && go env GOMODCACHE)"
	for path in "$gocache" "$gomodcache" "$root/bin"; do
		free="$(free_gb "$path")"
		if ((free < required_gb)); then
			cat >&2 <<-EOF
				controlplane: NOT ENOUGH DISK SPACE: ${free} GB free on the filesystem of $path,
				a cold build needs about ${required_gb} GB (module cache ~1.1 GB, build cache ~6 GB,
				binaries ~0.6 GB). Free some space (e.g. 'go clean -cache' elsewhere), point
				GOCACHE/GOMODCACHE at a larger disk, or set MESHCA_SKIP_DISK_CHECK=1 if the build
				cache is already warm.
			EOF
			exit 1
		fi
	done
}

build() {
	mkdir -p bin
	echo "controlplane: building ${binaries[*]} into bin/ (cold: ~18 min on 2 cores, warm: <1 min)" >&2
	local log start pid elapsed next status
	log="$(mktemp "${TMPDIR:-/tmp}/controlplane-build.XXXXXX")"
	start=$SECONDS
	(
		cd tools && exec go build -trimpath -o ../bin/ -ldflags "-s -w -X k8s.io/component-base/version.gitVersion=v1.37.2 -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=37" go.etcd.io/etcd/server/v3 k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager k8s.io/kubernetes/cmd/kube-scheduler k8s.io/kubernetes/cmd/kubectl sigs.k8s.io/kwok/cmd/kwok istio.io/istio/pilot/cmd/pilot-discovery istio.io/istio/pilot/cmd/pilot-agent
	) >"$log" 2>&1 &
	pid=$!
	trap 'kill "$pid" 2>/dev/null; rm -f "$log"; exit 130' INT TERM
	next=30
	while kill -0 "$pid" 2>/dev/null; do
		sleep 1
		elapsed=$((SECONDS - start))
		if ((elapsed >= next)); then
			echo "controlplane: still building... ${elapsed}s elapsed" >&2
			next=$((next + 30))
		fi
	done
	status=0
	wait "$pid" || status=$?
	trap - INT TERM
	if ((status != 0)); then
		echo "controlplane: build FAILED after $((SECONDS - start))s (exit $status):" >&2
		cat "$log" >&2
		rm -f "$log"
		exit "$status"
	fi
	cat "$log" >&2
	rm -f "$log"
	echo "controlplane: built in $((SECONDS - start))s" >&2
}

# copy_assets copies the kwok stages and CRD and istio's CRDs from the module
# cache (filled by the build) into bin/assets, so the sandbox needs no network.
copy_assets() {
	local kwok istio
	kwok="$(cd tools && go list -m -f '{{.Dir}}' sigs.k8s.io/kwok)"
	istio="$(cd tools && go list -m -f '{{.Dir}}' istio.io/istio)"
	if [[ -z "$kwok" || -z "$istio" ]]; then
		echo "controlplane: kwok or istio module not in the module cache; run 'cd tools && go mod download'" >&2
		exit 1
	fi
	mkdir -p bin/assets/kwok/stages bin/assets/kwok/crds bin/assets/istio
	install -m 0644 \
		"$kwok/kustomize/stage/node/fast/node-initialize.yaml" \
		"$kwok/kustomize/stage/node/heartbeat-with-lease/node-heartbeat-with-lease.yaml" \
		"$kwok/kustomize/stage/pod/fast/pod-ready.yaml" \
		"$kwok/kustomize/stage/pod/fast/pod-complete.yaml" \
		"$kwok/kustomize/stage/pod/fast/pod-delete.yaml" \
		bin/assets/kwok/stages/
	install -m 0644 "$kwok/kustomize/crd/bases/kwok.x-k8s.io_portforwards.yaml" bin/assets/kwok/crds/
	install -m 0644 "$istio/manifests/charts/base/files/crd-all.gen.yaml" bin/assets/istio/
	# The envoy bootstrap template the proxyv2 image carries, which the real
	# pilot-agent renders for the sandbox's envoy stand-in.
	install -m 0644 "$istio/tools/packaging/common/envoy_bootstrap.json" bin/assets/istio/
	# The release line of the istiod we build, so the sandbox labels istiod
	# with what it really is.
	install -m 0644 "$istio/VERSION" bin/assets/istio/VERSION
}

if up_to_date; then
	echo "controlplane: bin/ is up to date" >&2
else
	check_disk
	rm -f bin/.stamp
	build
	echo "$stamp" >bin/.stamp
fi
copy_assets
echo "controlplane: assets in bin/assets" >&2
