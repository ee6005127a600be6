"""The methods beside GroCo and SimCLR (NNCLR, All4One, SNCLR, SimSiam, BYOL and their
Guided Stop-Gradient variants) and their building blocks: EMA schedule, momentum encoder,
queue, heads, losses; training through the CLI, exact resume, learning, 2-process DDP."""

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn
from typer.testing import CliRunner

from groco.cli import app
from groco.images import find_images
from groco.training.config import TrainConfig
from groco.training.heads import CentroidTransformer, PredictionHead, slot_encoding
from groco.training.losses import (
    GuidedStopGradientLoss,
    NNCLRLoss,
    SoftNeighborLoss,
    feature_contrast,
    partner_permutation,
)
from groco.training.methods.all4one import All4OneObjective
from groco.training.methods.byol import BYOLObjective
from groco.training.methods.nnclr import NNCLRObjective
from groco.training.methods.simsiam import SiameseObjective
from groco.training.methods.snclr import SNCLRObjective
from groco.training.models import Projector, SSLModel
from groco.training.momentum import MomentumEncoder, cosine_momentum
from groco.training.queue import FeatureQueue
from groco.training.trainer import Trainer

NEW_METHODS = ["nnclr", "all4one", "snclr", "simsiam", "byol", "simsiam_gsg", "byol_gsg"]
MOMENTUM_METHODS = {"all4one", "snclr", "byol", "byol_gsg"}
QUEUE_METHODS = {"nnclr", "all4one", "snclr"}
TINY = ["--backbone", "test_resnet", "--no-small-stem", "--image-size", "16", "--batch-size",
        "8", "--workers", "0", "--projector-dim", "32", "--projector-hidden", "32",
        "--predictor-hidden", "32", "--queue-size", "16", "--num-neighbors", "3", "--epochs",
        "1", "--max-steps-per-epoch", "2", "--eval-every", "0", "--lr", "0.05"]


pytestmark = pytest.mark.usefixtures("one_thread")


class TinyBackbone(nn.Module):
    """A stand-in for a timm backbone: (B, 3, 8, 8) -> (B, 32)."""

    def __init__(self, dim: int = 32) -> None:
        super().__init__()
        self.num_features = dim
        self.net = nn.Sequential(nn.Flatten(), nn.Linear(3 * 8 * 8, dim), nn.ReLU())

    def forward(self, x):
        return self.net(x)


def _objective(method: str, seed: int = 0, queue: int = 32):
    torch.manual_seed(seed)
    model = SSLModel(TinyBackbone(), Projector(32, 32, 32))
    return {
        "nnclr": lambda: NNCLRObjective(model, queue, 32, 0.1),
        "all4one": lambda: All4OneObjective(model, queue, 3, 32, 0.2),
        "snclr": lambda: SNCLRObjective(model, queue, 3, 32, 0.2),
        "simsiam": lambda: SiameseObjective(model, 16),
        "byol": lambda: BYOLObjective(model, 32),
        "simsiam_gsg": lambda: SiameseObjective(model, 16, guided=True),
        "byol_gsg": lambda: BYOLObjective(model, 32, guided=True),
    }[method]()


def _views(seed: int = 0, batch: int = 16, n_views: int = 2):
    gen = torch.Generator().manual_seed(seed)
    images = torch.randn(batch, 3, 8, 8, generator=gen)
    return [images + 0.3 * torch.randn(batch, 3, 8, 8, generator=gen) for _ in range(n_views)]


# ------------------------------------------------------------------ momentum and queue
def test_cosine_momentum_rises_from_base_to_final():
    assert cosine_momentum(0.0, 0.99) == pytest.approx(0.99)
    assert cosine_momentum(0.5, 0.99) == pytest.approx(0.995)
    assert cosine_momentum(1.0, 0.99) == pytest.approx(1.0)
    assert cosine_momentum(1.0, 0.9, final=0.95) == pytest.approx(0.95)
    values = [cosine_momentum(p / 20, 0.99) for p in range(21)]
    assert values == sorted(values)
    assert cosine_momentum(1.5, 0.99) == cosine_momentum(1.0, 0.99)  # clamped


def test_momentum_encoder_ema_step_schedule_and_state():
    torch.manual_seed(0)
    backbone, projector = nn.Linear(4, 3), nn.Linear(3, 2)
    encoder = MomentumEncoder(backbone, projector, base=0.9)
    assert all(not p.requires_grad for p in encoder.parameters())
    torch.testing.assert_close(encoder.backbone.weight, backbone.weight)
    with torch.no_grad():
        backbone.weight.add_(1.0)
    old = encoder.backbone.weight.clone()
    encoder.update((backbone, projector), progress=0.25)
    torch.testing.assert_close(encoder.backbone.weight, 0.9 * old + 0.1 * backbone.weight)
    assert float(encoder.tau) == pytest.approx(cosine_momentum(0.25, 0.9))
    assert set(encoder.state_dict()) == {"backbone.weight", "backbone.bias", "projector.weight",
                                         "projector.bias", "tau"}
    restored = MomentumEncoder(nn.Linear(4, 3), nn.Linear(3, 2), base=0.9)
    restored.load_state_dict(encoder.state_dict())
    assert float(restored.tau) == float(encoder.tau)
    x = torch.randn(5, 4)
    assert not encoder(x).requires_grad


def test_queue_is_fifo_wraps_around_and_keeps_its_pointer_in_the_state_dict():
    torch.manual_seed(0)
    queue = FeatureQueue(5, 3)
    keys = F.normalize(torch.randn(12, 3), dim=1)
    queue.enqueue(keys[:3])
    torch.testing.assert_close(queue.keys[:3], keys[:3])
    assert int(queue.ptr) == 3
    queue.enqueue(keys[3:7])  # positions 3, 4, 0, 1
    torch.testing.assert_close(queue.keys, keys[[5, 6, 2, 3, 4]])
    assert int(queue.ptr) == 2
    restored = FeatureQueue(5, 3)
    restored.load_state_dict(queue.state_dict())
    assert int(restored.ptr) == 2
    big = F.normalize(torch.randn(7, 3), dim=1)  # more than the queue holds: newest 5 stay
    for q in (queue, restored):
        q.enqueue(big)
    torch.testing.assert_close(queue.keys, big[[3, 4, 5, 6, 2]])
    torch.testing.assert_close(restored.keys, queue.keys)
    assert int(queue.ptr) == (2 + 7) % 5
    queue.enqueue(3.0 * keys[7:8])  # keys are stored normalised
    torch.testing.assert_close(queue.keys[4], keys[7])


def test_queue_nearest_returns_most_similar_rows_first():
    queue = FeatureQueue(4, 2)
    rows = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.6, 0.8]])
    queue.enqueue(rows)
    neighbours, index = queue.nearest(torch.tensor([[2.0, 0.5], [-1.0, -0.2]]), 2)
    assert index.tolist() == [[0, 3], [2, 1]]
    torch.testing.assert_close(neighbours[0], rows[[0, 3]])
    with pytest.raises(ValueError, match="neighbours"):
        queue.nearest(rows, 5)


# ------------------------------------------------------------------------------ heads
def test_slot_encoding_is_all4ones_permuted_sinusoid():
    table = slot_encoding(5, 16)
    d = torch.arange(16.0)
    torch.testing.assert_close(table[0], d.sin())
    torch.testing.assert_close(table[1], d.cos())
    torch.testing.assert_close(table[2], (d * 10000 ** (-1 / 3)).sin())
    torch.testing.assert_close(table[3], (d * 10000 ** (-1 / 3)).cos())
    torch.testing.assert_close(table[4], (d * 10000 ** (-2 / 3)).sin())


def test_centroid_transformer_and_prediction_head_shapes():
    head = PredictionHead(8, 16, 8)
    assert head(torch.randn(4, 8)).shape == (4, 8)
    centroid = CentroidTransformer(16, 5)
    assert centroid(torch.randn(4, 5, 16)).shape == (4, 16)
    with pytest.raises(ValueError, match="divisible"):
        CentroidTransformer(12, 5)


# ----------------------------------------------------------------------------- losses
def test_nnclr_loss_is_the_symmetric_cross_entropy_of_neighbours_against_predictions():
    gen = torch.Generator().manual_seed(0)
    n1, n2, p1, p2 = (torch.randn(6, 4, generator=gen) for _ in range(4))

    def ce(a, b):
        logits = F.normalize(a, dim=1) @ F.normalize(b, dim=1).T / 0.2
        return F.cross_entropy(logits, torch.arange(6))

    expected = 0.5 * (ce(n1, p2) + ce(n2, p1))
    torch.testing.assert_close(NNCLRLoss(0.2)([n1, n2], [p1, p2]), expected)


def _snclr_released(q, q_pre, k, nn_, tau):
    """SNCLR's released ``soft_neighbors_constrastive`` (one process): label matrix form."""
    b, n_nb, dim = nn_.shape
    q, q_pre = F.normalize(q, dim=1), F.normalize(q_pre, dim=1)
    flat_nn = F.normalize(nn_.reshape(b * n_nb, dim), dim=1)
    keep = F.normalize(torch.cat([k[:, None], nn_], 1).reshape(-1, dim), dim=1)
    logits = (q @ keep.T / tau).log_softmax(dim=-1)
    mask = (torch.eye(b) - 1) * 999
    mask = mask.repeat(n_nb, 1).reshape(n_nb, b, -1).permute(2, 1, 0).reshape(b, n_nb * b)
    labels = (q_pre @ flat_nn.T + mask).softmax(dim=-1)
    final = torch.cat((torch.eye(b).reshape(b, -1, b).unsqueeze(-1),
                       labels.reshape(b, -1, b, n_nb)), dim=-1).reshape(b, -1)
    return (-logits * final).sum(-1).mean() * 2 * tau


def test_soft_neighbor_loss_matches_the_released_label_matrix_formulation():
    gen = torch.Generator().manual_seed(1)
    q1, q2, p1, p2, k1, k2 = (torch.randn(5, 8, generator=gen) for _ in range(6))
    nn1, nn2 = (torch.randn(5, 3, 8, generator=gen) for _ in range(2))
    loss = SoftNeighborLoss(0.2)([q1, q2], [p1, p2], [k1, k2], [nn1, nn2])
    expected = _snclr_released(q1, p1, k2, nn2, 0.2) + _snclr_released(q2, p2, k1, nn1, 0.2)
    torch.testing.assert_close(loss, expected)


def test_feature_contrast_vanishes_for_orthonormal_matching_columns():
    q, _ = torch.linalg.qr(torch.randn(16, 8))  # columns orthonormal over the batch
    assert feature_contrast([q, q], [q, q]).item() == pytest.approx(0.0, abs=1e-5)
    other = torch.randn(16, 8)
    assert feature_contrast([other, other], [q, q]).item() > 1.0


def test_partner_permutation_never_pairs_an_image_with_itself():
    for seed in range(20):
        perm = partner_permutation(2 + seed % 7, generator=torch.Generator().manual_seed(seed))
        assert sorted(perm.tolist()) == list(range(len(perm)))
        assert (perm != torch.arange(len(perm))).all()


def test_gsg_takes_the_closest_cross_image_pair_as_sources():
    gen = torch.Generator().manual_seed(0)
    z1a, z1b = torch.zeros(4, 3), torch.ones(4, 3)
    z2a, z2b = torch.full((4, 3), 1.1), torch.full((4, 3), -3.0)  # closest pair: (1b, 2a)
    p = [torch.randn(4, 3, generator=gen).requires_grad_() for _ in range(4)]
    loss_fn = GuidedStopGradientLoss()
    assert loss_fn.choice([z1a, z1b], [z2a, z2b]).tolist() == [2, 2, 2, 2]
    loss = loss_fn(p[:2], [z1a + 0.1, z1b], p[2:], [z2a, z2b])
    loss.backward()
    assert p[0].grad is None or p[0].grad.abs().sum() == 0  # 1a is a target, not a source
    assert p[3].grad is None or p[3].grad.abs().sum() == 0  # 2b likewise
    assert p[1].grad.abs().sum() > 0 and p[2].grad.abs().sum() > 0
    expected = -0.5 * (F.cosine_similarity(p[1], z1a + 0.1) + F.cosine_similarity(p[2], z2b))
    torch.testing.assert_close(loss, expected.mean())


# ------------------------------------------------------------------------- objectives
@pytest.mark.parametrize("method", NEW_METHODS)
def test_objective_loss_decreases_on_fixed_views(method):
    objective = _objective(method)
    views = _views()
    params = [p for p in objective.parameters() if p.requires_grad]
    optimiser = torch.optim.SGD(params, lr=0.05, momentum=0.9)
    losses = []
    steps = 25
    for step in range(steps):
        loss = objective(views)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        objective.after_step((step + 1) / steps)
        losses.append(loss.item())
    first, last = sum(losses[:3]) / 3, sum(losses[-3:]) / 3
    assert last < first - 0.3, (first, last)


@pytest.mark.parametrize("method", NEW_METHODS)
def test_state_dict_holds_queues_and_momentum_copies_outside_the_backbone_prefix(method):
    objective = _objective(method)
    objective(_views(n_views=2))
    objective.after_step(0.5)
    state = objective.state_dict()
    backbone = {k for k in state if k.startswith("backbone.")}
    assert backbone == {f"backbone.{k}" for k in objective.backbone.state_dict()}
    if method in MOMENTUM_METHODS:
        assert any(k.startswith("momentum_encoder.backbone.") for k in state)
        assert state["momentum_encoder.tau"].item() == pytest.approx(cosine_momentum(0.5, 0.99))
    if method in QUEUE_METHODS:
        assert int(state["queue.ptr"]) == 16 and state["queue.keys"].shape == (32, 32)
    fresh = _objective(method, seed=1)
    fresh.load_state_dict(state)
    for key, value in fresh.state_dict().items():
        assert torch.equal(value, state[key]), key


def test_gsg_objectives_take_four_views_and_reject_three():
    objective = _objective("simsiam_gsg")
    assert torch.isfinite(objective(_views(n_views=4)))
    with pytest.raises(ValueError, match="views"):
        objective(_views(n_views=3))
    with pytest.raises(ValueError, match="2 views"):
        _objective("nnclr")(_views(n_views=4))


# ------------------------------------------------------------------------ config, CLI
def test_config_resolves_method_defaults(tmp_path, collection, monkeypatch):
    def resolve(**kwargs):
        return TrainConfig(data=str(collection), out=str(tmp_path / "r"), **kwargs).resolved()

    nnclr = resolve(method="nnclr")
    files = len(find_images(collection))  # 24 images + 2 unreadable ones
    assert (nnclr.queue_size, nnclr.projector_dim, nnclr.predictor_hidden) == (files, 256, 4096)
    assert (nnclr.temperature, nnclr.lr, nnclr.weight_decay) == (0.1, 0.5, 1e-6)
    assert resolve(method="snclr", optimizer="lars").lr == 0.6
    simsiam = resolve(method="simsiam")
    assert (simsiam.lr, simsiam.weight_decay, simsiam.predictor_hidden) == (0.05, 1e-4, 512)
    assert resolve(method="all4one").temperature == 0.2
    assert resolve(method="nnclr", queue_size=100_000).queue_size == 100_000
    import groco.training.config as config_module

    monkeypatch.setattr(config_module, "MAX_QUEUE_SIZE", files - 5)  # the cap, below files
    assert resolve(method="snclr").queue_size == files - 5
    groco = resolve()
    assert (groco.projector_dim, groco.temperature, groco.queue_size) == (2048, 0.1, None)
    with pytest.raises(ValueError, match="views"):
        resolve(method="byol", views=3)
    with pytest.raises(ValueError, match="queue-size"):
        resolve(method="all4one", queue_size=2, num_neighbors=5)


@pytest.mark.parametrize("method,extra", [(m, []) for m in NEW_METHODS]
                         + [("byol_gsg", ["--views", "4"])])
def test_each_method_trains_through_the_cli_and_writes_a_checkpoint(collection, tmp_path,
                                                                     method, extra):
    run = tmp_path / "run"
    result = CliRunner().invoke(app, ["train", str(collection), "--out", str(run), "--method",
                                      method, *TINY, *extra])
    assert result.exit_code == 0, result.output
    weights = load_file(str(run / "last.safetensors"))
    assert any(k.startswith("backbone.") for k in weights)
    assert any(k.startswith("predictor.") for k in weights)
    if method in MOMENTUM_METHODS:
        assert any(k.startswith("momentum_encoder.backbone.") for k in weights)
    if method in QUEUE_METHODS:
        assert weights["queue.keys"].shape == (16, 32) and weights["queue.ptr"].numel() == 1
    assert (run / "metrics.csv").read_text().count("\n") == 2


def test_resume_is_exact_with_queue_momentum_encoder_and_dropout(collection, tmp_path):
    def config(out):
        return TrainConfig(data=str(collection), out=str(tmp_path / out), method="all4one",
                           backbone="test_resnet", small_stem=False, image_size=16,
                           batch_size=8, workers=0, projector_dim=32, projector_hidden=32,
                           predictor_hidden=32, queue_size=16, num_neighbors=3, epochs=2,
                           max_steps_per_epoch=2, eval_every=0, lr=0.05)

    Trainer(config("straight"), show_progress=False).fit()
    first = Trainer(config("resumed"), show_progress=False)
    first.run_dir.mkdir(parents=True)
    loss, _, _ = first.train_epoch()  # one epoch of the same run, checkpointed as fit() does
    first.epoch += 1
    first._save({"epoch": 1, "step": first.step, "loss": f"{loss:.6f}", "lr": "0",
                 "images_per_s": "0", "broken": 0, "knn_top1": "", "seconds": "0"}, best=False)
    Trainer(config("resumed"), resume=True, show_progress=False).fit()
    a = load_file(str(tmp_path / "straight" / "last.safetensors"))
    b = load_file(str(tmp_path / "resumed" / "last.safetensors"))
    assert a.keys() == b.keys()
    assert {"queue.keys", "queue.ptr", "momentum_encoder.tau"} <= a.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), f"{key} differs after resume"


# ------------------------------------------------------------------------ distributed
def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _loss_case(name, inputs, rank, world):
    """(this rank's slice of ``inputs``, the loss ``name`` on it, keys with gradient)."""
    batch = inputs["p1"].shape[0] // world
    local = {k: v[rank * batch:(rank + 1) * batch].clone() for k, v in inputs.items()}
    for key in ("p1", "p2", "z1", "z2", "q1", "q2"):
        local[key].requires_grad_()
    if name == "nnclr":
        loss = NNCLRLoss(0.2)([local["n1"], local["n2"]], [local["p1"], local["p2"]])
        return local, loss, ["p1", "p2"]
    if name == "feature":
        loss = feature_contrast([local["z1"], local["z2"]], [local["m1"], local["m2"]])
        return local, loss, ["z1", "z2"]
    loss = SoftNeighborLoss(0.2)([local["q1"], local["q2"]], [local["p1"], local["p2"]],
                                 [local["m1"], local["m2"]], [local["nb1"], local["nb2"]])
    return local, loss, ["q1", "q2", "p1", "p2"]


LOSS_CASES = ("nnclr", "feature", "snclr")


def _ddp_worker(rank, world, port, inputs, results):
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        torch.manual_seed(0)
        queue = FeatureQueue(8, 4)
        queue.enqueue(torch.randn(3, 4, generator=torch.Generator().manual_seed(100 + rank)))
        results[("queue", rank)] = (queue.keys.clone(), int(queue.ptr))

        for name in LOSS_CASES:
            local, loss, grad_keys = _loss_case(name, inputs, rank, world)
            loss.backward()
            results[(name, rank)] = (loss.item(), {k: local[k].grad.clone() for k in grad_keys})

        objective = _objective("snclr", queue=32)
        ddp = nn.parallel.DistributedDataParallel(objective)
        optimiser = torch.optim.SGD([p for p in ddp.parameters() if p.requires_grad], lr=0.05)
        for step in range(2):
            loss = ddp(_views(seed=10 * rank + step, batch=4))
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            objective.after_step((step + 1) / 2)
        results[("objective", rank)] = {k: v.clone() for k, v in objective.state_dict().items()}
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_process_queues_and_gathered_losses_match_one_process():
    gen = torch.Generator().manual_seed(0)
    batch, dim = 8, 6
    inputs = {k: torch.randn(batch, dim, generator=gen)
              for k in ("n1", "n2", "p1", "p2", "z1", "z2", "m1", "m2", "q1", "q2")}
    inputs.update({k: torch.randn(batch, 3, dim, generator=gen) for k in ("nb1", "nb2")})
    world = 2
    with mp.Manager() as manager:
        results = manager.dict()
        mp.spawn(_ddp_worker, args=(world, _free_port(), inputs, results), nprocs=world)
        results = dict(results)

    # Both ranks' queues are identical and hold both ranks' keys, rank order.
    (keys0, ptr0), (keys1, ptr1) = results[("queue", 0)], results[("queue", 1)]
    assert torch.equal(keys0, keys1) and ptr0 == ptr1 == 6
    sent = torch.cat([torch.randn(3, 4, generator=torch.Generator().manual_seed(100 + r))
                      for r in range(world)])
    torch.testing.assert_close(keys0[:6], F.normalize(sent, dim=1))

    # Losses with gathers: mean over ranks = whole-batch loss; DDP-averaged gradients agree.
    for name in LOSS_CASES:
        full, loss, grad_keys = _loss_case(name, inputs, 0, 1)
        loss.backward()
        mean_loss = sum(results[(name, r)][0] for r in range(world)) / world
        assert abs(mean_loss - loss.item()) < 1e-5, name
        for key in grad_keys:
            grads = torch.cat([results[(name, r)][1][key] for r in range(world)]) / world
            torch.testing.assert_close(grads, full[key].grad, atol=1e-6, rtol=1e-4)

    # A DDP-wrapped SNCLR objective keeps queue, momentum encoder and weights in step
    # (BatchNorm running statistics are per rank after the last step without SyncBN).
    state0, state1 = results[("objective", 0)], results[("objective", 1)]
    for key in state0:
        if not key.endswith(("running_mean", "running_var", "num_batches_tracked")):
            torch.testing.assert_close(state0[key], state1[key], msg=key)
    assert int(state0["queue.ptr"]) == 2 * 2 * 4  # 2 steps, 4 keys from each of 2 ranks


@pytest.mark.parametrize("method", ["byol", "simsiam_gsg"])
def test_momentum_and_predictor_runs_export_the_online_backbone(collection, tmp_path, method):
    import onnxruntime as ort

    from groco.training.models import build_backbone

    run, onnx_file = tmp_path / "run", tmp_path / "encoder.onnx"
    runner = CliRunner()
    trained = runner.invoke(app, ["train", str(collection), "--out", str(run), "--method",
                                  method, *TINY])
    assert trained.exit_code == 0, trained.output
    exported = runner.invoke(app, ["export", str(run), "--out", str(onnx_file)])
    assert exported.exit_code == 0, exported.output
    weights = load_file(str(run / "last.safetensors"))
    config = TrainConfig.from_yaml(run / "config.yaml")
    x = torch.rand(2, 3, 16, 16)

    def embed(prefix):
        backbone, _ = build_backbone("test_resnet", 16, small_stem=False)
        backbone.load_state_dict({k[len(prefix):]: v for k, v in weights.items()
                                  if k.startswith(prefix)})
        mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in (config.mean, config.std))
        with torch.no_grad():
            return F.normalize(backbone.eval()((x - mean) / std), dim=1)

    session = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"])
    onnx_out = torch.from_numpy(session.run(None, {session.get_inputs()[0].name: x.numpy()})[0])
    torch.testing.assert_close(onnx_out, embed("backbone."), atol=1e-4, rtol=1e-4)
    if method in MOMENTUM_METHODS:  # the momentum copy is a different network by now
        assert not torch.allclose(onnx_out, embed("momentum_encoder.backbone."), atol=1e-4)
