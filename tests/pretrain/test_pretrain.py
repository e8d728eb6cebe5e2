import json
import math

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from embedkit.augment import AugmentConfig, BatchAugment
from embedkit.backbones import BACKBONES, create_encoder, state_sha256
from embedkit.errors import ConfigError, RunError, UnknownNameError
from embedkit.methods import METHODS, get_method
from embedkit.pretrain import PretrainConfig, pretrain


def _batch(n=16, channels=1, size=28, seed=0):
    return torch.rand(n, channels, size, size, generator=torch.Generator().manual_seed(seed))


def _stem(encoder):
    backbone = encoder.backbone
    return (
        backbone.patch_embed.proj.weight
        if hasattr(backbone, "patch_embed")
        else backbone.conv1.weight
    )


SMALL = {
    "dino": {"output_dim": 1024, "hidden_dim": 512},
    "mocov3": {"hidden_dim": 1024},
    "barlowtwins": {"hidden_dim": 1024, "projection_dim": 1024},
    "vicreg": {"hidden_dim": 1024, "projection_dim": 1024},
    "byol": {"hidden_dim": 512},
    "tico": {"hidden_dim": 512},
    "nnclr": {"hidden_dim": 512, "prediction_hidden_dim": 512},
    "swav": {"n_prototypes": 300, "n_local": 2},
    "mae": {"decoder_depth": 2, "decoder_dim": 128},
    "msn": {"hidden_dim": 512, "n_prototypes": 128, "n_focal": 2},
}


def _backbone(name: str) -> str:
    """The CPU-friendly backbone a method trains (a ViT for those that mask patches)."""
    return "vit_tiny" if METHODS[name].vit_only else "resnet18"


@pytest.mark.parametrize(
    ("name", "backbone"),
    [
        (name, backbone)
        for name in sorted(METHODS)
        for backbone in ("resnet18", "vit_tiny")
        if backbone == _backbone(name) or not METHODS[name].vit_only
    ],
)
def test_method_loss_is_finite_and_reaches_the_backbone(name, backbone):
    torch.manual_seed(0)
    cls = get_method(name)
    encoder = create_encoder(backbone, image_size=28)
    method = cls(encoder, cls.Config(**SMALL.get(name, {})), 28, n_classes=3)
    loss = method.training_step(
        _batch(), torch.zeros(16, 1, dtype=torch.long), torch.Generator().manual_seed(0)
    )
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    stem = _stem(method.encoder).grad
    assert stem is not None and stem.abs().sum() > 0


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_backbone_features(name):
    encoder = create_encoder(name, image_size=28).eval()
    with torch.no_grad():
        gray, rgb = encoder(_batch(2, 1)), encoder(_batch(2, 3))
    assert gray.shape == rgb.shape == (2, encoder.feature_dim)


def test_unknown_method_lists_valid_ones():
    with pytest.raises(
        UnknownNameError, match="did you mean simclr.*valid methods: barlowtwins, byol, dcl, dino"
    ):
        get_method("simclrr")


def test_host_sync_probe_sees_what_would_stall_a_gpu():
    from embedkit.host_syncs import HostSyncs

    x = torch.rand(6)
    with HostSyncs() as syncs:
        x.sum().item()
        x[x > 0.5]
        torch.tensor([1.0, 2.0], device=x.device)
        torch.linalg.inv(torch.eye(3) + 1)
        y = x * 2 + x.exp()  # queued work, no waiting
    ops = sorted(op for op, _ in syncs.found)
    assert ops == ["_linalg_check_errors", "_local_scalar_dense", "index.Tensor", "lift_fresh"]
    assert all(where.startswith("tests/pretrain/test_pretrain.py:") for _, where in syncs.found)
    assert syncs.count == 4 and y.shape == (6,)


@pytest.mark.parametrize("name", sorted(METHODS))
def test_a_training_step_never_waits_for_the_device(name):
    """A full step (augmentation of colour images, networks, loss, backward, the fused AdamW
    the loop uses, momentum updates) has none of the operations that make the host wait for
    a GPU, so the host can queue the next step while the device runs this one."""
    from embedkit.host_syncs import HostSyncs
    from embedkit.pretrain.engine import make_optimizer

    torch.manual_seed(0)
    cls = get_method(name)
    encoder = create_encoder(_backbone(name), image_size=28)
    method = cls(encoder, cls.Config(**SMALL.get(name, {})), 28, 3).train()
    optimizer = make_optimizer(method.parameters(), 1e-3, 0.05, torch.device("cpu"))
    images, labels = _batch(8, 3), torch.randint(0, 3, (8, 1))
    generator = torch.Generator().manual_seed(0)

    def step():
        loss = method.training_step(images, labels, generator)
        loss.backward()
        method.before_optimizer_step()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        method.after_step(0.5)

    step()  # the first step builds cached constants and the optimiser's state
    with HostSyncs() as syncs:
        step()
    assert syncs.count == 0, syncs.summary()


@pytest.mark.parametrize("channels", [1, 3])
def test_batch_augment_is_seeded_and_per_sample(channels):
    augment = BatchAugment(28, AugmentConfig())
    images = _batch(8, channels)
    a = augment(images, torch.Generator().manual_seed(1))
    b = augment(images, torch.Generator().manual_seed(1))
    c = augment(images, torch.Generator().manual_seed(2))
    assert a.shape == images.shape and a.min() >= 0 and a.max() <= 1
    torch.testing.assert_close(a, b)
    assert not torch.allclose(a, c)
    same = augment(images[:1].expand(8, -1, -1, -1), torch.Generator().manual_seed(3))
    assert (same - same[:1]).abs().flatten(1).amax(1)[1:].min() > 0.01  # each sample its own view


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_hue_rotation_is_a_rotation_of_the_iq_plane(dtype):
    """The per-sample RGB matrix built from constants equals converting to YIQ, rotating
    (I, Q) and converting back; it keeps luma and is the identity at angle 0."""
    from embedkit.augment import _matrix, hue_matrices

    to_yiq = torch.tensor(
        [[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]], dtype=dtype
    )
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(6, 3, 5, 7, dtype=dtype, generator=generator)
    angle = (torch.rand(6, dtype=dtype, generator=generator) - 0.5) * 2.5
    angle[0] = 0.0
    yiq = torch.einsum("ij,bjhw->bihw", to_yiq, images)
    cos, sin = torch.cos(angle).view(-1, 1, 1), torch.sin(angle).view(-1, 1, 1)
    i, q = yiq[:, 1], yiq[:, 2]
    rotated = torch.stack([yiq[:, 0], cos * i - sin * q, sin * i + cos * q], dim=1)
    expected = torch.einsum("ij,bjhw->bihw", torch.linalg.inv(to_yiq), rotated)
    got = _matrix(images, torch.from_numpy(hue_matrices(angle.double().numpy())).to(dtype))
    tolerance = 1e-12 if dtype == torch.float64 else 1e-6
    torch.testing.assert_close(got, expected, rtol=0, atol=tolerance)
    torch.testing.assert_close(got[0], images[0], rtol=0, atol=tolerance)
    luma = torch.tensor([0.299, 0.587, 0.114], dtype=dtype).view(1, 3, 1, 1)
    torch.testing.assert_close((got * luma).sum(1), (images * luma).sum(1), rtol=0, atol=tolerance)
    assert (got[1:] - images[1:]).abs().amax() > 0.05


_NO_CROP = dict(min_scale=1.0, ratio=(1.0, 1.0), hflip_prob=0.0)
_ALONE = dict(  # every step off; a case turns one on
    jitter_prob=1.0,
    brightness=0.0,
    contrast=0.0,
    saturation=0.0,
    hue=0.0,
    grayscale_prob=0.0,
    blur_prob=0.0,
)


def _luma(x):
    return (x * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True)


@pytest.mark.parametrize(
    "step", ["brightness", "contrast", "saturation", "grayscale", "blur", "solarize"]
)
def test_each_augmentation_step_does_what_it_says(step):
    """Each colour step alone, on uncropped images, against its definition; the per-sample
    factors come out of the images and must lie in the configured range and differ."""
    images = 0.4 + 0.2 * _batch(6, 3, seed=4)  # no step can push these past 0 or 1
    changes = {
        "brightness": {"brightness": 0.4},
        "contrast": {"contrast": 0.4},
        "saturation": {"saturation": 0.4},
        "grayscale": {"jitter_prob": 0.0, "grayscale_prob": 1.0},
        "blur": {"jitter_prob": 0.0, "blur_prob": 1.0, "blur_sigma": (2.0, 2.0)},
        "solarize": {"jitter_prob": 0.0, "solarize_prob": 1.0},
    }[step]
    config = AugmentConfig(**{**_NO_CROP, **_ALONE, **changes})
    out = BatchAugment(28, config)(images, torch.Generator().manual_seed(5))
    close = dict(rtol=0, atol=2e-6)
    if step in ("brightness", "contrast", "saturation"):
        # out = r + f (x - r) for one factor f per sample around a reference r
        reference = {"brightness": 0 * images, "contrast": _luma(images).mean((2, 3), True)}
        reference = reference.get(step, _luma(images).expand_as(images))
        x, y = (images - reference).flatten(1), (out - reference).flatten(1)
        factor = (x * y).sum(1) / (x * x).sum(1)
        torch.testing.assert_close(y, factor.view(-1, 1) * x, **close)
        assert factor.min() >= 0.6 - 1e-6 and factor.max() <= 1.4 + 1e-6
        assert factor.std() > 0.05
    elif step == "grayscale":
        torch.testing.assert_close(out, _luma(images).expand_as(images), **close)
    elif step == "blur":
        from torchvision.transforms.functional import gaussian_blur

        sigma = 2.0 * 28 / 224  # blur sigmas scale with the image side
        radius = math.ceil(3 * sigma)
        expected = gaussian_blur(images, [2 * radius + 1] * 2, [sigma, sigma])
        torch.testing.assert_close(out, expected, **close)
    else:
        torch.testing.assert_close(out, torch.where(images >= 0.5, 1 - images, images))


def test_each_sample_is_blurred_with_its_own_sigma():
    """The blur's kernels are one per sample and channel: each image of a colour batch
    equals torchvision's blur at the sigma drawn for it (column 11 of ``_draw``)."""
    from torchvision.transforms.functional import gaussian_blur

    low, high = 0.5, 2.0
    config = AugmentConfig(**{**_NO_CROP, **_ALONE, "jitter_prob": 0.0, "blur_prob": 1.0})
    config = AugmentConfig(**{**config.__dict__, "blur_sigma": (low, high)})
    images = _batch(6, 3, seed=2)
    out = BatchAugment(28, config)(images, torch.Generator().manual_seed(8))
    u = torch.rand(6, 14, generator=torch.Generator().manual_seed(8), dtype=torch.float64)
    sigmas = (low + (high - low) * u[:, 11]) * 28 / 224
    radius = math.ceil(3 * high * 28 / 224)
    for image, blurred, sigma in zip(images, out, sigmas.tolist(), strict=True):
        expected = gaussian_blur(image, [2 * radius + 1] * 2, [sigma, sigma])
        torch.testing.assert_close(blurred, expected, rtol=0, atol=5e-6)
    assert sigmas.max() - sigmas.min() > 0.05  # the samples' sigmas differ


def test_solarisation_is_exact_per_sample():
    """Solarised samples are exactly ``where(x >= 0.5, 1 - x, x)`` of the same crop, pixels of
    0.5, above 1 and below 0 included; the others are the crop itself, bit for bit."""
    from embedkit import augment

    images = _batch(12, 3, seed=8)
    images[:, 0, :4, :4] = 0.5
    images[:, 1, :2, :2] = torch.tensor([1 + 2**-20, -(2**-20)]).view(2, 1)
    alone = {**_NO_CROP, **_ALONE, "jitter_prob": 0.0}  # no clamp either
    config = AugmentConfig(**alone, solarize_prob=0.5)
    out = BatchAugment(28, config)(images, torch.Generator().manual_seed(3))
    crop = BatchAugment(28, AugmentConfig(**alone))
    same = crop(images, torch.Generator().manual_seed(3))  # the same draws, unsolarised
    draws = dict(generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    solarised = (torch.rand(12, augment._N_DRAWS, **draws)[:, 13] < 0.5).tolist()  # _draw's
    assert 0 < sum(solarised) < 12
    assert (same == 0.5).any() and (same > 1).any() and (same < 0).any()
    for view, x, flipped in zip(out, same, solarised, strict=True):
        expected = torch.where(x >= 0.5, 1 - x, x) if flipped else x
        assert torch.equal(view, expected)


def test_colour_jitter_equals_its_steps_one_after_another():
    """Brightness, contrast (around the mean luma), saturation, clamp, hue, clamp, applied
    one after another with the factors of the same draws (columns 6-9 of ``_draw``): the
    per-sample matrices give the same images."""
    config = AugmentConfig(**_NO_CROP, jitter_prob=1.0, grayscale_prob=0.0, blur_prob=0.0)
    images = _batch(8, 3, seed=1)
    out = BatchAugment(28, config)(images, torch.Generator().manual_seed(3))
    u = torch.rand(8, 14, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    u = u.float()
    b, c, s = (0.2 + 1.6 * u[:, column].view(-1, 1, 1, 1) for column in (6, 7, 8))
    angle = (-0.2 + 0.4 * u[:, 9]) * 2 * math.pi
    x = images * b
    mean = _luma(x).mean((1, 2, 3), keepdim=True)
    x = (x - mean) * c + mean
    x = (x - _luma(x)) * s + _luma(x)
    to_yiq = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])
    yiq = torch.einsum("ij,bjhw->bihw", to_yiq, x.clamp(0, 1))
    cos, sin = torch.cos(angle).view(-1, 1, 1), torch.sin(angle).view(-1, 1, 1)
    i, q = yiq[:, 1], yiq[:, 2]
    yiq = torch.stack([yiq[:, 0], cos * i - sin * q, sin * i + cos * q], dim=1)
    expected = torch.einsum("ij,bjhw->bihw", torch.linalg.inv(to_yiq), yiq).clamp(0, 1)
    torch.testing.assert_close(out, expected, rtol=0, atol=2e-5)
    assert (out - images).abs().amax() > 0.1


def test_views_augmented_in_one_call_equal_separate_calls(monkeypatch):
    """Differently configured views of one size in one call: the views that separate calls
    with the same generator give, with each run of one config drawn at once."""
    from embedkit import augment
    from embedkit.augment import augment_views

    images = _batch(5, 3, seed=6)
    first = BatchAugment(28, AugmentConfig(blur_prob=1.0))
    second = BatchAugment(28, AugmentConfig(solarize_prob=0.5, min_scale=0.5))
    equal = BatchAugment(28, AugmentConfig(solarize_prob=0.5, min_scale=0.5))  # as second's
    views = [first, first, first, second, equal, first]
    draws = []
    draw = augment._draw
    monkeypatch.setattr(augment, "_draw", lambda n, *a: draws.append(n) or draw(n, *a))
    together = augment_views(images, views, torch.Generator().manual_seed(7))
    assert draws == [15, 10, 5]  # runs of equal configs: 3 x first, 2 x second, first
    generator = torch.Generator().manual_seed(7)
    apart = torch.cat([view(images, generator) for view in views])
    torch.testing.assert_close(together, apart, rtol=0, atol=1e-6)
    for i in range(1, 6):
        assert not torch.allclose(together[5 * i - 5 : 5 * i], together[5 * i : 5 * i + 5])
    with pytest.raises(ValueError, match="share their size"):
        augment_views(images, [first, BatchAugment(12)], generator)


def test_augment_identity_settings_keep_images():
    identity = AugmentConfig(
        min_scale=1.0,
        ratio=(1.0, 1.0),
        hflip_prob=0.0,
        jitter_prob=0.0,
        grayscale_prob=0.0,
        blur_prob=0.0,
    )
    images = _batch(4, 3)
    out = BatchAugment(28, identity)(images, torch.Generator().manual_seed(0))
    torch.testing.assert_close(out, images, atol=1e-5, rtol=0)
    flipped = BatchAugment(28, AugmentConfig(**{**identity.__dict__, "hflip_prob": 1.0}))
    torch.testing.assert_close(
        flipped(images, torch.Generator()), images.flip(-1), atol=1e-5, rtol=0
    )


def test_run_folder(tiny_run):
    run_state = json.loads((tiny_run / "run.json").read_text())
    assert run_state["status"] == "complete" and run_state["epochs_done"] == 1
    config = json.loads((tiny_run / "config.json").read_text())
    assert config["pretrain"]["method"] == "simclr"
    assert config["method_config"]["temperature"] == 0.2
    assert config["data_files"][0]["origin"] == "generated"
    assert config["cpu_capability"] == torch.backends.cpu.get_cpu_capability()  # the kernels
    lines = (tiny_run / "metrics.jsonl").read_text().splitlines()
    assert len(lines) == 1200 // 64 and np.isfinite(json.loads(lines[-1])["loss"])
    encoder = create_encoder("resnet18", str(tiny_run / "encoder.safetensors"))
    assert state_sha256(encoder.backbone) == run_state["encoder_sha256"]
    assert state_sha256(encoder.backbone) != state_sha256(create_encoder("resnet18").backbone)
    assert set(load_file(tiny_run / "encoder.safetensors")) == set(encoder.backbone.state_dict())
    checkpoint = torch.load(tiny_run / "checkpoints" / "last.ckpt", weights_only=True)
    assert checkpoint["epoch"] == 1


def _config(data_root, **changes):
    base = dict(
        dataset="demo-texture",
        size=28,
        epochs=2,
        batch_size=200,
        device="cpu",
        data_root=str(data_root),
    )
    return PretrainConfig(**{**base, **changes})


# the loop, optimiser, scheduler and RNG state are common to all; these add their own:
# mocov2: queue; mocov3: momentum schedule; dino: centre, teacher schedules; byol: target
# network; tico: running covariance; nnclr: support set; swav: queue (used from the third
# step) and its fill level, prototypes frozen in epoch 1; mae, msn: mask draws (msn: focal
# crops, prototypes, target network)
RESUME_PARAMS = {
    "mocov2": {},
    "mocov3": {"hidden_dim": 512},
    "dino": {"output_dim": 256, "hidden_dim": 64, "n_local": 2},
    "byol": {"hidden_dim": 256},
    "tico": {"hidden_dim": 256},
    "nnclr": {"hidden_dim": 256, "prediction_hidden_dim": 256, "queue_size": 512},
    "swav": {"n_prototypes": 64, "n_local": 2, "queue_size": 400, "queue_start_epoch": 0},
    "mae": {"decoder_depth": 1, "decoder_dim": 64, "decoder_heads": 4},
    "msn": {"hidden_dim": 256, "n_prototypes": 64, "n_focal": 2},
}


# MSN runs a ViT on 2 x 50 tokens per image: a quarter of the data keeps it to seconds
RESUME_RUN = {"msn": {"data_fraction": 0.25, "batch_size": 100}}


@pytest.mark.slow
@pytest.mark.parametrize("method", sorted(RESUME_PARAMS))
def test_resume_continues_exactly(tmp_path, data_root, interrupt_after_first_epoch, method):
    """Two epochs straight equal one epoch, a kill and a resume, bit for bit; the run
    embeds (with its head, where the method trains one)."""
    from embedkit.embed import EmbedConfig, embed

    config = _config(
        data_root,
        method=method,
        backbone=_backbone(method),
        method_params=RESUME_PARAMS[method],
        **RESUME_RUN.get(method, {}),
    )
    straight = pretrain(config, tmp_path / "straight", progress=False)
    with interrupt_after_first_epoch(), pytest.raises(KeyboardInterrupt):
        pretrain(config, tmp_path / "resumed", progress=False)
    assert json.loads((tmp_path / "resumed" / "run.json").read_text())["status"] == "running"
    assert not (tmp_path / "resumed" / "encoder.safetensors").exists()
    resumed = pretrain(config, tmp_path / "resumed", resume=True, progress=False)
    a = load_file(straight / "encoder.safetensors")
    b = load_file(resumed / "encoder.safetensors")
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)
    steps = [json.loads(x)["step"] for x in (resumed / "metrics.jsonl").read_text().splitlines()]
    recorded = json.loads((resumed / "config.json").read_text())
    assert steps == list(range(2 * (recorded["n_train"] // config.batch_size)))
    if config.data_fraction < 1:  # a stratified quarter of demo-texture's 1200 images
        assert recorded["n_train"] == 300 and recorded["n_train_split"] == 1200
        assert (
            recorded["train_rows_sha256"]
            == json.loads((straight / "config.json").read_text())["train_rows_sha256"]
        )
    with_head = json.loads((straight / "run.json").read_text())["head_file"] is not None
    assert with_head is (method != "mae")  # MAE's decoder is not a head to embed with
    store = embed(
        EmbedConfig(
            dataset="demo-texture",
            splits=("test",),
            run=str(straight),
            with_head=with_head,
            device="cpu",
            data_root=str(data_root),
        ),
        tmp_path / "store.zarr",
        progress=False,
    )
    features = store.get("demo-texture", "test").embeddings
    assert features.shape[1] == create_encoder(_backbone(method)).feature_dim
    assert np.isfinite(features).all() and features.std(axis=0).mean() > 0
    if with_head:
        assert np.isfinite(store.get("demo-texture", "test", head=True).embeddings).all()


def test_bad_pretrain_input_writes_nothing(tmp_path, data_root):
    with pytest.raises(ConfigError, match="exceeds the 1200 training images"):
        pretrain(_config(data_root, batch_size=5000), tmp_path / "big", progress=False)
    with pytest.raises(ConfigError, match="too small"):
        pretrain(_config(data_root, batch_size=1), tmp_path / "small", progress=False)
    with pytest.raises(ConfigError, match="too small for vicreg: use at least 4"):
        pretrain(_config(data_root, method="vicreg", batch_size=3), tmp_path / "v", progress=False)
    with pytest.raises(UnknownNameError, match="resnet18"):
        pretrain(_config(data_root, backbone="resnet19"), tmp_path / "bb", progress=False)
    assert list(tmp_path.iterdir()) == []


def test_compile_without_a_c_compiler_is_refused_up_front(tmp_path, data_root, monkeypatch):
    """torch.compile builds C/C++ at the first step: with no compiler on the PATH,
    ``--compile`` is refused before anything is written, and a ``$CC`` that exists counts."""
    import shutil

    from embedkit.pretrain.engine import c_compiler

    for name in ("CC", "CXX"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    assert c_compiler() is None
    with pytest.raises(ConfigError, match="--compile needs a C/C"):
        pretrain(_config(data_root, compile=True), tmp_path / "run", progress=False)
    assert list(tmp_path.iterdir()) == []
    some_program = shutil.which("true", path="/usr/bin:/bin")
    monkeypatch.setenv("CC", some_program)
    assert c_compiler() == some_program


def test_existing_and_mismatched_runs_are_refused(tiny_run, data_root):
    with pytest.raises(RunError, match="already exists"):
        pretrain(_config(data_root), tiny_run, progress=False)
    with pytest.raises(RunError, match="backbone 'resnet18', not 'resnet50'"):
        pretrain(_config(data_root, backbone="resnet50"), tiny_run, resume=True, progress=False)


QUEUE = 64  # two fixed batches: the queue holds real keys from the third step on
SMALL_HEADS = {
    **SMALL,
    "mocov1": {"queue_size": QUEUE},
    "mocov2": {"queue_size": QUEUE},
    "nnclr": {**SMALL["nnclr"], "queue_size": QUEUE},
}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(METHODS))
def test_loss_falls_on_a_fixed_batch(name, data_root):
    from embedkit.data import load_split

    train = load_split("demo-med", "train", 28, data_root)
    chosen = np.sort(np.random.default_rng(0).choice(len(train), 32, replace=False))
    batch = torch.from_numpy(np.array(train.images[chosen])).permute(0, 3, 1, 2).float() / 255
    labels = torch.from_numpy(train.labels[chosen])
    torch.manual_seed(0)
    cls = get_method(name)
    encoder = create_encoder(_backbone(name), image_size=28)
    method = cls(encoder, cls.Config(**SMALL_HEADS.get(name, {})), 28, 3)
    optimizer = torch.optim.AdamW(method.parameters(), lr=1e-3)
    # Fixed images and fixed views (the generator restarts each step): the objective is the
    # same at every step, so the optimiser must lower it. With a queue, the loss first rises
    # while real keys replace the random initial negatives: compare once the queue is full.
    # DINO's loss rises too while the teacher's centre (a moving average with momentum 0.9,
    # from zero) settles: compare after its ~10-step time constant.
    warm = QUEUE // 32 + 1 if "queue_size" in SMALL_HEADS.get(name, {}) else 0
    warm = 10 if name == "dino" else warm
    losses = []
    for _ in range(warm + 20):
        loss = method.training_step(batch, labels, torch.Generator().manual_seed(0))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        method.after_step(0.0)
        losses.append(loss.item())
    assert np.mean(losses[-5:]) < np.mean(losses[warm : warm + 5]), losses


@pytest.mark.parametrize(
    "name", sorted(n for n in METHODS if hasattr(METHODS[n], "momentum_pairs"))
)
def test_momentum_parameters_follow_the_moving_average(name):
    torch.manual_seed(0)
    cls = get_method(name)
    encoder = create_encoder(_backbone(name), image_size=28)
    method = cls(encoder, cls.Config(**SMALL.get(name, {})), 28, n_classes=3)
    optimizer = torch.optim.SGD(method.parameters(), lr=0.5)
    loss = method.training_step(_batch(), None, torch.Generator().manual_seed(0))
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    before = [[p.clone() for p in momentum.parameters()] for _, momentum in method.momentum_pairs()]
    stem_before = _stem(method.momentum_pairs()[0][1]).clone()
    method.after_step(0.5)
    m = method.momentum_at(0.5)
    start, end = (
        method.config.momentum,
        getattr(method.config, "momentum_end", method.config.momentum),
    )
    assert m == pytest.approx((start + end) / 2)  # half-way along the cosine schedule
    for (online, momentum), old in zip(method.momentum_pairs(), before, strict=True):
        for p_online, p_momentum, p_old in zip(
            online.parameters(), momentum.parameters(), old, strict=True
        ):
            torch.testing.assert_close(p_momentum, m * p_old + (1 - m) * p_online)
            assert not p_momentum.requires_grad
    moved = _stem(method.momentum_pairs()[0][1])
    assert not torch.equal(moved, stem_before)  # the average moved toward the online weights


def test_the_moving_average_follows_replaced_and_shared_parameters():
    """``after_step`` lists the modules holding parameters once, for speed, and reads the
    parameters from them on every step: a parameter replaced after the first step is averaged
    (not the old one), and modules sharing a parameter fall back to the full walk, which
    averages the shared one once."""
    torch.manual_seed(0)
    cls = get_method("mocov2")
    config = cls.Config(**SMALL.get("mocov2", {}))
    method = cls(create_encoder("resnet18"), config, 28, n_classes=3)
    method.after_step(0.0)  # lists the holders
    conv, conv_momentum = method.encoder.backbone.conv1, method.encoder_momentum.backbone.conv1
    conv.weight = torch.nn.Parameter(torch.ones_like(conv.weight))
    conv_momentum.weight = torch.nn.Parameter(torch.zeros_like(conv.weight), requires_grad=False)
    method.after_step(0.0)
    torch.testing.assert_close(conv_momentum.weight, torch.full_like(conv.weight, 1 - 0.999))

    shared = cls(create_encoder("resnet18"), config, 28, n_classes=3)
    for head in (shared.projection_head, shared.projection_head_momentum):
        first = head.layers[0]
        head.layers[2] = torch.nn.Linear(first.in_features, first.out_features)
        head.layers[2].bias = first.bias = torch.nn.Parameter(torch.zeros_like(first.bias))
    shared.projection_head.layers[0].bias.data.fill_(1.0)
    shared.after_step(0.0)
    # averaged once: 0.999 * 0 + 0.001 * 1 (twice over, it would be 0.001999)
    average = shared.projection_head_momentum.layers[0].bias
    torch.testing.assert_close(average, torch.full_like(average, 0.001))


def test_the_momentum_branch_runs_in_the_methods_mode():
    """``momentum_forward`` puts the momentum branch in the method's train/eval mode,
    including when the branch alone was switched."""
    cls = get_method("mocov2")
    method = cls(create_encoder("resnet18"), cls.Config(**SMALL.get("mocov2", {})), 28, 3)
    views = _batch(4, 3)
    for mode in (False, True):
        method.train(not mode)
        method.encoder_momentum.train(mode)  # the branch alone in the other mode
        method.projection_head_momentum.train(mode)
        method.momentum_forward(views)
        branch = [*method.encoder_momentum.modules(), *method.projection_head_momentum.modules()]
        assert all(module.training is (not mode) for module in branch)


@pytest.mark.slow
def test_lightning_loggers_follow_the_run_through_a_resume(
    tmp_path, data_root, monkeypatch, interrupt_after_first_epoch
):
    """csv (a version per session) and tensorboard (one folder, events after the checkpoint
    purged) carry the losses of metrics.jsonl, the kNN accuracy and the hyperparameters; the
    W&B logger (Lightning's, here a stand-in recording what embedkit hands it, since wandb
    need not be installed) keeps one run id across the resume."""
    pytest.importorskip("tensorboard", reason="tensorboard is in the test extra")
    import csv

    import pytorch_lightning.loggers as pl_loggers
    import yaml
    from lightning_fabric.loggers import Logger
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    import embedkit.pretrain.loggers as run_loggers

    made = []

    class WandbStandIn(Logger):
        name, version = "stand-in", 0

        def __init__(self, **kwargs):
            self.kwargs, self.steps, self.hparams, self.status = kwargs, [], [], None
            made.append(self)

        def log_metrics(self, metrics, step=None):
            self.steps.append((step, dict(metrics)))

        def log_hyperparams(self, params, *args, **kwargs):
            self.hparams.append(params)

        def finalize(self, status):
            self.status = status

    monkeypatch.setattr(pl_loggers, "WandbLogger", WandbStandIn)
    monkeypatch.setattr(run_loggers, "_EXTRAS", {})
    monkeypatch.setenv("WANDB_PROJECT", "medssl")
    config = _config(data_root, loggers=("csv", "tensorboard", "wandb"), knn_every=1)
    with interrupt_after_first_epoch(), pytest.raises(KeyboardInterrupt):
        pretrain(config, tmp_path / "run", progress=False)
    run = pretrain(config, tmp_path / "run", resume=True, progress=False)
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    losses = {x["step"]: x["loss"] for x in lines if "loss" in x}
    knn = {x["step"]: x["knn_accuracy"] for x in lines if "knn_accuracy" in x}
    assert sorted(losses) == list(range(12)) and sorted(knn) == [5, 11]

    sessions = []
    for version in ("version_0", "version_1"):
        with open(run / "logs" / "csv" / version / "metrics.csv") as f:
            sessions.append(list(csv.DictReader(f)))
    for rows, steps in zip(sessions, (range(6), range(6, 12)), strict=True):
        logged = {int(r["step"]): float(r["train/loss"]) for r in rows if r["train/loss"]}
        assert logged == {s: losses[s] for s in steps}
        (accuracy,) = [r for r in rows if r["val/knn_accuracy"]]
        assert float(accuracy["val/knn_accuracy"]) == knn[int(accuracy["step"])]
    hparams = yaml.safe_load((run / "logs" / "csv" / "version_0" / "hparams.yaml").read_text())
    assert hparams["pretrain"]["loggers"] == ["csv", "tensorboard", "wandb"]
    saved = json.loads((run / "config.json").read_text())
    assert hparams["method_config"] == saved["method_config"]
    assert hparams["method_config"]["temperature"] == 0.2  # SimCLR's default, as configured

    events = EventAccumulator(str(run / "logs" / "tensorboard"))
    events.Reload()
    tb_losses = [(e.step, e.value) for e in events.Scalars("train/loss")]
    assert [s for s, _ in tb_losses] == list(range(12))  # once each: the overlap was purged
    np.testing.assert_allclose([v for _, v in tb_losses], [losses[s] for s in range(12)], rtol=1e-6)
    assert [(e.step, e.value) for e in events.Scalars("epoch")] == [(5, 1.0), (11, 2.0)]
    tb_knn = {e.step: e.value for e in events.Scalars("val/knn_accuracy")}
    assert tb_knn == pytest.approx(knn, rel=1e-6)

    first, second = made
    assert (
        first.kwargs["id"]
        == second.kwargs["id"]
        == ((run / "logs" / "wandb-id").read_text().strip())
    )
    assert first.kwargs["project"] == "medssl" and first.kwargs["name"] == "run"
    assert first.status == "failed" and second.status == "success"
    assert len(first.hparams) == 1 and second.hparams == []  # logged once, at the start
    assert [s for s, m in first.steps + second.steps if "train/loss" in m] == list(range(12))


def test_unknown_or_missing_logger_is_refused_before_the_run_folder(
    tmp_path, data_root, monkeypatch
):
    import embedkit.pretrain.loggers as run_loggers

    with pytest.raises(UnknownNameError, match="unknown logger 'mlflow': valid loggers: csv, "):
        pretrain(_config(data_root, loggers=("mlflow",)), tmp_path / "a", progress=False)
    monkeypatch.setattr(run_loggers.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ConfigError, match=r"pip install 'embedkit\[wandb\]'"):
        pretrain(_config(data_root, loggers=("wandb",)), tmp_path / "b", progress=False)
    assert list(tmp_path.iterdir()) == []
