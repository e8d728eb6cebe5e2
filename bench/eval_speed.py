"""Evaluation speed, as ratios measured in one process (issue 5).

1. knn: kNN OOD scoring (``KNNScorer``: normalise, index, search) against raw ``faiss.knn``
   on the same normalised data (goal: at most 1.3x its time) and against scikit-learn's
   brute-force ``NearestNeighbors``.
2. matrix: the full ID x OOD matrix (12 x 11 pairs, every registered scorer) over a
   synthetic store shaped like MedMNIST (split sizes from medmnist's INFO, times --scale)
   with 2048-d embeddings, as ResNet-50 would give.
3. probe: full-batch L-BFGS probes against the paper's 100-epoch SGD protocol on the same
   embeddings (demo-med and, when present, PneumoniaMNIST from ../shared/data, embedded by
   a random-init resnet18): accuracy difference and speed-up.

Run: python bench/eval_speed.py [--bank 100000 --queries 20000 --dim 2048] [--scale 1.0]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import faiss
import numpy as np


def timed(fn):
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def bench_knn(bank_size: int, queries: int, dim: int, k: int) -> None:
    from sklearn.neighbors import NearestNeighbors

    from embedkit.eval.neighbors import l2_normalise
    from embedkit.ood.knn import KNNScorer

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
    t_sklearn, _ = timed(
        lambda: NearestNeighbors(n_neighbors=k, algorithm="brute").fit(bank_n).kneighbors(query_n)
    )
    print(
        f"knn  bank {bank_size} x {dim}, {queries} queries, k={k}, faiss threads "
        f"{faiss.omp_get_max_threads()}, GPUs {faiss.get_num_gpus()}"
    )
    print(f"knn  faiss.knn {t_faiss:.2f} s | KNNScorer {t_ours:.2f} s | sklearn {t_sklearn:.2f} s")
    print(f"knn  KNNScorer / faiss.knn = {t_ours / t_faiss:.3f}  (goal <= 1.3)")
    print(f"knn  sklearn / KNNScorer   = {t_sklearn / t_ours:.2f}")


def synthetic_store(path: Path, scale: float, dim: int):
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
        centre = rng.normal(size=dim) * 2
        class_shift = rng.normal(size=(max(info.n_classes, 2), dim))
        for split in ("train", "val", "test"):
            n = max(50, int(info.n_samples[split] * scale))
            if info.multi_label:
                labels = (rng.random((n, info.n_classes)) < 0.1).astype(np.int64)
                shift = labels @ class_shift[: info.n_classes] / 3
            else:
                labels = rng.integers(0, info.n_classes, (n, 1))
                shift = class_shift[labels[:, 0]]
            x = (centre + shift + rng.normal(size=(n, dim))).astype(np.float32)
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
        print(f"matrix  wrote {name} ({d + 1}/12)", flush=True)
    return EmbeddingStore(path)


def bench_matrix(scale: float, dim: int, scorers: tuple[str, ...]) -> None:
    from embedkit.eval import OODConfig, evaluate_ood

    with tempfile.TemporaryDirectory() as tmp:
        t_write, store = timed(lambda: synthetic_store(Path(tmp) / "s.zarr", scale, dim))
        total = int(store.catalog()["n"].sum())
        print(
            f"matrix  synthetic store: {total} embeddings x {dim} ({scale:g} x MedMNIST sizes), "
            f"written in {t_write:.1f} s"
        )
        for scorer in scorers:
            t, table = timed(lambda s=scorer: evaluate_ood([store], OODConfig(scorers=(s,))))
            print(f"matrix  {scorer:22s} {table.height} pairs in {t:7.1f} s")
        t, table = timed(lambda: evaluate_ood([store], OODConfig(scorers=scorers)))
        print(f"matrix  all {len(scorers)} scorers, {table.height} rows: {t:.1f} s")


def bench_probe() -> None:
    from embedkit.embed import EmbedConfig, embed
    from embedkit.eval import ProbeConfig, probe

    shared = Path(__file__).resolve().parents[2] / "shared" / "data"
    with tempfile.TemporaryDirectory() as tmp:
        datasets = ["demo-med"]
        if (shared / "pneumoniamnist_28.npz").is_file():
            import shutil

            shutil.copy(shared / "pneumoniamnist_28.npz", Path(tmp) / "pneumoniamnist_28.npz")
            datasets.append("pneumoniamnist")
        store = embed(
            EmbedConfig(dataset=",".join(datasets), init="random", device="cpu", data_root=tmp),
            Path(tmp) / "p.zarr",
            progress=False,
        )
        for protocol in ("lbfgs", "sgd"):
            config = ProbeConfig(label_fractions=(1.0,), seeds=(0,), protocol=protocol)
            elapsed, table = timed(lambda c=config: probe([store], c))
            for row in table.iter_rows(named=True):
                print(
                    f"probe  {protocol:5s} {row['dataset']:15s} accuracy {row['accuracy']:.4f} "
                    f"auc {row['auc']:.4f} (l2 {row['l2']:g})"
                )
            print(f"probe  {protocol:5s} total {elapsed:.1f} s")
            if protocol == "lbfgs":
                lbfgs_time, lbfgs = elapsed, table
        difference = (lbfgs["accuracy"] - table["accuracy"]).abs().max() * 100
        print(
            f"probe  largest accuracy difference {difference:.2f} points (goal <= 0.5); "
            f"speed-up of full batch {elapsed / lbfgs_time:.1f}x"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sections", default="knn,matrix,probe")
    parser.add_argument("--bank", type=int, default=100_000)
    parser.add_argument("--queries", type=int, default=20_000)
    parser.add_argument("--dim", type=int, default=2048)
    parser.add_argument("--k", type=int, default=50)
    parser.add_argument("--scale", type=float, default=1.0, help="of MedMNIST's split sizes")
    parser.add_argument("--scorers", default="", help="comma-separated; default: all registered")
    args = parser.parse_args()
    sections = args.sections.split(",")
    if "knn" in sections:
        bench_knn(args.bank, args.queries, args.dim, args.k)
    if "matrix" in sections:
        from embedkit.ood import SCORERS

        scorers = tuple(args.scorers.split(",")) if args.scorers else tuple(SCORERS)
        bench_matrix(args.scale, args.dim, scorers)
    if "probe" in sections:
        bench_probe()


if __name__ == "__main__":
    main()
