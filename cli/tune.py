"""``posenc tune``: choose each encoding's settings on validation and write a choices file."""

from __future__ import annotations

import os
import shlex
from pathlib import Path
from typing import Annotated

import typer

from posenc.cli.common import Overrides, fail
from posenc.cli.completion import complete_encodings

SEARCHES = ("optuna", "grid")


def tune(
    overrides: Overrides = None,
    encodings: Annotated[
        str,
        typer.Option(
            "--encodings",
            "-e",
            help="Comma-separated encodings, each tuned on its own.",
            autocompletion=complete_encodings,
        ),
    ] = "rope",
    param: Annotated[
        list[str] | None,
        typer.Option(
            "--param",
            "-p",
            help="A setting to choose and its search space, in Hydra's sweep grammar: "
            "model.embed_init=choice(scaled,gpt), train.lr=tag(log,interval(1e-4,1e-2)) "
            "(optuna), train.warmup_steps=50,200 (grid or optuna). Repeatable.",
        ),
    ] = None,
    search: Annotated[
        str, typer.Option("--search", help="optuna (Hydra's Optuna sweeper) or grid.")
    ] = "optuna",
    trials: Annotated[int, typer.Option("--trials", "-n", help="Optuna trials per encoding.")] = 20,
    seeds: Annotated[
        int,
        typer.Option(
            "--seeds",
            help="Seeds each trial's setting trains at (seed, seed+1, ...): scored by the mean "
            "over them, and it fits only when every seed fits.",
        ),
    ] = 1,
    jobs: Annotated[
        int,
        typer.Option(
            "--jobs",
            "-j",
            help="Trials at once (joblib processes, each with cores/jobs threads): a grid's "
            "combinations, or Optuna's trials in batches of this size.",
        ),
    ] = 1,
    out: Annotated[Path, typer.Option("--out", "-o", help="The choices file to write.")] = Path(
        "choices.yaml"
    ),
) -> None:
    """Choose per-encoding settings on validation (never a test length) and write them to a choices file.

    Each encoding gets its own search (configs/hparams_search/): every trial is a run trained as posenc train trains it, then scored on validation samples only. The objective is the validation OOD exact match among runs that fit their training range on validation. posenc compare --choices FILE (or choices=FILE) applies the choice to every run and records it. Extra arguments are Hydra overrides for every trial (task=reverse train.steps=1000); trials land in runs/tune/<task>/<encoding>/<trial>. The same command again resumes: a trial that finished is reused, an interrupted one goes on from its checkpoint.
    """
    from posenc.run.planning import validation_lengths

    given = list(overrides or [])
    names, keys, cfgs = _checked(encodings, param or [], search, trials, given, jobs, seeds)
    first = cfgs[names[0]]
    held = validation_lengths(first)
    if not held:
        fail("posenc tune needs validation lengths: set eval.val_share > 0 (and lengths past "
             "train.max_len)")  # fmt: skip
    root = Path(str(first.runs_root)) / "tune" / str(first.task.name)
    made_by = _made_by(names, param or [], search, trials, seeds, given)
    base = [*given, *(param or []), "progress=false", *_launch(search, trials, jobs, given, seeds)]
    chosen, unfit, evidence = {}, [], {}
    for name in names:
        label, best, found = _search(name, cfgs[name], root, search, base)
        evidence[label] = (found, best)
        if best is None:
            unfit.append(label)
            continue
        chosen[label] = {k: v for k, v in best["settings"].items() if k in keys}
        typer.echo(f"{label}: {chosen[label]} (validation OOD {best['objective']:.3f})")
    _write(out, first, held, made_by, chosen, evidence, keys)
    if unfit:
        fail(
            f"no trial fit its training range on validation for {', '.join(unfit)}; "
            "left out of the choices file (raise train.steps or train.max_steps)"
        )


def _made_by(names, param: list[str], search: str, trials: int, seeds: int, given) -> str:
    """The command, as the choices file's ``made_by`` records it (options at their
    defaults left out where they do not apply)."""
    return shlex.join(
        ["posenc", "tune", "-e", ",".join(names), *(f"--param={p}" for p in param)]
        + ["--search", search, *(["--trials", str(trials)] if search == "optuna" else [])]
        + [*(["--seeds", str(seeds)] if seeds > 1 else []), *given]
    )


def _write(out: Path, first, held, made_by: str, chosen, evidence, keys) -> None:
    """Write the choices file (every trial's scores under ``trials``) and show the trials."""
    from posenc.choices import trial_summary, write_choices

    tr = first.train
    write_choices(
        out,
        task=str(first.task.name),
        split={"train": [int(tr.min_len), int(tr.max_len)], "validation": [held[0], held[-1]]},
        made_by=made_by,
        choices=chosen,
        trials={
            label: [trial_summary(r, keys) for r in found] for label, (found, _) in evidence.items()
        },
    )
    _show(evidence, keys)
    typer.echo(f"choices file: {out}")


def _launch(search: str, trials: int, jobs: int, given: list[str], seeds: int = 1) -> list[str]:
    """The overrides that size a search: Optuna's trials, with ``jobs`` > 1 the joblib
    launcher with ``jobs`` processes of cores/jobs threads (unless ``threads`` is given), and
    with ``seeds`` > 1 the seeds each trial trains its setting at (`posenc.tuning.SEEDS_ENV`,
    through Hydra's ``hydra.job.env_set``: no part of a run's config)."""
    from posenc.tuning import SEEDS_ENV

    argv = [f"+hydra.job.env_set.{SEEDS_ENV}={seeds}"] if seeds > 1 else []
    if search == "optuna":
        argv += [f"hydra.sweeper.n_trials={trials}", f"hydra.sweeper.n_jobs={jobs}"]
    if jobs > 1:
        argv += ["hydra/launcher=local", f"hydra.launcher.n_jobs={jobs}"]
        if not any(o.split("=", 1)[0] == "threads" for o in given):
            argv.append(f"threads={max(1, (os.cpu_count() or 1) // jobs)}")
    return argv


def _checked(
    encodings: str,
    param: list[str],
    search: str,
    trials: int,
    given: list[str],
    jobs: int = 1,
    seeds: int = 1,
):
    """The options checked, and every encoding's config composed, before any trial trains:
    (encoding names, the --param keys, {name: config})."""
    from posenc.config import compose
    from posenc.errors import PosencError

    if search not in SEARCHES:
        fail(f"unknown --search {search!r}; valid choices: {', '.join(SEARCHES)}")
    if not param:
        fail(
            "give at least one --param KEY=SPACE, e.g. --param model.embed_init=choice(scaled,gpt)"
        )
    if trials < 1:
        fail(f"--trials must be >= 1, got {trials}")
    if jobs < 1:
        fail(f"--jobs must be >= 1, got {jobs}")
    if seeds < 1:
        fail(f"--seeds must be >= 1, got {seeds}")
    owned = {"encoding": "use --encodings", "hparams_search": "use --search",
             "choices": "posenc tune makes a choices file; it reads none"}  # fmt: skip
    for o in given:
        if (key := o.split("=", 1)[0].lstrip("+~")) in owned:
            fail(f"{o}: {owned[key]}")
    keys = []
    for p in param:
        if "=" not in p:
            fail(f"--param {p!r}: write KEY=SPACE, e.g. train.lr=tag(log,interval(1e-4,1e-2))")
        keys.append(p.split("=", 1)[0])
    names = [e.strip() for e in encodings.split(",") if e.strip()]
    try:
        # each trial resolves train.compile=auto where and at the threads it trains
        cfgs = {name: compose([f"encoding={name}", *given], here=None) for name in names}
    except PosencError as exc:
        fail(str(exc))
    for key in keys:
        if _missing(cfgs[names[0]], key):
            fail(f"--param {key}: not a config key")
    return names, keys, cfgs


def _search(name: str, cfg, root: Path, search: str, argv: list[str]):
    """One encoding's search in ``root/<label>/<trial>``: (label, its best fitting trial or
    None)."""
    from posenc import tuning
    from posenc.schema import encoding_label

    label = encoding_label(cfg.encoding)
    folder = root / label
    search_id = tuning.start_search(folder)
    try:
        tuning.search(
            [
                f"hparams_search={search}",
                f"encoding={name}",
                *argv,
                f"hydra.sweep.dir={folder}",
                "hydra.sweep.subdir=${hydra.job.num}",
            ]  # fmt: skip
        )
    except SystemExit as exc:  # Hydra reports a failed job and exits
        fail(f"the search for {label} failed (exit {exc.code}); see {folder}")
    found = [r for r in tuning.trials(folder, search_id) if r["encoding"] == label]
    return label, tuning.choose(found), found


def _show(evidence: dict, keys: list[str]) -> None:
    """Every trial, one row each, the chosen ones marked: the search's closing table."""
    from rich.console import Console
    from rich.table import Table

    def figure(x) -> str:
        return "–" if x is None else f"{x:.3f}"

    def each(seeds: list[dict]) -> str:  # a seed that did not fit: its min ID, marked
        return " / ".join(
            figure(x["ood_exact_match"])
            if x["fits_training_range"]
            else f"no fit ({figure(x['min_id_exact_match'])})"
            for x in seeds
        )

    seeded = any("seeds" in r for found, _ in evidence.values() for r in found)
    table = Table(title="posenc tune: trials scored on validation (never a test length)")
    columns = ["encoding", "settings", "fits", "min ID", "validation OOD", "steps", "chosen"]
    if seeded:  # the figures are means over the seeds; each seed's beside them
        columns[2:5] = ["fits (every seed)", "min ID (mean)", "validation OOD (mean)"]
        columns.insert(5, "each seed")
    for column in columns:
        left = column in ("encoding", "settings", "each seed")
        table.add_column(column, justify="left" if left else "right", overflow="fold")
    for label, (found, best) in evidence.items():
        for r in found:
            v = r["validation"]
            cells = [
                label,
                ", ".join(f"{k}={val}" for k, val in r["settings"].items() if k in keys),
                "yes" if v["fits_training_range"] else "no",
                figure(v.get("min_id_exact_match")),
                figure(v.get("ood_exact_match")),
                f"{r.get('steps_trained', 0):,}",
                "✓" if r is best else "",
            ]
            if seeded:
                cells.insert(5, each(r.get("seeds") or []))
            table.add_row(*cells)
    Console().print(table)


def _missing(cfg, key: str) -> bool:
    from omegaconf import OmegaConf

    marker = object()
    return OmegaConf.select(cfg, key, default=marker) is marker


def register(app: typer.Typer) -> None:
    """Add ``posenc tune`` to the ``posenc`` app."""
    app.command(context_settings={"allow_extra_args": False})(tune)
