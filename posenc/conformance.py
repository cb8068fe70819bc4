"""Conformance: a plugged-in encoding or task checked against posenc's interface before a
run (`check_config`), and the checks a plugin author runs in their own tests
(`check_encoding`, `check_task`). Builds a small `posenc.model.Transformer`, so it sits above
the registries: planning and the command line import it, the encodings and tasks never do.
Discovery is `posenc.plugins`."""

from __future__ import annotations

from typing import Any

from posenc.errors import ConfigError, describe
from posenc.plugins import is_plugin, load, problem

_checked: dict[str, str | None] = {}


def check_config(cfg) -> None:
    """Before a run: a plugged-in encoding or task of ``cfg`` is built and its interface
    checked (`check_encoding`, `check_task`); a `ConfigError` of one line names the class and
    the problem. Built-in encodings and tasks pass through untouched."""
    import json

    from omegaconf import OmegaConf

    for group in ("encoding", "task"):
        name = str(cfg[group].name)
        if not is_plugin(group, name):
            continue
        error = problem(group, name)
        if error:
            raise ConfigError(error)
        plugin = load(group)[name]
        section = OmegaConf.to_container(cfg[group], resolve=True)
        model = OmegaConf.to_container(cfg.model, resolve=True)
        key = json.dumps([group, name, section, model], sort_keys=True, default=str)
        if key not in _checked:
            try:
                if group == "encoding":
                    from posenc.schema import encoding_params

                    check_encoding(
                        plugin.cls,
                        d_model=int(model["d_model"]),
                        n_heads=int(model["n_heads"]),
                        n_layers=int(model["n_layers"]),
                        max_len=int(model["max_len"]),
                        **encoding_params(cfg.encoding),
                    )
                else:
                    from posenc.schema import task_params

                    check_task(plugin.cls, lengths=_lengths(cfg), **task_params(cfg.task))
                _checked[key] = None
            except ConfigError as exc:  # the plugin's own check of its parameters
                _checked[key] = f"{plugin.label}: {_unprefixed(str(exc), group, name)}"
            except InterfaceError as exc:
                _checked[key] = f"{plugin.label} {exc}"
            except Exception as exc:
                _checked[key] = f"{plugin.label} fails its interface check: {describe(exc)}"
        if _checked[key]:
            raise ConfigError(_checked[key])


def _unprefixed(message: str, group: str, name: str) -> str:
    """A plugin's own message without the ``encoding 'gauss'`` its label already gives."""
    for prefix in (f"{group} {name!r}: ", f"{group} {name!r} "):
        if message.startswith(prefix):
            return message[len(prefix) :]
    return message


def _lengths(cfg) -> list[int]:
    """The lengths a run of ``cfg`` draws: training's ends and the evaluation's."""
    ends = [cfg.train.min_len, cfg.train.max_len, cfg.eval.max_len, *(cfg.eval.lengths or [])]
    return sorted({int(n) for n in ends if n is not None})


class InterfaceError(Exception):
    """An encoding or task that breaks posenc's interface (the message says how)."""


def check_encoding(
    cls: type,
    *,
    d_model: int = 32,
    n_heads: int = 4,
    n_layers: int = 2,
    max_len: int = 64,
    length: int = 12,
    **params: Any,
) -> None:
    """Build ``cls`` and check what every posenc encoding must do; raise `InterfaceError`.

    Checked: it builds; ``embed``, ``rotate`` and ``bias`` return the documented shapes;
    ``positions`` returns (B, T) integers; in a small model, changing token j never changes
    the outputs before j (no look-ahead); decoding with the KV cache gives the logits of
    the full forward pass (teacher forcing); two models built under one seed agree.
    Seconds on a CPU at the default size: run it in your plugin's tests.
    """
    import torch

    try:
        torch.manual_seed(0)
        enc = cls(d_model=d_model, n_heads=n_heads, max_len=max_len, n_layers=n_layers, **params)
    except ConfigError:
        raise
    except Exception as exc:
        raise InterfaceError(f"raised in its constructor: {describe(exc)}") from exc
    T = max(4, min(length, max_len))
    tokens, ar = _check_hooks(enc, B=2, H=n_heads, T=T, d_model=d_model)
    _check_in_a_model(cls, tokens, ar, d_model, n_heads, n_layers, max_len, params)


def _check_hooks(enc, *, B: int, H: int, T: int, d_model: int):
    """Each hook returns the documented shapes; returns the tokens and positions used."""
    import torch

    Dh = d_model // H

    def call(hook: str, *args, **kwargs):
        try:
            return getattr(enc, hook)(*args, **kwargs)
        except Exception as exc:
            raise InterfaceError(f"raised in {hook}(): {describe(exc)}") from exc

    with torch.no_grad():
        pos = call("positions", B, T)
        if not (isinstance(pos, torch.Tensor) and pos.shape[:2] == (B, T)):
            raise InterfaceError(f"positions() must return (B, T) = {(B, T)}, got {_shape(pos)}")
        ar = torch.arange(T).expand(B, T)
        tokens = torch.randint(4, 12, (B, T), generator=torch.Generator().manual_seed(0))
        hook_pos = call("token_positions", tokens, ar)
        x = torch.randn(B, T, d_model)
        out = call("embed", x, hook_pos, tokens)
        if not (isinstance(out, torch.Tensor) and out.shape == x.shape):
            raise InterfaceError(
                f"embed() must return (B, T, D) = {tuple(x.shape)}, got {_shape(out)}"
            )
        q, k = torch.randn(B, H, T, Dh), torch.randn(B, H, T, Dh)
        rotated = call("rotate", q, k, hook_pos, hook_pos, layer=0)
        # a rotation may widen the heads (PoPE) when it says so; q and k stay of one width
        widths = (lambda w: w >= Dh) if enc.widens_heads else (lambda w: w == Dh)
        if not (
            isinstance(rotated, tuple | list)
            and len(rotated) == 2
            and all(isinstance(t, torch.Tensor) and t.shape[:3] == q.shape[:3] for t in rotated)
            and rotated[0].shape == rotated[1].shape
            and widths(rotated[0].shape[-1])
        ):
            got = [_shape(t) for t in rotated] if isinstance(rotated, tuple | list) else rotated
            raise InterfaceError(
                f"rotate() must return queries and keys of (B, H, T, Dh) = {tuple(q.shape)}, "
                f"got {got}"
            )
        bias = call("bias", q, k, hook_pos, hook_pos, layer=0)
        if bias is not None:
            ok = isinstance(bias, torch.Tensor) and bias.dim() == 4
            try:
                ok = ok and torch.broadcast_shapes(bias.shape, (B, H, T, T)) == (B, H, T, T)
            except RuntimeError:
                ok = False
            if not ok:
                raise InterfaceError(
                    f"bias() must return None or a tensor broadcastable to (B, H, Tq, Tk) = "
                    f"{(B, H, T, T)}, got {_shape(bias)}"
                )
    return tokens, ar


def _check_in_a_model(cls, tokens, ar, d_model, n_heads, n_layers, max_len, params) -> None:
    """In a small model: no look-ahead, the KV cache agrees with the full forward pass, and
    two models built under one seed agree."""
    import torch

    from posenc.model import ModelConfig, Transformer

    T = tokens.shape[1]

    def model(seed: int) -> Transformer:
        torch.manual_seed(seed)
        e = cls(d_model=d_model, n_heads=n_heads, max_len=max_len, n_layers=n_layers, **params)
        cfg = ModelConfig(
            vocab_size=12, d_model=d_model, n_layers=n_layers, n_heads=n_heads,
            d_ff=2 * d_model, max_len=max_len,
        )  # fmt: skip
        return Transformer(cfg, e).eval()

    try:
        with torch.no_grad():
            m = model(7)
            base, _ = m(tokens, ar)
            for j in sorted({1, T // 2, T - 1}):
                changed = tokens.clone()
                changed[:, j] = 4 + (changed[:, j] - 4 + 1) % 8
                after, _ = m(changed, ar)
                if not torch.allclose(after[:, :j], base[:, :j], rtol=0, atol=1e-5):
                    raise InterfaceError(
                        f"looks ahead: changing token {j} changes the outputs before position "
                        f"{j} (a causal model must not see later tokens)"
                    )
            cut = T // 2
            first, cache = m(tokens[:, :cut], ar[:, :cut])
            rest, _ = m(tokens[:, cut:], ar[:, cut:], cache)
            cached = torch.cat((first, rest), 1)
            if not torch.allclose(cached, base, rtol=1e-4, atol=1e-5):
                off = ~torch.isclose(cached, base, rtol=1e-4, atol=1e-5).all(-1).all(0)
                at = int(off.nonzero()[0])
                raise InterfaceError(
                    f"decoding with the KV cache gives other logits than the full forward pass "
                    f"(teacher forcing) from position {at} on (the cache holds positions "
                    f"0..{cut - 1}, then {T - cut} more are decoded)"
                )
            again, _ = model(7)(tokens, ar)
            if not torch.equal(again, base):
                raise InterfaceError("two models built under one seed give different outputs")
    except InterfaceError:
        raise
    except Exception as exc:
        raise InterfaceError(f"fails in a model's forward pass: {describe(exc)}") from exc


# Draws per length in `check_task`: a sample that is bad one time in a few hundred is caught
# before training, in well under a second for a task in pure Python.
CHECK_DRAWS = 256


def check_task(
    cls: type, *, lengths: list[int] | None = None, draws: int = CHECK_DRAWS, **params: Any
) -> None:
    """Build task ``cls`` and check that it keeps its parameters (``params``), that
    ``sample`` draws valid pairs that ``solve`` agrees with (``draws`` of them at each of its
    three shortest lengths and ``lengths``, those it can make), and that it draws from its
    ``rng`` only (two generators of one seed give the same pairs whatever the global
    ``random`` and ``numpy.random`` states: an evaluation set is then reproducible); raise
    `InterfaceError`."""

    try:
        task = cls(**params)
    except ConfigError:
        raise
    except Exception as exc:
        raise InterfaceError(f"raised in its constructor: {describe(exc)}") from exc
    try:
        task.params()  # the evaluation-set cache key: one attribute per constructor parameter
    except AttributeError as exc:
        raise InterfaceError(
            f"must keep each constructor parameter as an attribute of the same name "
            f"(Task.params): {describe(exc)}"
        ) from exc
    try:
        lo = max(1, int(task.min_length))
        for n in sorted({*range(lo, lo + 3), *(lengths or [])}):
            try:
                task.check_length(n, "length")
            except ConfigError:  # planning refuses the run with this message
                continue
            first = _draw(task, n, draws, seed=0, global_seed=1)
            if first != _draw(task, n, draws, seed=0, global_seed=2):
                raise InterfaceError(
                    f"sample({n}, rng) draws other pairs from a generator of the same seed: it "
                    "must draw from its rng only, not the global random or numpy.random (an "
                    "evaluation set must be reproducible)"
                )
    except InterfaceError:
        raise
    except Exception as exc:
        raise InterfaceError(f"fails its interface check: {describe(exc)}") from exc


def _draw(task, n: int, draws: int, *, seed: int, global_seed: int) -> list:
    """``draws`` pairs of length ``n`` from ``default_rng(seed)``, each checked, with the
    global generators seeded ``global_seed`` (a task that reads them draws differently)."""
    import random

    import numpy as np

    saved = random.getstate(), np.random.get_state()
    random.seed(global_seed)
    np.random.seed(global_seed)
    try:
        return _checked_pairs(task, n, draws, np.random.default_rng(seed))
    finally:
        random.setstate(saved[0])
        np.random.set_state(saved[1])


def _checked_pairs(task, n: int, draws: int, rng) -> list:
    import numpy as np

    n_symbols = len(task.symbols)
    pairs = []
    for k in range(draws):
        inputs, target = task.sample(n, rng)
        for what, seq in (("input", inputs), ("target", target)):
            if not all(isinstance(s, int | np.integer) and 0 <= s < n_symbols for s in seq):
                raise InterfaceError(
                    f"sample({n}) draw {k}: its {what} is not a list of symbol ids in "
                    f"[0, {n_symbols}): {list(seq)[:12]}"
                )
        solved = list(task.solve(list(inputs)))
        if solved != list(target):
            raise InterfaceError(
                f"solve(input) disagrees with sample({n}) draw {k}: input {list(inputs)[:12]}, "
                f"target {list(target)[:12]}, solve gave {solved[:12]}"
            )
        pairs.append((list(map(int, inputs)), list(map(int, target))))
    return pairs


def _shape(value: Any) -> Any:
    shape = getattr(value, "shape", None)
    return tuple(shape) if shape is not None else type(value).__name__
