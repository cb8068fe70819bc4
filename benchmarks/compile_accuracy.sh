#!/usr/bin/env bash
# The accuracy check that train.compile (and train.fused_adamw) need before either can become
# a default (docs/performance.md): the default comparison at 3 seeds, eager, then again with
# the candidate options, and the candidate's ID and OOD exact match against the eager seeds.
# Hours of CPU (two default comparisons, about 1,900 s of 2 cores per seed each on the 2-core
# AMD EPYC): run it on a machine you can leave alone.
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
# train.fused_adamw=false, so it stays eager whatever the defaults are (auto included).
# The verdict and its rule: posenc/report/accuracy_check.py (exit status 0 when the check
# passes, 1 when not). CHECK_SEEDS=3,4 judges only those candidate seeds:
#   SEEDS=5 CHECK_SEEDS=3,4 EAGER=compare benchmarks/compile_accuracy.sh --choices docs/choices/compare.yaml
#                       # two more compiled seeds, judged alone: runs made after the rule was set
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
# shellcheck disable=SC2086
python -m posenc.report.accuracy_check "$root/$eager" "$root/$name" --label "$candidate" \
  ${CHECK_SEEDS:+--candidate-seeds "$CHECK_SEEDS"}
