"""Publish an experiment, and keep the results tables of the docs written by posenc.

``publish(src, dest)`` copies, from every run of an experiment folder, the two files its
numbers come from — ``metrics.json`` (or ``error.json`` for a failed run) and
``config.yaml`` — into ``dest/<task>/<encoding>/seed<k>/``, and writes the report there.
Nothing else travels: no checkpoints, logs or TensorBoard events. The published folder is
then an experiment folder in its own right: ``posenc report dest`` regenerates every table
and plot from the committed files alone.

``render_tables(text, base)`` re-renders, in a markdown document, every block

    <!-- posenc report experiments/kazemnejad_copy --baseline alibi -->
    ...
    <!-- /posenc -->

from the experiment folder its opening line names (relative to ``base``, the document's
folder): the report's tables for it (``--baseline``: with the differences to that
encoding; ``--per-length token_accuracy --lengths 5,8,16``: with a table of that metric at
those lengths; ``--factors 0.9,0.5``: with each row's training range, model, steps and its
length-generalization factor at those exact-match thresholds). A block

    <!-- posenc check experiments/compile_accuracy --reference experiments/compare_protocol -->

renders instead the accuracy check of the first experiment against the second
(`posenc.report.accuracy_check`: the per-encoding table, the rank tests, the verdict;
``--seeds 3,4`` judges only those candidate seeds, ``--encodings rope,t5`` only those
encodings on both sides). So a results table in the
docs is always the one the report computes, and ``posenc tables --check`` (a test runs it)
fails when someone edits one by hand or the committed runs change.
"""

from __future__ import annotations

import re
import shlex
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from posenc.choices import copy_portable, make_config_portable, make_portable
from posenc.errors import ConfigError
from posenc.io import atomic_write_text
from posenc.metrics import summarize
from posenc.report import (
    NOT_FIT,
    Report,
    RunRecord,
    accuracy_plot_name,
    build_report,
    load_experiment,
    record_from_metrics,
    task_section_lines,
    tasks_of,
    write_report,
)
from posenc.report.accuracy_check import CheckBlock, check_block_options, render_check
from posenc.report.protocol import find_controls, load_controls
from posenc.runfolder import CONFIG, CONTROL_JSON, CONTROLS, ERROR, METRICS

OPEN = re.compile(r"^<!-- posenc (?P<args>.*?) -->[ \t]*$", re.MULTILINE)
CLOSE = "<!-- /posenc -->"
BLOCK_OPTIONS = ("--baseline", "--per-length", "--lengths", "--factors")
PER_LENGTH_METRICS = ("exact_match", "token_accuracy")


@dataclass
class Published:
    complete: int
    failed: int
    unfinished: int  # not copied: they have no numbers yet
    files: list[Path]


def publish(src: str | Path, dest: str | Path, baseline: str | None = None) -> Published:
    """Copy the numbers of every finished or failed run of ``src`` into ``dest`` and write
    the report there (results.csv, report.md, plots). Runs already in ``dest`` and not in
    ``src`` stay (publishing from two machines into one folder merges them)."""
    src, dest = Path(src), Path(dest)
    if not src.is_dir():
        raise ConfigError(f"{src} is not a folder")
    if dest.resolve() == src.resolve() or dest.resolve().is_relative_to(src.resolve()):
        raise ConfigError(f"publish into a folder outside the experiment, got {dest}")
    records = load_experiment(src)
    done = [r for r in records if r.status != "unfinished"]
    if not done:
        raise ConfigError(f"no finished or failed runs under {src} to publish")
    if baseline is not None:  # fail before copying anything
        build_report(records, plots=False, baseline=baseline)
    files = []
    for r in done:
        if r.status == "failed" and not _failed_in_training(src / r.path):
            files.append(_write_failure(r, src / r.path, dest / r.path))
            continue
        for name in (METRICS if r.status == "complete" else ERROR, CONFIG):
            if (src / r.path / name).is_file():
                (dest / r.path).mkdir(parents=True, exist_ok=True)
                copy_portable(src / r.path / name, dest / r.path / name)
                files.append(dest / r.path / name)
        if r.status == "complete":  # a run that failed once and then finished
            (dest / r.path / ERROR).unlink(missing_ok=True)
    # each task's positive control (the one that matches its runs best) travels with its table
    for task, (path, _) in find_controls(src, tasks_of(done), done).items():
        (dest / CONTROLS / task).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, dest / CONTROLS / task / CONTROL_JSON)
        files.append(dest / CONTROLS / task / CONTROL_JSON)
    published = load_experiment(dest)
    controls = load_controls(dest, tasks_of(published), published)
    report = build_report(published, dest.resolve().name, baseline=baseline, controls=controls)
    files += write_report(report, dest)
    failed = sum(r.status == "failed" for r in done)
    return Published(len(done) - failed, failed, len(records) - len(done), files)


def publish_evaluation(
    src: str | Path, dest: str | Path, tag: str, baseline: str | None = None
) -> Published:
    """Publish the re-evaluation ``tag`` of ``src``'s runs (``posenc eval RUN --tag TAG``:
    ``eval-<tag>.json``) as an experiment of its own in ``dest``: each such run's
    evaluation as its ``metrics.json``, its ``config.yaml`` with the evaluation's overrides
    applied (the folder says what it was scored on), and the report. Nothing is trained; the
    numbers are the re-evaluation's, unchanged (flip-flop's sparse and dense splits:
    docs/results.md)."""
    from omegaconf import OmegaConf

    from posenc.io import atomic_write_json

    src, dest = Path(src), Path(dest)
    if not src.is_dir():
        raise ConfigError(f"{src} is not a folder")
    if dest.resolve() == src.resolve() or dest.resolve().is_relative_to(src.resolve()):
        raise ConfigError(f"publish into a folder outside the experiment, got {dest}")
    experiment = dest.resolve().name
    files = []
    found = evaluations(src, tag)
    for rel, metrics, cfg in found:
        out = dest / rel
        cfg.experiment = metrics["experiment"] = experiment
        make_portable((metrics.get("protocol") or {}).get("choices"))
        make_config_portable(cfg)
        atomic_write_text(out / CONFIG, OmegaConf.to_yaml(cfg))
        atomic_write_json(out / METRICS, metrics)
        files += [out / CONFIG, out / METRICS]
    report = build_report(load_experiment(dest), experiment, baseline=baseline)
    files += write_report(report, dest)
    return Published(len(found), 0, 0, files)


def evaluations(src: Path, tag: str) -> list[tuple[Path, dict, Any]]:
    """(run folder relative to ``src``, its ``eval-<tag>.json``, its config with the
    evaluation's overrides applied) for every run of ``src`` re-evaluated under ``tag``."""
    from omegaconf import OmegaConf

    from posenc.io import read_json
    from posenc.runfolder import evaluation_file, folder_seed

    name = evaluation_file(tag)
    found = [
        p
        for p in sorted(Path(src).glob(f"*/*/*/{name}"))
        if folder_seed(p.parent.name) is not None and (p.parent / CONFIG).is_file()
    ]
    if not found:
        raise ConfigError(f"no run under {src} has {name} (posenc eval RUN_DIR ... --tag {tag})")
    out = []
    for path in found:
        metrics = read_json(path)
        cfg = OmegaConf.load(path.parent / CONFIG)
        for key, value in _overrides(metrics):
            OmegaConf.update(cfg, key, value, merge=False)
        out.append((path.parent.relative_to(src), metrics, cfg))
    return out


def evaluation_report(src: str | Path, tag: str, baseline: str | None = None) -> Report:
    """The report of ``src``'s re-evaluation ``tag`` (`evaluations`), written nowhere."""
    from omegaconf import OmegaConf

    records = [
        record_from_metrics(metrics, str(rel), OmegaConf.to_container(cfg))
        for rel, metrics, cfg in evaluations(Path(src), tag)
    ]
    return build_report(
        records, f"{Path(src).resolve().name} ({tag})", plots=False, baseline=baseline
    )


def _overrides(metrics: dict) -> list[tuple[str, Any]]:
    """The ``eval.overrides`` a re-evaluation recorded, as (key, value), parsed as Hydra
    parses a command line (``task.eval_p_ignore=0.98`` a float, ``null`` None)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    lines = list((metrics.get("eval") or {}).get("overrides") or [])
    try:
        parsed = OverridesParser.create().parse_overrides(lines)
    except Exception as exc:
        raise ConfigError(f"unreadable eval.overrides {lines}: {exc}") from exc
    return [(o.key_or_group, o.value()) for o in parsed]


def _failed_in_training(folder: Path) -> bool:
    """Whether a failed run failed as its error.json says (copied as it is), rather than by
    a damaged metrics.json or config.yaml (which `_write_failure` records)."""
    return (folder / ERROR).is_file() and not (folder / METRICS).exists()


def _write_failure(record: RunRecord, src: Path, folder: Path) -> Path:
    """A run whose files are damaged, published as a failed run whose error.json names the
    damaged file: the published report lists the failure the local one lists (copying only
    the readable files would publish it as absent, or as its previous numbers). Its config
    goes along only if it was readable."""
    from posenc.io import atomic_write_json

    folder.mkdir(parents=True, exist_ok=True)
    (folder / METRICS).unlink(missing_ok=True)  # numbers published before the damage
    (folder / CONFIG).unlink(missing_ok=True)
    if record.config is not None:
        shutil.copyfile(src / CONFIG, folder / CONFIG)
    # named within the experiment, not by this machine's path: the published folder is
    # committed and its report must read the same everywhere
    message = str(record.error).replace(str(src), record.path)
    error = {"task": record.task, "encoding": record.encoding, "seed": record.seed}
    atomic_write_json(folder / ERROR, error | {"status": "failed", "error": message})
    return folder / ERROR


@dataclass
class Block:
    """What a block's opening line asks for."""

    folder: Path
    baseline: str | None = None
    per_length: str | None = None  # a per-length table of this metric ...
    lengths: tuple[int, ...] = ()  # ... at these lengths
    factors: tuple[float, ...] = ()  # a table of length factors at these thresholds


def block_options(args: str) -> Block | CheckBlock:
    """``report FOLDER [--baseline ENC] [--per-length METRIC --lengths 5,6,8] [--factors
    0.9,0.5]``, or ``check FOLDER --reference FOLDER [--seeds 3,4] [--encodings rope,t5]``;
    one-line errors."""
    words = shlex.split(args)
    if words and words[0] == "check":
        return check_block_options(args, words)
    if not words or words[0] != "report" or len(words) < 2:
        raise ConfigError(
            f"a posenc block starts with '<!-- posenc report FOLDER [--baseline ENCODING] -->', "
            f"got '<!-- posenc {args} -->'"
        )
    block, rest = Block(Path(words[1])), words[2:]
    while rest:
        option = rest.pop(0)
        if option not in BLOCK_OPTIONS or not rest:
            raise ConfigError(
                f"unknown or incomplete block option {option!r} in '<!-- posenc {args} -->'; "
                f"valid: {', '.join(o + ' VALUE' for o in BLOCK_OPTIONS)}"
            )
        value = rest.pop(0)
        if option == "--baseline":
            block.baseline = value
        elif option == "--per-length":
            if value not in PER_LENGTH_METRICS:
                raise ConfigError(
                    f"--per-length {value!r} is not a per-length metric; valid: "
                    f"{', '.join(PER_LENGTH_METRICS)}"
                )
            block.per_length = value
        elif option == "--factors":
            try:
                block.factors = tuple(float(t) for t in value.split(","))
            except ValueError:
                block.factors = ()
            if not block.factors or not all(0 < t <= 1 for t in block.factors):
                raise ConfigError(
                    f"--factors takes comma-separated exact-match thresholds in (0, 1] "
                    f"(0.9,0.5), got {value!r}"
                )
        else:
            try:
                block.lengths = tuple(int(n) for n in value.split(","))
            except ValueError:
                raise ConfigError(
                    f"--lengths takes comma-separated integers (5,6,8), got {value!r}"
                ) from None
    if (block.per_length is None) != (not block.lengths):
        raise ConfigError(f"--per-length and --lengths go together in '<!-- posenc {args} -->'")
    return block


def per_length_lines(report: Report, task: str, metric: str, lengths: tuple[int, ...]) -> list[str]:
    """Encodings (in the summary table's order) x lengths: ``metric`` averaged over seeds.

    A validation length (past the training range, scored on validation samples and left out
    of the test set: ``metrics.json``'s ``validation`` block) has no test figure; asked for,
    its column shows the validation figure, headed ``n = 5 (val)`` and said so below the
    table, so an ablation can show the lengths it is chosen on beside those it is tested on.
    """
    values: dict[tuple[str, int], list[float]] = {}
    for row in report.rows:
        if row["task"] == task and row["length"] in lengths:
            values.setdefault((row["encoding"], row["length"]), []).append(row[metric])
    tested = {n for _, n in values}
    validated: set[int] = set()
    for r in report.records:
        if r.task != task or r.status != "complete" or not r.metrics:
            continue
        val = r.metrics.get("validation") or {}
        for n in val.get("lengths") or []:
            figure = (val.get("per_length") or {}).get(str(n), {}).get(metric)
            if n in lengths and n not in tested and isinstance(figure, int | float):
                validated.add(n)
                values.setdefault((r.encoding, n), []).append(float(figure))
    name = metric.replace("_", " ")
    head = [f"n = {n} (val)" if n in validated else f"n = {n}" for n in lengths]
    lines = [
        f"{name.capitalize()} by length (mean over seeds):",
        "",
        "| encoding | " + " | ".join(head) + " |",
        "|---|" + "--:|" * len(lengths),
    ]
    for summary in report.tables[task]:
        cells = [
            f"{sum(v) / len(v):.2f}" if (v := values.get((summary.encoding, n))) else "–"
            for n in lengths
        ]
        lines.append(f"| {summary.encoding} | " + " | ".join(cells) + " |")
    if validated:
        listed = ", ".join(str(n) for n in sorted(validated))
        lines += [
            "",
            f"(val): a validation length ({listed}), scored on the validation samples (the "
            "lengths settings are chosen on), never in the OOD figures or horizons.",
        ]
    return [*lines, ""]


def run_factor(record: RunRecord, threshold: float) -> float | None:
    """How many times its longest training length a run generalizes to at ``threshold``:
    its extrapolation horizon at that exact-match threshold over ``train.max_len``; None
    when it does not fit its training range at that threshold (no horizon to speak of) or
    nothing past the range was evaluated."""
    assert record.metrics is not None
    lo, hi = record.metrics["train_range"]
    summary = summarize(record.metrics["per_length"], lo, hi, threshold)
    horizon = summary["extrapolation_horizon"]
    return None if horizon is None else horizon / hi


def _factor_cell(runs: list[RunRecord], threshold: float) -> str:
    """``1.5×`` (mean over the runs that fit at ``threshold``), ``1.2× (2 of 3 fit)``, ``did
    not fit``."""
    factors = [f for r in runs if (f := run_factor(r, threshold)) is not None]
    if not factors:
        return NOT_FIT
    text = f"{sum(factors) / len(factors):.2f}×"
    return text if len(factors) == len(runs) else f"{text} ({len(factors)} of {len(runs)} fit)"


def _scale_cells(config: dict[str, Any] | None) -> list[str]:
    """A run's model and its amount of training: ``2 × 64``, ``10,000 × 64``."""
    model, train = (config or {}).get("model") or {}, (config or {}).get("train") or {}

    def num(value: Any) -> str:
        return "–" if value is None else f"{value:,}"

    return [
        f"{num(model.get('n_layers'))} × {num(model.get('d_model'))}",
        f"{num(train.get('steps'))} × {num(train.get('batch_size'))}",
    ]


def factor_lines(report: Report, task: str, thresholds: tuple[float, ...]) -> list[str]:
    """Encodings (in the summary table's order) with their training range, model (layers ×
    d_model), training (steps × batch) and length-generalization factor at each threshold,
    over the seeds that finished."""
    runs: dict[str, list[RunRecord]] = {}
    for r in report.records:
        if r.task == task and r.status == "complete":
            runs.setdefault(r.encoding, []).append(r)
    lines = [
        "Length-generalization factor: the extrapolation horizon at an exact-match threshold "
        "over the longest training length, so bounded by the evaluated lengths (mean over "
        "the seeds that fit the training range at that threshold):",
        "",
        "| encoding | trained on | layers × d_model | steps × batch | "
        + " | ".join(f"factor at {t:g}" for t in thresholds)
        + " |",
        "|---|---|---|---|" + "--:|" * len(thresholds),
    ]
    for summary in report.tables[task]:
        group = sorted(runs.get(summary.encoding, []), key=lambda r: r.seed)
        if not group:
            continue
        lo, hi = group[0].metrics["train_range"]  # type: ignore[index]
        cells = [f"{lo}–{hi}", *_scale_cells(group[0].config)]
        cells += [_factor_cell(group, t) for t in thresholds]
        lines.append(f"| {summary.encoding} | " + " | ".join(cells) + " |")
    return [*lines, ""]


def render_block(
    folder: Path, link: str, block: Block, warn: Callable[[str], None] | None = None
) -> str:
    """The tables of one experiment for a document: every task's summary table, paper
    column, randomized lifts and differences to the baseline, with plot links relative to
    the document (``link`` is the folder as the document names it). Each run left out for
    a damaged file goes to ``warn`` as one line naming the file."""
    if not folder.is_dir():
        raise ConfigError(f"the experiment folder {folder} of a posenc block does not exist")
    records = load_experiment(folder)
    for r in records:
        if warn is not None and r.status == "failed" and not _failed_in_training(folder / r.path):
            warn(f"{folder / r.path} left out of the tables: {r.error}")
    if not any(r.status == "complete" for r in records):
        raise ConfigError(f"no finished runs under {folder} for its posenc block")
    controls = load_controls(folder, tasks_of(records), records)
    report: Report = build_report(
        records, folder.name, plots=False, baseline=block.baseline, controls=controls
    )
    lines = []
    several = len(report.tables) > 1
    for task in report.tables:
        plot = accuracy_plot_name(task)
        lines += task_section_lines(
            report,
            task,
            heading=f"**{task}**" if several else None,
            plot=f"{link}/{plot}" if (folder / plot).is_file() else None,
        )
        if block.per_length:
            lines += per_length_lines(report, task, block.per_length, block.lengths)
        if block.factors:
            lines += factor_lines(report, task, block.factors)
    return "\n".join(lines).rstrip("\n") + "\n"


def render_tables(text: str, base: str | Path, warn: Callable[[str], None] | None = None) -> str:
    """``text`` with every posenc block re-rendered (folders relative to ``base``); runs left
    out for a damaged file go to ``warn`` (`render_block`)."""
    out, pos = [], 0
    for match in OPEN.finditer(text):
        if match.start() < pos:
            continue
        end = text.find(CLOSE, match.end())
        nested = OPEN.search(text, match.end())
        if end < 0 or (nested is not None and nested.start() < end):
            line = text.count("\n", 0, match.start()) + 1
            raise ConfigError(f"the posenc block opened on line {line} has no '{CLOSE}' line")
        block = block_options(match.group("args"))
        if isinstance(block, CheckBlock):
            body = render_check(Path(base), block)
        else:
            body = render_block(Path(base) / block.folder, block.folder.as_posix(), block, warn)
        out += [text[pos : match.end()], "\n", body, ""]
        pos = end
    out.append(text[pos:])
    return "".join(out)


def has_blocks(path: str | Path) -> bool:
    """Whether the markdown file ``path`` (if it exists) holds a posenc block."""
    path = Path(path)
    return path.is_file() and OPEN.search(path.read_text()) is not None


def update_tables(
    path: str | Path, check: bool = False, warn: Callable[[str], None] | None = None
) -> bool:
    """Re-render the posenc blocks of a markdown file; True if it was (``check``: would be)
    changed. ``check`` writes nothing. Runs left out for a damaged file go to ``warn``."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path} is not a file")
    old = path.read_text()
    if not OPEN.search(old):
        raise ConfigError(
            f"{path} has no posenc blocks ('<!-- posenc report FOLDER -->' ... '{CLOSE}')"
        )
    new = render_tables(old, path.parent, warn)
    if new != old and not check:
        atomic_write_text(path, new)
    return new != old
