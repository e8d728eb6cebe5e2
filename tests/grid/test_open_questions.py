"""The open questions' findings (data fraction, resolution, transfer by modality) on a
hand-made probe summary with known answers."""

from __future__ import annotations

import polars as pl
import pytest

from embedkit.grid.open_questions import (
    finding_data_fraction,
    finding_resolution,
    finding_transfer_modality,
    full_data,
    open_question_findings,
)


def _row(kind, method, pretrain, dataset, auc, fraction="", size=28, modality="x-ray"):
    modalities = {"a": "x-ray", "b": "x-ray", "c": "fundus"}
    return {
        "cell": f"{kind}-{method}-{pretrain}-{fraction}-{size}",
        "kind": kind,
        "method": method,
        "init": "random",
        "pretrain_dataset": pretrain,
        "multi_domain": False,
        "pretrain_modalities": modalities.get(pretrain, ""),
        "dataset": dataset,
        "probed_modality": modalities[dataset],
        "in_domain": dataset == pretrain,
        "backbone": "resnet18",
        "size": size,
        "label_fraction": 1.0,
        "pretrain_data_fraction": fraction,
        "accuracy": auc,
        "auc": auc,
    }


def _fractions():
    rows = []
    for dataset, base in (("a", 0.60), ("b", 0.70)):
        rows.append(_row("baseline", "random", "", dataset, base))
        for fraction, gain in (("0.1", 0.05), ("1.0", 0.15)):
            rows.append(_row("ssl", "simclr", dataset, dataset, base + gain, fraction))
            rows.append(_row("ssl", "byol", dataset, dataset, base + gain - 0.02, fraction))
            rows.append(_row("supervised", "supervised", dataset, dataset, base + 0.1, fraction))
    return pl.DataFrame(rows)


def test_data_fraction_gains_over_random_and_supervised_per_share():
    finding = finding_data_fraction(_fractions())
    table = finding.table.sort("data_fraction")
    assert table["data_fraction"].to_list() == [0.1, 1.0]
    assert table["datasets"].to_list() == [2, 2]
    # the best SSL method per dataset (simclr): base + gain; random: the mean base 0.65
    assert table["ssl_auc"].to_list() == pytest.approx([0.70, 0.80])
    assert table["gain_over_random"].to_list() == pytest.approx([0.05, 0.15])
    assert table["gain_over_supervised"].to_list() == pytest.approx([-0.05, 0.05])
    (sentence,) = finding.sentences
    assert "pretrained on 10 % / 100 % of the training images" in sentence
    assert "+0.050 / +0.150 over random weights" in sentence
    assert "-0.050 / +0.050 over supervised" in sentence


def test_other_findings_read_the_full_data_cells_only():
    summary = _fractions()
    kept = full_data(summary)
    assert set(kept.filter(pl.col("kind") != "baseline")["pretrain_data_fraction"]) == {"1.0"}
    assert kept.filter(pl.col("kind") == "baseline").height == 2
    plain = summary.drop("pretrain_data_fraction")
    assert full_data(plain) is plain and full_data(None) is None
    (sentence,) = finding_data_fraction(plain).sentences
    assert sentence.startswith("Not varied")


def test_resolution_compares_each_size_with_its_own_baseline():
    rows = []
    for size, base, gain in ((28, 0.6, 0.02), (64, 0.7, 0.08)):
        rows.append(_row("baseline", "random", "", "a", base, size=size))
        rows.append(_row("ssl", "simclr", "a", "a", base + gain, size=size))
    finding = finding_resolution(pl.DataFrame(rows))
    assert finding.table["size"].to_list() == [28, 64]
    assert finding.table["gain_over_random"].to_list() == pytest.approx([0.02, 0.08])
    assert finding.table["supervised_auc"].to_list() == [None, None]
    assert "at 28 / 64 px" in finding.sentences[0] and "+0.020 / +0.080" in finding.sentences[0]
    one_size = finding_resolution(pl.DataFrame(rows[:2]))
    assert one_size.sentences[0].startswith("Not varied: the grid has one image size (28 px")


def test_transfer_is_split_into_same_and_cross_modality_pairs():
    rows = [
        _row("baseline", "random", "", "b", 0.60),
        _row("baseline", "random", "", "c", 0.70),
        _row("ssl", "simclr", "a", "a", 0.95),  # in-domain: not transfer
        _row("ssl", "simclr", "a", "b", 0.80),  # x-ray -> x-ray
        _row("ssl", "byol", "a", "b", 0.70),
        _row("ssl", "simclr", "a", "c", 0.65),  # x-ray -> fundus
        _row("supervised", "supervised", "a", "c", 0.75),
    ]
    finding = finding_transfer_modality(pl.DataFrame(rows))
    ssl = finding.table.filter(pl.col("kind") == "ssl").sort("pairs")
    assert ssl["pairs"].to_list() == ["cross modality", "same modality"]
    assert ssl["pairs_probed"].to_list() == [1, 2]
    assert ssl["transfer_auc"].to_list() == pytest.approx([0.65, 0.75])
    assert ssl["gain_over_random"].to_list() == pytest.approx([-0.05, 0.15])
    (sentence,) = finding.sentences
    assert "same modality (2 encoder-dataset pairs): AUC 0.750, +0.150" in sentence
    assert "cross modality (1 encoder-dataset pairs): AUC 0.650, -0.050" in sentence
    in_domain_only = finding_transfer_modality(pl.DataFrame(rows[:3]))
    assert in_domain_only.sentences[0].startswith("Not compared")


def test_the_three_findings_come_in_the_papers_order():
    names = [f.name for f in open_question_findings(_fractions())]
    assert names == ["data_fraction", "resolution", "transfer_modality"]


def test_the_backbone_finding_compares_two_backbones_with_their_transfer():
    """With two backbones the sentence names each one's in-domain and transfer accuracy
    (the transfer column was declared but never filled: a KeyError on such grids)."""
    from embedkit.grid.findings import finding_backbone

    rows = []
    for backbone, own, other in (("resnet18", 0.8, 0.6), ("vit_tiny", 0.7, 0.5)):
        for row in (_row("ssl", "simclr", "a", "a", own), _row("ssl", "simclr", "a", "c", other)):
            rows.append({**row, "backbone": backbone, "cell": f"{row['cell']}-{backbone}"})
    finding = finding_backbone(pl.DataFrame(rows), None)
    assert finding.table["transfer_accuracy"].to_list() == pytest.approx([0.6, 0.5])
    (sentence,) = finding.sentences
    assert "in-domain accuracy 0.800 vs 0.700" in sentence
    assert "mean transfer accuracy 0.600 vs 0.500" in sentence
