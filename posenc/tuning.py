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
"""

from __future__ import annotations

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
SEARCH = "search.json"  # in a search's folder: the id of the search that runs there now
# Keys of a trial's overrides that are not settings to choose (what the search holds fixed).
FIXED = {
    "encoding", "task", "seed", "experiment", "runs_root", "data_dir", "run_dir", "threads",
    "hparams_search", "preset", "progress",
}  # fmt: skip


def objective(validation: dict[str, Any]) -> float:
    """A trial's score (the module's docstring): higher is better."""
    if validation["fits_training_range"]:
        if validation["ood_exact_match"] is None:
            raise ConfigError("posenc tune needs validation lengths: set eval.val_share > 0")
        return float(validation["ood_exact_match"])
    return float(validation["min_id_exact_match"] or 0.0) - 1.0


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
    with open_dict(cfg):
        cfg.run_dir = str(hc.runtime.output_dir)
    return tune_run(cfg, settings)["objective"]


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
    return record if isinstance(record, dict) and "objective" in record else None


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
