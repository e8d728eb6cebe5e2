"""Cells: one encoder of the grid, pretrained (or not), embedded and evaluated.

A cell is identified by a hash of its full configuration (the encoder's and the evaluation
plan's), so a finished cell is never redone, a changed parameter makes a new cell, and an
interrupted one continues (pretraining and extraction resume bit for bit). Encoders that
agree share a run folder and a store, whichever grid or cell asks for them.

The grid's output folder::

    OUT/grid.json                 the grid's name (an output folder belongs to one grid)
    OUT/grid.toml                 the grid file of the latest ``grid run``
    OUT/cells/ID/cell.json        the cell's configuration, state, stage, times, error
    OUT/cells/ID/*.parquet        its probe, knn and ood tables (each with a JSON beside it)
    OUT/cells/ID/error.txt        the traceback of a failed attempt
    OUT/runs/ENCODER/             pretraining run folders
    OUT/stores/ENCODER.zarr       embedding stores
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..data import components, get_info
from ..errors import ConfigError, EmbedkitError
from ..lock import is_held
from ..utils import to_jsonable, write_json
from .spec import AXES, GridSpec, encoder_axes, identity_hash, resolve_init

log = logging.getLogger(__name__)


STATES = ("pending", "running", "done", "failed")


@dataclass(frozen=True)
class Cell:
    """One encoder of a grid and its evaluation.

    Attributes:
        kind: ``pretrain`` (an SSL or supervised run) or ``baseline`` (weights as they are).
        axes: the grid's axis values of this cell (method, dataset, backbone, init, size,
            and any varied option or method parameter); baselines have method ``none``.
        encoder: everything that makes the encoder (hashed into ``encoder_id``).
        evaluate: the evaluation plan.
        label: a readable unique name, used as the ``encoder`` column of collected tables.
    """

    kind: str
    axes: dict[str, Any]
    encoder: dict[str, Any]
    evaluate: dict[str, Any]
    label: str

    @property
    def id(self) -> str:
        return identity_hash({"encoder": self.encoder, "evaluate": self.evaluate})

    @property
    def encoder_id(self) -> str:
        return identity_hash(self.encoder)

    @property
    def store_id(self) -> str:
        return identity_hash({"encoder": self.encoder, "dtype": self.evaluate["dtype"]})

    @property
    def pretrain_datasets(self) -> list[str]:
        """The datasets the encoder was pretrained on (none for baselines)."""
        return [] if self.kind == "baseline" else components(self.axes["dataset"])

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, **to_jsonable(dataclasses.asdict(self))}

    @classmethod
    def from_json(cls, record: dict[str, Any]) -> Cell:
        fields = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in record.items() if k in fields})


def _pretrain_config(spec: GridSpec, axes: dict[str, Any]) -> dict[str, Any]:
    from ..methods import get_method
    from ..pretrain import PretrainConfig
    from ..pretrain.engine import check_options

    options = {name: values[0] for name, values in spec.pretrain.items()}
    options.update({k: v for k, v in axes.items() if "." not in k})
    method = axes["method"]
    params = {k: v[0] for k, v in spec.params.get(method, {}).items()}
    params.update({k.split(".", 1)[1]: v for k, v in axes.items() if k.startswith(f"{method}.")})
    config = PretrainConfig(
        **{k: v for k, v in options.items() if k != "init"},
        init=resolve_init(spec, axes["init"], axes["backbone"]),
        method_params=params,
    )
    try:  # every option's range, at `grid plan`: not after a cell's costly stages
        check_options(config, get_method(method))
    except ConfigError as exc:
        where = ", ".join(f"{k} {v}" for k, v in axes.items())
        raise ConfigError(f"grid {spec.origin}: the cell ({where}): {exc}") from None
    record = to_jsonable(config)
    for resource in ("device", "devices", "num_nodes", "data_root", "download", "loggers"):
        record.pop(resource)
    if record["data_fraction"] == 1.0:  # keeps the identity of cells made before the option
        del record["data_fraction"]
    return record


def expand(spec: GridSpec) -> list[Cell]:
    """The grid's cells: pretraining cells in grid order, then the baselines."""
    evaluate = to_jsonable(dataclasses.asdict(spec.evaluate))
    if not evaluate["ood_datasets"]:  # keeps the identity of cells made before the option
        del evaluate["ood_datasets"]
    varied = [n for n, v in spec.pretrain.items() if len(v) > 1 and n not in AXES.values()]
    multi_size = len(spec.pretrain["size"]) > 1
    cells = []
    for axes in encoder_axes(spec):
        label = f"{axes['method']}/{axes['backbone']}/{axes['init']}@{axes['dataset']}"
        extras = [f"{n}={axes[n]}" for n in varied]
        extras += [f"{k}={v}" for k, v in axes.items() if "." in k]
        if multi_size:
            extras.insert(0, f"{axes['size']}px")
        if extras:
            label += f" ({', '.join(extras)})"
        encoder = {"kind": "pretrain", "pretrain": _pretrain_config(spec, axes)}
        cells.append(Cell("pretrain", axes, encoder, evaluate, label))
    seed = spec.pretrain.get("seed", [0])[0]
    patch = spec.pretrain.get("patch_size", [0])[0]
    for backbone in spec.pretrain["backbone"]:
        for size in spec.pretrain["size"]:
            for init in spec.baselines:
                resolved = resolve_init(spec, init, backbone)
                encoder = {
                    "kind": "baseline",
                    "backbone": backbone,
                    "init": resolved,
                    "size": size,
                    "seed": seed if resolved == "random" else None,
                    "patch_size": patch,
                }
                axes = {"method": "none", "dataset": "none", "backbone": backbone}
                axes.update({"init": init, "size": size})
                label = f"{init}/{backbone}" + (f" ({size}px)" if multi_size else "")
                cells.append(Cell("baseline", axes, encoder, evaluate, label))
    ids = [c.id for c in cells]
    if len(set(ids)) != len(ids):
        raise ConfigError(f"grid {spec.origin}: two cells have the same configuration")
    return cells


def _samples(dataset: str, root: str | None) -> dict[str, int]:
    """Images per split; a user's dataset that the root does not hold counts none."""
    try:
        return dict(get_info(dataset, root).n_samples)
    except EmbedkitError:
        return {}


def cost(cell: Cell, root: str | None = None) -> dict[str, float]:
    """Images the cell processes: pretraining image-epochs and extracted images (the user's
    datasets are counted in the data root ``root``)."""
    datasets = [*cell.evaluate["datasets"], *cell.evaluate.get("ood_datasets", ())]
    embed_images = sum(sum(_samples(d, root).values()) for d in datasets)
    if cell.kind == "baseline":
        return {"image_epochs": 0.0, "embed_images": float(embed_images)}
    pretrain = cell.encoder["pretrain"]
    n_train = sum(_samples(d, root).get("train", 0) for d in cell.pretrain_datasets)
    return {
        "image_epochs": float(
            int(n_train * pretrain.get("data_fraction", 1.0)) * pretrain["epochs"]
        ),
        "embed_images": float(embed_images),
    }


# --- state --------------------------------------------------------------------------------


def cell_folder(output: Path, cell_id: str) -> Path:
    return Path(output) / "cells" / cell_id


def read_record(output: Path, cell_id: str) -> dict[str, Any]:
    try:
        return json.loads((cell_folder(output, cell_id) / "cell.json").read_text())
    except (OSError, ValueError):
        return {}


def write_record(output: Path, cell: Cell, **changes: Any) -> dict[str, Any]:
    """Update the cell's ``cell.json`` (atomically) and return it."""
    folder = cell_folder(output, cell.id)
    folder.mkdir(parents=True, exist_ok=True)
    record = read_record(output, cell.id) or {"cell": cell.to_json(), "state": "pending"}
    record.update(changes)
    write_json(folder / "cell.json", record)
    return record


def cell_state(output: Path, cell_id: str) -> dict[str, Any]:
    """The record with its ``state`` made current: a ``running`` cell whose process is gone
    reads ``interrupted`` (it continues on the next ``grid run``)."""
    record = read_record(output, cell_id)
    if not record:
        return {"state": "pending"}
    if record.get("state") == "running" and not is_held(cell_folder(output, cell_id)):
        record["state"] = "interrupted"
    return record


def run_folder(output: Path, cell: Cell) -> Path:
    return Path(output) / "runs" / cell.encoder_id


def store_path(output: Path, cell: Cell) -> Path:
    return Path(output) / "stores" / f"{cell.store_id}.zarr"
