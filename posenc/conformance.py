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

                    check_task(plugin.cls, **task_params(cfg.task))
                _checked[key] = None
            except ConfigError as exc:  # the plugin's own check of its parameters
                _checked[key] = f"{plugin.label}: {exc}"
            except InterfaceError as exc:
                _checked[key] = f"{plugin.label} {exc}"
            except Exception as exc:
                _checked[key] = f"{plugin.label} fails its interface check: {describe(exc)}"
        if _checked[key]:
            raise ConfigError(_checked[key])


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
        if not (
            isinstance(rotated, tuple | list)
            and len(rotated) == 2
            and all(isinstance(t, torch.Tensor) and t.shape == q.shape for t in rotated)
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
            if not torch.allclose(torch.cat((first, rest), 1), base, rtol=1e-4, atol=1e-5):
                raise InterfaceError(
                    "decoding with the KV cache gives other logits than the full forward pass "
                    "(teacher forcing)"
                )
            again, _ = model(7)(tokens, ar)
            if not torch.equal(again, base):
                raise InterfaceError("two models built under one seed give different outputs")
    except InterfaceError:
        raise
    except Exception as exc:
        raise InterfaceError(f"fails in a model's forward pass: {describe(exc)}") from exc


def check_task(cls: type, **params: Any) -> None:
    """Build task ``cls`` and check that it keeps its parameters (``params``) and that
    ``sample`` draws valid pairs that ``solve`` agrees with, at its shortest lengths; raise
    `InterfaceError`."""
    import numpy as np

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
        n_symbols = len(task.symbols)
        rng = np.random.default_rng(0)
        lo = max(1, int(task.min_length))
        for n in range(lo, lo + 3):
            if task.max_length is not None and n > task.max_length:
                break
            inputs, target = task.sample(n, rng)
            for what, seq in (("input", inputs), ("target", target)):
                if not all(isinstance(s, int | np.integer) and 0 <= s < n_symbols for s in seq):
                    raise InterfaceError(
                        f"sample({n}) returned a {what} that is not a list of symbol ids in "
                        f"[0, {n_symbols}): {list(seq)[:8]}"
                    )
            if list(task.solve(list(inputs))) != list(target):
                raise InterfaceError(f"solve(input) disagrees with sample({n})'s target")
    except InterfaceError:
        raise
    except Exception as exc:
        raise InterfaceError(f"fails its interface check: {describe(exc)}") from exc


def _shape(value: Any) -> Any:
    shape = getattr(value, "shape", None)
    return tuple(shape) if shape is not None else type(value).__name__
