"""Training and decoding throughput of posenc on this machine.

Prints, for the default model (override anything with Hydra overrides on the command line):
- training tokens/s through posenc's own loop (`posenc.run.run`: batches drawn on the fly,
  logging, the schedule) next to a bare forward/backward/step loop over the same batches
  on the same model in the same process, and their ratio (target >= 0.95);
- the machine's measured fp32 matmul GFLOP/s and the fraction a training step achieves;
- greedy decoding time at n=60 with and without the KV cache (target >= 10x).

    python benchmarks/train_throughput.py [--steps 100] [--repeats 3] [OVERRIDES...]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch

import tasks
from posenc.config import compose, task_params
from posenc.data import TrainStream, collate
from posenc.model import Transformer
from posenc.run import plan, run
from posenc.train import Trainer, masked_loss


def matmul_gflops(n: int = 1024, repeat: int = 20) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(3):
        a @ b
    t0 = time.perf_counter()
    for _ in range(repeat):
        a @ b
    return 2 * n**3 * repeat / (time.perf_counter() - t0) / 1e9


def _runs(values: list[float]) -> str:
    return ", ".join(f"{v:,.0f}" for v in values)


def bare_loop(model, trainer: Trainer, batches: list, grad_clip: float) -> tuple[float, int]:
    """Forward, backward, clip, step over ``batches``: seconds and non-padding tokens."""
    opt, sched = trainer.optimizer, trainer.scheduler
    model.train()
    tokens = 0
    t0 = time.perf_counter()
    for b in batches:
        logits, _ = model(b.inputs)
        loss = masked_loss(logits, b)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        opt.step()
        sched.step()
        tokens += int((b.tokens != 0).sum())
    return time.perf_counter() - t0, tokens


def train_flops(model: Transformer, batch_tokens: int, seq_len: int) -> float:
    """Executed FLOPs of one training step: 6·N per token for the weights plus attention."""
    n_weights = sum(p.numel() for n, p in model.named_parameters() if "emb" not in n)
    L, d = model.cfg.n_layers, model.cfg.d_model
    attention = 12 * L * seq_len * d  # QK^T and AV: 4·T·d per token forward, x3 for training
    return batch_tokens * (6 * n_weights + attention)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--decode-n", type=int, default=60)
    parser.add_argument("--decode-batch", type=int, default=128)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    cfg = compose(args.overrides)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    task = tasks.build(cfg.task.name, **task_params(cfg.task))
    tr = cfg.train
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} threads; encoding {cfg.encoding.name}, "
        f"d_model {cfg.model.d_model}, {cfg.model.n_layers} layers, batch {tr.batch_size}, {args.steps} steps"
    )

    # 0. Warm up allocator and kernels so neither timed loop pays for it.
    warm = TrainStream(task, tr.min_len, tr.max_len, tr.batch_size, cfg.seed + 1)
    warm_model = plan(cfg).model
    bare_loop(
        warm_model,
        Trainer.from_config(warm_model, tr),
        [warm.next() for _ in range(10)],
        tr.grad_clip,
    )

    # 1. posenc's own loop, exactly as `posenc train` runs it (eval kept tiny; not timed),
    # 2. the bare loop: the same model and seed (built by plan, as run does), the same
    #    batches drawn up front, and nothing else. Alternated --repeats times; medians, since
    #    a shared or virtual machine drifts by 10-20% between back-to-back runs.
    posenc_runs, bare_runs = [], []
    for _ in range(args.repeats):
        with tempfile.TemporaryDirectory() as tmp:
            loop_cfg = compose(
                [
                    *args.overrides,
                    f"train.steps={args.steps}",
                    "train.eval_every=0",
                    "train.checkpoint_every=0",
                    "eval.lengths=[1]",
                    "eval.n_samples=1",
                    "progress=false",
                    f"run_dir={tmp}/run",
                    f"data_dir={tmp}/data",
                ]
            )
            posenc_runs.append(run(loop_cfg)["train"]["tokens_per_sec"])
        stream = TrainStream(task, tr.min_len, tr.max_len, tr.batch_size, cfg.seed)
        batches = [stream.next() for _ in range(args.steps)]
        model = plan(loop_cfg).model
        bare_seconds, tokens = bare_loop(
            model, Trainer.from_config(model, loop_cfg.train), batches, tr.grad_clip
        )
        bare_runs.append(tokens / bare_seconds)
    posenc_tps, bare_tps = statistics.median(posenc_runs), statistics.median(bare_runs)
    flops = sum(train_flops(model, b.inputs.numel(), b.inputs.shape[1]) for b in batches)
    bare_seconds = tokens / bare_tps
    gflops = matmul_gflops()
    achieved = flops / bare_seconds / 1e9

    print(f"training tokens/s   posenc loop {posenc_tps:10,.0f}   (median of {_runs(posenc_runs)})")
    print(f"                    bare loop   {bare_tps:10,.0f}   (median of {_runs(bare_runs)})")
    print(f"                    ratio       {posenc_tps / bare_tps:10.3f}   (target >= 0.95)")
    print(
        f"fp32 matmul         {gflops:10.1f} GFLOP/s (1024x1024, {torch.get_num_threads()} threads)"
    )
    print(f"training step       {achieved:10.1f} GFLOP/s = {achieved / gflops:.1%} of matmul peak")

    # 3. Greedy decoding at n = decode_n, with and without the KV cache.
    model.eval()
    rng = __import__("numpy").random.default_rng(0)
    pairs = [task.sample(args.decode_n, rng) for _ in range(args.decode_batch)]
    batch = collate(pairs)
    t_prompt = args.decode_n + 2
    n_new = batch.tokens.shape[1] - t_prompt
    prompt = batch.tokens[:, :t_prompt]
    timings = {}
    outs = {}
    for use_cache in (True, False):
        t0 = time.perf_counter()
        outs[use_cache] = model.generate(prompt, n_new, use_cache=use_cache)
        timings[use_cache] = time.perf_counter() - t0
    assert torch.equal(outs[True], outs[False]), "cached and uncached decoding disagree"
    print(
        f"greedy decoding n={args.decode_n}, {args.decode_batch} sequences, {n_new} new tokens each:"
    )
    print(f"                    KV cache    {timings[True]:8.2f} s")
    print(f"                    recompute   {timings[False]:8.2f} s")
    print(
        f"                    speed-up    {timings[False] / timings[True]:8.1f}x   (target >= 10x)"
    )


if __name__ == "__main__":
    main()
