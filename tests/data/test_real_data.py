"""Real MedMNIST data: PneumoniaMNIST (28 px) from ../shared/data, embedded and probed."""

import shutil

import numpy as np
import pytest
from conftest import SHARED_DATA

from embedkit.embed import EmbedConfig, embed
from embedkit.errors import NonOfficialDataWarning
from embedkit.eval import KNNConfig, ProbeConfig, knn_classify, probe

PNEUMONIA = SHARED_DATA / "pneumoniamnist_28.npz"

pytestmark = pytest.mark.skipif(
    not PNEUMONIA.is_file(),
    reason=f"real data {PNEUMONIA} is absent (it lives beside the repository in ../shared/data)",
)


@pytest.fixture(scope="module")
def pneumonia_store(tmp_path_factory):
    root = tmp_path_factory.mktemp("real")
    shutil.copy(PNEUMONIA, root / PNEUMONIA.name)  # placed as-is, under its own name
    config = EmbedConfig(
        dataset="pneumoniamnist", size=28, init="random", device="cpu", data_root=str(root)
    )
    with pytest.warns(NonOfficialDataWarning, match="f5b994ec7c2fe8bc81ae15cbab7c3df8"):
        return embed(config, root / "pneumonia.zarr", progress=False)


def test_non_official_copy_is_recorded(pneumonia_store):
    catalog = pneumonia_store.catalog()
    assert catalog["n"].to_list() == [3882, 524, 624]  # the copy's reduced train split
    assert set(catalog["origin"].to_list()) == {"non-official"}
    test = pneumonia_store.get("pneumoniamnist", "test")
    assert np.bincount(test.labels.ravel()).tolist() == [234, 390]


def test_probe_and_knn_beat_chance(pneumonia_store):
    # Random resnet18 weights at 28 px keep little of the image (the stem leaves 7x7 maps):
    # measured AUC 0.66 (probe) and 0.72 (kNN), accuracy 0.67 against 0.625 for the majority
    # class. Shuffled labels or misaligned rows give AUC 0.5 and fail here.
    majority = 390 / 624
    table = probe([pneumonia_store], ProbeConfig(label_fractions=(0.1, 1.0), seeds=(0, 1)))
    assert table["n_train"].to_list() == [388, 388, 3882]
    full = table.filter(table["label_fraction"] == 1.0)
    assert full["auc"][0] > 0.6
    assert full["accuracy"][0] > majority
    knn = knn_classify([pneumonia_store], KNNConfig())
    assert knn["auc"][0] > 0.65 and knn["accuracy"][0] > majority
