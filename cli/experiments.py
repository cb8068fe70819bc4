"""``posenc compare`` and ``posenc sweep`` (the report, publishing and tables: `posenc.cli.reporting`).

A sweep runs as a Hydra multirun in a child process (``python -m posenc.sweep``) whose
output goes to a log file; `posenc.sweep` plans, starts, follows and stops it, and this
module shows its live progress and aggregates the experiment folder when it is done.
"""

from __future__ import annotations

import signal
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated

import typer

from posenc.cli.common import ChoicesFile, Overrides, fail
from posenc.cli.completion import complete_encodings, complete_overrides, complete_tasks
from posenc.cli.reporting import show_report

CORE_ENCODINGS = "none,sinusoidal,learned,rope,alibi,t5"
SEEDS_HELP = (
    "Seeds 0..N-1 per pair, or auto: 5 seeds, then one more at a time until the paired "
    "bootstrap resolves each adjacent pair of the ranking or --max-seeds is reached. "
    "Default: 1, or the preset's."
)


def register(app: typer.Typer) -> None:
    """Add this module's commands to the ``posenc`` app."""
    app.command(context_settings={"allow_extra_args": False})(compare)
    app.command(context_settings={"allow_extra_args": False})(sweep)


Jobs = Annotated[
    int | None,
    typer.Option(
        "--jobs",
        "-j",
        help="Runs at once (local: joblib processes, each with cores/jobs threads; "
        "slurm: array parallelism). Default: one per core.",
    ),
]
Launcher = Annotated[
    str,
    typer.Option(
        "--launcher",
        help="local (joblib), slurm (submitit), submitit_local, or basic (one after another).",
    ),
]


def _names(text: str, group: str, option: str) -> list[str]:
    from posenc.config import group_options

    names = list(dict.fromkeys(v.strip() for v in text.split(",") if v.strip()))
    valid = group_options(group)
    if not names:
        fail(f"{option} is empty; valid choices: {', '.join(valid)}")
    for name in names:
        if name not in valid:
            fail(f"unknown {group} {name!r} in {option}; valid choices: {', '.join(valid)}")
    return names


def compare(
    overrides: Overrides = None,
    encodings: Annotated[
        str | None,
        typer.Option(
            "--encodings",
            "-e",
            help=f"Comma-separated encodings. Default: {CORE_ENCODINGS}, or the preset's.",
            autocompletion=complete_encodings,
        ),
    ] = None,
    tasks: Annotated[
        str | None,
        typer.Option(
            "--tasks",
            "-t",
            help="Comma-separated tasks. Default: copy, or the preset's.",
            autocompletion=complete_tasks,
        ),
    ] = None,
    seeds: Annotated[
        str | None,
        typer.Option("--seeds", "-s", help=SEEDS_HELP),
    ] = None,
    max_seeds: Annotated[int, typer.Option("--max-seeds", help="The cap of --seeds auto.")] = 10,
    jobs: Jobs = None,
    launcher: Launcher = "local",
    experiment: Annotated[
        str | None,
        typer.Option(
            "--experiment",
            help="Folder under runs/ for every run and the report. Default: compare, or the preset's.",
        ),
    ] = None,
    preset: Annotated[
        str | None,
        typer.Option(
            "--preset",
            help="A preset (configs/preset/NAME.yaml) applied to every run; its sweep "
            "(hydra.sweeper.params) and experiment give what the options do not.",
        ),
    ] = None,
    choices: ChoicesFile = None,
) -> None:
    """Train every encoding x task x seed (a Hydra multirun), then report and plot.

    Finished runs are skipped and interrupted ones resume, so the same command picks up where it stopped. Extra arguments are Hydra overrides for every run (train.steps=1000 model.n_layers=4); a comma-separated value sweeps that key too. --preset kazemnejad_copy runs a paper reproduction as its preset describes.
    """
    axes, named = _preset_sweep(preset) if preset is not None else ({}, None)
    if encodings is None:
        encodings = ",".join(axes.get("encoding") or []) or CORE_ENCODINGS
    if tasks is None:
        tasks = ",".join(axes.get("task") or []) or "copy"
    auto = seeds == "auto"
    count = _seed_count(seeds, max_seeds)
    seed_values = [str(s) for s in range(count)] if count is not None else axes.get("seed") or ["0"]
    experiment = experiment or named or "compare"
    enc = _names(encodings, "encoding", "--encodings")
    tsk = _names(tasks, "task", "--tasks")
    owned = dict(encoding="--encodings", task="--tasks", seed="--seeds", experiment="--experiment")
    base = [
        f"encoding={','.join(enc)}",
        f"task={','.join(tsk)}",
        f"seed={','.join(seed_values)}",
    ]
    if preset is not None:
        owned["preset"] = "--preset"
        base.append(f"preset={preset}")
    if choices is not None:  # absolute: the jobs read it wherever they run (recorded relative)
        owned["choices"] = "--choices"
        base.append(f"choices={Path(choices).resolve()}")
    counts = dict(encoding=len(enc), task=len(tsk))
    options = dict(launcher=launcher, jobs=jobs, experiment=experiment, reserved=owned)
    while True:  # once, or for --seeds auto until every pair is resolved or the cap
        base[2] = f"seed={','.join(seed_values)}"
        what = _counted(**counts, seed=len(seed_values))
        exp_dir = _launch(base, list(overrides or []), what=what, **options)
        if not auto or (more := _more_seeds(exp_dir, tsk, len(seed_values), max_seeds)) is None:
            return
        seed_values = [str(s) for s in range(more)]


def _seed_count(seeds: str | None, max_seeds: int) -> int | None:
    """The seeds to start with (`posenc.report.seeds.start_seeds`); None: the preset's."""
    from posenc.errors import ConfigError
    from posenc.report.seeds import start_seeds

    try:
        return None if seeds is None else start_seeds(seeds, max_seeds)
    except ConfigError as exc:
        fail(str(exc))


def _more_seeds(exp_dir: Path, tasks: list[str], seeds: int, cap: int) -> int | None:
    """--seeds auto: the seed count to run next, or None to stop (`auto_step`)."""
    from posenc.report import load_experiment
    from posenc.report.seeds import auto_step

    more, said = auto_step([r for r in load_experiment(exp_dir) if r.task in tasks], seeds, cap)
    print(said)
    return more


def _counted(**counts: int) -> str:
    """``3 encodings x 1 task x 2 seeds``."""
    return " x ".join(f"{k} {noun}{'s' * (k != 1)}" for noun, k in counts.items())


def _preset_sweep(name: str) -> tuple[dict[str, list[str]], str | None]:
    """The sweep axes of ``configs/preset/NAME.yaml`` (its ``hydra.sweeper.params``, with the
    task its defaults list selects when it sweeps none) and the experiment it names (or None)."""
    from posenc.config import group_options, preset_axes, preset_tasks, read_preset
    from posenc.errors import ConfigError

    valid = group_options("preset")
    if name not in valid:
        fail(f"unknown preset {name!r} in --preset; valid choices: {', '.join(valid)}")
    try:
        named = read_preset(name).get("experiment")
        axes = preset_axes(name)
        # A preset that selects its task in its defaults list (override /task: addition)
        # and sweeps nothing still names the task its runs are for.
        if tasks := preset_tasks(name):
            axes["task"] = tasks
        return axes, None if named is None else str(named)
    except ConfigError as exc:
        fail(str(exc))


def sweep(
    overrides: Annotated[
        list[str] | None,
        typer.Argument(
            help="Hydra multirun overrides, e.g. encoding=rope,alibi model.n_layers=2,4 "
            "train.lr=1e-3,3e-3 experiment=depth",
            autocompletion=complete_overrides,
        ),
    ] = None,
    jobs: Jobs = None,
    launcher: Launcher = "local",
) -> None:
    """Run any Hydra multirun (every combination of comma-separated values), then report.

    Swept keys other than encoding, task and seed become part of each run's name (rope@model.n_layers=2), so variants get their own folders and table rows. Runs land in runs/<experiment> (experiment=NAME; default: sweep).
    """
    _launch(
        [],
        list(overrides or []),
        launcher=launcher,
        jobs=jobs,
        experiment="sweep",  # unless the overrides name one
        reserved=None,
        what="sweep",
    )


def _launch(
    base: list[str],
    overrides: list[str],
    *,
    launcher: str,
    jobs: int | None,
    experiment: str | None,
    reserved: dict[str, str] | None,
    what: str,
) -> Path:
    """Plan, run and report a sweep; returns its experiment folder."""
    from rich.console import Console

    from posenc.errors import PosencError
    from posenc.sweep import plan_sweep, supervise

    try:
        plan = plan_sweep(
            overrides,
            base=base,
            launcher=launcher,
            jobs=jobs,
            experiment=experiment,
            reserved=reserved,
        )
    except PosencError as exc:
        fail(str(exc))
    console = Console(stderr=True, highlight=False)
    total = "?" if plan.total is None else str(plan.total)
    parallel = f"threads per run: {plan.threads_shown}"
    if plan.launcher == "local":
        parallel = f"{plan.jobs} at once, {parallel}"
    console.print(
        f"[bold]{total} runs[/] ({what}) -> {plan.experiment_dir} · launcher {plan.launcher}, "
        f"{parallel}"
    )
    if plan.total is not None and plan.finished == plan.total:
        console.print(f"all {total} runs are finished with this config; nothing to launch")
        show_report(plan.experiment_dir)
        return plan.experiment_dir
    plan.sweep_dir.mkdir(parents=True, exist_ok=True)
    log_path = plan.sweep_dir / "launcher.log"
    console.print(f"sweep log: {log_path}")
    with _progress_bar(console, plan.total) as (show, close):

        def stopping(signum: int) -> None:
            close()  # the bar ends before the stop, which may take a while
            console.print(f"stopping the sweep ({signal.Signals(signum).name}) ...")

        outcome = supervise(plan, log_path, on_progress=show, on_stop=stopping)
    if outcome.signum is not None:
        fail(
            "interrupted; finished runs are kept and checkpoints saved: run the same "
            "command again to resume",
            128 + outcome.signum,
        )
    _after(plan, outcome.returncode, log_path, console, total)
    return plan.experiment_dir


def _after(plan, returncode: int | None, log_path: Path, console, total: str) -> None:
    """The report of what the sweep left, its log's tail if it crashed, and its failures."""
    from posenc.report import load_experiment
    from posenc.sweep import sweep_progress

    shown: set[str] = set()
    if load_experiment(plan.experiment_dir):  # also after a crash: report what is there
        shown = show_report(plan.experiment_dir)
    if returncode != 0:
        tail = log_path.read_text(errors="replace").strip().splitlines()[-15:]
        console.print("\n".join(tail), markup=False)
        fail(f"the sweep process exited with status {returncode}; see {log_path}", 1)

    mine = sweep_progress(plan.sweep_dir, plan.total)
    if mine.failed:
        for err in mine.errors:  # those the report does not list (a finished folder's run)
            if err.split(": ", 1)[0] not in shown:
                console.print(f"[red]failed[/] {err}", soft_wrap=True)
        fail(f"{mine.failed} of {total} runs failed (listed above)", 1)


@contextmanager
def _progress_bar(console, total: int | None):
    """A live bar of finished / running / failed runs and the best so far; yields the
    function that shows a `posenc.sweep.SweepProgress` (failures printed as they come) and
    the one that ends the bar early."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    progress = Progress(
        TextColumn("[bold]runs"),
        BarColumn(bar_width=16),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
        console=console,
        transient=False,
    )
    seen_errors = 0

    def show(p) -> None:
        nonlocal seen_errors
        info = f"{p.running} running"
        info += f" · [red]{p.failed} failed[/]" if p.failed else " · 0 failed"
        if p.skipped:
            info += f" · {p.skipped} done before"
        if p.best:
            name = p.best[0] if len(p.best[0]) <= 24 else p.best[0][:23] + "…"
            info += f" · best [bold]{name}[/] ({p.best[2]} {p.best[1]:.2f})"
        progress.update(bar, completed=p.done, info=info)
        for err in p.errors[seen_errors:]:
            progress.console.print(f"[red]failed[/] {err}", markup=True)
        seen_errors = len(p.errors)

    with progress:
        bar = progress.add_task("runs", total=total, info="starting")
        yield show, progress.stop
