"""Tuning on validation (`posenc tune`): each trial is one run trained as `posenc.run.execute.run`
trains it, then scored on its validation samples only (`posenc.run.session.validation_record`):
it never loads the frozen test set or evaluates a test length. A search is a Hydra multirun
over the trial function (`trial`), one per encoding, with Hydra's Optuna sweeper (Optuna:
Akiba et al. 2019; its TPE sampler: Bergstra et al. 2011) or its basic (grid) sweeper
(configs/hparams_search/); `choose` then picks each encoding's best trial and
the CLI writes the choices file (`posenc.choices`).

Objective (`objective`): the validation OOD exact match (the mean over the validation lengths)
of a trial that fits its training range on validation; a trial that does not fit scores its
validation minimum ID exact match minus 1, below every trial that fits, so Optuna is still
drawn towards settings that fit and `choose` never picks one that does not.

With ``posenc tune --seeds N`` (N > 1) a trial trains its setting at N seeds inside the one
trial (`seeded_trial`: ``<trial>/seed<k>/``, each a `tune_run`) and returns the mean over
them: the sweeper sees one setting and one objective, as Optuna's must (a seed swept as a
parameter would be a value Optuna samples and chooses, not one it averages over). The trial
fits when every seed fits; its objective is then the mean validation OOD exact match over
the seeds, else the mean minimum ID exact match minus 1 (`seeds_objective`; one seed: the
objective above).
"""

from __future__ import annotations

import copy
import logging
import sys
import uuid
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf, open_dict

from posenc.errors import ConfigError
from posenc.io import atomic_write_json, read_json
from posenc.runfolder import CHECKPOINT, same_config
from posenc.schema import encoding_label

TRIAL = "trial.json"  # a trial's record, in its run folder
# posenc tune --seeds: set for every trial of a search through Hydra's hydra.job.env_set (in
# this process or a joblib worker alike), no part of a run's config or identity.
SEEDS_ENV = "POSENC_TUNE_SEEDS"
SEARCH = "search.json"  # in a search's folder: the id of the search that runs there now
# Keys of a trial's overrides that are not settings to choose (what the search holds fixed).
FIXED = {
    "encoding", "task", "seed", "experiment", "runs_root", "data_dir", "run_dir", "threads",
    "hparams_search", "preset", "progress",
}  # fmt: skip


def objective(validation: dict[str, Any]) -> float:
    """A trial's score (the module's docstring): higher is better."""
    return seeds_objective([validation])


def seeds_objective(validations: list[dict[str, Any]]) -> float:
    """The score of one setting trained at several seeds (the module's docstring): the mean
    validation OOD exact match when every seed fits, else the mean validation minimum ID
    exact match minus 1, below every setting whose seeds all fit."""
    if all(v["fits_training_range"] for v in validations):
        if any(v["ood_exact_match"] is None for v in validations):
            raise ConfigError("posenc tune needs validation lengths: set eval.val_share > 0")
        return _mean([float(v["ood_exact_match"]) for v in validations])
    return _mean([float(v["min_id_exact_match"] or 0.0) for v in validations]) - 1.0


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def tune_run(cfg: DictConfig, settings: dict[str, Any]) -> dict[str, Any]:
    """Train one trial in ``cfg.run_dir`` and score it on validation; write and return its
    record ``{encoding, settings, validation, steps_trained, steps_to_fit, objective}``.
    Nothing else is evaluated: no quick evaluation (``train.eval_lengths`` emptied: its
    lengths reach the test's), no test set; until_fit's checks score validation too."""
    from posenc.console import Reporter
    from posenc.run.planning import plan
    from posenc.run.session import prepare, train_phase, validation_record

    if cfg.train.stop_at is not None:
        raise ConfigError("posenc tune stops on validation (train.until_fit); drop train.stop_at")
    with open_dict(cfg):
        cfg.train.eval_lengths = []  # the quick evaluations reach test lengths: none in a trial
    p = plan(cfg)
    if not p.validation_lengths:
        raise ConfigError(
            "posenc tune needs validation lengths past the training range: set "
            "eval.val_share > 0 and eval lengths past train.max_len"
        )
    search_id = _search_id(p.run_dir)
    done = _finished_trial(p.run_dir, p.cfg)
    if done is not None:  # a re-run of the same search: this trial trained already
        record = {**done, "search": search_id}
        atomic_write_json(p.run_dir / TRIAL, record)
        return record
    if _same_config(p.run_dir, p.cfg) and (p.run_dir / CHECKPOINT).is_file():
        mode = "resume"  # interrupted: go on from its last checkpoint, to the same numbers
    else:
        mode = "overwrite" if p.run_dir.exists() else "new"
    session = prepare(p, mode)
    train_phase(session, Reporter())
    validation = validation_record(session)
    session.close()
    record = {
        "encoding": encoding_label(cfg.encoding),
        "settings": settings,
        "validation": validation,
        "steps_trained": session.trainer.step_count,
        "steps_to_fit": session.steps_to_fit,
        "objective": objective(validation),
        "search": search_id,
    }
    atomic_write_json(p.run_dir / TRIAL, record)
    return record


def trial(cfg: DictConfig) -> float:
    """The Hydra task function of a search: one trial in the job's output folder."""
    from hydra.core.hydra_config import HydraConfig

    from posenc.run.spec import resolve_auto

    hc = HydraConfig.get()
    if cfg.get("choices") is not None:
        raise ConfigError("posenc tune makes a choices file; it does not read one (drop choices)")
    resolve_auto(cfg)
    settings = {}
    for override in hc.overrides.task:
        key = override.split("=", 1)[0].lstrip("+~")
        value = OmegaConf.select(cfg, key, default=None)
        if key not in FIXED and not key.startswith("hydra.") and not isinstance(value, DictConfig):
            settings[key] = OmegaConf.to_container(value) if OmegaConf.is_config(value) else value
    folder = Path(str(hc.runtime.output_dir))
    count = int(hc.job.env_set.get(SEEDS_ENV) or 1)
    if count > 1:
        return seeded_trial(cfg, settings, folder, count)["objective"]
    with open_dict(cfg):
        cfg.run_dir = str(folder)
    return tune_run(cfg, settings)["objective"]


def seeded_trial(
    cfg: DictConfig, settings: dict[str, Any], folder: Path, count: int
) -> dict[str, Any]:
    """One setting at ``count`` seeds (``cfg.seed`` and the next ones), each a `tune_run` in
    ``folder/seed<k>`` (reused when finished, resumed when interrupted, as a trial is); the
    trial's record in ``folder/trial.json``: its validation block the means over the seeds
    (fit: every seed fits), its objective `seeds_objective`, each seed's figures under
    ``seeds``, the most steps a seed trained and took to fit (null unless every seed fit)."""
    runs = []
    for k in range(count):
        one = copy.deepcopy(cfg)
        with open_dict(one):
            one.seed = int(cfg.seed) + k
            one.run_dir = str(Path(folder) / f"seed{one.seed}")
        runs.append((int(one.seed), tune_run(one, settings)))
    validations = [r["validation"] for _, r in runs]
    fits = all(v["fits_training_range"] for v in validations)

    def mean_of(key: str) -> float | None:
        values = [v.get(key) for v in validations]
        return None if any(x is None for x in values) else _mean([float(x) for x in values])

    fit_steps = [r["steps_to_fit"] for _, r in runs]
    record = {
        "encoding": encoding_label(cfg.encoding),
        "settings": settings,
        "validation": {
            "fits_training_range": fits,
            "min_id_exact_match": mean_of("min_id_exact_match"),
            "ood_exact_match": mean_of("ood_exact_match"),
        },
        "steps_trained": max(r["steps_trained"] for _, r in runs),
        "steps_to_fit": max(fit_steps) if fits and None not in fit_steps else None,
        "objective": seeds_objective(validations),
        "search": _search_id(Path(folder)),
        "seeds": [_seed_entry(seed, r) for seed, r in runs],
    }
    atomic_write_json(Path(folder) / TRIAL, record)
    return record


def _seed_entry(seed: int, record: dict[str, Any]) -> dict[str, Any]:
    """One seed's figures in a several-seed trial's record."""
    v = record["validation"]
    return {
        "seed": seed,
        "fits_training_range": bool(v["fits_training_range"]),
        "min_id_exact_match": v.get("min_id_exact_match"),
        "ood_exact_match": v.get("ood_exact_match"),
        "steps_trained": record.get("steps_trained"),
        "steps_to_fit": record.get("steps_to_fit"),
        "objective": record["objective"],
    }


def search(argv: list[str]) -> None:
    """One Hydra multirun of `trial` with ``argv`` as its command line (in this process:
    Hydra reads ``sys.argv``)."""
    import hydra
    from hydra.core.global_hydra import GlobalHydra

    from posenc import plugins, schema
    from posenc.config import CONFIG_DIR, searchpath_override

    schema.store()
    plugins.store_configs()
    # Optuna imports alembic, whose plugins announce themselves at INFO under Hydra's logging.
    logging.getLogger("alembic").setLevel(logging.WARNING)
    saved = sys.argv
    sys.argv = [saved[0], "--multirun", *argv, *searchpath_override()]
    try:
        hydra.main(config_path=str(CONFIG_DIR), config_name="config", version_base="1.3")(trial)()
    finally:
        sys.argv = saved
        GlobalHydra.instance().clear()


def start_search(folder: str | Path) -> str:
    """Mark ``folder`` as the home of a new search and return its id: every trial of it records
    the id (`trials` reads only this search's), so an earlier search's leftover trials are never
    chosen from, while a trial whose folder holds the same config's finished trial is reused and
    an interrupted one resumes from its checkpoint (the same command twice resumes the search)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    search_id = uuid.uuid4().hex
    atomic_write_json(folder / SEARCH, {"id": search_id})
    return search_id


def _search_id(run_dir: Path) -> str | None:
    marker = Path(run_dir).parent / SEARCH
    try:
        return str(read_json(marker)["id"])
    except Exception:  # a trial run outside `posenc tune`'s folders
        return None


def _same_config(run_dir: Path, cfg: DictConfig) -> bool:
    try:
        return same_config(run_dir, cfg)
    except Exception:  # unreadable: not this config's
        return False


def _finished_trial(run_dir: Path, cfg: DictConfig) -> dict[str, Any] | None:
    """The trial record in ``run_dir`` when it is this config's finished trial, else None."""
    path = Path(run_dir) / TRIAL
    if not path.is_file() or not _same_config(run_dir, cfg):
        return None
    try:
        record = read_json(path)
    except Exception:  # damaged: train it again
        return None
    if not isinstance(record, dict) or "objective" not in record or "seeds" in record:
        return None  # damaged, or a several-seed trial's record over an older one-seed run
    return record


def trials(folder: str | Path, search: str | None = None) -> list[dict[str, Any]]:
    """The trial records under a search's folder, in trial order (only search ``search``'s when
    given)."""
    found = sorted(Path(folder).glob(f"*/{TRIAL}"), key=lambda p: _number(p.parent.name))
    records = [read_json(p) for p in found]
    return [r for r in records if search is None or r.get("search") == search]


def _number(name: str) -> tuple[int, str]:
    return (int(name), name) if name.isdigit() else (sys.maxsize, name)


def choose(records: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The best trial among those that fit (the first of equals), or None if none fits."""
    fitting = [r for r in records if r["validation"]["fits_training_range"]]
    if not fitting:
        return None
    return max(fitting, key=lambda r: r["objective"])  # max keeps the first of equals
