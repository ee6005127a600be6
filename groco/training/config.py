"""``TrainConfig``: every setting of a training run, saved as the run's ``config.yaml``."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from groco.knn import KNN_K, KNN_TEMPERATURE
from groco.preprocessing import IMAGENET_MEAN, IMAGENET_STD, Preprocessing
from groco.training.methods import METHODS, OPTIMIZERS, get_method

MAX_QUEUE_SIZE = 98304  # the papers' support set / memory bank size
SCRATCH_EPOCHS = 100

# Fine-tuning a pretrained start (``--pretrained`` or ``--weights``): BN statistics frozen,
# the last three stages (timm's coarse groups; EfficientNet: the head conv and the last two
# block stages) and a new projector trainable, the backbone at a third of the head's
# learning rate, one projector warm-up epoch with the backbone frozen, a short cosine
# schedule. Measured with GroCo on EfficientNet-Lite0 (BENCHMARKS.md, "Quality: trained
# encoders"): one stage at a tenth of the learning rate left the start as it was; three
# at the full rate gained on both collections; five with the backbone at the head's rate
# gained most on the digits and lost on Fashion-MNIST.
FINETUNE_EPOCHS = 5
FINETUNE_TRAINABLE_STAGES = 3
FINETUNE_BACKBONE_LR_SCALE = 1 / 3
FINETUNE_HEAD_WARMUP_EPOCHS = 1


def default_queue_size(data: str | Path) -> int:
    """``min(98304, images in data)``: the papers' queue, capped at one key per image.

    A queue longer than the collection holds several stale keys of the same images (and its
    random initial rows for more than an epoch), so on small collections it is cut to the
    collection's size: after the first epoch it holds about one recent key per image.
    """
    from groco.images import find_images

    return max(1, min(MAX_QUEUE_SIZE, len(find_images(data))))


POOLS = ("avg", "max")
"""Global pooling of a CNN's last feature map: the mean of each channel (timm's default) or
its maximum (MAC, Tolias et al., ICLR 2016: an off-the-shelf retrieval descriptor)."""


def setting(default: Any, help: str, cli: bool = True, low: float | None = None,
            high: float | None = None) -> Any:
    """A :class:`TrainConfig` field with its help and, for a number, its range ``[low,
    high]``: the one place a setting is described. ``groco train`` makes an option of every
    field with ``cli`` (``--name-with-dashes``; booleans as ``--x/--no-x``) from its type,
    default, help and range; :meth:`TrainConfig.resolved` checks the range whatever set
    the value (a flag or ``--config``)."""
    metadata = {"help": help, "cli": cli, "low": low, "high": high}
    if default is dataclasses.MISSING:
        return dataclasses.field(metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def _methods_help() -> str:
    return f"Training objective: {', '.join(METHODS)} (default: groco; README: Methods)."


@dataclass
class TrainConfig:
    """A training run. ``None`` fields are resolved by ``resolved()`` from the others."""

    data: str = setting(dataclasses.MISSING, "Folder of images (searched recursively).",
                        cli=False)
    out: str = setting(dataclasses.MISSING, "Run directory to write checkpoints and logs to.",
                       cli=False)
    method: str = setting("groco", _methods_help())
    backbone: str = setting("resnet18", "Any timm model name, or an hf-hub: name with "
                            "--pretrained (default: resnet18).")
    image_size: int = setting(224, "Training and search resolution (default: 224; a start "
                              "from weights: --geometry auto). Compute grows with its "
                              "square.", low=8, high=4096)
    small_stem: bool | None = setting(
        None, "3x3 stride-1 CNN stem (default: on for untrained CNNs at <= 64 px; a start "
        "from weights keeps the stem it had).")
    pool: str = setting("avg", "Global pooling of a CNN's last feature map: avg or max "
                        "(default: avg; --geometry auto measures max too).")
    geometry: str | None = setting(
        None, "auto: score sizes, stems and pooling on IMAGES, train at the best; or e.g. 96, "
        "64s1 (stride-1 stem), 96s1-max. Overrides --image-size.")
    geometry_max_cost: float = setting(
        1.0, "--geometry auto: FLOPs cap, relative to the network at its pretraining size.",
        low=0.001, high=1000.0)
    weights: str | None = setting(None, "Local backbone weights to start from (groco run or "
                                  "timm state dict). Turns on --finetune.")
    pretrained: bool = setting(False, "Start from timm's pretrained weights for --backbone "
                               "(Hugging Face cache; offline with HF_HUB_OFFLINE=1). Turns on "
                               "--finetune.")
    pretrained_file: str | None = setting(None, "A local file of timm's pretrained weights "
                                          "for --backbone (implies --pretrained).")
    finetune: bool | None = setting(
        None, "The fine-tuning recipe (default: on when starting from weights; README, \"Your "
        "own images\").")
    trainable_stages: int | None = setting(None, "Last backbone stages trained (timm's coarse "
                                           "groups), 0 = all (default: 3 when fine-tuning).",
                                           low=0, high=100)
    backbone_lr_scale: float | None = setting(None, "Backbone LR / head LR (default: 1/3 when "
                                              "fine-tuning, else 1).", low=0.0, high=100.0)
    head_warmup_epochs: int | None = setting(None, "Epochs training only the heads, backbone "
                                             "frozen (default: 1 when fine-tuning, else 0).",
                                             low=0, high=100000)
    freeze_bn: bool | None = setting(None, "Keep the backbone's BatchNorm statistics (default: "
                                     "on when fine-tuning).")
    epochs: int | None = setting(None, "Epochs (default: 100; 5 when fine-tuning).",
                                 low=1, high=100000)
    batch_size: int = setting(256, "Images per process and step (default: 256).",
                              low=2, high=1000000)
    views: int = setting(2, "Augmented views per image (default: 2).", low=2, high=64)
    optimizer: str = setting("sgd", "sgd (default), lars or adamw.")
    lr: float | None = setting(None, "Base LR per 256 images, scaled linearly (default: the "
                               "method's, a tenth of it when fine-tuning, GroCo's in full).",
                               low=0.0, high=1e6)
    weight_decay: float | None = setting(None, "Weight decay (default: 1e-6 for sgd; 1e-4 for "
                                         "simsiam/byol(+gsg) with sgd).", low=0.0, high=1.0)
    momentum: float = setting(0.9, "SGD/LARS momentum (default: 0.9).", low=0.0, high=1.0)
    warmup_epochs: float = setting(1.0, "Linear warm-up epochs (default: 1).",
                                   low=0.0, high=100000.0)
    projector_hidden: int = setting(2048, "Projector width (default: 2048).", low=1, high=65536)
    projector_dim: int | None = setting(None, "Projector output dim (default: 2048; 256 for "
                                        "nnclr, all4one, snclr, byol).", low=1, high=65536)
    projector_layers: int = setting(3, "Projector layers (default: 3).", low=1, high=16)
    topk_neg: int = setting(10, "GroCo: hardest negatives sorted (default: 10).", low=1, high=4096)
    steepness: float = setting(1.0, "GroCo: sorter steepness (default: 1.0).",
                               low=1e-06, high=1000000.0)
    network: str = setting("odd_even", "GroCo: odd_even (default) or bitonic.")
    relaxation: str = setting("cauchy", "GroCo: cauchy (default), logistic, logistic_phi, "
                              "reciprocal, optimal.")
    stop_grad: bool = setting(True, "GroCo: no gradient through the anchor's similarities "
                              "(default: on).")
    temperature: float | None = setting(None, "simclr, nnclr, all4one, snclr: softmax "
                                        "temperature (default: 0.1; all4one and snclr 0.2).",
                                        low=1e-06, high=100.0)
    predictor_hidden: int | None = setting(None, "Predictor width (default: 4096; 512 for "
                                           "simsiam, simsiam_gsg, byol_gsg).", low=1, high=65536)
    queue_size: int | None = setting(None, "nnclr, all4one, snclr: keys in the support queue "
                                     "(default: images in IMAGES, at most 98304).",
                                     low=1, high=100000000)
    num_neighbors: int = setting(5, "all4one, snclr: nearest queue keys per sample "
                                 "(default: 5).", low=1, high=4096)
    momentum_base: float = setting(0.99, "byol, byol_gsg, all4one, snclr: EMA momentum at the "
                                   "start (default: 0.99).", low=0.0, high=1.0)
    momentum_final: float = setting(1.0, "EMA momentum at the end, cosine from "
                                    "--momentum-base (default: 1.0).", low=0.0, high=1.0)
    device: str = setting("auto", "auto (default), cpu or cuda.")
    workers: int = setting(4, "Data-loading processes (default: 4).", low=0, high=1024)
    seed: int = setting(0, "Random seed (default: 0).", low=0, high=4294967295)
    eval_every: int = setting(
        1, "Score the encoder (k-NN, or copy retrieval without labels) every N epochs and "
        "at the start, keeping the best; 0 = off (default: 1).", low=0, high=100000)
    eval_data: str | None = setting(None, "Labelled folder for the k-NN monitor's queries "
                                    "(default: leave-one-out on IMAGES).")
    holdout: int = setting(0, "Labelled images kept out of training as the k-NN monitor's "
                           "queries, each class its share (default: 0).", low=0, high=10**9)
    knn_k: int = setting(KNN_K, "Neighbours in the k-NN monitor's vote.", cli=False)
    knn_temperature: float = setting(KNN_TEMPERATURE, "Temperature of the k-NN monitor's "
                                     "vote.", cli=False)
    base_size: int | None = setting(None, "Side of the uint8 images the workers decode "
                                    "(default: 1.14 x --image-size).", cli=False)
    eval_resize: int | None = setting(None, "Shorter side before the centre crop at "
                                      "evaluation (default: --image-size).", cli=False)
    mean: list[float] | None = setting(None, "Input mean (default: the backbone's own).",
                                       cli=False)
    std: list[float] | None = setting(None, "Input std (default: the backbone's own).",
                                      cli=False)
    max_steps_per_epoch: int | None = setting(None, "Cap on steps per epoch.",
                                              low=1, high=1000000000)
    crop_min_scale: float = setting(0.14, "Smallest random crop, as a fraction of the image "
                                    "(default: 0.14, the paper's).", low=0.01, high=1.0)
    flip: bool = setting(True, "Random horizontal flips (default: on).")

    def resolved(self) -> TrainConfig:
        """A copy with defaults that depend on other fields filled in, values checked (the
        network's own facts come with it: :meth:`with_network`)."""
        self.check_ranges()
        spec = get_method(self.method)
        if self.pool not in POOLS:
            raise ValueError(f"--pool {self.pool!r}: choose one of {', '.join(POOLS)}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"unknown optimizer {self.optimizer!r}; choose one of {OPTIMIZERS}")
        changes: dict[str, Any] = {
            "data": str(Path(self.data).expanduser().resolve()),
            "out": str(Path(self.out).expanduser().resolve()),
        }
        changes.update(self._start_defaults())
        if self.eval_data is not None:
            changes["eval_data"] = str(Path(self.eval_data).expanduser().resolve())
            if self.holdout:
                raise ValueError("--holdout and --eval-data both name the k-NN monitor's "
                                 "queries; give one")
        if self.lr is None:
            factor = spec.finetune_lr_factor if changes["finetune"] else 1.0
            changes["lr"] = spec.base_lr[self.optimizer] * factor
        if self.weight_decay is None:
            changes["weight_decay"] = spec.default_weight_decay(self.optimizer)
        changes.update(self._method_defaults(changes["data"]))
        if self.base_size is None:
            changes["base_size"] = round(self.image_size * 1.14)
        if self.eval_resize is None:
            changes["eval_resize"] = self.image_size
        return dataclasses.replace(self, **changes)

    def check_ranges(self) -> None:
        """Every number set within its setting's ``[low, high]`` (finite; a one-line
        ``ValueError`` naming the flag)."""
        for field in dataclasses.fields(self):
            low, high = field.metadata.get("low"), field.metadata.get("high")
            value = getattr(self, field.name)
            if value is None or low is None:
                continue
            number = isinstance(value, (int, float)) and not isinstance(value, bool)
            if not number or not math.isfinite(value) or not low <= value <= high:
                flag = "--" + field.name.replace("_", "-")
                raise ValueError(f"{flag} must be a number in [{low:g}, {high:g}], got "
                                 f"{value!r}")

    def with_network(self, backbone: Any) -> TrainConfig:
        """A copy recording what building ``backbone`` (a timm model from
        :func:`groco.training.models.build_backbone`) decided: its stem (``small_stem``), its
        global pooling (``pool``) and,
        where unset, its own input normalisation (``mean``/``std`` of its timm
        ``pretrained_cfg``, ImageNet's when it has none). Resolving a config needs no timm;
        the network it builds brings these facts."""
        cfg = getattr(backbone, "pretrained_cfg", None) or {}
        return dataclasses.replace(
            self, small_stem=bool(getattr(backbone, "groco_small_stem", False)),
            pool=getattr(backbone, "groco_pool", self.pool),
            mean=list(self.mean or [float(v) for v in cfg.get("mean") or IMAGENET_MEAN]),
            std=list(self.std or [float(v) for v in cfg.get("std") or IMAGENET_STD]))

    @property
    def starts_from_weights(self) -> bool:
        """True when the backbone starts from pretrained or local weights."""
        return bool(self.pretrained or self.pretrained_file or self.weights)

    def _start_defaults(self) -> dict[str, Any]:
        """Epochs, normalisation and the fine-tuning recipe, by where the run starts."""
        finetune = self.starts_from_weights if self.finetune is None else self.finetune
        changes: dict[str, Any] = {"finetune": finetune}
        if self.pretrained_file is not None:
            changes["pretrained_file"] = str(Path(self.pretrained_file).expanduser().resolve())
            changes["pretrained"] = True
        if self.weights is not None:
            changes["weights"] = str(Path(self.weights).expanduser().resolve())
        recipe = {"epochs": (FINETUNE_EPOCHS, SCRATCH_EPOCHS),
                  "trainable_stages": (FINETUNE_TRAINABLE_STAGES, 0),
                  "backbone_lr_scale": (FINETUNE_BACKBONE_LR_SCALE, 1.0),
                  "head_warmup_epochs": (FINETUNE_HEAD_WARMUP_EPOCHS, 0),
                  "freeze_bn": (True, False)}
        for key, (tuned, scratch) in recipe.items():
            if getattr(self, key) is None:
                changes[key] = tuned if finetune else scratch
        return changes

    def _method_defaults(self, data: str) -> dict[str, Any]:
        """Defaults of the method's spec for fields left as None, and their checks."""
        spec, changes = get_method(self.method), {}
        if spec.views is not None and self.views not in spec.views:
            raise ValueError(f"--method {spec.name} takes --views "
                             f"{' or '.join(map(str, spec.views))}, got {self.views}")
        if self.projector_dim is None:
            changes["projector_dim"] = spec.projector_dim
        if self.predictor_hidden is None:
            changes["predictor_hidden"] = spec.predictor_hidden
        if self.temperature is None:
            changes["temperature"] = spec.temperature
        if not 0.0 <= self.momentum_base <= self.momentum_final <= 1.0:
            raise ValueError("--momentum-base and --momentum-final need 0 <= base <= final "
                             f"<= 1, got {self.momentum_base} and {self.momentum_final}")
        if spec.queue:
            needed = spec.queue_rows(self)
            size = self.queue_size
            if size is None:
                size = max(needed, default_queue_size(data))
            if size < needed:
                raise ValueError(f"--queue-size {size} is smaller than --num-neighbors "
                                 f"{needed}")
            changes["queue_size"] = size
        return changes

    @property
    def preprocessing(self) -> Preprocessing:
        """How the run's encoder sees an image: ``image_size``, ``eval_resize`` (or
        ``image_size``) and ``mean``/``std``. The k-NN monitor, the export and the index
        all use this one value."""
        if self.mean is None or self.std is None:
            raise ValueError("preprocessing needs the network's mean/std (with_network)")
        return Preprocessing(self.image_size, self.eval_resize or self.image_size,
                             tuple(self.mean), tuple(self.std))

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown training settings: {', '.join(unknown)}")
        return cls(**values)

    @classmethod
    def from_yaml(cls, path: str | Path, **overrides: Any) -> TrainConfig:
        try:
            values = yaml.safe_load(Path(path).read_text()) or {}
        except yaml.YAMLError as error:
            mark = getattr(error, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            problem = getattr(error, "problem", None) or str(error).splitlines()[0]
            raise ValueError(f"{path}: not valid YAML{where}: {problem}") from None
        if not isinstance(values, dict):
            raise ValueError(f"{path}: expected a mapping of settings")
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls.from_dict(values)
