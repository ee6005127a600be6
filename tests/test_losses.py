"""GroCo and SimCLR losses: ordering, gradients, learning, devices, distributed."""

import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from groco.training.losses import GroCoLoss, SimCLRLoss


def _groups(batch=32, dim=16, noise=0.05, seed=0):
    gen = torch.Generator().manual_seed(seed)
    images = F.normalize(torch.randn(batch, dim, generator=gen), dim=1)
    return [images + noise * torch.randn(batch, dim, generator=gen) for _ in range(2)]


def test_groco_loss_is_lower_for_well_ordered_groups_than_for_inverted_ones():
    loss = GroCoLoss(topk_neg=5, steepness=1.0)
    ordered = loss(_groups())
    # Inverted: every positive is the antipode of its anchor, the least similar of all.
    anchor = _groups()[0]
    inverted = loss([anchor, -anchor])
    assert ordered < inverted


def test_groco_loss_grows_as_each_positive_turns_away_from_its_anchor():
    """The positive rotated from the anchor (cosine 1) to its antipode (cosine -1), the
    negatives fixed: every step that ranks it lower among them costs more."""
    gen = torch.Generator().manual_seed(0)
    anchor = F.normalize(torch.randn(32, 16, generator=gen), dim=1)
    away = torch.randn(32, 16, generator=gen)
    away = F.normalize(away - (away * anchor).sum(1, keepdim=True) * anchor, dim=1)
    loss = GroCoLoss(topk_neg=5, steepness=1.0)
    angles = torch.linspace(0, torch.pi, 9)
    values = [float(loss([anchor, torch.cos(t) * anchor + torch.sin(t) * away]))
              for t in angles]
    assert all(b > a for a, b in zip(values, values[1:], strict=False)), values


def test_groco_gradient_moves_an_anchor_toward_its_positive():
    views = _groups(batch=16, noise=0.8, seed=3)
    anchor = views[0].clone().requires_grad_()
    GroCoLoss(topk_neg=5)([anchor, views[1]]).backward()
    stepped = anchor.detach() - 0.5 * anchor.grad
    before = F.cosine_similarity(anchor.detach(), views[1]).mean()
    after = F.cosine_similarity(stepped, views[1]).mean()
    assert after > before


def test_groco_stop_grad_keeps_gradients_off_positives_and_negatives():
    a, b = (v.clone().requires_grad_() for v in _groups(batch=12))
    GroCoLoss(topk_neg=4, stop_grad=True)([a, b]).backward()
    assert a.grad.abs().sum() > 0 and b.grad.abs().sum() > 0  # each view is an anchor once
    x, y = (v.clone().requires_grad_() for v in _groups(batch=12))
    loss = GroCoLoss(topk_neg=4, stop_grad=True)
    # With one anchor view only (the other detached), gradient reaches the anchor only.
    ell = loss._anchor_loss([F.normalize(x, dim=1), F.normalize(y, dim=1)], 0, loss._sorter(2))
    ell.backward()
    assert x.grad.abs().sum() > 0 and y.grad is None


def test_groco_separates_positives_from_negatives_when_optimising_free_embeddings():
    torch.manual_seed(0)
    batch, dim = 64, 16
    embeddings = [torch.nn.Parameter(torch.randn(batch, dim)) for _ in range(2)]
    loss_fn = GroCoLoss(topk_neg=10, steepness=1.0)
    optimiser = torch.optim.SGD(embeddings, lr=20.0, momentum=0.9)

    def margin():
        z = [F.normalize(e.detach(), dim=1) for e in embeddings]
        pos = (z[0] * z[1]).sum(1)
        neg = (z[0] @ z[0].T).fill_diagonal_(-2).max(1).values
        return (pos > neg).float().mean().item(), loss_fn(embeddings).item()

    separated_before, loss_before = margin()
    for _ in range(300):
        optimiser.zero_grad()
        loss_fn(embeddings).backward()
        optimiser.step()
    separated_after, loss_after = margin()
    assert loss_after < loss_before
    assert separated_before < 0.5
    assert separated_after > 0.95, "positives should end above every negative"


def test_groco_supports_more_views_and_networks():
    views = _groups(batch=20) + _groups(batch=20, seed=1)[:1]
    for network in ("odd_even", "bitonic"):
        value = GroCoLoss(topk_neg=6, network=network)(views)
        assert torch.isfinite(value)


def test_groco_batch_too_small_is_a_clear_error():
    with pytest.raises(ValueError, match="at least topk_neg"):
        GroCoLoss(topk_neg=10)(_groups(batch=10))


def test_groco_to_and_autocast():
    loss = GroCoLoss(topk_neg=5).to(torch.device("cpu"))
    views = [v.to(torch.bfloat16).requires_grad_() for v in _groups()]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        value = loss(views)
    assert value.dtype == torch.float32
    value.backward()
    reference = GroCoLoss(topk_neg=5)([v.detach().float() for v in views])
    torch.testing.assert_close(value.detach(), reference, atol=1e-5, rtol=0)
    assert all(b.device.type == "meta" for b in GroCoLoss(network="bitonic").to("meta").buffers())


def test_simclr_matches_cross_entropy_formulation():
    a, b = _groups(batch=8, noise=0.3)
    tau = 0.2
    z = F.normalize(torch.cat([a, b]), dim=1)
    logits = z @ z.T / tau
    logits.fill_diagonal_(float("-inf"))
    target = torch.cat([torch.arange(8, 16), torch.arange(8)])
    expected = F.cross_entropy(logits, target)
    torch.testing.assert_close(SimCLRLoss(tau)([a, b]), expected)


def test_simclr_prefers_aligned_views():
    a, b = _groups(batch=16, noise=0.05)
    assert SimCLRLoss()([a, b]) < SimCLRLoss()([a, b[torch.randperm(16)]])


def _distributed_worker(rank, world, port, views, results):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        batch = views[0].shape[0] // world
        for name, loss_fn in (("groco", GroCoLoss(topk_neg=5, stop_grad=False)),
                              ("simclr", SimCLRLoss(0.2))):
            local = [v[rank * batch:(rank + 1) * batch].clone().requires_grad_() for v in views]
            loss = loss_fn(local)
            loss.backward()
            results[(name, rank)] = (loss.item(), [v.grad.clone() for v in local])
    finally:
        dist.destroy_process_group()


def _free_port():
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_distributed_losses_equal_the_single_process_loss_on_the_whole_batch():
    views = _groups(batch=16, noise=0.5)
    world = 2
    with mp.Manager() as manager:
        results = manager.dict()
        mp.spawn(_distributed_worker, args=(world, _free_port(), views, results), nprocs=world)
        results = dict(results)
    for name, loss_fn in (("groco", GroCoLoss(topk_neg=5, stop_grad=False)),
                          ("simclr", SimCLRLoss(0.2))):
        full = [v.clone().requires_grad_() for v in views]
        loss = loss_fn(full)
        loss.backward()
        mean_loss = sum(results[(name, r)][0] for r in range(world)) / world
        assert abs(mean_loss - loss.item()) < 1e-5, name
        # DDP averages gradients over ranks; the gathered gradients make that the full-batch one.
        for v, full_view in enumerate(full):
            grads = torch.cat([results[(name, r)][1][v] for r in range(world)]) / world
            torch.testing.assert_close(grads, full_view.grad, atol=1e-6, rtol=1e-4)
