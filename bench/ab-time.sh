#!/usr/bin/env bash
# Compare builds of moe_router_time on one workload, alternating them so that every build sees the
# same moments of a shared machine (its slow phases last seconds), and print each build's median,
# first quartile and minimum of the per-run medians.
#
#   bench/ab-time.sh [-n alternations] [-t threads] [-d dtypes] [-b backend] [-r runs] [-w workloads.json]
#                    [-c copies] WORKLOAD TOOL...
#   e.g. cp build-tools/moe_router_time /tmp/old; (change, rebuild);
#        bench/ab-time.sh -n 12 -t 2 -d f32,bf16 mixtral-prefill /tmp/old build-tools/moe_router_time
#   -c 2 measures in cache (two copies of the input) a shape small enough for it (-w a file of such).
set -euo pipefail
alternations=10 threads=2 dtypes=f32 backend=avx512 runs=15 workloads= copies=()
while getopts n:t:d:b:r:w:c: opt; do
  case $opt in
    n) alternations=$OPTARG ;;
    t) threads=$OPTARG ;;
    d) dtypes=$OPTARG ;;
    b) backend=$OPTARG ;;
    r) runs=$OPTARG ;;
    w) workloads=$OPTARG ;;
    c) copies=(--copies "$OPTARG") ;;
    *) exit 2 ;;
  esac
done
shift $((OPTIND - 1))
[ $# -ge 2 ] || { sed -n 2,9p "$0"; exit 2; }
workload=$1
shift
if [ -z "$workloads" ]; then
  workloads="$(dirname "$0")/../../shared/workloads.json"
  [ -f "$workloads" ] || workloads="${MOE_WORKLOADS:?set MOE_WORKLOADS to workloads.json, or pass -w}"
fi

for _ in $(seq "$alternations"); do
  for tool in "$@"; do
    "$tool" --workloads "$workloads" --only "$workload" --backends "$backend" --dtypes "$dtypes" \
      --threads "$threads" --runs "$runs" "${copies[@]}" | awk -v tool="$tool" -v w="$workload" '$1 == w { print tool, $2, $3, $4 }'
  done
done | awk '
  { key = $2 " " $3 " " $1; n[key]++; v[key, n[key]] = $4 }
  END {
    for (key in n) {
      m = n[key]
      for (i = 1; i <= m; i++) s[i] = v[key, i]
      for (i = 2; i <= m; i++) for (j = i; j > 1 && s[j - 1] > s[j]; j--) { t = s[j]; s[j] = s[j - 1]; s[j - 1] = t }
      printf "%-28s median %.4f  q1 %.4f  min %.4f ms  (%d runs)\n", key, s[int((m + 1) / 2)], s[int((m + 3) / 4)], s[1], m
    }
  }' | sort
