#!/usr/bin/env bash
# Whole runs, eager against compiled, as a comparison runs them: two `posenc train`s side by
# side at one thread each (a comparison's 2 jobs x 1 thread on 2 cores), the same encoding and
# seed, first with a compile cache of their own that starts cold, then with it warm (a
# comparison's later runs of the encoding). The `compile` row of benchmarks/speed.py times
# steps; this times all a run pays: the compile, the evaluations, the checkpoints. About 18
# minutes with the default run on the 2-core AMD EPYC; run it on a quiet machine.
#
#   benchmarks/compile_run.sh                     # rope, seed 0 cold then seed 1 warm, in runs/compile_run
#   ENCODING=alibi ROOT=/tmp/cr benchmarks/compile_run.sh train.steps=200 train.until_fit=false
#
# Extra arguments go to every `posenc train` (overrides). ROOT must not exist yet: the script
# never writes over runs.
set -euo pipefail
cd "$(dirname "$0")/.."
enc=${ENCODING:-rope}
root=${ROOT:-runs/compile_run}
if [[ -e $root ]]; then
  echo "ROOT=$root exists; give another ROOT or remove it" >&2
  exit 2
fi
mkdir -p "$root"
root=$(cd "$root" && pwd)
unset TORCHINDUCTOR_CACHE_DIR # the runs' cache is $root/cache/posenc/torchinductor
echo "== $(date -u '+%Y-%m-%d %H:%M UTC') · $(lscpu | sed -n 's/^Model name: *//p') · encoding=$enc $*"
for seed in 0 1; do
  for compiled in false true; do
    (
      start=$EPOCHREALTIME
      XDG_CACHE_HOME=$root/cache posenc train "encoding=$enc" "seed=$seed" threads=1 \
        "train.compile=$compiled" train.fused_adamw=false "runs_root=$root" \
        "experiment=compile_$compiled" progress=false "$@" > "$root/$compiled-$seed.log" 2>&1
      echo "$start $EPOCHREALTIME" > "$root/$compiled-$seed.wall"
    ) &
  done
  wait
done
python - "$root" <<'EOF'
import json, sys
from pathlib import Path
root = Path(sys.argv[1])
for seed, cache in ((0, "cold"), (1, "warm")):
    walls, trains = {}, {}
    for compiled in ("false", "true"):
        start, end = map(float, (root / f"{compiled}-{seed}.wall").read_text().split())
        walls[compiled] = end - start
        run = next((root / f"compile_{compiled}").glob(f"*/*/seed{seed}/metrics.json"))
        trains[compiled] = json.loads(run.read_text())["train"]["seconds"]
    print(
        f"seed {seed}, compile cache {cache}: wall eager {walls['false']:.0f} s, compiled "
        f"{walls['true']:.0f} s = {walls['false'] / walls['true']:.2f}x; training eager "
        f"{trains['false']:.0f} s, compiled {trains['true']:.0f} s = "
        f"{trains['false'] / trains['true']:.2f}x"
    )
EOF
