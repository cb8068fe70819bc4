#!/usr/bin/env bash
# posenc on a GPU in one command: the tests that exercise device=cuda (a whole run in fp32 and
# bf16 with KV-cache decoding, and every registered encoding for a few steps under every
# batching and in bf16), then the default comparison timed with several runs sharing the GPU.
#
#   benchmarks/gpu.sh                 # 3 runs at once (GPU_JOBS), into a temporary folder
#   GPU_JOBS=6 RUNS_ROOT=runs/gpu benchmarks/gpu.sh
#
# Needs posenc installed (pip install -e ".[dev]") over a CUDA build of torch. On a machine
# without a GPU it says so and exits 2.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! python3 -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
    echo "benchmarks/gpu.sh needs a CUDA GPU and a CUDA build of torch; this machine has none" >&2
    exit 2
fi
python3 -c 'import torch; p = torch.cuda.get_device_properties(0); print(f"GPU: {p.name}, {p.total_memory / 2**30:.0f} GiB, torch {torch.__version__}")'
export PYTHONUNBUFFERED=1 MPLBACKEND=Agg
echo "== device tests"
# -n 0: in this process, as before the suite ran in workers (one GPU, no processes sharing it)
POSENC_TEST_DEVICE=cuda python3 -m pytest -n 0 -q -p no:cacheprovider tests/test_device.py tests/test_encoding_matrix.py
jobs=${GPU_JOBS:-3}
root=${RUNS_ROOT:-$(mktemp -d)}
echo "== posenc compare, defaults, device=cuda, $jobs runs at once, into $root"
start=$(date +%s.%N)
posenc compare device=cuda --jobs "$jobs" --experiment gpu_compare runs_root="$root"
end=$(date +%s.%N)
python3 - "$start" "$end" "$root" <<'PY'
import json, pathlib, sys
start, end, root = float(sys.argv[1]), float(sys.argv[2]), pathlib.Path(sys.argv[3])
runs = sorted(root.glob("gpu_compare/*/*/seed*/metrics.json"))
print(f"compare wall time: {end - start:.0f} s for {len(runs)} runs")
for path in runs:
    m = json.loads(path.read_text())
    t = m["train"]
    print(f"  {m['encoding']:>12}: train {t['seconds']:.0f} s, {t['tokens_per_sec']:.0f} tokens/s, "
          f"ID exact match {m['summary']['id_exact_match']:.4f}")
PY
