#!/usr/bin/env bash
# Every speed figure docs/performance.md keeps per CPU kind, in one command (minutes, most of
# them compiling: with STEPS=11, while two training runs loaded the 2-core AMD EPYC, it took
# about 9 minutes; the default STEPS=30 was not timed): the CPU and its bf16 instructions,
# the matmul peaks, the step's share of the peak and where its time goes (the profile, fp32
# and bf16), bf16 against fp32 eagerly and compiled (recorded for train.precision=auto), compile
# against eager (recorded for train.compile=auto), fused
# against foreach AdamW, and the pieces one after the other against side by side, eagerly and
# compiled, at one thread (a comparison's jobs) and at two (one run alone). Run it on a quiet
# machine; each block names the command that printed it, for the page to quote.
#
#   benchmarks/cpu_kind.sh                      # prints, and keeps a copy in runs/cpu_kind-<host>.txt
#   STEPS=20 OUT=/tmp/kind.txt benchmarks/cpu_kind.sh
#
# The one-thread bf16 rows' ratios (a comparison's jobs) are stored for train.precision=auto
# (--record; $POSENC_PRECISION_FILE keeps them elsewhere), without the accuracy check that auto
# also needs: posenc/precision.py says when auto chooses bf16. The compile row's ratio is
# stored for train.compile=auto at one thread and at two, each thread count apart
# (posenc/run/spec.py says when auto compiles).
set -euo pipefail
cd "$(dirname "$0")/.."
steps=${STEPS:-30}
out=${OUT:-runs/cpu_kind-$(hostname).txt}
mkdir -p "$(dirname "$out")"
export PYTHONUNBUFFERED=1 COLUMNS=${COLUMNS:-200}
{
  echo "== $(date -u '+%Y-%m-%d %H:%M UTC') · $(git rev-parse --short HEAD 2>/dev/null || echo 'no git')"
  lscpu | grep -E '^(Model name|CPU family|Model|CPU\(s\)|Thread\(s\) per core):' || true
  echo "bf16 flags: $(grep -o -w -E 'avx512_bf16|amx_bf16|amx_tile' /proc/cpuinfo | sort -u | tr '\n' ' ')"
  run() {
    echo "--- python benchmarks/speed.py $*"
    python benchmarks/speed.py "$@"
  }
  run --rows machine,step,profile --steps "$steps" threads=1
  run --rows profile --steps "$steps" threads=1 train.precision=bf16
  run --rows bf16,bf16_compile,compile,fused --steps "$steps" threads=1 --record
  run --rows step,bf16,bf16_compile,pieces,compile_pieces --steps "$steps" threads=2
  run --rows compile --steps "$steps" threads=2 --record
} 2>&1 | tee "$out"
echo "kept in $out"
