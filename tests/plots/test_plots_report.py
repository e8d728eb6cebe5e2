"""Figures check their content (cells, lines, bars), the report its files and tables."""

import json

import numpy as np
import polars as pl
import pytest
from matplotlib.image import AxesImage

from embedkit.errors import ConfigError
from embedkit.eval.probe import summarise_probe
from embedkit.plots import ood_bars, ood_heatmap, ood_heatmap_grid, probe_curves
from embedkit.report import ReportConfig, build_report, read_table


def _ood_table():
    rows = []
    for encoder in ("simclr/resnet18", "random/resnet18"):
        for scorer in ("knn", "vim"):
            for i, id_dataset in enumerate(("a", "b", "c")):
                for ood_dataset in ("a", "b", "c", "d"):
                    if ood_dataset != id_dataset:
                        rows.append(
                            {
                                "encoder": encoder,
                                "scorer": scorer,
                                "id_dataset": id_dataset,
                                "ood_dataset": ood_dataset,
                                "auroc": 0.5 + 0.1 * i,
                                "fpr95": 0.5,
                            }
                        )
    return pl.DataFrame(rows)


def _probe_table():
    rows = []
    for encoder, base in (("simclr/resnet18", 0.8), ("random/resnet18", 0.6)):
        for fraction in (0.01, 0.1, 1.0):
            for seed in (0, 1, 2):
                rows.append(
                    {
                        "encoder": encoder,
                        "dataset": "demo-med",
                        "label_fraction": fraction,
                        "seed": seed,
                        "accuracy": base + 0.1 * fraction + 0.01 * seed,
                        "auc": 0.9,
                        "balanced_accuracy": base,
                    }
                )
    return pl.DataFrame(rows)


def test_heatmap_cells_are_the_table_values():
    fig = ood_heatmap(_ood_table(), "simclr/resnet18", "knn")
    ax = fig.axes[0]
    image = next(c for c in ax.get_children() if isinstance(c, AxesImage))
    grid = image.get_array()
    assert grid.shape == (3, 4)  # ID a, b, c x OOD a, b, c, d
    np.testing.assert_allclose(grid[1, [0, 2, 3]], 0.6)
    assert np.ma.is_masked(grid[0, 0]) or np.isnan(grid[0, 0])  # no (a, a) pair
    assert len(ax.texts) == 9
    assert [t.get_text() for t in ax.get_yticklabels()] == ["a", "b", "c"]
    with pytest.raises(ConfigError, match="no rows"):
        ood_heatmap(_ood_table(), "simclr/resnet18", "odin")


def test_probe_curves_one_line_per_encoder():
    fig = probe_curves(summarise_probe(_probe_table()), "demo-med")
    ax = fig.axes[0]
    assert len(ax.containers) == 2  # one error-bar series per encoder
    assert [t.get_text() for t in ax.get_legend().get_texts()] == [
        "simclr/resnet18",
        "random/resnet18",
    ]
    np.testing.assert_allclose(ax.containers[0].lines[0].get_ydata(), [0.811, 0.82, 0.91])


def test_ood_bars_one_bar_per_encoder_and_scorer():
    ax = ood_bars(_ood_table()).axes[0]
    heights = [p.get_height() for p in ax.patches]
    assert len(heights) == 2 * 2
    assert heights[0] == pytest.approx(np.mean([0.5] * 3 + [0.6] * 3 + [0.7] * 3))
    points = [c for c in ax.collections if len(c.get_offsets()) == 9]  # each pair a point
    assert len(points) == 2 * 2
    assert sorted(points[0].get_offsets()[:, 1]) == pytest.approx([0.5] * 3 + [0.6] * 3 + [0.7] * 3)
    assert "mean of 9 pairs" in ax.get_ylabel()


def test_heatmap_grid_facets_encoders_and_scorers_with_one_colour_bar():
    fig = ood_heatmap_grid(_ood_table())
    images = [a for a in fig.axes if any(isinstance(c, AxesImage) for c in a.get_children())]
    assert len(images) == 2 * 2 and len(fig.axes) == 2 * 2 + 1  # + the shared colour bar
    image = next(c for c in images[0].get_children() if isinstance(c, AxesImage))
    assert image.get_cmap().name == "RdBu" and image.get_clim() == (0.0, 1.0)  # 0.5 centred


def test_probe_intervals_are_clipped_to_0_1_and_the_range_fits_the_data():
    summary = pl.DataFrame(
        {
            "encoder": ["e", "e"],
            "dataset": ["d", "d"],
            "label_fraction": [0.1, 1.0],
            "accuracy": [0.95, 0.99],
            "accuracy_ci95": [0.1, 0.0],
        }
    )
    ax = probe_curves(summary, "d").axes[0]
    segments = ax.containers[0].lines[2][0].get_segments()
    assert max(seg[:, 1].max() for seg in segments) == pytest.approx(1.0)  # 0.95 + 0.1 clipped
    low, high = ax.get_ylim()
    assert 0.8 < low < 0.85 and high == 1.0


@pytest.mark.parametrize("form", ["markdown", "html"])
def test_report_files(tmp_path, form):
    path = build_report(
        tmp_path / "r", probe=_probe_table(), ood=_ood_table(), config=ReportConfig(format=form)
    )
    text = path.read_text()
    pngs = sorted(p.name for p in (tmp_path / "r").glob("*.png"))
    assert len(pngs) == 1 + 1 + 1  # probe curve, bars, the faceted heatmaps
    for png in pngs:
        assert png in text
    assert "0.811 ± " in text  # 1 % of the labels, simclr: mean of 0.801, 0.811, 0.821
    if form == "html":
        assert text.startswith("<!doctype html>") and text.count("<table>") == 5  # + FPR@95
        assert text.count("src='data:image/png;base64,") == len(pngs)  # one file to mail
        assert "src='ood" not in text and "src='probe" not in text
    else:
        assert "### 100% of the labels" in text


def test_report_names_seeds_and_sizes_and_shows_no_interval_for_one_seed(tmp_path):
    table = _probe_table().with_columns(n_train=(pl.col("label_fraction") * 1000).cast(pl.Int64))
    table = table.filter((pl.col("label_fraction") < 1.0) | (pl.col("seed") == 0))
    text = build_report(tmp_path / "r", probe=table).read_text()
    assert "0.811 ± 0.025" in text  # 1 %, simclr: three seeds, an interval
    assert "0.900 ± -" in text and "0.700 ± -" in text  # 100 %: one seed, no interval
    assert "Training rows × seeds: demo-med 10 × 3." in text
    assert "Training rows × seeds: demo-med 1000 × 1." in text


@pytest.mark.parametrize("metric", ["accuracy", "auc"])
def test_report_shows_the_transfer_metric_that_was_asked_for(tmp_path, metric):
    transfer = pl.DataFrame(
        {
            "encoder": ["simclr/resnet18", "random/resnet18"],
            "pretrain_dataset": ["demo-med", None],
            "dataset": ["demo-texture", "demo-texture"],
            "label_fraction": [1.0, 1.0],
            "accuracy": [0.612, 0.534],
            "auc": [0.871, 0.702],
        }
    )
    config = ReportConfig(transfer_metric=metric)
    text = build_report(tmp_path / "r", transfer=transfer, config=config).read_text()
    shown, hidden = ("0.612", "0.871") if metric == "accuracy" else ("0.871", "0.612")
    assert f"Probe {metric} of each encoder" in text
    assert shown in text and hidden not in text


def test_report_input_errors(tmp_path):
    with pytest.raises(ConfigError, match="nothing to report"):
        build_report(tmp_path / "r")
    _ood_table().write_parquet(tmp_path / "ood.parquet")
    with pytest.raises(ConfigError, match="lacks columns"):
        read_table(tmp_path / "ood.parquet", "probe")
    with pytest.raises(ConfigError, match="does not exist"):
        read_table(tmp_path / "none.parquet", "ood")
    assert read_table(tmp_path / "ood.parquet", "ood").height == 2 * 2 * 9
    with pytest.raises(ConfigError, match="the ood table holds no rows"):
        build_report(tmp_path / "empty", ood=_ood_table().head(0))
    assert not (tmp_path / "empty").exists()  # refused before the folder is made


def test_embedding_map_has_one_point_per_sampled_row_and_one_group_per_colour(demo_store):
    from embedkit.plots import embedding_map

    fig = embedding_map(demo_store, split="test", max_points=150)
    collections = fig.axes[0].collections
    assert [c.get_label() for c in collections] == sorted(demo_store.datasets())
    assert [len(c.get_offsets()) for c in collections] == [150, 150, 150]
    by_class = embedding_map(demo_store, datasets=("demo-med",), color_by="class", max_points=600)
    names = demo_store.dataset_attrs("demo-med")["class_names"]
    labels = [c.get_label() for c in by_class.axes[0].collections]
    assert sorted(labels) == sorted(names)
    assert sum(len(c.get_offsets()) for c in by_class.axes[0].collections) == 600
    with pytest.raises(ConfigError, match="color_by"):
        embedding_map(demo_store, color_by="split")


def test_retrieval_grid_finds_the_query_itself_first(demo_store):
    from embedkit.plots import retrieval_grid

    fig = retrieval_grid(
        demo_store, "demo-med", query_rows=(3, 40), k=4, query_split="train", bank_split="train"
    )
    assert len(fig.axes) == 2 * 5
    assert all(isinstance(ax.images[0], AxesImage) for ax in fig.axes)
    first = fig.axes[1]  # the first neighbour of the first query
    assert first.get_title() == "demo-med 1.00"
    query = fig.axes[0].images[0].get_array()
    np.testing.assert_array_equal(first.images[0].get_array(), query)
    assert query.ndim == 2  # the demo family is grey: drawn in grey on the 0-255 scale
    for ax in fig.axes:
        assert ax.images[0].get_cmap().name == "gray"
        assert ax.images[0].get_clim() == (0, 255)


def test_score_histograms_and_roc_curves_show_every_dataset(demo_store):
    from embedkit.eval import sample_scores
    from embedkit.plots import roc_curves, score_histograms
    from embedkit.primitives.metrics import ood_metrics

    scores = sample_scores(demo_store, "demo-med", "knn")
    assert set(scores["dataset"].unique()) == {"demo-med", "demo-natural", "demo-texture"}
    assert scores.filter(~pl.col("is_ood")).height == 600
    histogram = score_histograms(scores)
    legend = [t.get_text() for t in histogram.axes[0].get_legend().get_texts()]
    assert legend == ["demo-med (ID)", "demo-natural", "demo-texture"]
    roc = roc_curves(scores)
    lines = roc.axes[0].get_lines()
    assert len(lines) == 4  # two OOD datasets, the chance diagonal, the TPR 95 % line
    id_scores = scores.filter(~pl.col("is_ood"))["score"].to_numpy()
    natural = scores.filter(pl.col("dataset") == "demo-natural")["score"].to_numpy()
    metrics = ood_metrics(id_scores, natural)
    expected = metrics["auroc"]
    assert lines[0].get_label() == f"demo-natural (AUROC {expected:.3f})"
    point = roc.axes[0].collections[0].get_offsets()[0]  # FPR@95's operating point
    np.testing.assert_allclose(point, [metrics["fpr95"], 0.95])
    fpr, tpr = lines[0].get_data()
    assert fpr[0] == 0 and tpr[-1] == 1 and np.trapezoid(tpr, fpr) == pytest.approx(expected)
    with pytest.raises(ConfigError, match="needs columns"):
        roc_curves(scores.drop("is_ood"))


def test_report_draws_saved_scores(tmp_path, demo_store):
    from embedkit.eval import OODConfig, evaluate_ood
    from embedkit.report import read_scores

    config = OODConfig(
        id_datasets=("demo-med", "demo-texture"),
        scorers=("knn", "mahalanobis"),
        save_scores=str(tmp_path / "scores"),
    )
    evaluate_ood([demo_store], config)
    scores = read_scores(tmp_path / "scores")
    assert scores.select("id_dataset", "scorer").unique().height == 4
    path = build_report(tmp_path / "r", scores=scores)
    pngs = sorted(p.name for p in (tmp_path / "r").glob("*.png"))
    assert len(pngs) == 4 * 2  # a histogram and a ROC figure per ID dataset and scorer
    assert sum(p.startswith("roc-") for p in pngs) == 4
    assert all(p in path.read_text() for p in pngs)
    with pytest.raises(ConfigError, match="holds no score tables"):
        read_scores(tmp_path / "empty")


def test_training_curves_show_loss_epoch_means_and_knn():
    from embedkit.plots import training_curves

    metrics = pl.DataFrame(
        {
            "epoch": [0, 0, 1, 1],
            "step": [0, 1, 2, 3],
            "loss": [4.0, 3.0, 2.0, 1.0],
            "lr": [0.1, 0.1, 0.05, 0.0],
            "knn_accuracy": [None, 0.6, None, 0.7],
        }
    )
    fig = training_curves(metrics, "t")
    loss_ax, knn_ax = fig.axes[0], fig.axes[1]
    step_line, epoch_line = loss_ax.get_lines()
    np.testing.assert_allclose(epoch_line.get_xdata(), [1, 3])  # each epoch's last step
    np.testing.assert_allclose(epoch_line.get_ydata(), [3.5, 1.5])
    np.testing.assert_allclose(knn_ax.get_lines()[0].get_ydata(), [0.6, 0.7])
    assert len(training_curves(metrics.drop("knn_accuracy")).axes) == 2  # loss and lr axes


@pytest.mark.slow
def test_report_draws_pretraining_runs(tmp_path, tiny_run):
    from embedkit.runs import read_metrics

    text = build_report(tmp_path / "r", runs=[tiny_run]).read_text()
    metrics = read_metrics(tiny_run)
    assert "## Pretraining runs" in text and f"run-1-{tiny_run.name}.png" in text
    assert f"{metrics['loss'].mean():.3f}" in text  # one epoch: its mean loss
    with pytest.raises(Exception, match="has no metrics.jsonl"):
        build_report(tmp_path / "r2", runs=[tmp_path])


def _fake_run(folder, method, losses_per_epoch, knn=None):
    """A run folder with config.json and metrics.jsonl as pretrain writes them: loss lines per
    step, and a separate kNN line at each epoch's last step."""
    folder.mkdir(parents=True)
    config = {"pretrain": {"method": method, "backbone": "resnet18", "dataset": "demo-med"}}
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "run.json").write_text(json.dumps({"status": "complete"}))
    lines, step = [], 0
    for epoch, losses in enumerate(losses_per_epoch):
        for loss in losses:
            lines.append(
                {
                    "epoch": epoch,
                    "step": step,
                    "loss": loss,
                    "lr": 0.1,
                    "images_per_s": 100.0 + step,
                }
            )
            step += 1
        if knn is not None:
            lines.append({"epoch": epoch, "step": step - 1, "knn_accuracy": knn[epoch]})
    (folder / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    return folder


def test_runs_are_summarised_and_compared(tmp_path):
    from embedkit.plots import compare_runs
    from embedkit.runs import read_metrics, summarise_runs

    a = _fake_run(tmp_path / "a", "simclr", [[4.0, 3.0], [2.0, 1.0]], knn=[0.5, 0.8])
    b = _fake_run(tmp_path / "b", "vicreg", [[30.0, 20.0, 10.0]])
    table = summarise_runs([a, b])
    assert table["run"].to_list() == ["a", "b"]
    assert table["steps"].to_list() == [4, 3]  # the kNN lines are not steps
    assert table["epochs"].to_list() == [2, 1]
    assert table["last_epoch_loss"].to_list() == [1.5, 20.0]
    assert table["knn_accuracy"].to_list() == [0.8, None]
    assert table["best_knn_accuracy"].to_list() == [0.8, None]
    assert table["images_per_s"].to_list() == [101.5, 101.0]
    fig = compare_runs({"a": read_metrics(a), "b": read_metrics(b)})
    loss_ax, knn_ax = fig.axes
    (a_loss, b_loss) = loss_ax.get_lines()
    np.testing.assert_allclose(a_loss.get_xdata(), [1, 2])
    np.testing.assert_allclose(a_loss.get_ydata(), [3.5, 1.5])
    np.testing.assert_allclose(b_loss.get_ydata(), [20.0])
    (a_knn,) = knn_ax.get_lines()  # b has no kNN monitor: no line
    np.testing.assert_allclose(a_knn.get_ydata(), [0.5, 0.8])
    text = build_report(tmp_path / "r", runs=[a, b]).read_text()
    assert "runs-compared.png" in text and "run-2-b.png" in text
    (row_b,) = [line for line in text.splitlines() if line.startswith("| b |")]
    assert row_b.endswith("| 20.000 | - | - | 101.000 |")  # no kNN monitor: "-", not None
