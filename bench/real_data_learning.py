"""Does pretraining learn on real data? A few CPU minutes on a MedMNIST file (issues 3, 30).

Pretrains the same small backbone with each of --methods on --dataset (PneumoniaMNIST by
default) from --data-root with a recipe (``--recipe small``: the small-budget settings;
``paper``: the benchmark's), embeds train/val/test with each and with the same backbone's
random weights, and compares linear probes at 10 % and 100 % of the labels (accuracy and
AUC, mean of 3 seeds at 10 %) and weighted kNN on the test split, with each run's
pretraining time. Pass: every method beats random weights on the probe and kNN.

Run: python bench/real_data_learning.py --data-root ../shared/data/medmnist --recipe small
     [--epochs 5] [--methods simclr,vicreg] [--dataset pneumoniamnist] [--lr 1e-3]
     [--batch-size 128] [--param vicreg.hidden_dim=2048] [--backbone resnet18] [--out DIR]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import polars as pl
from _data import add_data_root, real_file

from embedkit.data.loading import candidate_files


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--methods", default="simclr,vicreg")
    parser.add_argument("--dataset", default="pneumoniamnist")
    parser.add_argument("--recipe", default="small")
    parser.add_argument("--backbone", default="resnet18")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--batch-size", type=int, default=None, help="default: the recipe's")
    parser.add_argument("--lr", type=float, default=None, help="default: the recipe's")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", default=None, help="keep runs and stores here")
    parser.add_argument(
        "--param",
        action="append",
        default=[],
        help="METHOD.NAME=VALUE, e.g. vicreg.hidden_dim=2048",
    )
    add_data_root(parser)
    args = parser.parse_args()

    from embedkit.embed import EmbedConfig, embed
    from embedkit.eval import KNNConfig, ProbeConfig, knn_classify, probe
    from embedkit.eval.probe import summarise_probe
    from embedkit.pretrain import PretrainConfig, pretrain

    if not args.data_root:
        raise SystemExit("pass --data-root (or set EMBEDKIT_DATA): this check needs real data")
    data_root = Path(args.data_root).expanduser()
    if not any(real_file(args.data_root, f) for f in candidate_files(args.dataset, 28)[:1]):
        raise SystemExit(f"no {args.dataset} file in {data_root}")
    out = Path(args.out or tempfile.mkdtemp(prefix="embedkit-real-"))
    base = EmbedConfig(
        dataset=args.dataset,
        size=28,
        backbone=args.backbone,
        device=args.device,
        data_root=str(data_root),
        resume=True,
    )
    stores = [embed(replace(base, init="random"), out / "random.zarr", progress=False)]
    params: dict[str, dict] = {}
    for item in args.param:
        key, _, value = item.partition("=")
        method, _, name = key.partition(".")
        params.setdefault(method, {})[name] = float(value) if "." in value else int(value)
    minutes = {}
    for method in args.methods.split(","):
        config = PretrainConfig(
            dataset=args.dataset,
            size=28,
            recipe=args.recipe,
            method=method,
            backbone=args.backbone,
            epochs=args.epochs,
            batch_size=args.batch_size,
            lr=args.lr,
            device=args.device,
            data_root=str(data_root),
            method_params=params.get(method, {}),
        )
        start = time.perf_counter()
        run = pretrain(config, out / f"{method}-run", resume=True, progress=False)
        minutes[f"{method}/{args.backbone}"] = (time.perf_counter() - start) / 60
        stores.append(embed(replace(base, run=str(run)), out / f"{method}.zarr", progress=False))
    probe_table = summarise_probe(
        probe(stores, ProbeConfig(label_fractions=(0.1, 1.0), seeds=(0, 1, 2)))
    )
    tenth = probe_table.filter(pl.col("label_fraction") == 0.1)
    full = probe_table.filter(pl.col("label_fraction") == 1.0)
    knn_table = knn_classify(stores, KNNConfig())
    table = (
        full.select("encoder", probe_acc="accuracy", probe_auc="auc")
        .join(tenth.select("encoder", auc_10pct="auc"), on="encoder")
        .join(knn_table.select("encoder", knn_acc="accuracy", knn_auc="auc"), on="encoder")
        .with_columns(pretrain_min=pl.col("encoder").replace_strict(minutes, default=0.0).round(1))
    )
    with pl.Config(tbl_rows=20, float_precision=3):
        print(table)
    random = table.filter(pl.col("encoder").str.starts_with("random"))
    for row in table.filter(~pl.col("encoder").str.starts_with("random")).iter_rows(named=True):
        better = row["probe_acc"] > random["probe_acc"][0] and row["knn_acc"] > random["knn_acc"][0]
        print(f"{row['encoder']}: {'beats' if better else 'does NOT beat'} random weights")
    print(f"artefacts in {out}")


if __name__ == "__main__":
    main()
