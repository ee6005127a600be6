"""groco's differentiable sorting networks: they sort, P is doubly stochastic, and the
numbers, forward and backward, are diffsort 0.2.0's."""

import diffsort
import pytest
import torch

from groco.training.sorting import NETWORKS, SortingNetwork

REFERENCE_RELAXATIONS = ["cauchy", "logistic", "logistic_phi", "reciprocal", "optimal",
                         "gaussian"]
SIZES = [2, 3, 5, 8, 11, 13, 16, 20]


def _reference(kind, n, steepness, relaxation, dtype):
    ref = diffsort.DiffSortNet(kind, n, steepness=steepness, distribution=relaxation)
    ref.sorting_network = [[m.to(dtype) for m in layer] for layer in ref.sorting_network]
    return ref


def _forward_backward(module, x, w_sorted, w_perm):
    x = x.clone().requires_grad_()
    sorted_x, perm = module(x)
    ((sorted_x * w_sorted).sum() + (perm * w_perm).sum()).backward()
    return sorted_x.detach(), perm.detach(), x.grad


@pytest.mark.parametrize("kind", NETWORKS)
@pytest.mark.parametrize("relaxation", REFERENCE_RELAXATIONS)
def test_matches_diffsort_forward_and_backward(kind, relaxation):
    gen = torch.Generator().manual_seed(0)
    for n in SIZES:
        x = torch.randn(16, n, generator=gen, dtype=torch.float64)
        w_sorted = torch.randn(16, n, generator=gen, dtype=torch.float64)
        w_perm = torch.randn(16, n, n, generator=gen, dtype=torch.float64)
        ours = _forward_backward(SortingNetwork(kind, n, 3.0, relaxation), x, w_sorted, w_perm)
        theirs = _forward_backward(_reference(kind, n, 3.0, relaxation, torch.float64),
                                   x, w_sorted, w_perm)
        for name, a, b in zip(("sorted_x", "P", "grad"), ours, theirs, strict=True):
            assert (a - b).abs().max() <= 1e-5, f"{kind}/{relaxation}/n={n}: {name} differs"


@pytest.mark.parametrize("kind", NETWORKS)
def test_bounded_memory_backward_recomputes_the_same_gradients(kind):
    # max_saved_bytes=0: every layer's differences are recomputed from segment checkpoints
    gen = torch.Generator().manual_seed(2)
    for n in (2, 5, 11, 20, 33):
        x = torch.randn(8, n, generator=gen, dtype=torch.float64)
        w_sorted = torch.randn(8, n, generator=gen, dtype=torch.float64)
        w_perm = torch.randn(8, n, n, generator=gen, dtype=torch.float64)
        bounded = SortingNetwork(kind, n, 3.0, max_saved_bytes=0)
        ours = _forward_backward(bounded, x, w_sorted, w_perm)
        kept = _forward_backward(SortingNetwork(kind, n, 3.0), x, w_sorted, w_perm)
        theirs = _forward_backward(_reference(kind, n, 3.0, "cauchy", torch.float64),
                                   x, w_sorted, w_perm)
        for name, a, b, c in zip(("sorted_x", "P", "grad"), ours, kept, theirs, strict=True):
            assert (a - b).abs().max() <= 1e-12, f"{kind}/n={n}: {name} differs from kept"
            assert (a - c).abs().max() <= 1e-5, f"{kind}/n={n}: {name} differs from diffsort"


@pytest.mark.parametrize("kind", NETWORKS)
@pytest.mark.parametrize("relaxation", ["cauchy", "logistic", "reciprocal"])
def test_matches_diffsort_in_float32(kind, relaxation):
    gen = torch.Generator().manual_seed(1)
    n = 11
    x = torch.randn(64, n, generator=gen)
    w_sorted, w_perm = torch.randn(64, n, generator=gen), torch.randn(64, n, n, generator=gen)
    ours = _forward_backward(SortingNetwork(kind, n, 1.0, relaxation), x, w_sorted, w_perm)
    theirs = _forward_backward(_reference(kind, n, 1.0, relaxation, torch.float32),
                               x, w_sorted, w_perm)
    for a, b in zip(ours, theirs, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kind", NETWORKS)
@pytest.mark.parametrize("n", [1, 2, 7, 16, 33])
def test_steep_relaxation_is_a_hard_sort(kind, n):
    x = torch.randperm(4 * n * 7).float().view(4 * 7, n)[:, :n] / 10  # distinct values
    sorted_x, perm = SortingNetwork(kind, n, steepness=1e4, relaxation="logistic")(x)
    expected = x.sort(dim=1)
    torch.testing.assert_close(sorted_x, expected.values, atol=1e-3, rtol=0)
    hard = torch.nn.functional.one_hot(expected.indices, n).transpose(1, 2).float()
    torch.testing.assert_close(perm, hard, atol=1e-3, rtol=0)


@pytest.mark.parametrize("kind", NETWORKS)
@pytest.mark.parametrize("relaxation", ["cauchy", "logistic", "reciprocal", "optimal"])
def test_permutation_is_doubly_stochastic_and_gives_sorted_x(kind, relaxation):
    x = torch.randn(32, 13, generator=torch.Generator().manual_seed(2))
    sorted_x, perm = SortingNetwork(kind, 13, steepness=2.0, relaxation=relaxation)(x)
    assert perm.shape == (32, 13, 13)
    assert perm.min() >= -1e-6
    torch.testing.assert_close(perm.sum(1), torch.ones(32, 13), atol=1e-5, rtol=0)
    torch.testing.assert_close(perm.sum(2), torch.ones(32, 13), atol=1e-5, rtol=0)
    torch.testing.assert_close(sorted_x, (x.unsqueeze(1) @ perm).squeeze(1), atol=1e-5, rtol=0)


def test_wiring_moves_with_to_and_is_not_in_the_state_dict():
    net = SortingNetwork("bitonic", 11)
    buffers = dict(net.named_buffers())
    assert buffers, "the bitonic wiring should live in registered buffers"
    assert net.state_dict() == {}
    moved = net.to(torch.float64)  # buffers are bool masks: dtype moves leave them alone
    assert all(b.dtype == torch.bool for b in moved.buffers())
    meta = SortingNetwork("bitonic", 11).to("meta")
    assert all(b.device.type == "meta" for b in meta.buffers())


def test_autocast_computes_in_float32():
    net = SortingNetwork("odd_even", 11, steepness=1.0)
    x = torch.randn(8, 11, dtype=torch.bfloat16, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        sorted_x, perm = net(x)
    assert sorted_x.dtype == torch.float32 and perm.dtype == torch.float32
    perm[:, :, -1].sum().backward()
    assert x.grad is not None and x.grad.dtype == torch.bfloat16


def test_rejects_bad_arguments():
    with pytest.raises(ValueError, match="sorting network"):
        SortingNetwork("bubble", 4)
    with pytest.raises(ValueError, match="relaxation"):
        SortingNetwork("odd_even", 4, relaxation="softmax")
    with pytest.raises(ValueError, match=r"\(B, 4\)"):
        SortingNetwork("odd_even", 4)(torch.zeros(2, 5))
