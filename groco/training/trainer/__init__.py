"""The trainer: the loop (:mod:`.loop`), the monitor and kept epoch (:mod:`.monitor`), the
run's state in its files (:mod:`.run_state`) and what a run is made of (:mod:`.setup`)."""

from groco.training.trainer.loop import Trainer, train
from groco.training.trainer.monitor import CopyTransform, Monitor, kept_record
from groco.training.trainer.run_state import METRIC_FIELDS, check_resume_settings
from groco.training.trainer.setup import (
    TrainError,
    TrainResult,
    backbone_stages,
    freeze_batchnorm,
    pick_device,
)

__all__ = ["METRIC_FIELDS", "CopyTransform", "Monitor", "TrainError", "TrainResult", "Trainer",
           "backbone_stages", "check_resume_settings", "freeze_batchnorm", "kept_record",
           "pick_device", "train"]
