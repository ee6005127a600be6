"""Training methods, one file each (its objective and its registration, timm's manner), and
the registry of plain data they fill (:mod:`groco.training.methods.registry`).

Registration order is the order of ``--method`` choices: GroCo, SimCLR, NNCLR, All4One,
SNCLR, SimSiam, BYOL, SimSiam-GSG, BYOL-GSG.
"""

from groco.training.methods import all4one, byol, groco, nnclr, simclr, simsiam, snclr
from groco.training.methods.base import Objective
from groco.training.methods.registry import (
    METHODS,
    OPTIMIZERS,
    MethodSpec,
    build_objective,
    get_method,
    register,
)

ORDER = ("groco", "simclr", "nnclr", "all4one", "snclr", "simsiam", "byol", "simsiam_gsg",
         "byol_gsg")
for _name in ORDER:  # the documented order, whatever order the files were imported in
    METHODS[_name] = METHODS.pop(_name)

__all__ = ["METHODS", "OPTIMIZERS", "MethodSpec", "Objective", "all4one", "build_objective",
           "byol", "get_method", "groco", "nnclr", "register", "simclr", "simsiam", "snclr"]
