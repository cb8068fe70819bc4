"""Positional encodings behind one interface of hooks (`posenc.encodings.base`: embed, rotate
and bias, and those inside attention), and their registry.

Public API::

    from posenc import encodings
    encodings.names()                       # ['alibi', 'learned', 'none', ...]
    enc = encodings.build("rope", d_model=128, n_heads=4, max_len=256, rotary_fraction=0.5)
    x = enc.embed(x, pos)                   # (B, T, D)
    q, k = enc.rotate(q, k, pos_q, pos_k)   # (B, H, T, Dh)
    b = enc.bias(q, k, pos_q, pos_k)        # (B|1, H, Tq, Tk) or None, added after 1/sqrt(Dh)
    s = enc.observe(x_layer, past)          # per-token state from the layer input (FoX, PaTH)
    w = enc.attention_weights(q, k, b, s)   # own weights (B, H, Tq, Tk), or None: softmax

Importing this package registers every encoding module listed below.
"""

from posenc.encodings import (  # noqa: F401  (registration)
    absolute,
    adaptive,
    bias,
    canon,
    combination,
    contextual,
    dape,
    digits,
    drope,
    gated,
    hybrid,
    normalisers,
    polar,
    randomized,
    relative,
    rotary,
    wall,
    windows,
)
from posenc.encodings.base import DigitLayout, PositionalEncoding
from posenc.encodings.registry import (
    EncodingInfo,
    build,
    from_config,
    info,
    names,
    parameters,
    register,
    register_plugin,
)

register(
    "none",
    family="none",
    paper="Kazemnejad et al. 2023, The Impact of Positional Encoding on Length Generalization",
    description="NoPE: no positional information; order comes from the causal mask alone",
)(PositionalEncoding)

__all__ = [
    "DigitLayout",
    "EncodingInfo",
    "PositionalEncoding",
    "build",
    "from_config",
    "info",
    "names",
    "parameters",
    "register",
]

# Encodings of other installed packages (entry point group ``posenc.encodings``): last, so a
# plugin module can import everything above. A broken one is kept aside with its error.
from posenc import plugins as _plugins  # noqa: E402

_plugins.REGISTRARS["encoding"] = register_plugin
_plugins.load("encoding")
