"""``posenc data``: look at what a task feeds the model, and build the frozen evaluation sets."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(
    help="Show task examples exactly as the model sees them; build frozen evaluation sets.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

Overrides = Annotated[
    list[str] | None,
    typer.Argument(help="Hydra overrides, e.g. task.vocab_size=4 eval.max_len=40"),
]


def _fail(message: str) -> None:
    from posenc.cli.common import fail

    fail(message)


def _parse_lengths(text: str) -> list[int]:
    try:
        lengths = sorted({int(part) for part in text.split(",") if part.strip()})
    except ValueError:
        lengths = []
    if not lengths or lengths[0] < 1:
        _fail(f"--lengths must be comma-separated integers >= 1, e.g. 1,5,20; got {text!r}")
    return lengths


@app.command()
def show(
    task: Annotated[str, typer.Argument(help="task name (see `posenc list`)")],
    overrides: Overrides = None,
    lengths: Annotated[
        str | None,
        typer.Option(
            help="comma-separated lengths n; default: train.min_len, train.max_len and the "
            "longest evaluation length"
        ),
    ] = None,
    count: Annotated[int, typer.Option(help="examples per length (>= 1)")] = 3,
) -> None:
    """Print the first examples of each length, formatted as the model sees them.

    They are the first examples of the frozen evaluation set at that length (same
    eval.seed), generated in memory: nothing is written.
    """

    from posenc import tasks
    from posenc.config import compose
    from posenc.data import generate_eval_rows
    from posenc.errors import PosencError
    from posenc.schema import task_params
    from posenc.tasks.format import SequenceFormat

    if count < 1:
        _fail(f"--count must be an integer >= 1, got {count}")
    try:
        cfg = compose([f"task={task}", *(overrides or [])])
        t = tasks.build(cfg.task.name, **task_params(cfg.task))
        fmt = SequenceFormat.from_config(cfg.task).for_task(t)
        if lengths is None:
            from posenc.run.planning import eval_lengths

            ns = sorted({cfg.train.min_len, cfg.train.max_len, max(eval_lengths(cfg))})
        else:
            ns = _parse_lengths(lengths)
        for n in ns:
            t.check_length(n)
    except PosencError as exc:
        _fail(str(exc))
    params = ", ".join(
        f"task.{k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in t.params().items()
    )
    typer.echo(f"{t.name}: {t.description}" + (f" ({params})" if params else ""))
    rows = generate_eval_rows(t, ns, count, cfg.eval.seed)
    previous = None
    for n, inputs, target in zip(rows["length"], rows["input"], rows["target"], strict=True):
        if n != previous:
            typer.echo(f"n = {n}")
            previous = n
        typer.echo("  " + fmt.render_example(inputs, target, t.symbols))


@app.command()
def build(
    overrides: Overrides = None,
    task_names: Annotated[
        str | None,
        typer.Option(
            "--tasks",
            help="comma-separated task names, or 'all'; default: the config's task",
        ),
    ] = None,
) -> None:
    """Build (or reuse) the frozen evaluation sets of the composed config, e.g. before a sweep.

    Every config is checked first (as `posenc train` would check it); nothing is written
    unless all of them are valid.
    """
    overrides = list(overrides or [])
    from posenc import tasks
    from posenc.config import compose
    from posenc.errors import PosencError

    if task_names is not None:
        if any(o.lstrip("+~").startswith("task=") for o in overrides):
            _fail("give the tasks either as --tasks or as a task= override, not both")
        names = tasks.names() if task_names.strip() == "all" else task_names.split(",")
        names = [n.strip() for n in names if n.strip()]
        if not names:
            _fail("--tasks is empty; give task names separated by commas, or 'all'")
    else:
        names = [None]

    from posenc.data import load_eval_set
    from posenc.run.execute import plan

    plans = []
    try:
        for name in names:
            cfg = compose(overrides + ([f"task={name}"] if name else []))
            plans.append(plan(cfg))
    except PosencError as exc:
        _fail(str(exc))
    for p in plans:
        cfg = p.cfg
        data_dir = Path(cfg.data_dir)
        before = set(data_dir.iterdir()) if data_dir.is_dir() else set()
        ds = load_eval_set(p.task, p.eval_lengths, cfg.eval.n_samples, cfg.eval.seed, data_dir)
        path = Path(ds.cache_files[0]["filename"]).parent if ds.cache_files else data_dir
        state = "reused" if path in before or path.resolve() in before else "built"
        lo, hi = p.eval_lengths[0], p.eval_lengths[-1]
        typer.echo(
            f"{p.task.name:<18} {state:<6} {len(ds):>6} examples "
            f"({len(p.eval_lengths)} lengths in [{lo}, {hi}] x {cfg.eval.n_samples})  {path}"
        )
