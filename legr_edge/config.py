"""The search command's configuration: presets, flags, one frozen dataclass.

Resolution order: dataclass defaults < ``--preset`` < the device ``--profile``
(default ``cpu-ort``: its ``round_to``) < flags given explicitly on the command line. The resolved config is written to
``config.json`` in the run directory.
"""
from __future__ import annotations

import dataclasses
import math
import re
from typing import Any

from legr_edge.errors import LegrError

DEFAULT_TARGETS = (0.8, 0.6, 0.5, 0.4, 0.3, 0.2)


@dataclasses.dataclass(frozen=True)
class SearchConfig:
    model: str = "resnet20"
    dataset: str = "digits"
    data_dir: str | None = None
    checkpoint: str | None = None
    out: str | None = None
    preset: str = "default"
    profile: str = "cpu-ort"             # target device profile: round_to and opset come from it
    device: str = "auto"
    seed: int = 0
    val_fraction: float = 0.1
    batch_size: int = 64
    # dense pretraining (when no checkpoint is given)
    pretrain_epochs: int = 30
    pretrain_lr: float = 0.1
    # the ranking search
    targets: tuple[float, ...] = DEFAULT_TARGETS
    search_target: float | None = None   # default: the smallest target
    population: int = 16
    sample: int = 4
    candidates: int = 48
    tau: int = 40
    tau_lr: float = 0.01
    fitness: str = "accuracy"            # accuracy | loss
    round_to: int = 1                    # overridden by the profile's unless given explicitly
    min_fraction: float = 0.1
    min_channels: int = 2
    ignore_layers: tuple[str, ...] = ()
    # the family
    finetune_epochs: int = 10
    finetune_lr: float = 0.01
    export: bool = True
    opset: int | None = None
    input_size: tuple[int, int] | None = None  # (H, W); default: the data set's or the model's

    def __post_init__(self):
        for t in self.targets:
            _check_fraction(t, "--targets value")
        if not self.targets:
            raise LegrError("--targets is empty")
        if self.search_target is not None:
            _check_fraction(self.search_target, "--search-target")
        if self.fitness not in ("accuracy", "loss"):
            raise LegrError(f"--fitness must be 'accuracy' or 'loss', got {self.fitness!r}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise LegrError(f"--device must be auto, cpu or cuda, got {self.device!r}")
        if not 0.0 < self.val_fraction < 1.0:
            raise LegrError(f"--val-fraction must be in (0, 1), got {self.val_fraction}")
        for name in ("batch_size", "population", "sample", "candidates", "round_to"):
            if getattr(self, name) < 1:
                raise LegrError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(self, name)}")
        if self.sample > self.population:
            raise LegrError(f"--sample ({self.sample}) must not exceed --population ({self.population})")
        for name in ("pretrain_epochs", "tau", "finetune_epochs"):
            if getattr(self, name) < 0:
                raise LegrError(f"--{name.replace('_', '-')} must be >= 0, got {getattr(self, name)}")
        _check_more(self)

    @property
    def effective_search_target(self) -> float:
        return self.search_target if self.search_target is not None else min(self.targets)

    @property
    def run_dir(self) -> str:
        return self.out or f"runs/{self.model.replace(':', '.').replace('/', '_')}-{self.dataset}"

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


PRESETS: dict[str, dict[str, Any]] = {
    # Seconds, for tests and checks: a few candidates, a few steps.
    "smoke": dict(pretrain_epochs=2, population=4, sample=2, candidates=6, tau=5,
                  finetune_epochs=1, targets=(0.5, 0.3), batch_size=64),
    # The embedded default run (digits + ResNet-20): under 10 minutes on 2 CPU cores.
    "default": {},
    # The published hyperparameters (LeGR, CIFAR): P=64, S=16, 400 candidates, tau=200.
    "paper": dict(pretrain_epochs=200, population=64, sample=16, candidates=400, tau=200,
                  batch_size=128, tau_lr=0.01, finetune_epochs=200, finetune_lr=0.01),
}

FIELDS = {f.name for f in dataclasses.fields(SearchConfig)}


def resolve(explicit: dict[str, Any]) -> SearchConfig:
    """Build the config from a preset, the device profile and explicitly given options.

    Unknown keys are errors. The profile's ``round_to`` applies unless ``round_to`` is
    given explicitly; the export reads the profile's opset the same way.
    """
    unknown = sorted(set(explicit) - FIELDS)
    if unknown:
        raise LegrError(f"unknown configuration keys: {', '.join(unknown)}")
    preset = explicit.get("preset", "default")
    if preset not in PRESETS:
        raise LegrError(f"unknown preset {preset!r}; known: {', '.join(PRESETS)}")
    values: dict[str, Any] = dict(PRESETS[preset])
    values.update(explicit)
    if "round_to" not in explicit:
        from legr_edge.device.profiles import load_profile
        values["round_to"] = load_profile(values.get("profile", SearchConfig.profile)).round_to
    values.update(explicit)
    return SearchConfig(**values)


def _check_fraction(value: float, name: str) -> None:
    if not isinstance(value, (int, float)) or not 0.0 < value <= 1.0:
        raise LegrError(f"{name} must be in (0, 1], got {value!r}")


# package.module:factory, or a registered name (checked against the registry later)
_MODEL_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*(:[A-Za-z_][A-Za-z0-9_]*)?$")


def _check_more(c: SearchConfig) -> None:
    """Values that would otherwise train on NaN, collide on disk or fail deep in the run."""
    if not isinstance(c.model, str) or not _MODEL_RE.match(c.model):
        raise LegrError(f"--model {c.model!r}: expected a registered name (see --list-models) or "
                        "package.module:factory")
    for name in ("pretrain_lr", "tau_lr", "finetune_lr"):
        v = getattr(c, name)
        if not isinstance(v, (int, float)) or not math.isfinite(v) or not 0 < v <= 10:
            raise LegrError(f"--{name.replace('_', '-')} must be a finite number in (0, 10], got {v!r}")
    if not isinstance(c.seed, int) or not 0 <= c.seed < 2 ** 31:
        raise LegrError(f"--seed must be an integer in [0, 2**31), got {c.seed!r}")
    if not isinstance(c.min_fraction, (int, float)) or not 0.0 <= c.min_fraction < 1.0:
        raise LegrError(f"--min-fraction must be in [0, 1), got {c.min_fraction!r}")
    if c.min_channels < 1:
        raise LegrError(f"--min-channels must be >= 1, got {c.min_channels}")
    names = [member_name(t) for t in c.targets]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        same = [t for t in c.targets if member_name(t) in dupes]
        raise LegrError(f"--targets {', '.join(map(str, same))} all become {', '.join(dupes)}; "
                        "targets must differ in their second decimal")
    if c.opset is not None and not 11 <= c.opset <= 23:
        raise LegrError(f"--opset must be between 11 and 23, got {c.opset}")
    if c.input_size is not None and (len(c.input_size) != 2 or min(c.input_size) < 1
                                     or max(c.input_size) > 4096):
        raise LegrError(f"--input-size must be H,W (or one number) between 1 and 4096, got {c.input_size!r}")


def member_name(target: float) -> str:
    """The family member's name (and folder) for a MAC target."""
    return f"legr_{target:.2f}"
