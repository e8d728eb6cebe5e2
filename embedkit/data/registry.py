"""The dataset registry: the 12 MedMNIST 2D datasets and embedkit's built-in demo family.

Entries are built from ``medmnist.INFO`` (task, channels, class names, split sizes, download
addresses and checksums), so the registry cannot drift from the MedMNIST release it reads.
The registry key is the CLI value.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Literal

from medmnist import INFO

from ..catalog import SIZES
from ..errors import ConfigError

Task = Literal["multi-class", "binary", "multi-label", "ordinal"]
Family = Literal["medmnist", "demo", "user"]

SPLITS: tuple[str, ...] = ("train", "val", "test")

MEDMNIST_2D: tuple[str, ...] = (
    "pathmnist",
    "chestmnist",
    "dermamnist",
    "octmnist",
    "pneumoniamnist",
    "retinamnist",
    "breastmnist",
    "bloodmnist",
    "tissuemnist",
    "organamnist",
    "organcmnist",
    "organsmnist",
)

# Yang et al. 2023, MedMNIST v2, Scientific Data 10:41, Table 1.
MODALITIES: dict[str, str] = {
    "pathmnist": "colon pathology",
    "chestmnist": "chest x-ray",
    "dermamnist": "dermatoscope",
    "octmnist": "retinal oct",
    "pneumoniamnist": "chest x-ray",
    "retinamnist": "fundus camera",
    "breastmnist": "breast ultrasound",
    "bloodmnist": "blood cell microscope",
    "tissuemnist": "kidney cortex microscope",
    "organamnist": "abdominal ct",
    "organcmnist": "abdominal ct",
    "organsmnist": "abdominal ct",
}

_TASKS: dict[str, Task] = {
    "multi-class": "multi-class",
    "binary-class": "binary",
    "multi-label, binary-class": "multi-label",
    "ordinal-regression": "ordinal",
}


@dataclass(frozen=True)
class DatasetInfo:
    """What embedkit knows about one dataset before reading it.

    Attributes:
        name: registry key, CLI value and file stem (``pathmnist``, ``demo-med``).
        task: ``multi-class``, ``binary``, ``multi-label`` or ``ordinal``.
        n_channels: 1 (grayscale) or 3 (RGB).
        class_names: one name per class, or per label for multi-label datasets.
        n_samples: images per split; a user's dataset lists only the splits it holds.
        family: ``medmnist``, ``demo`` or ``user`` (a folder, manifest or npz of the user's
            in the data root, ``embedkit.data.custom``).
        urls: download address per image size (empty for the demo family).
        md5: official file checksum per image size (empty for the demo family).
        modality: the imaging modality (MedMNIST v2, Yang et al. 2023, Table 1), which the
            benchmark grid uses to tell multi-modality from single-modality training sets.
        source: where a user's dataset was found (its folder, manifest or npz).
    """

    name: str
    task: Task
    n_channels: int
    class_names: tuple[str, ...]
    n_samples: Mapping[str, int]
    family: Family
    urls: Mapping[int, str] = field(default_factory=dict)
    md5: Mapping[int, str] = field(default_factory=dict)
    description: str = ""
    modality: str = ""
    source: str = ""

    @property
    def splits(self) -> tuple[str, ...]:
        """The splits the dataset holds (all three, except for some of the user's)."""
        return tuple(s for s in SPLITS if s in self.n_samples)

    @property
    def n_classes(self) -> int:
        """Number of classes (multi-class, binary, ordinal) or labels (multi-label)."""
        return len(self.class_names)

    @property
    def multi_label(self) -> bool:
        return self.task == "multi-label"


def _from_medmnist(name: str) -> DatasetInfo:
    info = INFO[name]
    urls = {s: info["url" if s == 28 else f"url_{s}"] for s in SIZES}
    md5 = {s: info["MD5" if s == 28 else f"MD5_{s}"] for s in SIZES}
    labels = info["label"]
    return DatasetInfo(
        name=name,
        task=_TASKS[info["task"]],
        n_channels=int(info["n_channels"]),
        class_names=tuple(labels[str(i)] for i in range(len(labels))),
        n_samples=MappingProxyType(dict(info["n_samples"])),
        family="medmnist",
        urls=MappingProxyType(urls),
        md5=MappingProxyType(md5),
        description=info["description"],
        modality=MODALITIES[name],
    )


DATASETS: dict[str, DatasetInfo] = {name: _from_medmnist(name) for name in MEDMNIST_2D}

# Names that stand for several datasets at once on the command line.
GROUPS: dict[str, tuple[str, ...]] = {"all": MEDMNIST_2D}


def register_dataset(info: DatasetInfo) -> DatasetInfo:
    """Add a dataset to the registry (used by the demo family; available to plug-ins)."""
    DATASETS[info.name] = info
    return info


def registered(name: str) -> DatasetInfo | None:
    """The registered dataset ``name`` (MedMNIST or demo), or None."""
    return DATASETS.get(name)


def check_size(size: int) -> int:
    """Return ``size`` if MedMNIST publishes images of that size, else raise ConfigError."""
    if size not in SIZES:
        raise ConfigError(
            f"unsupported image size {size}: choose one of {', '.join(map(str, SIZES))}"
        )
    return size


def components(entry: str) -> list[str]:
    """The registered datasets an entry is made of (one, or several for ``a+b``)."""
    return entry.split("+")
