"""The user's own datasets: image folders, CSV manifests and partial npz files in a data root."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from conftest import SHARED_DATA
from PIL import Image

from embedkit.data import find_dataset, get_info, load_split, parse_dataset_spec
from embedkit.data.listing import dataset_table
from embedkit.errors import DataNotFoundError, InvalidDataError, UnknownNameError

BREAST = SHARED_DATA / "medmnist" / "breastmnist.npz"
PATH_SUBSET = SHARED_DATA / "pathmnist_test_subset.npz"
real_breast = pytest.mark.skipif(not BREAST.is_file(), reason=f"{BREAST} absent")


def _write_three_ways(root: Path, images: dict, labels: dict) -> None:
    """The same images as an ImageFolder ``folder/``, a manifest ``manifest.csv`` and an npz
    ``packed.npz``, in the folder's order (class, then file name)."""
    rows = ["path,label,split"]
    ordered_images, ordered_labels = {}, {}
    for split in images:
        order = np.argsort(labels[split][:, 0], kind="stable")
        ordered_images[split] = images[split][order]
        ordered_labels[split] = labels[split][order]
        for i, (image, label) in enumerate(
            zip(ordered_images[split], ordered_labels[split][:, 0], strict=True)
        ):
            folder = root / "folder" / split / f"class{label}"
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image.squeeze()).save(folder / f"{i:04d}.png")
            rows.append(f"folder/{split}/class{label}/{i:04d}.png,{label},{split}")
    (root / "manifest.csv").write_text("\n".join(rows) + "\n")
    arrays = {f"{s}_images": a for s, a in ordered_images.items()}
    arrays |= {f"{s}_labels": a for s, a in ordered_labels.items()}
    np.savez(root / "packed.npz", **arrays)


@pytest.fixture(scope="module")
def breast_root(tmp_path_factory) -> Path:
    """60 images per split of the official BreastMNIST, three ways."""
    if not BREAST.is_file():
        pytest.skip(f"{BREAST} absent")
    root = tmp_path_factory.mktemp("user")
    with np.load(BREAST) as data:
        images = {s: data[f"{s}_images"][:60] for s in ("train", "val", "test")}
        labels = {s: data[f"{s}_labels"][:60].astype(np.int64) for s in images}
    _write_three_ways(root, images, labels)
    return root


@real_breast
def test_a_folder_a_manifest_and_an_npz_give_the_same_embeddings(breast_root, tmp_path):
    from embedkit.embed import EmbedConfig, embed

    for name in ("folder", "manifest", "packed"):
        info = get_info(name, breast_root)
        assert (info.family, info.task, info.n_channels) == ("user", "binary", 1)
        assert dict(info.n_samples) == {"train": 60, "val": 60, "test": 60}
    config = EmbedConfig(
        dataset="folder,manifest,packed", size=28, data_root=str(breast_root), batch_size=64
    )
    store = embed(config, tmp_path / "s.zarr", progress=False)
    for split in ("train", "val", "test"):
        folder, manifest, packed = (store.get(n, split) for n in ("folder", "manifest", "packed"))
        assert np.array_equal(folder.labels, packed.labels)
        assert np.array_equal(manifest.labels, packed.labels)
        assert np.array_equal(folder.embeddings, packed.embeddings)
        assert np.array_equal(manifest.embeddings, packed.embeddings)
    # the store records where each came from: the folder (a digest of names and bytes)
    attrs = store.split_attrs("folder", "test")["data_file"]
    assert attrs["path"] == str(breast_root / "folder") and attrs["origin"] == "user"
    assert len(attrs["md5"]) == 64
    assert store.split_attrs("manifest", "test")["data_file"]["path"].endswith("manifest.csv")


@real_breast
def test_the_real_images_come_back_unchanged_at_their_own_size(breast_root):
    with np.load(BREAST) as data:
        original = data["test_images"][:60]
        order = np.argsort(data["test_labels"][:60, 0], kind="stable")
    folder = load_split("folder", "test", 28, breast_root)
    assert folder.images.shape == (60, 28, 28, 1) and folder.images.dtype == np.uint8
    assert np.array_equal(folder.images[..., 0], original[order])
    # at 64 px: Pillow's bicubic resize of each image
    big = load_split("packed", "test", 64, breast_root)
    first = Image.fromarray(original[order][0]).resize((64, 64), Image.Resampling.BICUBIC)
    assert np.array_equal(big.images[0, ..., 0], np.asarray(first))


@pytest.mark.skipif(not PATH_SUBSET.is_file(), reason=f"{PATH_SUBSET} absent")
def test_a_test_only_npz_is_a_dataset_with_that_split(tmp_path):
    from embedkit.embed import EmbedConfig, embed
    from embedkit.errors import StoreError
    from embedkit.eval import ProbeConfig, probe

    shutil.copy(PATH_SUBSET, tmp_path / "path_external.npz")
    info = get_info("path_external", tmp_path)
    assert info.splits == ("test",) and info.n_samples["test"] == 718
    assert (info.task, info.n_channels, info.n_classes) == ("multi-class", 3, 9)
    with pytest.raises(DataNotFoundError, match="holds no train split"):
        load_split("path_external", "train", 28, tmp_path)
    store = embed(
        EmbedConfig(dataset="path_external", data_root=str(tmp_path)),
        tmp_path / "s.zarr",
        progress=False,
    )
    assert store.splits("path_external") == ["test"]
    with pytest.raises(StoreError, match="scored as OOD but not probed"):
        probe([store], ProbeConfig(datasets=("path_external",)))


def _png(path: Path, array: np.ndarray, mode: str | None = None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array, mode).save(path)


def _generated_folder(root: Path, name: str = "gen") -> Path:
    rng = np.random.default_rng(0)
    for split, n in (("train", 4), ("test", 2)):
        for i in range(n):
            _png(
                root / name / split / "grey" / f"{i}.png", rng.integers(0, 255, (50, 30), np.uint8)
            )
            _png(
                root / name / split / "rgb" / f"{i}.jpg",
                rng.integers(0, 255, (20, 40, 3), np.uint8),
            )
    return root / name


def test_images_of_any_size_and_mode_become_the_runs_size(tmp_path):
    _generated_folder(tmp_path)
    info = get_info("gen", tmp_path)
    assert info.n_channels == 3 and info.class_names == ("grey", "rgb")
    data = load_split("gen", "train", 28, tmp_path)
    assert data.images.shape == (8, 28, 28, 3)
    assert data.labels[:, 0].tolist() == [0, 0, 0, 0, 1, 1, 1, 1]
    grey = np.asarray(Image.open(tmp_path / "gen/train/grey/0.png"))
    expected = np.asarray(Image.fromarray(grey).resize((28, 28), Image.Resampling.BICUBIC))
    assert np.array_equal(data.images[0], np.repeat(expected[..., None], 3, axis=2))
    # crop: the centre square (grey 50x30 -> rows 10..40) before resizing
    (tmp_path / "gen.toml").write_text('resize = "crop"\nchannels = 1\n')
    cropped = load_split("gen", "train", 28, tmp_path)
    square = Image.fromarray(grey[10:40]).resize((28, 28), Image.Resampling.BICUBIC)
    assert cropped.images.shape[-1] == 1
    assert np.array_equal(cropped.images[0, ..., 0], np.asarray(square))


def test_sixteen_bit_images_are_scaled_from_their_own_range(tmp_path):
    values = np.linspace(1000, 3000, 28 * 28).reshape(28, 28).astype(np.uint16)
    for split in ("train", "test"):
        _png(tmp_path / "scan" / split / "a" / "0.png", values)
        _png(tmp_path / "scan" / split / "b" / "0.png", values)
    image = load_split("scan", "test", 28, tmp_path).images[0, ..., 0]
    assert image.min() == 0 and image.max() == 255
    assert np.abs(image - (values.astype(float) - 1000) * 255 / 2000).max() <= 0.5


def test_decoded_images_are_cached_by_content(tmp_path, monkeypatch):
    import embedkit.data.loading as loading

    _generated_folder(tmp_path)
    first = load_split("gen", "test", 28, tmp_path)
    monkeypatch.setattr(loading, "decode_files", lambda *a, **k: pytest.fail("decoded again"))
    again = load_split("gen", "test", 28, tmp_path)
    assert np.array_equal(first.images, again.images)
    monkeypatch.undo()
    _png(tmp_path / "gen/test/grey/0.png", np.zeros((50, 30), np.uint8))  # new bytes
    changed = load_split("gen", "test", 28, tmp_path)
    assert changed.images[0].max() == 0 and first.images[0].max() > 0
    assert changed.files[0].md5 != first.files[0].md5


def test_a_folder_without_splits_is_test_or_split_by_its_sidecar(tmp_path):
    rng = np.random.default_rng(1)
    for cls, n in (("a", 20), ("b", 10)):
        for i in range(n):
            _png(tmp_path / "flat" / cls / f"{i}.png", rng.integers(0, 255, (28, 28), np.uint8))
    assert get_info("flat", tmp_path).splits == ("test",)
    (tmp_path / "flat.toml").write_text("[split]\nval = 0.2\ntest = 0.3\nseed = 4\n")
    info = get_info("flat", tmp_path)
    assert dict(info.n_samples) == {"train": 15, "val": 6, "test": 9}
    test = load_split("flat", "test", 28, tmp_path)
    assert np.bincount(test.labels[:, 0]).tolist() == [6, 3]  # stratified
    (tmp_path / "flat.toml").write_text("[split]\nval = 0.2\ntest = 0.3\nseed = 5\n")
    other = load_split("flat", "test", 28, tmp_path)
    assert not np.array_equal(other.images, test.images)  # the seed decides
    (tmp_path / "flat.toml").write_text('[split]\nonly = "train"\n')
    assert get_info("flat", tmp_path).splits == ("train",)


def test_multi_label_manifests(tmp_path):
    rng = np.random.default_rng(2)
    for i in range(4):
        _png(tmp_path / "img" / f"{i}.png", rng.integers(0, 255, (28, 28), np.uint8))
    (tmp_path / "tags.csv").write_text(
        "path,labels,split\nimg/0.png,cyst;nodule,train\nimg/1.png,,train\n"
        "img/2.png,nodule,test\nimg/3.png,cyst,test\n"
    )
    info = get_info("tags", tmp_path)
    assert (info.task, info.class_names) == ("multi-label", ("cyst", "nodule"))
    assert load_split("tags", "train", 28, tmp_path).labels.tolist() == [[1, 1], [0, 0]]
    (tmp_path / "cols.csv").write_text(
        "path,effusion,mass\nimg/0.png,1,0\nimg/1.png,0,1\nimg/2.png,1,1\n"
    )
    cols = load_split("cols", "test", 28, tmp_path)  # no split column: all is test
    assert cols.labels.tolist() == [[1, 0], [0, 1], [1, 1]]
    assert get_info("cols", tmp_path).class_names == ("effusion", "mass")


def test_user_datasets_combine_with_registered_ones(data_root, tmp_path):
    for name in ("demo-med", "demo-texture"):  # a root with the demo family and one folder
        for f in data_root.glob(f"{name}*.npz"):
            shutil.copy(f, tmp_path / f.name)
    _generated_folder(tmp_path)
    assert parse_dataset_spec("demo-med+gen", tmp_path) == ["demo-med+gen"]
    mixed = load_split("demo-med+gen", "test", 28, tmp_path)
    assert mixed.sources == ("demo-med", "gen")
    users = dataset_table(tmp_path).filter(pl.col("family") == "user")["dataset"].to_list()
    assert users == ["gen"]  # the demo family's files are not the user's
    assert mixed.images.shape[-1] == 3  # grey demo images repeated to RGB
    assert set(np.unique(mixed.labels[mixed.domains == 1])) == {3, 4}  # offset past demo-med


def test_datasets_lists_the_users_with_their_source_and_splits(tmp_path):
    _generated_folder(tmp_path)
    if PATH_SUBSET.is_file():
        shutil.copy(PATH_SUBSET, tmp_path / "ext.npz")
    (tmp_path / "broken.csv").write_text("file,label\nx.png,0\n")
    (tmp_path / "medmnist").mkdir()  # a folder of npz files (another data root): not listed
    np.savez(tmp_path / "medmnist" / "breastmnist.npz", x=np.zeros(1))
    table = dataset_table(tmp_path)
    assert "medmnist" not in table["dataset"].to_list()
    gen = table.filter(table["dataset"] == "gen").row(0, named=True)
    assert (gen["family"], gen["train"], gen["val"], gen["test"]) == ("user", 8, None, 4)
    assert gen["source"] == str(tmp_path / "gen")
    broken = table.filter(table["dataset"] == "broken").row(0, named=True)
    assert "no 'path' column" in broken["to_get"]
    if PATH_SUBSET.is_file():
        ext = table.filter(table["dataset"] == "ext").row(0, named=True)
        assert (ext["train"], ext["test"], ext["channels"]) == (None, 718, 3)


# --- bad input: one line naming the file ---------------------------------------------------


def _bad(tmp_path: Path, case: str) -> tuple[str, str]:
    """Make a broken dataset; return (its name, what the error says)."""
    rng = np.random.default_rng(3)
    image = rng.integers(0, 255, (28, 28), np.uint8)
    if case == "empty folder":
        (tmp_path / "empty" / "train" / "a").mkdir(parents=True)
        return "empty", "holds no images"
    if case == "corrupt image":
        _generated_folder(tmp_path, "corrupt")
        (tmp_path / "corrupt/test/grey/1.png").write_bytes(b"not a png")
        return "corrupt", "corrupt/test/grey/1.png cannot be decoded"
    if case == "class in test only":
        _png(tmp_path / "only/train/a/0.png", image)
        _png(tmp_path / "only/test/a/0.png", image)
        _png(tmp_path / "only/test/b/0.png", image)
        return "only", "class b is in test but not in train"
    if case == "manifest without label":
        _png(tmp_path / "x.png", image)
        (tmp_path / "nolabel.csv").write_text("path,split\nx.png,test\n")
        return "nolabel", "no label column"
    if case == "manifest with missing paths":
        (tmp_path / "gone.csv").write_text("path,label\nmissing.png,0\nalso.png,1\n")
        return "gone", "2 listed image(s) not found, the first"
    if case == "clash with medmnist":
        _png(tmp_path / "breastmnist/test/a/0.png", image)
        return "breastmnist", "named like the registered dataset breastmnist"
    if case == "bad sidecar":
        _generated_folder(tmp_path, "side")
        (tmp_path / "side.toml").write_text('task = "regression"\n')
        return "side", "task = 'regression'"
    raise AssertionError(case)


BAD = (
    "empty folder",
    "corrupt image",
    "class in test only",
    "manifest without label",
    "manifest with missing paths",
    "clash with medmnist",
    "bad sidecar",
)


@pytest.mark.parametrize("case", BAD)
def test_bad_user_data_is_one_line_exit_2_and_nothing_written(tmp_path, case):
    from typer.testing import CliRunner

    from embedkit.cli.main import app

    root = tmp_path / "root"
    root.mkdir()
    name, says = _bad(root, case)
    store = tmp_path / "s.zarr"
    result = CliRunner().invoke(
        app, ["embed", "--dataset", name, "--data-root", str(root), "--store", str(store)]
    )
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and says in lines[0], result.output
    assert "Traceback" not in result.output
    assert not store.exists()


def test_unreadable_images_can_be_skipped_and_are_recorded(tmp_path):
    from embedkit.embed import EmbedConfig, embed

    _generated_folder(tmp_path, "corrupt")
    (tmp_path / "corrupt/test/grey/1.png").write_bytes(b"not a png")
    with pytest.raises(InvalidDataError, match="skip_unreadable = true"):
        load_split("corrupt", "test", 28, tmp_path)
    (tmp_path / "corrupt.toml").write_text("skip_unreadable = true\n")
    data = load_split("corrupt", "test", 28, tmp_path)
    assert len(data) == 3 and data.indices.tolist() == [0, 2, 3]
    assert data.labels[:, 0].tolist() == [0, 1, 1]
    assert data.files[0].skipped == ("test/grey/1.png",)
    store = embed(
        EmbedConfig(dataset="corrupt", data_root=str(tmp_path), splits=("test",)),
        tmp_path / "s.zarr",
        progress=False,
    )
    assert store.split_attrs("corrupt", "test")["data_file"]["skipped"] == ["test/grey/1.png"]
    assert store.get("corrupt", "test").indices.tolist() == [0, 2, 3]


def test_unknown_names_say_where_they_were_looked_for(tmp_path):
    _generated_folder(tmp_path)
    with pytest.raises(UnknownNameError, match=r"did you mean gen\b.*nor is there a folder"):
        get_info("gem", tmp_path)
    assert find_dataset("pneumoniamnist", tmp_path) is None  # registered names stay theirs


def test_a_dataset_found_twice_is_refused(tmp_path):
    _generated_folder(tmp_path)
    (tmp_path / "gen.csv").write_text("path,label\ngen/test/grey/0.png,0\n")
    with pytest.raises(InvalidDataError, match="two datasets named gen"):
        get_info("gen", tmp_path)


def test_the_cache_entry_is_whole_or_absent(tmp_path, monkeypatch):
    from embedkit.data import images

    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    _generated_folder(tmp_path)
    load_split("gen", "test", 28, tmp_path)
    entries = list(images.cache_folder().glob("*.json"))
    assert entries and all(json.loads(e.read_text()) == {"skipped": []} for e in entries)
    assert not list(images.cache_folder().glob(".*"))  # no temporary file left


def test_a_cache_that_cannot_be_written_only_costs_a_decode(tmp_path, monkeypatch):
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("")
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocked))
    _generated_folder(tmp_path, "corrupt")
    (tmp_path / "corrupt/test/grey/1.png").write_bytes(b"not a png")
    (tmp_path / "corrupt.toml").write_text("skip_unreadable = true\n")
    data = load_split("corrupt", "test", 28, tmp_path)
    assert data.images.shape == (3, 28, 28, 3) and data.indices.tolist() == [0, 2, 3]
    expected = Image.open(tmp_path / "corrupt/test/rgb/0.jpg").convert("RGB")
    expected = expected.resize((28, 28), Image.Resampling.BICUBIC)
    assert np.array_equal(data.images[1], np.asarray(expected))
