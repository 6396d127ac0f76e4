#!/usr/bin/env bash
# Measures `meshca exporter` on a large sandbox: CPU and RSS of the exporter
# process alone (the sandbox runs in another process), sampled from /proc
# every SAMPLE seconds for MINUTES minutes with the fleet walk on, and the
# fleet walk's own duration as the exporter reports it. Prints the figures.
#
#   NODES=200 WORKLOADS=400 MINUTES=5 FLEET_INTERVAL=1m hack/exporter-bench.sh
#
# Needs the control-plane binaries (MESHCA_BIN_DIR or bin/).
set -euo pipefail
nodes=${NODES:-200}
workloads=${WORKLOADS:-$((nodes * 2))}
minutes=${MINUTES:-5}
fleet=${FLEET_INTERVAL:-1m}
sample=${SAMPLE:-10}
port=${PORT:-19599}
cd "$(dirname "$0")/.."
work=$(mktemp -d)
bin=$work/meshca
go build -o "$bin" ./cmd/meshca
pid=
cleanup() {
	[[ -n $pid ]] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null
	"$bin" sandbox down --dir "$work/sb" >/dev/null 2>&1 || true
	rm -rf "$work"
}
trap cleanup EXIT
t0=$(date +%s)
"$bin" sandbox up --dir "$work/sb" --nodes "$nodes" --workloads "$workloads" --probe-interval 0 --detach >/dev/null
echo "sandbox: $nodes nodes, $workloads workloads, up in $(($(date +%s) - t0))s"
"$bin" exporter --kubeconfig "$work/sb/kubeconfig" --listen "127.0.0.1:$port" --fleet-interval "$fleet" 2>"$work/exporter.log" &
pid=$!
url=http://127.0.0.1:$port
until curl -fs "$url/readyz" >/dev/null; do
	kill -0 "$pid" || { cat "$work/exporter.log"; exit 1; }
	sleep 1
done
hz=$(getconf CLK_TCK)
ticks() { awk '{print $14 + $15}' "/proc/$pid/stat"; }
rss_kib() { awk '/VmRSS/ {print $2}' "/proc/$pid/status"; }
start_ticks=$(ticks)
start=$(date +%s)
max_rss=0
sum_rss=0
n=0
end=$((start + minutes * 60))
while (($(date +%s) < end)); do
	r=$(rss_kib)
	((r > max_rss)) && max_rss=$r
	sum_rss=$((sum_rss + r))
	n=$((n + 1))
	sleep "$sample"
done
cpu_ticks=$(($(ticks) - start_ticks))
elapsed=$(($(date +%s) - start))
metrics=$(curl -fs "$url/metrics")
proxies=$(awk '/^meshca_proxies\{/ {s += $2} END {print s}' <<<"$metrics")
leafs=$(grep -c '^meshca_proxy_cert_not_after_seconds{' <<<"$metrics" || true)
walk=$(awk '/^meshca_scrape_duration_seconds\{.*stage="fleet"/ {print $2}' <<<"$metrics")
errors=$(awk '/^meshca_scrape_errors_total\{/ {s += $2} END {print s}' <<<"$metrics")
awk -v t="$cpu_ticks" -v hz="$hz" -v e="$elapsed" -v max="$max_rss" -v sum="$sum_rss" -v n="$n" \
	-v p="$proxies" -v l="$leafs" -v w="$walk" -v err="$errors" -v f="$fleet" 'BEGIN {
	printf "proxies %d, leaf series %d, fleet walk every %s took %.2fs (last), read errors %d\n", p, l, f, w, err
	printf "exporter over %ds: CPU %.2fs (%.1f%% of one core), RSS mean %.1f MiB, max %.1f MiB\n", e, t / hz, 100 * t / hz / e, sum / n / 1024, max / 1024
}'
