import warnings

import numpy as np
import pytest
from medmnist import INFO

from embedkit.data import (
    DATASETS,
    MEDMNIST_2D,
    dataset_classes,
    get_info,
    load_split,
    npz,
    parse_dataset_spec,
)
from embedkit.data.demo import PER_CLASS, make_demo, patch_boxes, regions
from embedkit.errors import (
    ConfigError,
    DataNotFoundError,
    InvalidDataError,
    NonOfficialDataWarning,
    UnknownNameError,
)


@pytest.mark.parametrize("name", MEDMNIST_2D)
def test_registry_matches_medmnist_info(name):
    info, raw = get_info(name), INFO[name]
    assert info.n_channels == raw["n_channels"]
    assert info.n_classes == len(raw["label"])
    assert dict(info.n_samples) == raw["n_samples"]
    assert info.md5[28] == raw["MD5"] and info.md5[224] == raw["MD5_224"]


def test_registry_tasks():
    assert len(MEDMNIST_2D) == 12
    assert get_info("chestmnist").task == "multi-label"
    assert get_info("retinamnist").task == "ordinal"
    assert get_info("pneumoniamnist").task == "binary"
    assert get_info("pathmnist").task == "multi-class"
    assert {"demo-med", "demo-natural", "demo-texture"} <= set(DATASETS)


def test_dataset_spec_parsing():
    assert parse_dataset_spec("pathmnist") == ["pathmnist"]
    assert parse_dataset_spec("pathmnist, dermamnist,pathmnist") == ["pathmnist", "dermamnist"]
    assert parse_dataset_spec("all") == list(MEDMNIST_2D)
    assert parse_dataset_spec("demo") == ["demo-med", "demo-natural", "demo-texture"]
    assert parse_dataset_spec("organamnist+organcmnist") == ["organamnist+organcmnist"]


def test_unknown_dataset_suggests_close_names():
    with pytest.raises(UnknownNameError, match="did you mean pathmnist"):
        parse_dataset_spec("pathmnst")
    with pytest.raises(UnknownNameError, match="organcmnist"):
        parse_dataset_spec("organamnist+organxmnist")


def test_demo_loads_as_uint8_memmap(data_root):
    split = load_split("demo-med", "test", 28, data_root)
    assert split.images.shape == (600, 28, 28, 1) and split.images.dtype == np.uint8
    assert isinstance(split.images, np.memmap)
    assert split.labels.shape == (600, 1)
    assert np.bincount(split.labels.ravel()).tolist() == [PER_CLASS["test"]] * 3
    assert split.files[0].origin == "generated"


def test_demo_is_deterministic_and_size_aware():
    first, second = make_demo("demo-texture", 28), make_demo("demo-texture", 28)
    for key in first:
        np.testing.assert_array_equal(first[key], second[key])
    assert make_demo("demo-texture", 64)["val_images"].shape == (300, 64, 64)


@pytest.mark.parametrize("shape", [(512, 512), (400, 600), (660, 550), (300, 451)])
def test_demo_split_regions_and_patches_are_disjoint(shape):
    parts = regions(*shape)
    masks = {}
    rng = np.random.default_rng(0)
    for split, region in parts.items():
        mask = np.zeros(shape, dtype=bool)
        for y, x, side in patch_boxes(shape, region, 200, rng):
            top, bottom, left, right = region
            assert top <= y and y + side <= bottom and left <= x and x + side <= right
            mask[y : y + side, x : x + side] = True
        masks[split] = mask
    assert not (masks["train"] & masks["test"]).any()
    assert not (masks["train"] & masks["val"]).any()
    assert not (masks["val"] & masks["test"]).any()


def test_missing_file_names_file_root_and_url(tmp_path):
    with pytest.raises(DataNotFoundError) as error:
        load_split("dermamnist", "train", 64, tmp_path)
    message = str(error.value)
    assert "dermamnist_64.npz" in message and str(tmp_path) in message
    assert get_info("dermamnist").urls[64] in message


def test_unsupported_size(tmp_path):
    with pytest.raises(ConfigError, match="28, 64, 128, 224"):
        load_split("demo-med", "train", 32, tmp_path)


def _fake_breast(path, n_train=10, **overrides):
    arrays = {}
    for split, n in (("train", n_train), ("val", 4), ("test", 6)):
        arrays[f"{split}_images"] = np.random.default_rng(0).integers(0, 255, (n, 28, 28), np.uint8)
        arrays[f"{split}_labels"] = (np.arange(n) % 2).astype(np.uint8).reshape(-1, 1)
    arrays.update(overrides)
    np.savez_compressed(path, **arrays)


def test_non_official_copy_loads_with_warning(tmp_path):
    _fake_breast(tmp_path / "breastmnist.npz")
    with pytest.warns(NonOfficialDataWarning, match="non-official"):
        split = load_split("breastmnist", "train", 28, tmp_path)
    assert split.files[0].origin == "non-official"
    assert split.images.shape == (10, 28, 28, 1)
    np.testing.assert_array_equal(split.labels.ravel(), np.arange(10) % 2)


def test_file_that_is_not_medmnist_format(tmp_path):
    np.savez(tmp_path / "breastmnist.npz", train_images=np.zeros((3, 28, 28), np.uint8))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NonOfficialDataWarning)
        with pytest.raises(InvalidDataError, match="train_labels"):
            load_split("breastmnist", "train", 28, tmp_path)


def test_wrong_image_shape_is_rejected(tmp_path):
    _fake_breast(tmp_path / "breastmnist.npz", train_images=np.zeros((10, 28, 28, 3), np.uint8))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NonOfficialDataWarning)
        with pytest.raises(InvalidDataError, match="1 channel"):
            load_split("breastmnist", "train", 28, tmp_path)


@pytest.mark.parametrize("save", [np.savez, np.savez_compressed])
def test_npz_members_match_numpy(tmp_path, save):
    arrays = {"a": np.arange(60, dtype=np.int16).reshape(3, 4, 5), "b": np.ones((2, 2), ">f8")}
    save(tmp_path / "x.npz", **arrays)
    for key, value in arrays.items():
        read = npz.read_member(tmp_path / "x.npz", key)
        np.testing.assert_array_equal(read, value)
        assert read.dtype == value.dtype
    assert isinstance(npz.read_member(tmp_path / "x.npz", "a"), np.memmap) == (save is np.savez)


def test_multi_domain_offsets_labels_and_keeps_domain(data_root):
    both = load_split("demo-natural+demo-texture", "test", 28, data_root)
    assert len(both) == 1000 + 600
    assert both.sources == ("demo-natural", "demo-texture")
    np.testing.assert_array_equal(np.bincount(both.domains), [1000, 600])
    assert set(np.unique(both.labels[both.domains == 1])) == {5, 6, 7}
    assert len(dataset_classes("demo-natural+demo-texture")) == 8
    assert dataset_classes("organamnist+organcmnist") == get_info("organamnist").class_names
