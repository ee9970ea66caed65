#!/usr/bin/env bash
# Nsight Compute on the wide-state kernels at titans-760m's memory (scripts/ncu_wide_kernel.py says
# why): the measured call's first three kernel launches (forward, and with --backward the backward's),
# stall reasons, occupancy, memory traffic and the source lines that stall. Firecracker GPU machines
# only (on gVisor ncu cannot read the counters: the plain timing still prints). About 2-3 minutes.
# Usage: scripts/ncu_wide_kernel.sh OUT_DIR [ncu_wide_kernel.py options, e.g. --backward --num-warps 4]
set -uo pipefail
cd "$(dirname "$0")/.."
out=${1:?usage: scripts/ncu_wide_kernel.sh OUT_DIR [options]}
shift
mkdir -p "$out"
py=${PYTHON:-python3}
"$py" scripts/ncu_wide_kernel.py "$@" | tee "$out/timing.txt"
if ! command -v ncu >/dev/null; then
  echo "ncu_wide_kernel: ncu is not on the PATH; only the timing above was taken" | tee -a "$out/timing.txt"
  exit 0
fi
sections=(SpeedOfLight LaunchStats Occupancy WarpStateStats SchedulerStats MemoryWorkloadAnalysis
  ComputeWorkloadAnalysis SourceCounters)
ncu --clock-control none --nvtx --nvtx-include "profile/" --launch-count 3 \
  "${sections[@]/#/--section=}" -f -o "$out/wide" "$py" scripts/ncu_wide_kernel.py "$@" \
  > "$out/ncu.log" 2>&1
status=$?
tail -n 5 "$out/ncu.log"
if [ -f "$out/wide.ncu-rep" ]; then
  ncu --import "$out/wide.ncu-rep" --page details > "$out/details.txt" 2>&1
  ncu --import "$out/wide.ncu-rep" --page source --csv > "$out/source.csv" 2>&1 || true
  grep -E "Kernel|Duration|Registers|Achieved Occupancy|Local Memory|L2 Cache Throughput|DRAM Throughput|Compute \(SM\) Throughput|Stall|Issue Slot" \
    "$out/details.txt" | head -n 80
fi
exit $status
