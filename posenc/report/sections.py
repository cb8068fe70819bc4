"""The report's sections, each built once as a neutral `Table` and rendered by
`posenc.report.table.markdown` (report.md, `posenc tables`) or `...terminal` (rich)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from posenc.report.published import PaperComparison, paper_block
from posenc.report.records import train_ranges
from posenc.report.summary import (
    STOP_HEADER,
    TABLE_HEADER,
    SummaryRow,
    _short,
    _signed,
    _value,
    aggregation_words,
    best_horizon_text,
    fit_text,
    format_stat,
    horizon_text,
    robust_text,
    stop_cells,
    table_cells,
)
from posenc.report.table import Table

if TYPE_CHECKING:
    from posenc.report.build import Report


def _ranges(report: Report, task: str) -> str:
    return ", ".join(f"{lo}–{hi}" for lo, hi in train_ranges(report.records, task))


def paper_sentence(paper: PaperComparison) -> str:
    """One line: where the paper column comes from and how well the orderings agree."""
    text = (
        f"*paper*: {paper.source}; *ours (as paper)*: our `{paper.metric}`, "
        f"{aggregation_words(paper.aggregation)}, computed as the paper reports it. "
    )
    if paper.tau is None:
        return text + f"Rank agreement: too few encodings with both figures ({paper.n})."
    return text + (
        f"Rank agreement between the two orderings: Kendall's τ = {paper.tau:.2f} "
        f"(p = {paper.p_value:.3g}, {paper.n} encodings)."
    )


def paper_caption(paper: PaperComparison) -> str:
    tau = (
        f"Kendall's τ = {paper.tau:.2f}, p = {paper.p_value:.2g} ({paper.n} encodings)"
        if paper.tau is not None
        else f"τ: too few encodings with both figures ({paper.n})"
    )
    return f"{paper.metric}, {aggregation_words(paper.aggregation)} · {tau}"


def token_scales(report: Report, task: str) -> dict[str, list[str]]:
    """``model.embed_init`` -> the encodings of ``task`` trained with it (complete runs)."""
    from posenc.runfolder import LEGACY_DEFAULTS

    legacy = LEGACY_DEFAULTS[("model", "embed_init")]
    scales: dict[str, set[str]] = {}
    for r in report.records:
        if r.task == task and r.status == "complete":
            init = str(((r.config or {}).get("model") or {}).get("embed_init", legacy))
            scales.setdefault(init, set()).add(r.encoding)
    return {init: sorted(encs) for init, encs in sorted(scales.items())}


def _scales_text(scales: dict[str, list[str]]) -> str:
    return "; ".join(f"{init} for {', '.join(encs)}" for init, encs in scales.items())


def scale_note(report: Report, task: str) -> str | None:
    """One sentence when the rows were trained at different token-embedding scales
    (``model.embed_init=auto``, or runs gathered from several settings), else None."""
    scales = token_scales(report, task)
    if len(scales) < 2:
        return None
    return (
        f"Token embeddings differ between rows (`model.embed_init`): {_scales_text(scales)} "
        "(scaled: N(0, 1/d)·√d, unit variance; gpt: N(0, 0.02), unscaled)."
    )


def summary_table(report: Report, task: str) -> Table:
    """Every metric over seeds and the best seed's, one row per encoding; with the paper
    column (ours computed the paper's way, and the published figure) when there is one."""
    paper = report.papers.get(task)
    extra = ["ours (as paper)", "paper"] if paper else []
    table = Table(
        title=task,
        columns=[*TABLE_HEADER, *extra],
        align=["l", *["r"] * (len(TABLE_HEADER) - 2), "l", *["r"] * len(extra)],
        notes=[paper_sentence(paper)] if paper else [],
    )
    if note := scale_note(report, task):
        table.notes.append(note)
    if note := unfit_note(report.tables[task]):
        table.notes.append(note)
    if note := pairs_note(report, task):
        table.notes.append(note)
    for row in report.tables[task]:
        cells = table_cells(row)
        table.rows.append(cells + ([_value(row.as_paper), _value(row.paper)] if paper else []))
    return table


def unfit_note(rows: list[SummaryRow]) -> str | None:
    """The runs that did not fit their training range, listed by encoding with their lowest
    training-length exact match (they are in no OOD figure, horizon or pair); None if all fit."""
    parts = []
    for row in rows:
        if row.unfit:
            seeds = ", ".join(str(s) for s in row.unfit)
            parts.append(f"{row.encoding} (seed{'s' * (len(row.unfit) > 1)} {seeds})")
    if not parts:
        return None
    return (
        "Did not fit their training range (listed with their ID figures, left out of every "
        "OOD figure, horizon and pair): " + "; ".join(parts) + "."
    )


def pairs_note(report: Report, task: str) -> str | None:
    """Which adjacent pairs of the ranking the paired bootstrap leaves unresolved (95%
    interval of the OOD difference includes 0, or one paired seed) and which are tied (the
    same outcome on every paired example); with fewer than `MIN_SEEDS` seeds, says so. None
    below two ranked rows."""
    from posenc.report.protocol import MIN_SEEDS

    pairs = report.pairs.get(task) or []
    if not pairs:
        return None
    tied = [p for p in pairs if p.tied]
    open_ = [p for p in pairs if not p.resolved and not p.tied]
    if not open_:
        text = (
            f"No adjacent pair of the ranking is left unresolved by the paired bootstrap "
            f"({len(pairs)} pairs, 95%)."
        )
    else:
        text = (
            f"Unresolved adjacent pairs ({len(open_)} of {len(pairs)}; the 95% paired-bootstrap "
            "interval of the OOD difference includes 0, or fewer than 2 seeds pair them, so "
            "their order is not established): " + "; ".join(p.text() for p in open_) + "."
        )
    if tied:
        named = "; ".join(f"{p.upper} = {p.lower}" for p in tied)
        text += f" Tied (the same outcome on every paired example): {named}."
    seeds = min((len(row.seeds) for row in report.tables[task] if row.ranked), default=0)
    if seeds < MIN_SEEDS:
        text += f" {seeds} seed{'s' * (seeds != 1)}: fewer than the protocol's {MIN_SEEDS}" + (
            "; more may resolve them (`posenc compare --seeds auto`)." if open_ else "."
        )
    return text


def compact_summary_table(report: Report, task: str) -> Table:
    """`summary_table` narrow enough for 80 columns: two digits, the fit count in the seeds'
    place, the best seed in one cell (min ID is in report.md)."""
    ranges = _ranges(report, task)
    scales = token_scales(report, task)
    caption = (
        "fit: runs that fit / complete runs · mean ± 95% CI; OOD and horizon over the runs "
        "that fit\nrobust: horizon past the training range · best seed: OOD/horizon"
    )
    if len(scales) > 1:
        caption += f"\ntoken embeddings (model.embed_init): {_scales_text(scales)}"
    table = Table(
        title=f"[bold]{task}[/]" + (f" · trained on lengths {ranges}" if ranges else ""),
        caption=caption,
        columns=[
            "encoding",
            "fit",
            "ID exact",
            "OOD exact",
            "horizon",
            "robust",
            "best seed",
        ],
        align=["l", *["r"] * 6],
        compact=True,
    )
    for i, row in enumerate(report.tables[task]):
        b = row.best
        best = (
            "–"
            if row.best_seed is None
            else f"{row.best_seed}: –"
            if row.fit == 0
            else f"{row.best_seed}: {_short(b.get('ood_exact_match'))}/{best_horizon_text(row)}"
        )
        seeds = fit_text(row)  # "2/3": fit of the complete runs
        if row.failed or row.unfinished:  # "1/1 of 3": the others failed or are unfinished
            total = len(row.seeds) + len(row.failed) + row.unfinished
            seeds = f"{seeds} of {total}"
            table.markup[(i, 1)] = f"[red]{seeds}[/]"
        table.rows.append(
            [
                row.encoding,
                seeds,
                format_stat(row.id_exact_match, 2),
                format_stat(row.ood_exact_match, 2),  # "–" where none fit: the horizon says so
                horizon_text(row),
                robust_text(row),
                best,
            ]
        )
    return table


def paper_table(report: Report, task: str) -> Table | None:
    """Ours next to the paper's figure, for the terminal (markdown has them as columns)."""
    paper = report.papers.get(task)
    if paper is None:
        return None
    return Table(
        title=f"{task}: ours next to {paper.source}",
        caption=paper_caption(paper),
        columns=["encoding", "ours", "paper"],
        align=["l", "r", "r"],
        rows=[
            [row.encoding, _value(row.as_paper, 2), _value(row.paper, 2)]
            for row in report.tables[task]
        ],
    )


def lift_table(report: Report, task: str) -> Table | None:
    """Randomized positions against their base (Ruoss et al. 2023's comparison)."""
    lifts = report.lifts.get(task)
    if not lifts:
        return None
    block = paper_block(report.records, task) or {}
    metric = block.get("metric", "ood_exact_match")
    how = aggregation_words(block.get("aggregation", "mean"))
    caption = f"{metric}, {how}"
    notes = []
    found = [x.lift for x in lifts if x.lift is not None]
    if found:
        notes.append(f"Mean lift: {_signed(sum(found) / len(found))} over {len(found)} pairs.")
    if task in report.published_lift:
        source, lift = report.published_lift[task]
        caption += f" · {source}: mean lift {lift:+.3f}"
        notes.append(f"Published: {source} report a mean lift of {lift:+.3f}.")
    return Table(
        title=f"{task}: randomized positions against their base",
        lead=f"Randomized positions against their base (`{metric}`, {how}, "
        + ("over every run, as the paper computes it" if block else "over the runs that fit")
        + "; lift = randomized − base):",
        caption=caption,
        columns=["randomized", "base", "randomized value", "base value", "lift"],
        align=["l", "l", "r", "r", "r"],
        rows=[
            [
                x.randomized,
                x.base,
                _value(x.randomized_value),
                _value(x.base_value),
                _signed(x.lift),
            ]
            for x in lifts
        ],
        notes=notes,
    )


def stop_table(report: Report, task: str) -> Table | None:
    """Steps to ``train.stop_at`` for the runs trained with it."""
    rows = report.stops.get(task)
    if not rows:
        return None
    thresholds = " / ".join(f"{t:g}" for t in sorted({row.threshold for row in rows}))
    return Table(
        title=f"{task}: steps to ID exact match ≥ {thresholds}",
        lead=f"Steps to in-distribution exact match ≥ {thresholds} (`train.stop_at`: reached "
        "at two consecutive quick evaluations; the step of the second; mean ± 95% CI over the "
        "runs that reached it):",
        caption="train.stop_at · mean ± 95% CI over the runs that reached it",
        columns=list(STOP_HEADER),
        align=["l", "r", "r", "l", "r"],
        rows=[stop_cells(row) for row in rows],
    )


def fit_steps_table(report: Report, task: str) -> Table | None:
    """Steps to fit the training range for the runs trained until fit (`train.until_fit`)."""
    rows = report.fit_steps.get(task)
    if not rows:
        return None
    thresholds = " / ".join(f"{t:g}" for t in sorted({row.threshold for row in rows}))
    return Table(
        title=f"{task}: steps to fit the training range",
        lead=f"Steps to fit the training range (`train.until_fit`: exact match ≥ {thresholds} "
        "at every training length on validation samples, checked at each evaluation "
        "interval, up to the ceiling `train.max_steps`; mean ± 95% CI over the runs that fit):",
        caption="train.until_fit · mean ± 95% CI over the runs that fit",
        columns=["encoding", "fit", "steps to fit (mean)", "each seed", "train min"],
        align=["l", "r", "r", "l", "r"],
        rows=[stop_cells(row) for row in rows],
    )


def difference_table(report: Report, task: str) -> Table | None:
    """Each encoding's OOD exact match minus the baseline's, with the paired-bootstrap
    interval; None without a baseline or without pairs (`difference_absent`)."""
    diffs = report.differences.get(task)
    baseline = report.baseline
    if baseline is None or not diffs:
        return None
    notes = []
    if any(d.resampled == "seeds" for d in diffs):
        notes.append(
            "*seeds*: some runs have no per-example results (`per_length[n].examples`), so "
            "only seeds were resampled for those rows."
        )
    return Table(
        title=f"{task}: OOD exact match minus {baseline}",
        lead=f"Difference to `{baseline}` in OOD exact match (encoding − {baseline}; mean over "
        "paired seeds, 95% paired-bootstrap interval):",
        caption="mean over paired seeds · 95% paired bootstrap (seeds × examples, or seeds only)",
        columns=["encoding", "paired seeds", "Δ OOD exact match", "95% CI", "resampled"],
        align=["l", "r", "r", "l", "l"],
        rows=[
            [
                d.encoding,
                str(len(d.seeds)),
                _signed(d.mean),
                "–" if d.low is None else f"[{d.low:+.3f}, {d.high:+.3f}]",
                d.resampled,
            ]
            for d in diffs
        ],
        notes=notes,
    )


def difference_absent(report: Report, task: str) -> str | None:
    """The sentence for a baseline with no paired runs on ``task`` (else None)."""
    if report.baseline is not None and not report.differences.get(task):
        return (
            f"No paired runs with baseline `{report.baseline}` on this task (a seed pairs "
            "only where both runs fit their training range)."
        )
    return None


def failures_table(report: Report) -> Table | None:
    failed = [r for r in report.records if r.status == "failed"]
    if not failed:
        return None
    return Table(
        title="[bold red]failed runs[/]",
        columns=["run", "error"],
        align=["l", "l"],
        rows=[[r.path, r.error or ""] for r in failed],
    )
