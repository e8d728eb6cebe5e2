"""Extraction: run an encoder once over dataset splits and write an embedding store.

The encoder is a pretraining run folder (``run``) or a registered timm backbone with
``random`` / ``imagenet`` / file initialisation. Images go to the device as uint8 batches and
become floats there; embeddings are written as whole chunks (see ``embedkit.store``).
"""

from __future__ import annotations

import errno
import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..backbones import Encoder, create_encoder, state_sha256
from ..configs import EmbedConfig
from ..data import (
    SPLITS,
    SplitData,
    check_size,
    components,
    get_info,
    load_split,
    parse_dataset_spec,
)
from ..data.loading import candidate_files, data_root
from ..distributed import Shard
from ..errors import ConfigError, DataNotFoundError, StoreError
from ..primitives.inference import EncoderWithHead, encode
from ..runs import ENCODER_FILE, load_head, read_finished_run
from ..store import DTYPES, EmbeddingStore, StoreWriter, check_store_path
from ..utils import disk_free, format_bytes, os_error_message, resolve_device, to_jsonable

log = logging.getLogger(__name__)


def load_encoder(config: EmbedConfig) -> tuple[Encoder | EncoderWithHead, dict[str, Any]]:
    """Build the encoder (with the run's head for ``with_head``) and its identity record for
    the store's provenance."""
    if config.run is None:
        torch.manual_seed(config.seed)
        encoder = create_encoder(config.backbone, config.init, config.size)
        named = config.init in ("random", "imagenet") or config.init.startswith("timm:")
        init = config.init if named else "file"
        identity = {
            "name": f"{init}/{config.backbone}",
            "kind": "backbone",
            "method": "none",
            "backbone": config.backbone,
            "init": config.init,
            "pretrain_dataset": None,
            "seed": config.seed if config.init == "random" else None,
        }
    else:
        run = Path(config.run)
        pretrain = read_finished_run(run)["pretrain"]
        encoder = create_encoder(
            pretrain["backbone"],
            str(run / ENCODER_FILE),
            image_size=pretrain["size"],
            patch_size=pretrain.get("patch_size", 0),
        )
        identity = {
            "name": f"{pretrain['method']}/{pretrain['backbone']}",
            "kind": "run",
            "run": str(run.resolve()),
            "method": pretrain["method"],
            "backbone": pretrain["backbone"],
            "init": pretrain["init"],
            "pretrain_dataset": pretrain["dataset"],
            "epochs": pretrain["epochs"],
            "seed": pretrain["seed"],
        }
    identity["weights_sha256"] = state_sha256(encoder.backbone)
    identity["normalisation"] = encoder.normalisation
    identity["patch_size"] = encoder.patch_size
    if config.with_head:
        head = load_head(Path(config.run), encoder)
        identity["head_sha256"] = state_sha256(head)
        return EncoderWithHead(encoder, head), identity
    return encoder, identity


def _producer(encoder: Encoder, data: SplitData, config: EmbedConfig, device, progress: bool):
    """Embeddings of ``data`` from the batch boundary at or before a row (for resuming)."""

    def produce(keep_from: int):
        start = keep_from // config.batch_size * config.batch_size
        batches = encode(
            encoder,
            data.images[start:],
            config.batch_size,
            device,
            progress,
            desc=f"{data.dataset}/{data.split}",
        )
        return start, (features for _, features in batches)

    return produce


def _dataset_names(config: EmbedConfig) -> list[str]:
    """The datasets to embed; ``all`` means every MedMNIST dataset present in the data root."""
    entries = parse_dataset_spec(config.dataset, config.data_root)
    names = list(dict.fromkeys(name for entry in entries for name in components(entry)))
    if config.dataset.strip() != "all" or config.download:
        return names
    root = data_root(config.data_root)
    present = [
        n for n in names if any((root / f).is_file() for f in candidate_files(n, config.size))
    ]
    missing = [n for n in names if n not in present]
    if not present:
        raise DataNotFoundError(
            f"none of the 12 MedMNIST datasets is in {root} at {config.size} px: download them "
            f"(--download), or point --data-root at the folder that has them"
        )
    if missing:
        log.warning(
            "embedding the %d datasets present in %s; missing at %d px: %s",
            len(present),
            root,
            config.size,
            ", ".join(missing),
        )
    return present


def _splits_of(names: list[str], config: EmbedConfig) -> list[tuple[str, list[str]]]:
    """The requested splits of each dataset; a user's dataset with only some splits (a
    test-only external set) gives those it has, and one with none of them is refused."""
    pairs = []
    for name in names:
        info = get_info(name, config.data_root)
        held = [s for s in config.splits if s in info.splits]
        if not held:
            raise DataNotFoundError(
                f"{info.source or name} holds no {' or '.join(config.splits)} split (it "
                f"holds {', '.join(info.splits)}): ask for --splits {','.join(info.splits)}"
            )
        if len(held) < len(config.splits):
            log.info("%s holds only the %s split(s): embedding those", name, ", ".join(held))
        pairs.append((name, held))
    return pairs


def _splits_to_write(
    path: Path, splits: list[SplitData], config: EmbedConfig, weights_sha256: str
) -> list[SplitData]:
    """The splits that ``embed`` will write (those not complete in the encoder's store)."""
    if config.overwrite or not (path / "zarr.json").is_file():
        return splits
    store = EmbeddingStore(path)
    if store.encoder.get("weights_sha256") != weights_sha256:
        return splits  # refused by StoreWriter with its own message
    return [d for d in splits if not store.has_split(d.dataset, d.split, config.with_head)]


def _check_space(path: Path, needed: int, n_splits: int) -> None:
    free = disk_free(path)
    if needed > free:
        raise StoreError(
            f"not enough space for store {path}: the {n_splits} splits to write need about "
            f"{format_bytes(needed)}, {format_bytes(free)} free: free some space or choose "
            f"another --store"
        )


def embed(config: EmbedConfig, store: str | Path, progress: bool = True) -> EmbeddingStore:
    """Embed every requested dataset split into ``store`` and return it opened for reading.

    Splits already complete in the store are skipped unless ``config.overwrite``; a store
    made by another encoder is refused unless ``config.overwrite``. Launched as several
    processes (``torchrun --nproc-per-node N -m embedkit.cli.main embed ...``), each rank
    embeds and writes its own contiguous range of whole chunks of every split.
    """
    # Check every option and open every input before writing anything, so bad input leaves
    # no store behind; options first, so the message names the option that is wrong.
    check_size(config.size)
    device = resolve_device(config.device)
    if config.with_head and config.run is None:
        raise ConfigError("--with-head needs --run: only a pretraining run has a head")
    bad = [s for s in config.splits if s not in SPLITS]
    if bad:
        raise ConfigError(f"unknown split {', '.join(bad)}: choose from {', '.join(SPLITS)}")
    if config.dtype not in DTYPES:
        raise ConfigError(f"unknown --dtype '{config.dtype}': use {' or '.join(DTYPES)}")
    if config.batch_size < 1:
        raise ConfigError(f"--batch-size must be at least 1, not {config.batch_size}")
    path = Path(store)
    check_store_path(path)
    splits = [
        load_split(name, split, config.size, config.data_root, config.download)
        for name, name_splits in _splits_of(_dataset_names(config), config)
        for split in name_splits
    ]
    shard, device = Shard.from_environment(device)
    progress = progress and shard.is_main
    encoder, identity = load_encoder(config)
    if len(set(shard.gather(identity["weights_sha256"]))) > 1:
        raise ConfigError("the ranks built different encoders: give every rank the same --seed")
    todo = _splits_to_write(path, splits, config, identity["weights_sha256"])
    head_dim = getattr(encoder, "head_dim", 0)
    row_bytes = (encoder.feature_dim + head_dim) * np.dtype(config.dtype).itemsize
    needed = sum(len(data) for data in todo) * row_bytes
    shard.on_main(lambda: _check_space(path, needed, len(todo)))
    try:
        with StoreWriter(path, identity, config.overwrite, shard) as writer:
            for data in splits:
                done = writer.has_split(data.dataset, data.split, head=config.with_head)
                if not config.overwrite and done:
                    log.info("%s/%s already in %s: skipped", data.dataset, data.split, path)
                    continue
                info = get_info(data.dataset, config.data_root)
                writer.write_split(
                    data.dataset,
                    data.split,
                    _producer(encoder, data, config, device, progress),
                    len(data),
                    encoder.feature_dim,
                    data.labels,
                    data.indices,
                    attrs={
                        "size": config.size,
                        "data_file": to_jsonable(data.files[0]),
                        "normalisation": identity["normalisation"],
                    },
                    dataset_attrs={
                        "task": info.task,
                        "class_names": list(info.class_names),
                        "n_channels": info.n_channels,
                        "family": info.family,
                        "modality": info.modality,
                    },
                    dtype=config.dtype,
                    resume=config.resume,
                    head_dim=head_dim,
                )
    except OSError as exc:
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise StoreError(
                f"no space left on the device writing store {path} ({exc.filename or path}): "
                f"the splits to write need about {format_bytes(needed)} in all, "
                f"{format_bytes(disk_free(path))} free now: free some space, then run the same "
                f"command with --resume to keep the chunks already written"
            ) from exc
        raise StoreError(os_error_message(exc, f"cannot write store {path}")) from exc
    return EmbeddingStore(path)
