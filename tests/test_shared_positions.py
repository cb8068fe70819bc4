"""A position-only feature computed once for the batch (`posenc.encodings.base.shared_rows`:
when every row has the same positions, the biases of ALiBi, T5, Hard-ALiBi, Kerple and FIRE
and RoPE's tables are made for one row and broadcast) against the same feature made for
every row. The logits are the same bit for bit, and so is every gradient but those of an
encoding's own parameters that the broadcast feature is made from (T5's table, Kerple's
r1 and r2, FIRE's MLP): their gradient is summed over the batch in another order, so it
agrees within float32 rounding, not bit for bit (docs/performance.md, position features).
Parametrized over every registered encoding."""

from __future__ import annotations

import pytest
import torch

import posenc.encodings.bias as bias_module
import posenc.encodings.rotary as rotary_module
from posenc import encodings
from tests.test_features_cache import forward_and_grads, inputs_for, model_for

# the schemes whose position-only features this test must see made once for the batch
SHARING = {"alibi", "t5", "hard_alibi", "kerple_log", "kerple_power", "fire", "rope"}


def per_row(pos_q, pos_k):
    return pos_q, pos_k


@pytest.mark.parametrize("name", encodings.names())
def test_a_feature_made_once_for_the_batch_changes_no_logit_and_only_its_own_rounding(
    name, monkeypatch
):
    model = model_for(name)
    tokens, pos = inputs_for(model, batch=4)
    if name in SHARING:
        assert bool((pos == pos[:1]).all()), "the rows share their positions, as in training"
    logits, grads = forward_and_grads(model, tokens, pos, position_features=True)
    for module in (bias_module, rotary_module):
        monkeypatch.setattr(module, "shared_rows", per_row)
    logits_rows, grads_rows = forward_and_grads(model, tokens, pos, position_features=True)

    assert torch.equal(logits, logits_rows)
    assert grads.keys() == grads_rows.keys()
    # rounding is judged against the encoding's largest gradient: a gradient that is zero up
    # to rounding (FIRE's output bias: a constant added to a row of logits) has no scale of its own
    scale = max(
        (g.abs().max().item() for n, g in grads.items() if n.startswith("encoding.")), default=0
    )
    for n, g in grads.items():
        if torch.equal(g, grads_rows[n]):
            continue
        assert n.startswith("encoding."), f"{n}: a gradient outside the encoding moved"
        assert (g - grads_rows[n]).abs().max().item() <= 1e-5 * scale, n
