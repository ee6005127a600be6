"""The serving geometry of a start, chosen by measuring it on the user's collection.

A geometry is an input size and, for a CNN, the stem's stride and the global pooling:
``96`` is 96 px through the network's own (stride-2) stem, ``64s1`` is 64 px with the
stem's stride set to 1 (4x the pixels through the body, the pretrained 3x3 weights kept),
``96s1-max`` the same with the last feature map max-pooled instead of averaged (MAC, Tolias
et al. 2016; no weights change). ``raw32`` is no network at all:
the raw-pixel encoder at 32 x 32 (``groco export --raw-pixels 32``), scored beside the
network so that a collection where pixels search best (small aligned scans) gets them.
Which one searches a collection best is not knowable in advance (FixRes, Touvron et al.
2019: a network serves best at a higher resolution than it trained at, and small images
gain from the stride-1 stem), so :func:`score_geometries` measures each candidate on a
sample of the collection, with the training monitor's own scores
(:class:`groco.training.trainer.monitor.Monitor`: the figures epoch 0 of a run at that
geometry would log):

- with 2+ labelled folders, weighted k-NN top-1 (leave-one-out on the sample);
- without labels, copy retrieval (:func:`groco.training.labelfree.copy_retrieval`) when
  :data:`LABEL_FREE_CHOOSES` says it ranks geometries as k-NN does on the benchmark
  collections, else the :data:`FALLBACK` rule.

The best network geometry of that first round is then scored with each other pooling of
:data:`~groco.training.config.POOLS` (a ViT has none: its tokens are pooled by its own
rule), and the choice is made over both rounds.

**Cost** of a geometry: the network's forward FLOPs for one image
(``torch.utils.flop_counter``), relative to the same network at the input size its weights
were trained at (timm's ``pretrained_cfg["input_size"]``; 224 when it has none). A
candidate costing more than ``max_cost`` is listed but not scored. A raw-pixel candidate
costs 0. Among scores within :data:`TIE` of the best, the cheapest wins, then the
:data:`PREFERRED_POOL`. Raw pixels are chosen
only with labels, and only for an export: ``groco train`` chooses among the network's
geometries and says when raw pixels scored higher.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from groco.training.config import POOLS

log = logging.getLogger(__name__)

DEFAULT_SIZES = (64, 96, 128)
"""Input sizes tried by default, each with the network's own stem and the stride-1 stem."""
RAW_SIZES = (16, 32)
"""Raw-pixel candidates tried by default (``raw16``, ``raw32``)."""
DEFAULT_MAX_COST = 1.0
"""Candidates cost at most the network at its own pretraining resolution."""
SAMPLE = 1000
"""Images of the collection each candidate is scored on."""
TIE = 0.005
"""Scores this close to the best count as equal; the cheaper geometry wins."""
LABEL_FREE_CHOOSES = False
"""Whether copy retrieval decides without labels. It does not: over the candidates within
the default cap it ranks them as k-NN does on Fashion-MNIST (Kendall tau +0.81) but hardly
on the digits (+0.14), where the costliest-candidate rule does better (+0.65; +0.85 on
Fashion-MNIST; BENCHMARKS.md, "Serving geometry")."""
PREFERRED_POOL = "max"
"""The pooling a tie (and the rule without labels, where every pooling costs the same)
chooses: for the Lite0 start, max pooling raised precision@10 over averaging at every
geometry measured on both benchmark collections, and k-NN top-1 in 7 of 8 cells
(BENCHMARKS.md, "Global pooling")."""
FALLBACK = "costliest"
"""The rule without labels: the costliest candidate within the cost cap (for a CNN, the
most pixels through its body). On the benchmarks it picks 96s1: the best on Fashion-MNIST,
0.9 k-NN points below the best on the digits."""


@dataclass(frozen=True, order=True)
class Geometry:
    """An input size and whether the stem's stride is set to 1; or (``raw``) the raw-pixel
    encoder at that size."""

    image_size: int
    small_stem: bool = False
    raw: bool = False
    pool: str = "avg"

    @property
    def name(self) -> str:
        if self.raw:
            return f"raw{self.image_size}"
        pool = "" if self.pool == "avg" else f"-{self.pool}"
        return f"{self.image_size}{'s1' if self.small_stem else ''}{pool}"

    @classmethod
    def parse(cls, text: str) -> Geometry:
        """``96``, ``64s1``, ``96s1-max`` or ``raw32``; ``ValueError`` naming what it cannot
        read."""
        text = text.strip().lower()
        base, dash, pool = text.partition("-")
        raw = base.startswith("raw")
        stem = base.endswith("s1") and not raw
        size = base[3:] if raw else base.removesuffix("s1")
        if (not size.isdigit() or int(size) < 8 or (dash and raw)
                or (dash and pool not in POOLS)):
            raise ValueError(f"geometry {text!r}: use a size of 8+ px, with s1 for the "
                             "stride-1 stem, -max for max pooling, or raw for raw pixels "
                             "(e.g. 96, 64s1, 96s1-max, raw32)")
        return cls(int(size), stem, raw, pool or "avg")


def candidates(sizes: Sequence[int] = DEFAULT_SIZES, stems: bool = True,
               raw_sizes: Sequence[int] = RAW_SIZES) -> list[Geometry]:
    """Every size with the network's own stem, and with the stride-1 stem when ``stems``;
    then raw pixels at each of ``raw_sizes``."""
    network = sorted({Geometry(s, stem) for s in sizes for stem in ((False, True) if stems
                                                                     else (False,))})
    return network + [Geometry(s, raw=True) for s in sorted(set(raw_sizes))]


@dataclass
class GeometryScore:
    """One candidate's row of the table."""

    geometry: Geometry
    cost: float | None
    knn_top1: float | None = None
    copy_top1: float | None = None
    seconds: float = 0.0
    skipped: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"geometry": self.geometry.name, "image_size": self.geometry.image_size,
                "small_stem": self.geometry.small_stem, "raw": self.geometry.raw,
                "pool": self.geometry.pool,
                "cost": self.cost,
                "knn_top1": self.knn_top1, "copy_top1": self.copy_top1,
                "seconds": round(self.seconds, 2), "skipped": self.skipped}


@dataclass
class GeometryChoice:
    """The measured table and the geometry chosen from it (``criterion`` says how)."""

    backbone: str
    rows: list[GeometryScore]
    chosen: Geometry
    criterion: str
    sample: int
    max_cost: float
    labelled: bool
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"backbone": self.backbone, "chosen": self.chosen.name,
                "image_size": self.chosen.image_size, "small_stem": self.chosen.small_stem,
                "raw": self.chosen.raw, "pool": self.chosen.pool,
                "criterion": self.criterion, "sample": self.sample,
                "max_cost": self.max_cost, "labelled": self.labelled,
                "rows": [r.to_dict() for r in self.rows], "notes": self.notes}

    def table(self) -> str:
        """The table as the CLI prints it, the chosen row marked ``*``."""

        def fig(value: float | None) -> str:
            return "-" if value is None else f"{100 * value:.1f}"

        lines = [f"serving geometry of {self.backbone} on {self.sample} images "
                 f"(cost: FLOPs relative to its pretraining size; cap {self.max_cost:g})",
                 f"  {'geometry':<9} {'cost':>6} {'k-NN':>6} {'copy':>6}"]
        for r in self.rows:
            mark = "*" if r.geometry == self.chosen else " "
            cost = "-" if r.cost is None else f"{r.cost:.2f}"
            tail = f"  ({r.skipped})" if r.skipped else ""
            lines.append(f"{mark} {r.geometry.name:<9} {cost:>6} {fig(r.knn_top1):>6} "
                         f"{fig(r.copy_top1):>6}{tail}")
        lines.append(f"chosen: {self.chosen.name} ({self.criterion})")
        return "\n".join(lines + self.notes)


def forward_flops(backbone: Any, image_size: int) -> float:
    """FLOPs of one forward pass of one ``image_size`` image (``torch.utils.flop_counter``)."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    backbone.eval()
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), counter:
        backbone(torch.zeros(1, 3, image_size, image_size))
    return float(counter.get_total_flops())


def pretraining_size(backbone: Any) -> int:
    """The input side the network's weights were trained at (224 when timm does not say)."""
    cfg = getattr(backbone, "pretrained_cfg", None) or {}
    size = cfg.get("input_size") or (3, 224, 224)
    return int(size[-1])


def choose(rows: Sequence[GeometryScore], labelled: bool,
           networks_only: bool = False) -> tuple[Geometry, str]:
    """The chosen geometry of the scored ``rows`` and the criterion that chose it. Raw
    pixels are a candidate with labels only, and never with ``networks_only``."""
    scored = [r for r in rows if r.skipped is None
              and not (r.geometry.raw and (networks_only or not labelled))]
    if not scored:
        raise ValueError("no candidate geometry could be scored (raise --max-cost?)")
    if labelled:
        key, criterion = (lambda r: r.knn_top1), "highest k-NN top-1 from the folder labels"
    elif LABEL_FREE_CHOOSES:
        key, criterion = (lambda r: r.copy_top1), "highest copy retrieval (no labels)"
    else:
        key = lambda r: r.cost  # noqa: E731
        criterion = "no labels: the costliest candidate within the cost cap"
    best = max(key(r) for r in scored)
    tie = TIE if labelled or LABEL_FREE_CHOOSES else 0.0
    near = [r for r in scored if key(r) >= best - tie]
    pick = min(near, key=lambda r: (r.cost or 0.0, r.geometry.pool != PREFERRED_POOL,
                                    r.geometry))
    return pick.geometry, criterion


def score_geometries(backbone: str, data: str | Path, geometries: Sequence[Geometry],
                     *, pretrained: bool = False, pretrained_file: str | Path | None = None,
                     weights: str | Path | None = None, sample: int = SAMPLE,
                     max_cost: float = DEFAULT_MAX_COST, seed: int = 0, workers: int = 0,
                     networks_only: bool = False, pools: Sequence[str] = (),
                     progress: Callable[[str], None] = log.info) -> GeometryChoice:
    """Score each of ``geometries`` for the start ``backbone`` (+ weights) on a fixed
    sample of ``data`` (module docstring), then the best network geometry of those with
    each of ``pools`` they did not try (a network without a global pooling layer to set,
    such as a ViT, adds no row), and choose one (``networks_only``: not raw
    pixels, which a training run cannot start from; a note says when they scored higher
    than the chosen network). Imports torch
    only when called (the CLI imports this module). ``ValueError`` for a folder
    without images or when no candidate fits ``max_cost``."""
    import torch
    from torch import nn

    from groco.encoder.baselines import raw_pixel_network, raw_pixel_preprocessing
    from groco.training import labelfree
    from groco.training.config import TrainConfig
    from groco.training.data import ImageFolderDataset
    from groco.training.models import build_backbone
    from groco.training.trainer.monitor import Monitor

    listing = ImageFolderDataset(data, base_size=8)
    picked = labelfree.sample_indices(len(listing.files), sample, seed)
    files = [listing.files[i] for i in picked]
    targets = [listing.targets[i] for i in picked]
    labelled = len({t for t in targets if t >= 0}) >= 2
    start = {"pretrained": pretrained, "pretrained_file": pretrained_file,
             "weights": None if weights is None else str(weights)}
    rows: list[GeometryScore] = []
    notes: list[str] = []
    reference: float | None = None  # FLOPs: the network, own stem, pretraining size

    def score(geometry: Geometry) -> None:
        nonlocal reference
        began = time.perf_counter()
        if geometry.raw:
            network, cost = raw_pixel_network(), 0.0
        else:
            try:
                network, _ = build_backbone(backbone, geometry.image_size, geometry.small_stem,
                                            pool=geometry.pool, **start)
            except ValueError as error:  # e.g. a stride-1 stem asked of a ViT
                if geometry.pool == "avg":
                    rows.append(GeometryScore(geometry, None,
                                              skipped=str(error).split(";")[0]))
                return
            if reference is None:
                own = (build_backbone(backbone, geometry.image_size, False, **start)[0]
                       if geometry.small_stem else network)
                reference = forward_flops(own, pretraining_size(own))
            cost = forward_flops(network, geometry.image_size) / reference
        row = GeometryScore(geometry, cost)
        rows.append(row)
        if cost > max_cost:
            row.skipped = f"over the cost cap {max_cost:g}"
            return
        if geometry.raw:  # the raw-pixel encoder's preprocessing: resize to the size, [0, 1]
            raw = raw_pixel_preprocessing(geometry.image_size)
            config = TrainConfig(data=str(data), out=".", backbone=backbone,
                                 image_size=geometry.image_size, eval_resize=raw.resize_to,
                                 mean=list(raw.mean), std=list(raw.std), workers=workers,
                                 seed=seed, device="cpu").resolved()
        else:
            config = TrainConfig(data=str(data), out=".", backbone=backbone,
                                 image_size=geometry.image_size,
                                 small_stem=geometry.small_stem, pool=geometry.pool,
                                 workers=workers, seed=seed, device="cpu", **start)
            config = config.resolved().with_network(network)
        monitor = Monitor(config, files, targets, listing.classes, torch.device("cpu"),
                          channels_last=False, autocast_dtype=None)
        start_network = nn.Module()
        start_network.backbone = network  # the shape the monitor scores
        knn, scores = monitor.evaluate(start_network)
        row.knn_top1, row.copy_top1 = knn, scores.get("copy_top1")
        row.seconds = time.perf_counter() - began
        progress(f"geometry {geometry.name}: cost {cost:.2f}, k-NN "
                 f"{'-' if knn is None else f'{100 * knn:.1f}'}, copy retrieval "
                 f"{100 * (row.copy_top1 or 0):.1f} ({row.seconds:.0f} s)")

    for geometry in sorted(geometries, key=lambda g: (g.raw, g)):
        score(geometry)
    tried = {g.pool for g in geometries if not g.raw}
    if pools and any(r.skipped is None and not r.geometry.raw for r in rows):
        best, _ = choose(rows, labelled, networks_only=True)
        for pool in pools:
            if pool not in tried:
                score(dataclasses.replace(best, pool=pool))
    chosen, criterion = choose(rows, labelled, networks_only)
    above = raw_above([r.to_dict() for r in rows], chosen.name) if networks_only else None
    if above is not None:
        raw, network = above
        notes.append(f"raw pixels ({raw['geometry']}) score {100 * raw['knn_top1']:.1f} "
                     f"k-NN, above the network's best geometry ({100 * network:.1f}): compare "
                     f"`groco export --raw-pixels {raw['image_size']}` with the trained "
                     "encoder in `groco index eval`")
    if not labelled:
        notes.append("(no labelled subfolders: k-NN n/a; copy retrieval is shown, not used: "
                     "it does not rank geometries as k-NN does on the benchmarks)")
    return GeometryChoice(backbone, rows, chosen, criterion, len(files), max_cost, labelled,
                          notes)


RECORD = "geometry.json"
"""The file in a run directory that records ``--geometry auto``'s table and choice."""


def resolve_geometry(text: str, backbone: str, data: str | Path | None, *,
                     pretrained: bool = False, pretrained_file: str | Path | None = None,
                     weights: str | Path | None = None, max_cost: float = DEFAULT_MAX_COST,
                     seed: int = 0, workers: int = 0, record: Path | None = None,
                     networks_only: bool = False,
                     progress: Callable[[str], None] = log.info) -> Geometry:
    """The geometry ``--geometry TEXT`` names: ``"96"``/``"64s1"``/``"raw32"`` parsed;
    ``"auto"`` scored (:func:`score_geometries` over :func:`candidates` on ``data``), its
    table given to ``progress`` and written as JSON to ``record``. ``ValueError`` for
    ``auto`` without ``data`` or without a start from weights (an untrained network has no
    serving geometry to measure), and for raw pixels with ``networks_only``."""
    if text.strip().lower() != "auto":
        geometry = Geometry.parse(text)
        if geometry.raw and networks_only:
            raise ValueError(f"--geometry {geometry.name}: raw pixels have nothing to train; "
                             f"`groco export --raw-pixels {geometry.image_size}` writes them")
        return geometry
    if data is None:
        raise ValueError("--geometry auto scores the candidates on your images: give --data")
    if not (pretrained or pretrained_file or weights):
        raise ValueError("--geometry auto measures a start from weights: give --pretrained "
                         "or --weights (or a size such as 96)")
    choice = score_geometries(backbone, data, candidates(), pretrained=pretrained,
                              pretrained_file=pretrained_file, weights=weights,
                              max_cost=max_cost, seed=seed, workers=workers,
                              networks_only=networks_only, pools=POOLS,
                              progress=progress)
    progress(choice.table())
    if record is not None:
        record.parent.mkdir(parents=True, exist_ok=True)
        record.write_text(json.dumps(choice.to_dict(), indent=2) + "\n")
    return choice.chosen


def default_geometry(settings: Mapping[str, Any]) -> str | None:
    """The ``geometry`` setting a run or an export gets when it names none: ``"auto"`` for
    a start from weights that gives neither ``geometry`` nor ``image_size`` (its serving
    geometry is measured on the images, not assumed: at its pretraining size Lite0 scores
    82.6 k-NN on Fashion-MNIST and 84.6 on the digits, against 83.5 and 88.4 at 96 px with
    the stride-1 stem, for 1.4x the cost; BENCHMARKS.md, "Serving geometry"), else
    ``None``."""
    starts = any(settings.get(key) for key in ("weights", "pretrained", "pretrained_file"))
    named = any(settings.get(key) is not None for key in ("geometry", "image_size"))
    return "auto" if starts and not named else None


def with_geometry(config: Any, run_dir: Path) -> Any:
    """``config`` (a :class:`~groco.training.config.TrainConfig`) at its ``geometry``
    (:func:`resolve_geometry`; ``None`` leaves it as it is): ``image_size``,
    ``small_stem`` and ``pool`` set, ``auto`` capped at ``config.geometry_max_cost`` and recorded in
    ``run_dir``/:data:`RECORD`; ``geometry`` becomes the chosen name, so a resumed run
    keeps it."""
    if config.geometry is None:
        return config
    chosen = resolve_geometry(
        config.geometry, config.backbone, config.data, pretrained=config.pretrained,
        pretrained_file=config.pretrained_file, weights=config.weights,
        max_cost=config.geometry_max_cost, seed=config.seed, workers=config.workers,
        record=run_dir / RECORD, networks_only=True)
    return dataclasses.replace(config, image_size=chosen.image_size,
                               small_stem=chosen.small_stem, pool=chosen.pool,
                               geometry=chosen.name)


def raw_above(rows: Sequence[dict[str, Any]], chosen: str) -> tuple[dict[str, Any], float] | None:
    """``(the best raw-pixel row, the chosen row's k-NN)`` when a raw-pixel row of ``rows``
    (:meth:`GeometryScore.to_dict`) scores above the ``chosen`` geometry's by more than
    :data:`TIE`, else None."""
    network = next((r.get("knn_top1") for r in rows if r.get("geometry") == chosen), None)
    raw = [r for r in rows if r.get("raw") and r.get("knn_top1") is not None]
    if network is None or not raw:
        return None
    best = max(raw, key=lambda r: r["knn_top1"])
    return (best, network) if best["knn_top1"] > network + TIE else None


def raw_pixels_note(run_dir: Path) -> str | None:
    """A line for ``groco export RUN`` when the run's :data:`RECORD` shows raw pixels
    scoring above the geometry it trained at (on the same sample, by k-NN), else None."""
    path = Path(run_dir) / RECORD
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    above = raw_above(record.get("rows", []), record.get("chosen"))
    if above is None:
        return None
    best, chosen = above
    return (f"note: raw pixels ({best['geometry']}) scored {100 * best['knn_top1']:.1f} k-NN "
            f"on {record.get('sample')} of these images against {100 * chosen:.1f} for the "
            f"start at {record['chosen']} ({path}); compare `groco export --raw-pixels "
            f"{best['image_size']}` with this encoder in `groco index eval`")
