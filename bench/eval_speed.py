"""Evaluation speed, as ratios measured in one process (issue 5).

1. knn: kNN OOD scoring (``KNNScorer``: normalise, index, search) against raw ``faiss.knn``
   on the same normalised data (goal: at most 1.3x its time), against scikit-learn's
   brute-force ``NearestNeighbors``, and the torch search (``NeighborIndex(backend="torch")``,
   what a GPU without faiss-gpu uses) on the device torch sees.
2. matrix: the full ID x OOD matrix (12 x 11 pairs, every registered scorer) over a
   synthetic store shaped like MedMNIST (split sizes from medmnist's INFO, times --scale)
   with 2048-d embeddings, as ResNet-50 would give: all scorers in one call (the goal on a
   GPU: < 60 s), then each scorer alone (unless --no-per-scorer).
3. probe: the grid's probe (1/10/100 % of the labels, 5 seeds, 5 L2 strengths) with the
   exact protocols (``newton``, the default, and ``lbfgs``) against the paper's 100-epoch SGD
   protocol on the same embeddings (demo-med, demo-natural and, with --data-root, every
   MedMNIST file there, embedded by a random-init resnet18; or the datasets of the trained
   encoder's store given with --store): times, speed-up (goal: sgd / newton >= 5) and
   accuracy differences.
4. read: what the read-time checks of ``EmbeddingStore.get`` (shapes, SHA-256 of every
   chunk, labels and indices) cost against reading the same arrays from zarr unchecked, on
   the synthetic store of (2), next to a linear probe of one of its datasets.
5. optimum: per dataset and L2 of the default grid, the objective of ``newton`` and
   ``lbfgs`` fits (each along the warm-started path the probe takes) against scikit-learn's
   ``LogisticRegression`` (C = 1/(l2 N), tol 1e-10) on the same standardised embeddings
   (goal: gap <= 1e-4), with times.

Run: python bench/eval_speed.py [--bank 100000 --queries 20000 --dim 2048] [--scale 1.0]
     [--sections knn,matrix,probe,read,optimum] [--data-root ../shared/data]
     [--store STORE.zarr] [--repeats 3] [--device cuda]
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from _data import add_data_root


def timed(fn):
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def bench_knn(bank_size: int, queries: int, dim: int, k: int, sklearn: bool) -> None:
    import faiss  # here only: the probe's GPU copy travels without FAISS (gpu_issue30.sh)
    from sklearn.neighbors import NearestNeighbors

    from embedkit.ood.knn import KNNScorer
    from embedkit.primitives.neighbors import l2_normalise

    rng = np.random.default_rng(0)
    bank = rng.normal(size=(bank_size, dim)).astype(np.float32)
    query = rng.normal(size=(queries, dim)).astype(np.float32)
    bank_n, query_n = l2_normalise(bank), l2_normalise(query)
    t_faiss, (d_faiss, _) = timed(
        lambda: faiss.knn(query_n, bank_n, k, metric=faiss.METRIC_INNER_PRODUCT)
    )
    t_ours, scores = timed(lambda: KNNScorer(k=k).fit(bank).score_samples(query))
    expected = -np.sqrt(np.maximum(2 - 2 * d_faiss[:, -1].astype(np.float64), 0))
    assert np.allclose(scores, expected, atol=1e-4), "KNNScorer disagrees with faiss.knn"
    t_sklearn = None
    if sklearn:
        t_sklearn, _ = timed(
            lambda: (
                NearestNeighbors(n_neighbors=k, algorithm="brute").fit(bank_n).kneighbors(query_n)
            )
        )
    print(
        f"knn  bank {bank_size} x {dim}, {queries} queries, k={k}, faiss threads "
        f"{faiss.omp_get_max_threads()}, GPUs {faiss.get_num_gpus()}"
    )
    sk = f"{t_sklearn:.2f} s" if t_sklearn else "not run"
    print(f"knn  faiss.knn {t_faiss:.2f} s | KNNScorer {t_ours:.2f} s | sklearn {sk}")
    print(f"knn  KNNScorer / faiss.knn = {t_ours / t_faiss:.3f}  (goal <= 1.3)")
    if t_sklearn:
        print(f"knn  sklearn / KNNScorer   = {t_sklearn / t_ours:.2f}")
    # the torch search (blocked float32 matmul + top-k), which "auto" picks on a GPU that
    # faiss does not see; here on the device torch sees
    import torch

    from embedkit.primitives.neighbors import NeighborIndex, resolve_backend

    device = "cuda" if torch.cuda.is_available() else "cpu"
    NeighborIndex(bank_n[:100], "ip", backend="torch", device=device).search(query_n[:10], k)
    t_torch, (d_torch, _) = timed(
        lambda: NeighborIndex(bank_n, "ip", backend="torch", device=device).search(query_n, k)
    )
    assert np.allclose(d_torch[:, -1], d_faiss[:, -1], atol=1e-5), "torch search disagrees"
    print(
        f"knn  torch search on {device} {t_torch:.2f} s, / faiss.knn = {t_torch / t_faiss:.3f} "
        f"(backend 'auto' here: {resolve_backend()})"
    )


def synthetic_store(path: Path, scale: float, dim: int, quiet: bool = False):
    """MedMNIST's 12 datasets with ``scale`` x their split sizes (at least 50 rows a split)."""
    from embedkit.data import MEDMNIST_2D, get_info
    from embedkit.store import EmbeddingStore, StoreWriter

    rng = np.random.default_rng(0)
    writer = StoreWriter(
        path,
        {
            "name": "synthetic/resnet50",
            "method": "none",
            "backbone": "resnet50",
            "init": "random",
            "weights_sha256": "0" * 64,
        },
    )
    for d, name in enumerate(MEDMNIST_2D):
        info = get_info(name)
        centre = (rng.normal(size=dim) * 2).astype(np.float32)
        class_shift = rng.normal(size=(max(info.n_classes, 2), dim)).astype(np.float32)
        for split in ("train", "val", "test"):
            n = max(50, int(info.n_samples[split] * scale))
            if info.multi_label:
                labels = (rng.random((n, info.n_classes)) < 0.1).astype(np.int64)
                shift = labels.astype(np.float32) @ class_shift[: info.n_classes] / 3
            else:
                labels = rng.integers(0, info.n_classes, (n, 1))
                shift = class_shift[labels[:, 0]]
            x = rng.standard_normal((n, dim), dtype=np.float32)
            x += centre + shift
            writer.write_split(
                name,
                split,
                [x],
                n,
                dim,
                labels,
                np.arange(n),
                attrs={"size": 64, "data_file": {"origin": "synthetic", "md5": "", "path": ""}},
                dataset_attrs={
                    "task": info.task,
                    "class_names": list(info.class_names),
                    "n_channels": info.n_channels,
                    "family": "synthetic",
                },
            )
        if not quiet:
            print(f"matrix  wrote {name} ({d + 1}/12)", flush=True)
    return EmbeddingStore(path)


def bench_matrix(
    scale: float, dim: int, scorers: tuple[str, ...], per_scorer: bool, profile: int = 0
) -> None:
    from embedkit.eval import OODConfig, evaluate_ood

    with tempfile.TemporaryDirectory() as tmp:
        t_write, store = timed(lambda: synthetic_store(Path(tmp) / "s.zarr", scale, dim))
        total = int(store.catalog()["n"].sum())
        print(
            f"matrix  synthetic store: {total} embeddings x {dim} ({scale:g} x MedMNIST sizes), "
            f"written in {t_write:.1f} s"
        )
        if profile:  # evaluate_ood's progress per ID dataset, with the time since start
            import logging

            logging.basicConfig(level=logging.INFO, format="%(relativeCreated)8.0f ms %(message)s")
        # the first call in a process also pays imports (compiled from source where a copy
        # was installed without byte-code, as on the device machine) and CUDA's library set-up:
        # one call on a tiny store first, reported on its own
        tiny = synthetic_store(Path(tmp) / "tiny.zarr", 0.0, dim, quiet=True)
        t_warm, _ = timed(lambda: evaluate_ood([tiny], OODConfig(scorers=scorers)))
        print(f"matrix  first call on a tiny store (imports, CUDA set-up): {t_warm:.1f} s")
        profiler = cProfile.Profile() if profile else None
        if profiler:
            profiler.enable()
        t, table = timed(lambda: evaluate_ood([store], OODConfig(scorers=scorers)))
        print(f"matrix  all {len(scorers)} scorers, {table.height} rows: {t:.1f} s", flush=True)
        if profiler:  # where the time goes: on a GPU, the host waits at the copies back
            profiler.disable()
            pstats.Stats(profiler, stream=sys.stdout).sort_stats("tottime").print_stats(profile)
        for scorer in scorers if per_scorer else ():
            t, table = timed(lambda s=scorer: evaluate_ood([store], OODConfig(scorers=(s,))))
            print(f"matrix  {scorer:22s} {table.height} pairs in {t:7.1f} s", flush=True)


def bench_read(scale: float, dim: int) -> None:
    import zarr

    from embedkit.eval import ProbeConfig, probe

    with tempfile.TemporaryDirectory() as tmp:
        store = synthetic_store(Path(tmp) / "s.zarr", scale, dim)
        pairs = [(d, s) for d in store.datasets() for s in store.splits(d)]
        total = sum(store.split_attrs(d, s)["n"] for d, s in pairs)

        def raw():
            for dataset, split in pairs:
                group = zarr.open_group(str(store.path / dataset / split), mode="r")
                group["embeddings"][:], group["labels"][:], group["indices"][:]

        def checked():
            for dataset, split in pairs:
                store.get(dataset, split)

        raw()  # warm the page cache for both
        times = {"raw": [], "checked": []}
        for _ in range(3):  # alternate, keep the best of each
            for name, fn in (("raw", raw), ("checked", checked)):
                times[name].append(timed(fn)[0])
        t_raw, t_checked = min(times["raw"]), min(times["checked"])
        gb = total * dim * 4 / 1e9
        print(
            f"read  {len(pairs)} splits, {total} x {dim} float32 ({gb:.2f} GB): zarr unchecked "
            f"{t_raw:.2f} s, EmbeddingStore.get checked {t_checked:.2f} s "
            f"(checks cost {t_checked - t_raw:.2f} s, {gb / t_checked:.2f} GB/s)"
        )
        dataset = max(store.datasets(), key=lambda d: store.split_attrs(d, "train")["n"])
        config = ProbeConfig(datasets=(dataset,), label_fractions=(1.0,), seeds=(0,))
        t_probe, _ = timed(lambda: probe([store], config))
        n = store.split_attrs(dataset, "train")["n"]
        print(
            f"read  for scale: a 100 % probe of {dataset} ({n} training rows, 5 L2 values) "
            f"took {t_probe:.1f} s"
        )


def probe_store(tmp: str, data_root: str | None, device: str = "cpu"):
    """demo-med, demo-natural and every MedMNIST file in ``data_root`` (when given), embedded
    by a random resnet18 on ``device``."""
    from embedkit.data import MEDMNIST_2D
    from embedkit.embed import EmbedConfig, embed

    datasets = ["demo-med", "demo-natural"]
    for name in MEDMNIST_2D if data_root else ():
        for file in (f"{name}.npz", f"{name}_28.npz"):
            if (Path(data_root).expanduser() / file).is_file():
                (Path(tmp) / file).symlink_to((Path(data_root).expanduser() / file).resolve())
                datasets.append(name)
                break
    config = EmbedConfig(dataset=",".join(datasets), init="random", device=device, data_root=tmp)
    return embed(config, Path(tmp) / "p.zarr", progress=False)


def _datasets(store, names: str) -> list[str]:
    """The store's datasets, or those of ``names`` (comma-separated) in that order; a name
    the store lacks is said and skipped."""
    if not names:
        return store.datasets()
    missing = [n for n in names.split(",") if n not in store.datasets()]
    if missing:
        print(f"not in the store, skipped: {', '.join(missing)}")
    return [n for n in names.split(",") if n in store.datasets()]


def bench_probe(store, repeats: int = 1, device: str = "cpu", names: str = "") -> None:
    """The grid's probe (1/10/100 % of the labels, 5 seeds, 5 L2 strengths) per dataset, with
    each protocol on ``device``: the time of each (the least of ``repeats`` runs, the
    protocols taking turns: the machine's load moves single runs by up to a third) and the
    largest accuracy difference to ``newton``."""
    from embedkit.eval import ProbeConfig, probe

    totals: dict[str, float] = {}
    study: dict[str, float] = {}  # without the built-in demo datasets: the study's data
    for dataset in _datasets(store, names):
        times, tables = {}, {}
        for _ in range(repeats):
            for protocol in ("newton", "lbfgs", "sgd"):
                config = ProbeConfig(datasets=(dataset,), protocol=protocol, device=device)
                seconds, tables[protocol] = timed(lambda c=config: probe([store], c))
                times[protocol] = min(times.get(protocol, seconds), seconds)
        for protocol, seconds in times.items():
            totals[protocol] = totals.get(protocol, 0.0) + seconds
            if not dataset.startswith("demo-"):
                study[protocol] = study.get(protocol, 0.0) + seconds
        n = store.get(dataset, "train").embeddings.shape
        exact = (tables["newton"]["accuracy"] - tables["lbfgs"]["accuracy"]).abs().max()
        sgd = (tables["newton"]["accuracy"] - tables["sgd"]["accuracy"]).abs().max()
        print(
            f"probe  {dataset:15s} {n[0]:6d} x {n[1]} | newton {times['newton']:6.1f} s | "
            f"lbfgs {times['lbfgs']:6.1f} s | sgd {times['sgd']:6.1f} s | sgd/newton "
            f"{times['sgd'] / times['newton']:5.1f}x | accuracy difference to lbfgs "
            f"{exact * 100:.2f}, to sgd {sgd * 100:.2f} points"
        )
    print(
        f"probe  total on {device}: newton {totals['newton']:.1f} s, lbfgs "
        f"{totals['lbfgs']:.1f} s, sgd {totals['sgd']:.1f} s; sgd/newton "
        f"{totals['sgd'] / totals['newton']:.1f}x (goal >= 5), "
        f"lbfgs/newton {totals['lbfgs'] / totals['newton']:.1f}x"
    )
    if study and study != totals:
        print(
            f"probe  without the demo datasets: newton {study['newton']:.1f} s, sgd "
            f"{study['sgd']:.1f} s; sgd/newton {study['sgd'] / study['newton']:.1f}x"
        )


def _objective(xs: np.ndarray, y: np.ndarray, weight: np.ndarray, bias: np.ndarray, l2: float):
    logits = xs @ weight.T + bias
    top = logits.max(axis=1, keepdims=True)
    log_z = (top + np.log(np.exp(logits - top).sum(axis=1, keepdims=True)))[:, 0]
    return float((log_z - logits[np.arange(len(y)), y]).mean() + 0.5 * l2 * np.square(weight).sum())


def _sklearn_optimum(xs: np.ndarray, y: np.ndarray, l2: float):
    """scikit-learn's optimum of the probe's objective, as softmax weight and bias. With two
    classes it fits one vector ``w``; the softmax optimum is ``(-w/2, w/2)``, whose penalty
    is half of ``||w||^2``, hence ``C = 2 / (l2 N)`` there."""
    from sklearn.linear_model import LogisticRegression

    binary = len(np.unique(y)) == 2
    c = (2.0 if binary else 1.0) / (l2 * len(xs))
    clf = LogisticRegression(C=c, tol=1e-10, max_iter=100_000).fit(xs, y)
    if binary:
        return np.stack([-clf.coef_[0], clf.coef_[0]]) / 2, np.array([-1, 1]) * clf.intercept_ / 2
    return clf.coef_, clf.intercept_


def bench_optimum(store, device: str = "cpu", names: str = "") -> None:
    from embedkit.eval import ProbeConfig
    from embedkit.primitives.linear import fit_linear

    print(
        "optimum  dataset          l2      gap(newton) steps time   gap(lbfgs) iters time   sklearn"
    )
    worst = 0.0
    for dataset in _datasets(store, names):
        train = store.get(dataset, "train")
        x, y = train.embeddings.astype(np.float64), train.labels[:, 0]
        mean, std = x.mean(0), np.clip(x.std(0, ddof=1), 1e-6, None)
        xs, k = (x - mean) / std, len(store.dataset_attrs(dataset)["class_names"])
        previous = {"newton": None, "lbfgs": None}
        for l2 in sorted(ProbeConfig().l2_grid, reverse=True):
            heads, times = {}, {}
            for protocol in previous:  # the warm-started path the probe takes
                start = time.perf_counter()
                heads[protocol] = fit_linear(
                    x,
                    y[:, None],
                    k,
                    l2=l2,
                    protocol=protocol,
                    init=previous[protocol],
                    device=device,
                )
                times[protocol] = time.perf_counter() - start
                previous[protocol] = heads[protocol]
            start = time.perf_counter()
            optimum = _sklearn_optimum(xs, y, l2)
            t_ref = time.perf_counter() - start
            reference = _objective(xs, y, *optimum, l2)
            gap = {
                p: _objective(xs, y, h.weight * std, h.bias + h.weight @ mean, l2) - reference
                for p, h in heads.items()
            }
            worst = max(worst, *gap.values())
            print(
                f"optimum  {dataset:15s} {l2:<7g} {gap['newton']:10.1e} "
                f"{heads['newton'].n_iter:5d} "
                f"{times['newton']:5.2f} s {gap['lbfgs']:10.1e} {heads['lbfgs'].n_iter:5d} "
                f"{times['lbfgs']:5.2f} s {t_ref:6.2f} s"
            )
    print(f"optimum  largest gap {worst:.1e} (goal <= 1e-4; negative: below scikit-learn's)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sections", default="knn,matrix,probe,read,optimum")
    parser.add_argument("--bank", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=20_000)
    parser.add_argument("--dim", type=int, default=2048)
    parser.add_argument("--k", type=int, default=50)
    parser.add_argument("--scale", type=float, default=1.0, help="of MedMNIST's split sizes")
    parser.add_argument("--scorers", default="", help="comma-separated; default: all registered")
    parser.add_argument(
        "--repeats", type=int, default=1, help="probe: runs per protocol, the least time kept"
    )
    parser.add_argument("--no-sklearn", action="store_true", help="knn: skip scikit-learn")
    parser.add_argument(
        "--no-per-scorer", action="store_true", help="matrix: only the all-scorer call"
    )
    parser.add_argument(
        "--profile", type=int, default=0, help="matrix: print the N costliest functions"
    )
    parser.add_argument(
        "--store", default="", help="probe, optimum: an embedding store to use instead"
    )
    parser.add_argument(
        "--device",
        default="cpu",
        help="probe, optimum: where the store is embedded and the heads fit (cpu, cuda)",
    )
    parser.add_argument(
        "--datasets", default="", help="probe, optimum: these of the store, in this order"
    )
    add_data_root(parser)
    args = parser.parse_args()
    sections = args.sections.split(",")
    if "knn" in sections:
        bench_knn(args.bank, args.queries, args.dim, args.k, not args.no_sklearn)
    if "matrix" in sections:
        from embedkit.ood import SCORERS

        scorers = tuple(args.scorers.split(",")) if args.scorers else tuple(SCORERS)
        bench_matrix(args.scale, args.dim, scorers, not args.no_per_scorer, args.profile)
    if "read" in sections:
        bench_read(args.scale, args.dim)
    if "probe" in sections or "optimum" in sections:
        with tempfile.TemporaryDirectory() as tmp:
            if args.store:
                from embedkit.store import EmbeddingStore

                store = EmbeddingStore(args.store)
            else:
                store = probe_store(tmp, args.data_root, args.device)
            if "probe" in sections:
                bench_probe(store, args.repeats, args.device, args.datasets)
            if "optimum" in sections:
                bench_optimum(store, args.device, args.datasets)


if __name__ == "__main__":
    main()
