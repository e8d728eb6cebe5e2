"""The results page's OOD section, on a hand-made OOD table with known answers."""

from __future__ import annotations

import polars as pl
import pytest

from embedkit.grid.paper import finding_ood_pairs


def _row(kind, pretrain, id_dataset, ood_dataset, scorer, auroc, multi=False):
    return {
        "kind": kind,
        "init": "random",
        "multi_domain": multi,
        "pretrain_dataset": pretrain,
        "id_dataset": id_dataset,
        "ood_dataset": ood_dataset,
        "scorer": scorer,
        "auroc": auroc,
    }


def test_ood_pairs_average_own_encoders_and_mark_external_sets():
    rows = [
        _row("ssl", "a", "a", "b", "knn", 0.9),
        _row("ssl", "a", "a", "b", "knn", 0.7),  # a second method: the mean is 0.8
        _row("ssl", "a+b", "a", "ext", "knn", 0.1, multi=True),  # multi-domain: left out
        _row("ssl", "a", "a", "ext", "knn", 0.95),
        _row("supervised", "a", "a", "b", "knn", 0.6),
        _row("baseline", "", "a", "b", "knn", 0.5),
        _row("baseline", "", "a", "ext", "knn", 0.97),
        _row("ssl", "a", "a", "b", "energy", 0.3),
        _row("baseline", "", "a", "b", "energy", 0.4),
    ]
    finding = finding_ood_pairs(pl.DataFrame(rows), probed=["a", "b"])
    table = finding.table
    knn = table.filter((pl.col("ood_dataset") == "b") & (pl.col("scorer") == "knn")).row(
        0, named=True
    )
    assert knn["ssl"] == pytest.approx(0.8) and knn["supervised"] == 0.6 and knn["random"] == 0.5
    assert not knn["external"]
    ext = table.filter(pl.col("ood_dataset") == "ext").row(0, named=True)
    assert ext["external"] and ext["ssl"] == 0.95 and ext["random"] == 0.97
    text = " ".join(finding.sentences)
    assert "knn: SSL encoders" in text and "better than random weights on 1 of 2" in text
    assert "energy: SSL encoders" in text and "on 0 of 1" in text
    assert "external set ext (test-only, never trained on)" in text
    assert "knn 0.950 (random weights 0.970)" in text
    assert "below 0.5" in text  # energy's 0.3


def test_ood_pairs_without_a_table_say_so():
    assert finding_ood_pairs(None, ["a"]).sentences == ["Not computed: no OOD table."]
