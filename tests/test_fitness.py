"""The search's fitness: BatchNorm recalibration and common random numbers."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn as nn

from legr_edge.fitness import FitnessEvaluator, FitnessSettings
from legr_edge.train import recalibrate_bn


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(8, 10))


def test_recalibration_gives_the_average_batch_statistics():
    net = _net()
    bn = net[1]
    bn.running_mean.fill_(5.0)
    bn.running_var.fill_(9.0)
    weights = copy.deepcopy(net.state_dict())
    gen = torch.Generator().manual_seed(1)
    inputs = [torch.randn(16, 3, 8, 8, generator=gen) + i for i in range(3)]
    recalibrate_bn(net, inputs)
    pre = [net[0](x) for x in inputs]
    expected_mean = torch.stack([p.mean(dim=(0, 2, 3)) for p in pre]).mean(0)
    expected_var = torch.stack([p.var(dim=(0, 2, 3), unbiased=True) for p in pre]).mean(0)
    torch.testing.assert_close(bn.running_mean, expected_mean, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(bn.running_var, expected_var, rtol=1e-4, atol=1e-5)
    assert bn.momentum == 0.1 and not net.training
    for k, v in net.state_dict().items():
        if "running" not in k and "num_batches" not in k:
            torch.testing.assert_close(v, weights[k])


@pytest.fixture(scope="module")
def digits():
    from legr_edge.data import load_dataset
    return load_dataset("digits", val_fraction=0.1, seed=0)


def _model(info):
    from legr_edge.models.registry import create_model
    torch.manual_seed(0)
    return create_model("resnet20", info.num_classes, info.in_chans)


def test_every_candidate_sees_the_same_batches(digits):
    s = FitnessSettings(recal_batches=3, batch_size=32, val_limit=100)
    a = FitnessEvaluator(digits, digits.info, torch.device("cpu"), s)
    b = FitnessEvaluator(digits, digits.info, torch.device("cpu"), s)
    fresh = FitnessEvaluator(digits, digits.info, torch.device("cpu"), s, round=1)
    assert len(a.recal) == 3 and sum(len(x) for x in a.val_x) == 100
    for x, y in zip(a.recal, b.recal):
        assert torch.equal(x, y)
    assert not torch.equal(a.recal[0], fresh.recal[0])
    net = _model(digits.info)
    f1, info1 = a(copy.deepcopy(net))
    f2, info2 = b(copy.deepcopy(net))
    assert f1 == f2 and info1 == info2
    assert f1 == pytest.approx(-info1["val_loss"])


def test_recalibration_rescues_a_network_with_stale_statistics(digits):
    """Stale statistics (here: scrambled, as pruning leaves them) put accuracy near chance;
    the recalibrated fitness sees through that to the weights."""
    from legr_edge.train import SGDSettings, train_steps
    net = _model(digits.info)
    train_steps(net, digits.train, digits.info, 60, SGDSettings(lr=0.05, batch_size=64), torch.device("cpu"), 0)
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-3, 3)
            m.running_var.uniform_(0.01, 10)
    s = FitnessSettings(metric="accuracy", batch_size=64, val_limit=0)
    stale, _ = FitnessEvaluator(digits, digits.info, torch.device("cpu"),
                                FitnessSettings(metric="accuracy", recal_batches=0))(copy.deepcopy(net))
    fixed, _ = FitnessEvaluator(digits, digits.info, torch.device("cpu"), s)(copy.deepcopy(net))
    assert fixed > stale + 20


def test_tau_steps_are_common_to_all_candidates_unless_per_candidate(digits):
    """With common batches, candidate 0 and candidate 7 train on the same tau batches, so
    the same network gets the same fitness; the paper's per-candidate batches differ, and
    a new round draws new common batches."""
    cpu = torch.device("cpu")
    common = FitnessSettings(recal_batches=2, batch_size=32, val_limit=100, tau=3)
    per = FitnessSettings(recal_batches=2, batch_size=32, val_limit=100, tau=3, common_batches=False)
    net = _model(digits.info)
    ev = FitnessEvaluator(digits, digits.info, cpu, common)
    assert ev(copy.deepcopy(net), 0) == ev(copy.deepcopy(net), 7)
    paper = FitnessEvaluator(digits, digits.info, cpu, per)
    assert paper(copy.deepcopy(net), 0)[0] != paper(copy.deepcopy(net), 7)[0]
    assert ev.tau_seed(0) != FitnessEvaluator(digits, digits.info, cpu, common, round=1).tau_seed(0)
