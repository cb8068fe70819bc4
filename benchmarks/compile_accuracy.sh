#!/usr/bin/env bash
# The accuracy check that train.compile (and train.fused_adamw) need before either can become
# a default (docs/performance.md): the default comparison at 3 seeds, eager, then again with
# the candidate options, and per encoding the candidate's ID and OOD exact match against the
# spread of the eager seeds. Hours of CPU (two default comparisons, about 1,900 s of 2 cores
# per seed each on the 2-core AMD EPYC): run it on a machine you can leave alone.
#
#   benchmarks/compile_accuracy.sh                          # compile + fused AdamW, 3 seeds
#   CANDIDATE="train.compile=true train.fused_adamw=false" benchmarks/compile_accuracy.sh  # compile alone
#   SEEDS=5 RUNS_ROOT=runs/accuracy benchmarks/compile_accuracy.sh -e rope,alibi
#   EAGER=compare benchmarks/compile_accuracy.sh --choices docs/choices/compare.yaml
#                       # the eager side is an existing experiment under RUNS_ROOT (e.g. the
#                       # default comparison made under the protocol): only the candidate trains
#   NAME=accuracy_bf16 CANDIDATE=train.precision=bf16 EAGER=compare benchmarks/compile_accuracy.sh \
#       --choices docs/choices/compare.yaml
#                       # the check train.precision=auto needs (benchmarks/speed.py --record
#                       # --accuracy-checked): bf16 against fp32; NAME is the candidate's
#                       # experiment (default accuracy_candidate), one per candidate
#
# Extra arguments go to both `posenc compare` calls (options or overrides). Finished runs are
# skipped, so a second call resumes. The eager side says train.compile=false
# train.fused_adamw=false, so it stays eager whatever the defaults are (auto included). Exit status 0 when every encoding passes, 1 otherwise.
# Pass: for each encoding and each of ID and OOD exact match (means over the lengths of each
# seed), the candidate's mean over seeds lies within the eager seeds' range and the eager
# mean within the candidate seeds' range (the seeds' spread, Zhou et al. 2024), and every
# candidate seed fits its training range (ID >= 0.99) wherever every eager seed does.
set -euo pipefail
cd "$(dirname "$0")/.."
seeds=${SEEDS:-3}
root=${RUNS_ROOT:-runs}
candidate=${CANDIDATE:-train.compile=true train.fused_adamw=true}
eager=${EAGER:-accuracy_eager}
name=${NAME:-accuracy_candidate}
if [[ -z ${EAGER:-} ]]; then
  posenc compare --seeds "$seeds" --experiment accuracy_eager runs_root="$root" \
    train.compile=false train.fused_adamw=false "$@"
elif [[ ! -f $root/$eager/results.csv ]]; then
  echo "EAGER=$eager: no $root/$eager/results.csv (run that experiment, or leave EAGER unset)" >&2
  exit 2
fi
# shellcheck disable=SC2086
posenc compare --seeds "$seeds" --experiment "$name" runs_root="$root" $candidate "$@"
python3 - "$root" "$candidate" "$eager" "$name" <<'PY'
import csv, pathlib, statistics, sys
from collections import defaultdict

root, candidate, eager_experiment, name = pathlib.Path(sys.argv[1]), *sys.argv[2:5]

def per_seed(experiment):
    """{encoding: {"ID"|"OOD": [mean exact match of each seed]}} from the report's results.csv."""
    cells = defaultdict(lambda: defaultdict(list))
    with open(root / experiment / "results.csv") as f:
        for r in csv.DictReader(f):
            where = "ID" if r["in_train_range"] == "True" else "OOD"
            cells[(r["task"], r["encoding"], r["seed"])][where].append(float(r["exact_match"]))
    out = defaultdict(lambda: defaultdict(list))
    for (task, enc, _), parts in sorted(cells.items()):
        for where, values in parts.items():
            out[f"{task}/{enc}"][where].append(statistics.fmean(values))
    return out

eager, cand = per_seed(eager_experiment), per_seed(name)
failed = []
print(f"candidate: {candidate}")
for key in sorted(eager):
    for where in ("ID", "OOD"):
        e, c = eager[key][where], cand.get(key, {}).get(where, [])
        if not c:
            failed.append(f"{key} {where}: no candidate runs")
            continue
        ok = min(e) <= statistics.fmean(c) <= max(e) and min(c) <= statistics.fmean(e) <= max(c)
        if where == "ID" and min(e) >= 0.99 and min(c) < 0.99:
            ok = False
        print(f"{key:>24} {where:>3}: eager {statistics.fmean(e):.4f} [{min(e):.4f}, {max(e):.4f}]"
              f"  candidate {statistics.fmean(c):.4f} [{min(c):.4f}, {max(c):.4f}]  {'ok' if ok else 'OUTSIDE'}")
        if not ok:
            failed.append(f"{key} {where}")
print("PASS" if not failed else f"FAIL: {', '.join(failed)}")
sys.exit(1 if failed else 0)
PY
