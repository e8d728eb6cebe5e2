"""OOD detection over cached embeddings: every scorer on every (ID, OOD) dataset pair.

A scorer is fitted once per encoder and ID dataset on the ID training split; the ID test
split and the OOD datasets' splits are scored; metrics follow OpenOOD (OOD positive).
"""

from __future__ import annotations

import contextlib
import inspect
import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from ..configs import OODConfig
from ..errors import ConfigError, EmbedkitError
from ..ood.cache import ScorerCache
from ..ood.plugins import resolve_scorer
from ..primitives.metrics import ood_metrics
from ..registry import value_fits
from ..store import EmbeddingStore
from .results import check_stores, encoder_columns, store_datasets

log = logging.getLogger(__name__)

OOD_SPLITS = ("test", "all")


def check_ood_groups(groups: dict[str, tuple[str, ...]]) -> dict[str, str]:
    """Dataset to group name; a dataset in two groups, or an empty group, is refused."""
    owner: dict[str, str] = {}
    for group, datasets in groups.items():
        if not group or not datasets:
            raise ConfigError(f"OOD group '{group}' needs a name and at least one dataset")
        for dataset in datasets:
            if dataset in owner:
                raise ConfigError(
                    f"{dataset} is in OOD groups {owner[dataset]} and {group}: a dataset "
                    f"belongs to one group"
                )
            owner[dataset] = group
    return owner


def summarise_ood_groups(table: pl.DataFrame) -> pl.DataFrame:
    """Mean AUROC and FPR@95 per encoder, scorer, ID dataset and OOD group (OpenOOD's
    near-OOD / far-OOD averages), with the number of OOD datasets averaged."""
    if "ood_group" not in table.columns:
        raise ConfigError("the OOD table has no groups: run `embedkit ood --ood-group NAME=a,b`")
    return (
        table.filter(pl.col("ood_group").is_not_null())
        .group_by("encoder", "scorer", "id_dataset", "ood_group", maintain_order=True)
        .agg(
            pl.col("auroc").mean(),
            pl.col("fpr95").mean(),
            pl.len().alias("n_datasets"),
        )
    )


@dataclass(frozen=True)
class _Samples:
    dataset: str
    embeddings: np.ndarray
    splits: np.ndarray
    indices: np.ndarray


def _samples(store: EmbeddingStore, dataset: str, splits: list[str]) -> _Samples:
    parts = [store.get(dataset, split) for split in splits]
    return _Samples(
        dataset,
        np.concatenate([p.embeddings for p in parts]),
        np.concatenate([np.full(len(p.indices), p.split) for p in parts]),
        np.concatenate([p.indices for p in parts]),
    )


def check_scorer_params(scorers: list[tuple[str, type]], params: dict[str, dict]) -> None:
    """Refuse parameters of scorers that are not selected, names a scorer does not take, and
    values of another type than the parameter's default, before any work."""
    selected = dict(scorers)
    variadic = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
    for name, kwargs in params.items():
        if name not in selected:
            raise ConfigError(
                f"--param {name}.*: scorer {name} is not selected (--scorer "
                f"{','.join(selected)}): add it or drop the parameter"
            )
        signature = inspect.signature(selected[name].__init__).parameters
        accepted = {n: p for n, p in signature.items() if n != "self" and p.kind not in variadic}
        for key, value in kwargs.items():
            if key not in accepted:
                if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in signature.values()):
                    continue
                raise ConfigError(
                    f"--param {name}.{key}: scorer {name} has no parameter {key}: its "
                    f"parameters are {', '.join(accepted) or 'none'}"
                )
            default = accepted[key].default
            if not value_fits(value, default):
                raise ConfigError(
                    f"--param {name}.{key}={value}: expected type {type(default).__name__} "
                    f"(default {default})"
                )


def evaluate_ood(stores: list[EmbeddingStore], config: OODConfig = OODConfig()) -> pl.DataFrame:
    """Evaluate every scorer on every ID × OOD pair of every store.

    Returns:
        One row per (encoder, id_dataset, ood_dataset, scorer) with ``params, auroc,
        fpr95, aupr_in, aupr_out, n_id, n_ood`` (and ``ood_group`` with ``ood_groups``);
        metrics are fractions in [0, 1].
    """
    if config.ood_splits not in OOD_SPLITS:
        raise ConfigError(f"--ood-splits must be 'test' or 'all', not '{config.ood_splits}'")
    scorers = [resolve_scorer(spec) for spec in config.scorers]
    check_scorer_params(scorers, config.scorer_params)
    groups = check_ood_groups(config.ood_groups)
    check_stores(stores)
    for store in stores:  # a grouped dataset must be one the store holds
        for dataset in groups:
            store.dataset_attrs(dataset)
    rows = []
    for store, columns in zip(stores, encoder_columns(stores), strict=True):
        rows.extend(_evaluate_store(store, columns, scorers, config))
    table = pl.DataFrame(rows)
    if groups and table.height:
        table = table.with_columns(
            ood_group=pl.col("ood_dataset").replace_strict(groups, default=None)
        )
    return table


def _evaluate_store(
    store: EmbeddingStore, columns: dict, scorers: list[tuple[str, type]], config: OODConfig
) -> list[dict[str, Any]]:
    """The rows of one store; each OOD dataset's embeddings are read once, and (kept in the
    store's ``ScorerCache``) copied to the compute device once, whatever the number of ID
    datasets."""
    rows = []
    read: dict[str, _Samples] = {}
    store_cache = ScorerCache()

    def ood_samples(dataset: str) -> _Samples:
        if dataset not in read:
            splits = ["test"] if config.ood_splits == "test" else store.splits(dataset)
            read[dataset] = _samples(store, dataset, splits)
            store_cache.keep(read[dataset].embeddings)
        return read[dataset]

    for id_dataset in store_datasets(store, config.id_datasets):
        ood_datasets = [d for d in store_datasets(store, config.ood_datasets) if d != id_dataset]
        if not ood_datasets:
            others = [d for d in store.datasets() if d != id_dataset]
            if config.ood_datasets and others:
                raise ConfigError(
                    f"--ood names only the ID dataset {id_dataset} itself: name other datasets "
                    f"of store {store.path} ({', '.join(others)})"
                )
            raise ConfigError(
                f"no OOD dataset for {id_dataset}: store {store.path} holds no other dataset; "
                f"embed one (embedkit embed --dataset NAME --store {store.path})"
            )
        log.info(
            "ood %s: ID %s against %s (%d scorers)",
            columns["encoder"],
            id_dataset,
            ", ".join(ood_datasets),
            len(scorers),
        )
        # one float64 copy, head, Gaussian fit and residual space per ID dataset
        cache = store_cache.for_id_dataset()
        rows += _evaluate_id(
            store, id_dataset, ood_datasets, ood_samples, columns, scorers, config, cache
        )
    return rows


def _evaluate_id(store, id_dataset, ood_datasets, ood_samples, columns, scorers, config, cache):
    """The rows of one ID dataset against each of ``ood_datasets``, for every scorer (those
    whose ``fit`` takes a ``cache`` share ``cache``)."""
    rows = []
    train = store.get(id_dataset, "train")
    id_test = _samples(store, id_dataset, ["test"])
    for name, cls in scorers:
        with _scorer_step(name, f"fit on {id_dataset}"):
            scorer = cls(**config.scorer_params.get(name, {}))
            if "cache" in inspect.signature(scorer.fit).parameters:
                scorer.fit(train.embeddings, train.labels, cache=cache)
            else:  # a plug-in of the plain fit(X, y) shape
                scorer.fit(train.embeddings, train.labels)
        id_scores = _scores(scorer, id_test.embeddings, name)
        params = getattr(scorer, "get_params", dict)()
        saved = [(id_test, id_scores, False)]
        for ood_dataset in ood_datasets:
            ood = ood_samples(ood_dataset)
            ood_scores = _scores(scorer, ood.embeddings, name)
            saved.append((ood, ood_scores, True))
            rows.append(
                {
                    **columns,
                    "id_dataset": id_dataset,
                    "ood_dataset": ood_dataset,
                    "scorer": name,
                    "params": json.dumps(params, sort_keys=True, default=str),
                    **ood_metrics(id_scores, ood_scores),
                    "n_id": len(id_scores),
                    "n_ood": len(ood_scores),
                }
            )
        if config.save_scores:
            _save_scores(Path(config.save_scores), columns["encoder"], id_dataset, name, saved)
    return rows


@contextlib.contextmanager
def _scorer_step(name: str, step: str):
    """A scorer's own failure (a plug-in's bug) as one line; the original stays its cause,
    which ``--debug`` shows."""
    try:
        yield
    except EmbedkitError:
        raise
    except (Exception, SystemExit) as exc:  # a plug-in's sys.exit() must not end the run as 0
        raise ConfigError(f"scorer {name} failed in {step}: {type(exc).__name__}: {exc}") from exc


def _scores(scorer, embeddings: np.ndarray, name: str) -> np.ndarray:
    with _scorer_step(name, "score_samples"):
        scores = np.asarray(scorer.score_samples(embeddings), dtype=np.float64)
    if scores.shape != (len(embeddings),):
        raise ConfigError(
            f"scorer {name} returned shape {scores.shape} for {len(embeddings)} "
            f"rows: score_samples must return one score per row"
        )
    return scores


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._+-]+", "-", text).strip("-")


def sample_scores(
    store: EmbeddingStore,
    id_dataset: str,
    scorer: Any = "knn",
    ood_datasets: tuple[str, ...] = (),
    params: dict[str, Any] | None = None,
) -> pl.DataFrame:
    """Per-sample scores of one scorer fitted on ``id_dataset``'s training split.

    Args:
        store: the store to read.
        id_dataset: the in-distribution dataset.
        scorer: a registry name, a ``file.py:Class`` plug-in or a scorer class.
        ood_datasets: OOD datasets (test splits); empty means every other dataset.
        params: keyword arguments of the scorer.

    Returns:
        ``encoder, id_dataset, scorer, dataset, split, index, score, is_ood`` for the ID test
        split and each OOD test split (higher score = more in-distribution), the table that
        ``score_histograms`` and ``roc_curves`` draw.
    """
    name, cls = resolve_scorer(scorer)
    train = store.get(id_dataset, "train")
    fitted = cls(**(params or {})).fit(train.embeddings, train.labels)
    oods = [d for d in store_datasets(store, ood_datasets) if d != id_dataset]
    saved = []
    for dataset, is_ood in [(id_dataset, False), *[(d, True) for d in oods]]:
        samples = _samples(store, dataset, ["test"])
        saved.append((samples, _scores(fitted, samples.embeddings, name), is_ood))
    return _score_table(store.encoder_name, id_dataset, name, saved)


def _score_table(encoder: str, id_dataset: str, scorer: str, saved) -> pl.DataFrame:
    return pl.concat(
        [
            pl.DataFrame(
                {
                    "encoder": encoder,
                    "id_dataset": id_dataset,
                    "scorer": scorer,
                    "dataset": samples.dataset,
                    "split": samples.splits,
                    "index": samples.indices,
                    "score": scores,
                    "is_ood": is_ood,
                }
            )
            for samples, scores, is_ood in saved
        ]
    )


def _save_scores(folder: Path, encoder: str, id_dataset: str, scorer: str, saved) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    table = _score_table(encoder, id_dataset, scorer, saved)
    path = folder / f"{_slug(encoder)}__{_slug(id_dataset)}__{_slug(scorer)}.parquet"
    tmp = path.with_name(f".{path.name}.tmp")
    table.write_parquet(tmp)
    tmp.replace(path)
    return path
