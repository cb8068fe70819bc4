"""Encodings and tasks from other packages (entry points ``posenc.encodings``/``posenc.tasks``),
the example plugin in examples/posenc_example, and posenc installed from its wheel."""

from __future__ import annotations

import importlib
import json
import os
import shutil
import site
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest
from typer.testing import CliRunner

from posenc import conformance, encodings, plugins
from posenc.cli.app import app
from posenc.cli.completion import complete_encodings, override_candidates
from posenc.tasks import base as task_base

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "posenc_example"
runner = CliRunner()

BAD_PLUGIN = '''
from posenc.encodings import PositionalEncoding
from posenc.errors import ConfigError
from posenc.tasks.base import SymbolTask


class Raises(PositionalEncoding):
    def __init__(self, *, d_model, n_heads, max_len, n_layers=1):
        raise RuntimeError("needs a GPU kernel")


class WrongShape(PositionalEncoding):
    def embed(self, x, pos, tokens=None):
        return x[..., :-1]


class WrongSolver(SymbolTask):
    """Solves another task than it samples."""

    def solve(self, inputs):
        return list(reversed(inputs))

    def sample(self, n, rng):
        inputs = self.draw(n, rng).tolist()
        return inputs, inputs


class Peeks(PositionalEncoding):
    """Adds the sum of the later tokens' embeddings: the model sees the future."""

    def embed(self, x, pos, tokens=None):
        return x + x.flip(1).cumsum(1).flip(1)


class Needs(PositionalEncoding):
    """Scales the embeddings by a factor that has no default."""

    def __init__(self, *, d_model, n_heads, max_len, n_layers=1, needed: float, shift: float = 0.5):
        super().__init__(d_model=d_model, n_heads=n_heads, max_len=max_len, n_layers=n_layers)
        if not needed > 0:
            raise ConfigError(f"encoding 'needs' needs encoding.needed > 0, got {needed}")
        self.needed, self.shift = float(needed), float(shift)

    def embed(self, x, pos, tokens=None):
        return x * self.needed + self.shift


class RareBad(SymbolTask):
    """Copies, but about one sample in a hundred holds an id past the vocabulary."""

    def solve(self, inputs):
        return list(inputs)

    def sample(self, n, rng):
        inputs = self.draw(n, rng).tolist()
        if rng.random() < 0.01:
            inputs[0] = self.vocab_size
        return inputs, list(inputs)


class GlobalRandom(SymbolTask):
    """Copies symbols drawn from the global random instead of its rng."""

    def solve(self, inputs):
        return list(inputs)

    def sample(self, n, rng):
        import random

        inputs = [random.randrange(self.vocab_size) for _ in range(n)]
        return inputs, list(inputs)
'''
BAD_ENTRY_POINTS = """
[posenc.encodings]
raises = bad_plugin:Raises
missing = no_such_module_for_posenc:Encoding
wrong_shape = bad_plugin:WrongShape
peeks = bad_plugin:Peeks

needs = bad_plugin:Needs

[posenc.tasks]
wrong_solver = bad_plugin:WrongSolver
rare_bad = bad_plugin:RareBad
global_random = bad_plugin:GlobalRandom
"""


def _pip_install(target: Path, *args: str) -> None:
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index",
         "--no-build-isolation", *args],
        check=True, capture_output=True, text=True, cwd=target.parent,
    )  # fmt: skip


@pytest.fixture(scope="session")
def example_site(tmp_path_factory) -> Path:
    """The example package pip-installed into a folder of its own (its entry points with it)."""
    site = tmp_path_factory.mktemp("example_site")
    # pip builds in the source folder: build from a copy so that the checkout stays clean
    src = tmp_path_factory.mktemp("example_src") / "posenc_example"
    shutil.copytree(EXAMPLE, src, ignore=shutil.ignore_patterns("build", "*.egg-info"))
    _pip_install(site, "--target", str(site), str(src))
    return site


@pytest.fixture(scope="session")
def bad_site(tmp_path_factory) -> Path:
    """A 'distribution' of broken encodings: a module and its dist-info, as pip would leave."""
    site = tmp_path_factory.mktemp("bad_site")
    (site / "bad_plugin.py").write_text(BAD_PLUGIN)
    info = site / "bad_plugins-0.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: bad-plugins\nVersion: 0.0\n")
    (info / "entry_points.txt").write_text(BAD_ENTRY_POINTS)
    return site


def _forget_plugins() -> None:
    for group, registry in (("encoding", encodings.registry._REGISTRY), ("task", task_base._TASKS)):
        for name in plugins._loaded.get(group, {}):
            registry.pop(name, None)
    plugins._loaded.clear()
    conformance._checked.clear()
    plugins._entry_points.cache_clear()
    from posenc.cli import completion

    completion._groups.cache_clear()
    completion._keys.cache_clear()


@pytest.fixture
def installed(monkeypatch):
    """``installed(site)``: this process sees the plugins installed in ``site``, as a fresh
    one would; the registries are restored afterwards."""

    def install(site: Path) -> None:
        monkeypatch.syspath_prepend(str(site))
        importlib.invalidate_caches()
        _forget_plugins()
        plugins.load("encoding")
        plugins.load("task")

    yield install
    _forget_plugins()
    for name in [m for m in sys.modules if m.split(".")[0] in ("posenc_example", "bad_plugin")]:
        del sys.modules[name]


def test_example_is_listed_completed_and_configured_from_its_constructor(installed, example_site):
    installed(example_site)
    result = runner.invoke(app, ["list"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert any(line.split()[:2] == ["logbias", "bias"] for line in lines), result.output
    assert any(line.split()[:1] == ["rotate_left"] for line in lines)

    assert "encoding=logbias" in override_candidates("encoding=lo")
    assert "task=rotate_left" in override_candidates("task=rot")
    assert "rope,logbias" in complete_encodings("rope,lo")

    result = runner.invoke(
        app, ["config", "encoding=logbias", "encoding.slope_scale=2", "task=rotate_left",
              "task.shift=3"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "encoding:\n  name: logbias\n  slope_scale: 2\n" in result.output
    assert "shift: 3" in result.output

    # overrides are checked against the constructor, like a built-in encoding's YAML
    result = runner.invoke(app, ["config", "encoding=logbias", "encoding.slope=2"])
    assert result.exit_code == 2
    assert "encoding 'logbias' has no key 'slope' (valid: name, slope_scale)" in result.output


def test_example_classes_pass_the_interface_checks(installed, example_site):
    installed(example_site)
    from posenc_example.encoding import LogDistanceBias
    from posenc_example.task import RotateLeft

    conformance.check_encoding(LogDistanceBias, slope_scale=2.0)
    conformance.check_task(RotateLeft, shift=2)
    assert RotateLeft(shift=1).solve([1, 2, 3]) == [2, 3, 1]


def test_a_config_folder_on_POSENC_CONFIG_PATH_adds_options(installed, example_site, monkeypatch):
    installed(example_site)
    monkeypatch.setenv("POSENC_CONFIG_PATH", str(EXAMPLE / "configs"))
    from posenc.cli import completion

    completion._groups.cache_clear()
    assert "encoding=logbias_steep" in override_candidates("encoding=logbias_")
    result = runner.invoke(
        app, ["config", "encoding=logbias_steep", "preset=example_tiny", "task=rotate_left"]
    )
    assert result.exit_code == 0, result.output
    assert "label: logbias_steep" in result.output and "slope_scale: 4.0" in result.output
    assert "d_model: 32" in result.output  # the preset from the user's folder

    monkeypatch.setenv("POSENC_CONFIG_PATH", str(EXAMPLE / "no_such_folder"))
    result = runner.invoke(app, ["config"])
    assert result.exit_code == 2
    assert "POSENC_CONFIG_PATH" in result.output and "not a folder" in result.output


@pytest.mark.parametrize(
    ("name", "target", "problem"),
    [
        ("raises", "bad_plugin:Raises", "raised in its constructor: RuntimeError: needs a GPU"),
        (
            "missing",
            "no_such_module_for_posenc:Encoding",
            "cannot be imported: ModuleNotFoundError: No module named 'no_such_module_for_posenc'",
        ),
        ("wrong_shape", "bad_plugin:WrongShape", "embed() must return (B, T, D)"),
        ("peeks", "bad_plugin:Peeks", "looks ahead: changing token"),
    ],
)
def test_a_broken_plugin_is_one_line_and_exit_2_before_anything_trains(
    installed, bad_site, tmp_path, monkeypatch, name, target, problem
):
    installed(bad_site)
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["train", f"encoding={name}", f"run_dir={tmp_path / 'run'}"])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1, result.output
    assert f"encoding {name!r} ({target} from bad-plugins)" in lines[0]
    assert problem in lines[0]
    assert not (tmp_path / "run").exists()

    result = runner.invoke(app, ["compare", "-e", f"rope,{name}"])
    assert result.exit_code == 2
    assert len(result.output.strip().splitlines()) == 1 and problem in result.output
    assert not (tmp_path / "runs").exists()  # nothing launched


def test_a_task_that_disagrees_with_its_solver_is_refused_before_training(
    installed, bad_site, tmp_path
):
    installed(bad_site)
    result = runner.invoke(app, ["train", "task=wrong_solver", f"run_dir={tmp_path / 'run'}"])
    assert result.exit_code == 2
    (line,) = result.output.strip().splitlines()
    assert "task 'wrong_solver' (bad_plugin:WrongSolver from bad-plugins)" in line
    assert "solve(input) disagrees with sample(" in line
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    ("task", "problem"),
    [
        ("rare_bad", ": its input is not a list of symbol ids in [0, 16): [16]"),
        ("global_random", "must draw from its rng only, not the global random"),
    ],
)
def test_a_task_whose_rare_samples_are_bad_or_that_draws_globally_is_refused(
    installed, bad_site, tmp_path, task, problem
):
    """The check draws hundreds of samples per length, under two global random states."""
    installed(bad_site)
    result = runner.invoke(app, ["train", f"task={task}", f"run_dir={tmp_path / 'run'}"])
    assert result.exit_code == 2, result.output
    (line,) = result.output.strip().splitlines()
    assert problem in line, line
    assert not (tmp_path / "run").exists()


def test_a_required_parameter_must_be_set_and_takes_a_number(installed, bad_site, tmp_path):
    installed(bad_site)
    result = runner.invoke(app, ["train", "encoding=needs", f"run_dir={tmp_path / 'run'}"])
    assert result.exit_code == 2, result.output
    (line,) = result.output.strip().splitlines()
    assert line.endswith("encoding.needed is required (encoding 'needs' has no default for it); "
                         "add encoding.needed=VALUE")  # fmt: skip
    result = runner.invoke(app, ["config", "encoding=needs", "encoding.needed=1.5"])
    assert result.exit_code == 0, result.output
    assert "needed: 1.5" in result.output
    result = runner.invoke(app, ["config", "encoding=needs", "encoding.needed=0"])
    assert result.exit_code == 2, result.output
    (line,) = result.output.strip().splitlines()  # the plugin's own message, named once
    assert line == ("error: encoding 'needs' (bad_plugin:Needs from bad-plugins): needs "
                    "encoding.needed > 0, got 0")  # fmt: skip


def test_a_negative_value_for_a_non_negative_default_names_the_rule(installed, bad_site):
    installed(bad_site)
    result = runner.invoke(
        app, ["config", "encoding=needs", "encoding.needed=1", "encoding.shift=-1"]
    )
    assert result.exit_code == 2, result.output
    (line,) = result.output.strip().splitlines()
    assert "its default is >= 0, so posenc takes it as non-negative" in line


def test_a_preset_without_the_global_package_header_says_so(tmp_path, monkeypatch):
    (tmp_path / "preset").mkdir()
    (tmp_path / "preset" / "mine.yaml").write_text("train:\n  steps: 5\n")
    monkeypatch.setenv("POSENC_CONFIG_PATH", str(tmp_path))
    result = runner.invoke(app, ["config", "preset=mine"])
    assert result.exit_code == 2, result.output
    (line,) = result.output.strip().splitlines()
    assert "preset 'mine'" in line and "must begin with the line '# @package _global_'" in line
    (tmp_path / "preset" / "mine.yaml").write_text("# @package _global_\ntrain:\n  steps: 5\n")
    result = runner.invoke(app, ["config", "preset=mine"])
    assert result.exit_code == 0 and "steps: 5" in result.output


def test_a_broken_plugin_leaves_the_other_commands_working(installed, bad_site):
    installed(bad_site)
    result = runner.invoke(app, ["list"])
    assert result.exit_code == 0, result.output
    assert "rope" in result.output and "peeks" in result.output  # loaded; fails its check later
    (missing,) = [line for line in result.output.splitlines() if line.split()[:1] == ["missing"]]
    assert "broken" in missing and "No module named 'no_such_module_for_posenc'" in missing
    result = runner.invoke(app, ["config", "encoding=alibi"])
    assert result.exit_code == 0, result.output


# ---------------------------------------------------------------- the installed package


def test_every_package_folder_is_in_the_wheel():
    """pyproject lists posenc's packages by hand (cli/, tasks/, configs/ are mapped into
    posenc): a new sub-package missing from that list would be missing from the wheel."""
    import tomllib

    setuptools = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(setuptools["packages"])
    folders = {"posenc": "posenc"} | {
        name: folder for name, folder in setuptools["package-dir"].items() if name != ""
    }
    expected = set()
    for name, folder in folders.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / folder).parts
            expected.add(".".join((name, *rel)))
    missing = sorted(expected - listed)
    assert not missing, f"add {missing} to [tool.setuptools] packages in pyproject.toml"


def _run(cmd: list[str], cwd: Path, env: dict, timeout: int = 600) -> str:
    out = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert out.returncode == 0, f"{cmd}\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}"
    return out.stdout + out.stderr


@pytest.mark.slow
def test_the_wheel_installs_and_runs_from_anywhere(tmp_path):
    """The wheel holds posenc only (cli, tasks and configs inside it); installed into a fresh
    virtual environment it trains, and compares the example plugin against RoPE, from a
    folder that is not the checkout. Torch and the other dependencies come from this
    environment (its site folders, whether a venv or the system's): nothing is downloaded."""
    dist = tmp_path / "dist"
    src = tmp_path / "src"  # pip builds in the source folder: build from a copy
    shutil.copytree(
        ROOT, src,
        ignore=shutil.ignore_patterns(".git", "runs", "build", "dist", "*.egg-info", "__pycache__",
                                      ".venv", "outputs", "multirun", "examples", "docs",
                                      ".hypothesis", ".pytest_cache"),  # other workers write these
    )  # fmt: skip
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
         "--no-index", "-w", str(dist), str(src)],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    (wheel,) = dist.glob("posenc-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert {n.split("/")[0] for n in names} == {
        "posenc",
        wheel.name.split("-py3")[0] + ".dist-info",
    }
    for path in ("posenc/cli/app.py", "posenc/tasks/copy.py", "posenc/configs/config.yaml",
                 "posenc/configs/preset/smoke.yaml", "posenc/configs/hydra/launcher/local.yaml"):  # fmt: skip
        assert path in names

    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=False)
    python = env_dir / "bin" / "python"
    # The new venv sees this environment's packages as plain path entries (their .pth files are
    # not run, so this checkout's editable posenc stays out): a venv made by `python -m venv`
    # inherits nothing from the system site, where torch may not be.
    (inner_site,) = env_dir.glob("lib/python*/site-packages")
    (inner_site / "outer_env.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "POSENC_CONFIG_PATH")}
    env["PATH"] = f"{env_dir / 'bin'}{os.pathsep}{env['PATH']}"
    env.update(MPLBACKEND="Agg", COLUMNS="200")  # rich wraps at 80 columns otherwise
    pip = [sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps",
           "--no-index", "--no-build-isolation"]  # fmt: skip
    _run([*pip, "--force-reinstall", str(wheel)], tmp_path, env)
    example = tmp_path / "example"
    shutil.copytree(EXAMPLE, example, ignore=shutil.ignore_patterns("build", "*.egg-info"))
    _run([*pip, str(example)], tmp_path, env)

    work = tmp_path / "work"  # not the checkout: nothing may come from it
    work.mkdir()
    where = _run(
        [str(python), "-c", "import posenc, posenc.cli.app, posenc.tasks, posenc.config as c; "
         "print(posenc.__file__); print(posenc.cli.app.__file__); print(c.CONFIG_DIR)"],
        work, env,
    ).splitlines()  # fmt: skip
    where = [w for w in where if w.startswith("/")]
    assert len(where) == 3, where
    assert all(w.startswith(str(env_dir)) and str(ROOT) not in w for w in where), where
    posenc = str(env_dir / "bin" / "posenc")
    listed = _run([posenc, "list"], work, env)
    assert "logbias" in listed and "rotate_left" in listed

    # the smoke preset, shortened: what matters here is that the installed command runs
    _run([posenc, "train", "preset=smoke", "train.steps=20", "progress=false"], work, env)
    assert list((work / "runs").glob("default/copy/rope/seed0/metrics.json"))

    env["POSENC_CONFIG_PATH"] = str(example / "configs")
    out = _run([posenc, "compare", "--preset", "example_tiny", "--jobs", "2"], work, env)
    report = (work / "runs" / "example" / "report.md").read_text()
    assert "logbias" in report and "rope" in report, out
    assert list((work / "runs").glob("example/rotate_left/logbias/seed0/metrics.json"))
    # a rerun finds both runs finished and trains nothing
    again = _run([posenc, "compare", "--preset", "example_tiny", "--jobs", "2"], work, env)
    assert "all 2 runs are finished with this config; nothing to launch" in again, again


@pytest.mark.slurm
@pytest.mark.slow
def test_a_slurm_job_imports_the_plugin_itself(example_site, tmp_path):
    """The example's encoding and task run as Slurm array tasks: each job finds them through
    their entry points (the environment passes only the install location on)."""
    from tests.conftest import MICRO
    from tests.test_slurm import slurm_is_up

    reason = slurm_is_up()
    if reason:
        pytest.skip(reason)
    env = {**os.environ, "PYTHONPATH": str(example_site), "COLUMNS": "200"}
    command = [
        sys.executable, "-m", "posenc.cli", "compare", "--launcher", "slurm",
        "-e", "logbias,rope", "-t", "rotate_left", "--experiment", "plugin", *MICRO,
        f"runs_root={tmp_path / 'runs'}", "hydra.launcher.cpus_per_task=1",
        "hydra.launcher.mem_gb=1", "hydra.launcher.timeout_min=10",
    ]  # fmt: skip
    out = subprocess.run(
        command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600
    )
    assert out.returncode == 0, out.stderr + out.stdout
    exp = tmp_path / "runs" / "plugin"
    jobs = [json.loads(p.read_text()) for p in exp.glob("_sweeps/*/*/posenc_job.json")]
    assert sorted(j["encoding"] for j in jobs) == ["logbias", "rope"]
    assert all(j["status"] == "finished" and j["slurm_job_id"] for j in jobs), jobs
    assert "logbias" in (exp / "report.md").read_text()


def test_plugin_entry_points_are_found_without_importing_them(bad_site, monkeypatch):
    monkeypatch.syspath_prepend(str(bad_site))
    importlib.invalidate_caches()
    plugins._entry_points.cache_clear()
    try:
        assert {"raises", "missing", "peeks"} <= set(plugins.entry_point_names("encoding"))
        assert "bad_plugin" not in sys.modules
    finally:
        plugins._entry_points.cache_clear()  # the other tests must not see these
