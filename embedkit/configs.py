"""Every stage's configuration: frozen dataclasses, with no heavy import.

One source for every option: the library's functions take these, the CLI takes its options'
defaults from their fields (``--help`` stays fast: nothing here imports torch), a run's
``config.json`` and grid files use their field names, and ``--config FILE`` takes the same
names. Each stage re-exports its own (``embedkit.pretrain.PretrainConfig``, ...).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

# Pretraining recipes: the optimisation settings a ``PretrainConfig`` takes where its fields
# are left unset (None). ``paper`` is the benchmark's protocol, made for hundreds of GPU
# epochs; ``small`` is for a few CPU minutes (BENCHMARKS.md, "Small budgets"): on real
# PneumoniaMNIST, 5 epochs of SimCLR give a probe AUC of 0.91 with it against 0.77 with
# ``paper``. ``small`` also picks the augmentations for the modality (``grayscale-medical``
# for grey datasets, ``color-medical`` for colour ones) and 2048-d projectors for VICReg and
# Barlow Twins, unless ``method_params`` says otherwise (``recipe_method_params``).
RECIPES: dict[str, dict[str, Any]] = {
    "paper": {"batch_size": 256, "lr": 3e-4, "warmup_fraction": 0.1, "warmup_steps": 0},
    "small": {"batch_size": 128, "lr": 1e-3, "warmup_fraction": 0.0, "warmup_steps": 20},
}
# what ``small`` sets in a method's parameters, per method (``None``: every method)
SMALL_METHOD_PARAMS: dict[str | None, dict[str, Any]] = {
    "vicreg": {"hidden_dim": 2048, "projection_dim": 2048},
    "barlowtwins": {"hidden_dim": 2048, "projection_dim": 2048},
}


def recipe_method_params(
    recipe: str, method: str, params: Mapping[str, Any], channels: int
) -> dict[str, Any]:
    """``params`` with what ``recipe`` adds for ``method`` on images of ``channels``
    channels; the user's own parameters win."""
    if recipe != "small":
        return dict(params)
    added: dict[str, Any] = {"augment": "grayscale-medical" if channels == 1 else "color-medical"}
    added.update(SMALL_METHOD_PARAMS.get(method, {}))
    return {**added, **params}


@dataclass(frozen=True)
class PretrainConfig:
    """How an encoder is pretrained; saved as ``config.json`` in the run folder.

    Attributes:
        dataset: a dataset entry (``pathmnist``, ``organamnist+organcmnist``); train split.
        size: image size in pixels.
        method: a registered method (``embedkit.methods.METHODS``).
        backbone: a registered backbone (``embedkit.backbones.BACKBONES``).
        init: ``random``, ``imagenet``, ``timm:TAG`` or a weights file.
        patch_size: ViT patch size; 0 picks one for ``size``.
        recipe: ``paper`` (the benchmark's protocol, for long runs) or ``small`` (for a few
            CPU minutes); it sets the options below left unset (``RECIPES``) and, for
            ``small``, the augmentations for the modality (``recipe_method_params``).
        epochs: passes over the training split.
        batch_size: global images per forward pass (the last partial batch is dropped);
            unset: the recipe's (paper 256, small 128).
        accumulate: forward passes per optimiser step (gradient accumulation).
        lr: peak AdamW learning rate, reached after warmup; unset: the recipe's (paper 3e-4,
            small 1e-3).
        weight_decay: AdamW weight decay.
        warmup_fraction: share of the steps with linear warmup before the cosine decay;
            unset: the recipe's (paper 0.1, small 0).
        warmup_steps: linear warmup steps, added to ``warmup_fraction``'s; unset: the
            recipe's (paper 0, small 20).
        seed: seeds initialisation, sampling order and augmentations.
        data_fraction: share of the training images to pretrain on (above 0, at most 1): a
            seeded subset stratified over domains and classes (``SplitData.pretraining_rows``),
            for studies of the amount of unlabelled data; ``config.json`` records the
            number of rows and their SHA-256 (``n_train``, ``n_train_split``,
            ``train_rows_sha256``).
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
        devices: processes per node (GPUs, or CPU processes on the gloo backend).
        num_nodes: machines.
        precision: a Fabric precision; ``auto`` is ``bf16-mixed`` on GPU, ``32-true`` on CPU.
        compile: ``torch.compile`` the backbone, and the method's loss where that pays
            (``PretrainMethod.compile_loss``: DINO's and MoCo v1/v2's).
        data_root: where the npz files are (see ``embedkit.data.data_root``).
        download: fetch missing MedMNIST files with medmnist's downloader.
        checkpoint_every: save a checkpoint every this many epochs (and at the end).
        knn_every: run the online kNN monitor on the val split every this many epochs (0: off).
        loggers: experiment loggers besides ``metrics.jsonl``: ``csv``, ``tensorboard``,
            ``wandb`` (see ``embedkit.pretrain.loggers``).
        method_params: overrides of the method's ``Config`` fields.
    """

    dataset: str = "demo-med"
    size: int = 28
    method: str = "simclr"
    backbone: str = "resnet18"
    init: str = "random"
    patch_size: int = 0
    recipe: str = "paper"
    epochs: int = 100
    batch_size: int | None = None
    accumulate: int = 1
    lr: float | None = None
    weight_decay: float = 0.05
    warmup_fraction: float | None = None
    warmup_steps: int | None = None
    seed: int = 0
    data_fraction: float = 1.0
    device: str = "auto"
    devices: int = 1
    num_nodes: int = 1
    precision: str = "auto"
    compile: bool = False
    data_root: str | None = None
    download: bool = False
    checkpoint_every: int = 1
    knn_every: int = 0
    loggers: tuple[str, ...] = ()
    method_params: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # an unknown recipe resolves as ``paper`` here and is refused by ``pretrain``'s checks
        for name, value in RECIPES.get(self.recipe, RECIPES["paper"]).items():
            if getattr(self, name) is None:
                object.__setattr__(self, name, value)


@dataclass(frozen=True)
class EmbedConfig:
    """What to embed with which encoder.

    Attributes:
        dataset: a ``--dataset`` value; multi-domain entries are stored per component;
            ``all`` embeds every MedMNIST dataset present in the data root (listing the
            missing ones).
        splits: the splits to embed.
        size: image size in pixels (the encoder sees images at this size).
        run: a pretraining run folder; when set, ``backbone`` and ``init`` come from it.
        backbone: a registered backbone (without ``run``).
        init: ``random``, ``imagenet``, ``timm:TAG`` or a weights file (without ``run``).
        seed: seeds a random initialisation.
        batch_size: images per forward pass.
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
        data_root: where the npz files are.
        download: fetch missing MedMNIST files with medmnist's downloader.
        overwrite: replace splits already in the store, and allow another encoder's store.
        resume: continue splits an interrupted run left staged (else they start over).
        dtype: ``float32`` or ``float16`` embeddings on disk.
        with_head: also store the run's projection-head output (``projections``).
    """

    dataset: str = "all"
    splits: tuple[str, ...] = ("train", "val", "test")
    size: int = 28
    run: str | None = None
    backbone: str = "resnet18"
    init: str = "random"
    seed: int = 0
    batch_size: int = 256
    device: str = "auto"
    data_root: str | None = None
    download: bool = False
    overwrite: bool = False
    resume: bool = False
    dtype: str = "float32"
    with_head: bool = False


@dataclass(frozen=True)
class ProbeConfig:
    """Linear-probe protocol.

    Attributes:
        datasets: datasets to probe; none (``all`` on the command line) means every dataset in
            the store.
        label_fractions: shares of the training labels, each in (0, 1].
        seeds: one subset per seed (fraction 1.0 uses the whole split, so one seed).
        protocol: ``newton`` (full batch, exact; default), ``lbfgs`` (full batch, the same
            optimum by L-BFGS) or ``sgd`` (the paper's 100 epochs of mini-batches).
        l2_grid: L2 strengths (weight decay for ``sgd``) tried on the validation split.
        lr_grid: learning rates tried with ``sgd``.
        epochs: epochs of the ``sgd`` protocol.
        device: ``auto``, ``cpu`` or ``cuda``.
    """

    datasets: tuple[str, ...] = ()
    label_fractions: tuple[float, ...] = (0.01, 0.1, 1.0)
    seeds: tuple[int, ...] = (0, 1, 2, 3, 4)
    protocol: str = "newton"
    l2_grid: tuple[float, ...] = (1e-5, 1e-4, 1e-3, 1e-2, 1e-1)
    lr_grid: tuple[float, ...] = (0.01, 0.1)
    epochs: int = 100
    device: str = "auto"


@dataclass(frozen=True)
class TransferConfig:
    """Transfer protocol.

    Attributes:
        datasets: target datasets; none (``all`` on the command line) means every dataset all
            stores share.
        probe: the linear-probe protocol applied to every (encoder, target) pair.
        metric: the metric the matrix shows (``accuracy``, ``auc`` or
            ``balanced_accuracy``); the table holds all three, and the report reads this
            choice from the table's provenance.
    """

    datasets: tuple[str, ...] = ()
    probe: ProbeConfig = ProbeConfig(label_fractions=(1.0,), seeds=(0,))
    metric: str = "accuracy"


@dataclass(frozen=True)
class KNNVote:
    """How the neighbours of a query vote (``knn_predict``).

    Attributes:
        k: neighbours.
        temperature: softness of the weighted vote.
        weighting: ``weighted`` or ``majority``.
        metric: ``cosine`` or ``l2``.
    """

    k: int = 20
    temperature: float = 0.07
    weighting: str = "weighted"
    metric: str = "cosine"


@dataclass(frozen=True)
class KNNConfig(KNNVote):
    """kNN classification protocol: the vote (``k``, ``temperature``, ``weighting``,
    ``metric``; see ``embedkit.primitives.neighbors.KNNVote``) and the datasets to classify.

    Attributes:
        datasets: datasets to classify; none (``all`` on the command line) means every dataset
            in the store.
    """

    datasets: tuple[str, ...] = ()


@dataclass(frozen=True)
class OODConfig:
    """Which pairs and scorers to evaluate.

    Attributes:
        id_datasets: in-distribution datasets; none (``all`` on the command line) means every
            dataset in the store.
        ood_datasets: OOD datasets; none (``all`` on the command line) means every other dataset
            in the store.
        scorers: registry names, ``path/to/file.py:ClassName`` plug-ins, or scorer classes.
        scorer_params: keyword arguments per scorer name, e.g. ``{"knn": {"k": 50}}``.
        ood_splits: ``test`` (the test split of each OOD dataset) or ``all`` (every split).
        save_scores: a folder for the per-sample scores (one parquet per encoder, ID dataset
            and scorer: dataset, split, index, score, is_ood), or None.
        ood_groups: named groups of OOD datasets, e.g. ``{"near": ("a", "b"), "far": ("c",)}``,
            as OpenOOD reports near- and far-OOD separately: each row gets its dataset's
            group in ``ood_group`` (null outside every group), and ``summarise_ood_groups``
            averages per group.
    """

    id_datasets: tuple[str, ...] = ()
    ood_datasets: tuple[str, ...] = ()
    scorers: tuple[Any, ...] = ("knn",)
    scorer_params: dict[str, dict[str, Any]] = field(default_factory=dict)
    ood_splits: str = "test"
    save_scores: str | None = None
    ood_groups: dict[str, tuple[str, ...]] = field(default_factory=dict)


@dataclass(frozen=True)
class ExploreConfig:
    """What an explorer page shows (``embedkit.explore``).

    Attributes:
        datasets: datasets to show; none means every dataset of the (first) store.
        splits: splits to show (those a dataset lacks are skipped).
        scores: a folder of per-sample OOD scores (``ood --save-scores``) to colour and
            filter by, or None.
        max_points: at most this many points (a seeded subsample beyond it).
        k: nearest neighbours shown for a clicked point.
        projection: ``auto`` (UMAP when umap-learn is installed, else PCA), ``pca`` or
            ``umap``.
        thumbnail: thumbnail side in pixels (images are resized to it).
        seed: seeds the subsample and the projection.
    """

    datasets: tuple[str, ...] = ()
    splits: tuple[str, ...] = ("train", "val", "test")
    scores: str | None = None
    max_points: int = 20_000
    k: int = 8
    projection: str = "auto"
    thumbnail: int = 28
    seed: int = 0


@dataclass(frozen=True)
class QuickstartConfig:
    """The quickstart's settings; defaults finish in about 2 minutes on 2 CPU cores.

    10 epochs of the ``small`` recipe: SimCLR beats random weights on every column of the
    summary there, with AVX-512 and with AVX2 kernels; from 20 epochs on (and at 15 with
    AVX2 kernels), its near-OOD (texture) AUROC falls below random weights' on this
    1,200-image toy set (BENCHMARKS.md, "Quickstart").

    Attributes:
        size, backbone, epochs, batch_size, seed, device, data_root: as for ``pretrain``.
        recipe: the pretraining recipe (``small``: a few CPU minutes, see ``RECIPES``).
        label_fractions, seeds: of the linear probe.
    """

    size: int = 28
    backbone: str = "resnet18"
    recipe: str = "small"
    epochs: int = 10
    batch_size: int = 128
    seed: int = 0
    device: str = "auto"
    data_root: str | None = None
    label_fractions: tuple[float, ...] = (0.01, 0.1, 1.0)
    seeds: tuple[int, ...] = (0, 1, 2)
