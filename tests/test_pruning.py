"""Coupling, cost, threshold-to-target and surgery on every registered model."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from legr_edge.errors import LegrError
from legr_edge.models.registry import create_model, list_models, model_config
from legr_edge.prune.coupling import build_coupling
from legr_edge.prune.cost import build_cost_model, count_macs
from legr_edge.prune.ranking import Pruner, base_scores, within_group_ranks
from legr_edge.prune.surgery import prune_model, zero_removed

from tests.helpers import make_concat_net, randomize_bn

CASES = [(name, model_config(name).input_size) for name in list_models()] + [("concat_net", (3, 16, 16))]


def _build(name):
    model = make_concat_net() if name == "concat_net" else create_model(name)
    return randomize_bn(model)


def _setup(name, size, round_to=1):
    model = _build(name)
    x = torch.randn(1, *size, generator=torch.Generator().manual_seed(1))
    coupling = build_coupling(model, x)
    cost = build_cost_model(model, x, coupling)
    return model, x, coupling, Pruner(coupling, cost, round_to)


def _flop_counter_macs(model, x) -> int:
    with FlopCounterMode(display=False) as counter:
        model(x)
    return counter.get_total_flops() // 2


@pytest.mark.parametrize("name,size", CASES)
def test_pruned_network_meets_target_and_equals_masked(name, size):
    model, x, coupling, pruner = _setup(name, size)
    assert pruner.dense_macs == _flop_counter_macs(model, x)
    a, k = base_scores(model, coupling).identity()
    scores = base_scores(model, coupling).transformed(a, k)
    mask, macs = pruner.prune_to(scores, 0.5)
    assert macs <= 0.5 * pruner.dense_macs
    pruned = prune_model(model, coupling, mask)
    assert count_macs(pruned, x) == macs == _flop_counter_macs(pruned, x)
    batch = torch.randn(2, *size, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        out_pruned, out_masked = pruned(batch), zero_removed(model, coupling, mask)(batch)
    assert out_pruned.shape == model(batch).shape
    torch.testing.assert_close(out_pruned, out_masked, rtol=1e-4, atol=1e-4)


def test_concat_and_depthwise_are_coupled():
    model, x, coupling, _ = _setup("concat_net", (3, 16, 16))
    by_root = {g.root: {m.name for m in g.members} for g in coupling.groups}
    concat_group = next(members for members in by_root.values() if "dw" in members)
    assert {"a", "b", "dw", "pw"} <= concat_group       # concat inputs + depthwise + consumer
    residual_group = next(members for members in by_root.values() if "res" in members and "pw" in members)
    assert "head" in residual_group                     # the add ties pw and res outputs
    assert all("fc" != g.root for g in coupling.groups)


def test_concat_input_keeps_its_own_floor():
    """A concat input owns part of a group; even at a tiny target it keeps channels."""
    model, x, coupling, pruner = _setup("concat_net", (3, 16, 16))
    ls = base_scores(model, coupling)
    alpha, kappa = ls.identity()
    kappa[list(ls.layer_names).index("b")] = -1e6   # rank every filter of b last
    mask, _ = pruner.prune_to(ls.transformed(alpha, kappa), 0.05)
    b = next(m for m in coupling.members() if m.name == "b" and m.is_out)
    assert mask[b.roots].sum() >= 2
    pruned = prune_model(model, coupling, mask)
    assert pruned.b.out_channels >= 2 and pruned(x).shape == (1, 10)


@pytest.mark.parametrize("target", [0.8, 0.5, 0.3])
@pytest.mark.parametrize("round_to", [1, 4, 8])
def test_target_is_met_tightly_with_rounding(target, round_to):
    model, x, coupling, pruner = _setup("resnet32", (3, 32, 32), round_to)
    ls = base_scores(model, coupling)
    scores = ls.transformed(*ls.identity())
    mask, macs = pruner.prune_to(scores, target)
    budget = target * pruner.dense_macs
    assert macs <= budget
    ranks = within_group_ranks(scores, coupling.group_of_channel)
    if round_to == 1:
        # Tight: the next lower threshold (one more distinct score level) exceeds the budget.
        lower = np.unique(scores)[np.unique(scores) < scores[mask].min()]
        if len(lower):
            assert pruner.cost.macs(pruner.mask_for_threshold(scores, ranks, lower[-1])) > budget
    else:
        # Tight: no group can grow by one more block of round_to channels within the budget.
        counts = np.array([int(mask[g.offset:g.offset + g.size].sum()) for g in coupling.groups])
        for gi, g in enumerate(coupling.groups):
            if counts[gi] < g.size:
                grown = counts.copy()
                grown[gi] = pruner.grown(gi, counts[gi])
                assert pruner.cost.macs(pruner.mask_from_counts(scores, ranks, grown)) > budget
    for g in coupling.groups:
        kept = int(mask[g.offset:g.offset + g.size].sum())
        assert kept == g.size or kept % round_to == 0
        assert kept >= min(g.size, max(2, int(np.ceil(0.1 * g.size))))


def test_transform_changes_which_layers_are_cut():
    model, x, coupling, pruner = _setup("resnet20", (3, 32, 32))
    ls = base_scores(model, coupling)
    alpha, kappa = ls.identity()
    mask_id, _ = pruner.prune_to(ls.transformed(alpha, kappa), 0.5)
    cut = next(l for l in range(len(alpha)) if not mask_id[ls.entry_chan[ls.entry_layer == l]].all())
    kappa2 = kappa.copy()
    kappa2[cut] = 10.0  # ten standard deviations up: that layer's filters become precious
    mask_2, _ = pruner.prune_to(ls.transformed(alpha, kappa2), 0.5)
    chans = ls.entry_chan[ls.entry_layer == cut]
    assert mask_2[chans].sum() > mask_id[chans].sum()


@pytest.mark.parametrize("target", [0.0, -0.1, 1.5])
def test_target_outside_unit_interval_is_rejected(target):
    model, x, coupling, pruner = _setup("resnet20", (3, 32, 32))
    with pytest.raises(LegrError, match="target"):
        pruner.prune_to(np.ones(coupling.num_channels), target)


def test_floor_network_when_target_is_unreachable(caplog):
    model, x, coupling, pruner = _setup("resnet20", (3, 32, 32))
    mask, macs = pruner.prune_to(np.arange(coupling.num_channels, dtype=float), 0.001)
    assert macs > 0.001 * pruner.dense_macs     # the floors cost more than the target ...
    assert "cannot be met" in caplog.text
    for g in coupling.groups:                    # ... and every group sits at its floor
        assert mask[g.offset:g.offset + g.size].sum() == max(2, int(np.ceil(0.1 * g.size)))


def test_squared_l2_scores():
    model, x, coupling, _ = _setup("resnet20", (3, 32, 32))
    ls = base_scores(model, coupling)
    name = ls.layer_names[0]
    w = dict(model.named_modules())[name].weight.detach()
    expected = (w ** 2).sum(dim=(1, 2, 3)).numpy()
    np.testing.assert_allclose(np.sort(ls.entry_score[ls.entry_layer == 0]), np.sort(expected), rtol=1e-5)
