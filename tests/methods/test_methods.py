"""What the newer methods, backbones and engine options promise, checked on values."""

import argparse
import json
import logging
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

import embedkit.backbones as backbones
from embedkit.augment import local_crop_size
from embedkit.backbones import create_encoder, patch_size_for
from embedkit.data import dataset_classes
from embedkit.errors import ConfigError, WeightsUnavailableError
from embedkit.methods import get_method
from embedkit.methods.mocov3 import contrastive_loss
from embedkit.pretrain import PretrainConfig, pretrain
from embedkit.pretrain.engine import c_compiler


def _images(n=8, size=28):
    return torch.rand(n, 1, size, size, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize(("size", "patch"), [(28, 4), (64, 8), (128, 16), (224, 16)])
def test_vit_patch_size_per_resolution(size, patch):
    assert patch_size_for("vit_small", size) == patch
    assert patch_size_for("resnet50", size) == 1


def test_vit_at_28px_has_a_7x7_grid_and_takes_smaller_crops():
    encoder = create_encoder("vit_tiny", image_size=28)
    assert encoder.patch_size == 4 and encoder.backbone.patch_embed.grid_size == (7, 7)
    with torch.no_grad():
        assert encoder(_images(2, 12)).shape == (2, 192)  # DINO's local crops


def test_patch_size_that_does_not_divide_the_image_is_refused():
    with pytest.raises(ConfigError, match="28 px images do not split into 8 px patches"):
        create_encoder("vit_small", image_size=28, patch_size=8)


def test_small_stem_keeps_resolution_and_refuses_imagenet_weights():
    encoder = create_encoder("resnet18_cifar", image_size=28)
    assert encoder.backbone.conv1.kernel_size == (3, 3) and encoder.backbone.conv1.stride == (1, 1)
    with pytest.raises(ConfigError, match="3x3 stem"):
        create_encoder("resnet18_cifar", "imagenet")


def test_missing_timm_weights_offline_name_the_file(tmp_path, monkeypatch):
    monkeypatch.setattr(backbones, "_hf_cache_dir", lambda: str(tmp_path))
    monkeypatch.setattr(backbones, "_network_reachable", lambda host="": False)
    with pytest.raises(WeightsUnavailableError, match="timm/resnet18.a1_in1k/model.safetensors"):
        create_encoder("resnet18", "imagenet")
    with pytest.raises(WeightsUnavailableError, match="vit_small_patch16_224.dino"):
        create_encoder("vit_small", "timm:dino", image_size=28)


def test_timm_weights_come_from_the_local_cache(tmp_path, monkeypatch):
    snapshot = tmp_path / "models--timm--resnet18.a1_in1k" / "snapshots" / "abc"
    snapshot.mkdir(parents=True)
    (tmp_path / "models--timm--resnet18.a1_in1k" / "refs").mkdir()
    (tmp_path / "models--timm--resnet18.a1_in1k" / "refs" / "main").write_text("abc")
    torch.manual_seed(5)
    reference = create_encoder("resnet18").backbone.state_dict()
    save_file({k: v.contiguous() for k, v in reference.items()}, snapshot / "model.safetensors")
    monkeypatch.setattr(backbones, "_hf_cache_dir", lambda: str(tmp_path))
    monkeypatch.setattr(backbones, "_network_reachable", lambda host="": False)
    torch.manual_seed(0)
    loaded = create_encoder("resnet18", "imagenet").backbone.state_dict()
    torch.testing.assert_close(loaded["conv1.weight"], reference["conv1.weight"])
    torch.testing.assert_close(loaded["layer4.1.bn2.bias"], reference["layer4.1.bn2.bias"])


def test_mocov3_loss_matches_the_formula():
    g = torch.Generator().manual_seed(0)
    query, key = torch.randn(6, 16, generator=g), torch.randn(6, 16, generator=g)
    t = 0.2
    q, k = F.normalize(query, dim=1), F.normalize(key, dim=1)
    logits = (q @ k.T / t).numpy()
    log_softmax = logits - np.log(np.exp(logits).sum(1, keepdims=True))
    expected = -np.mean(np.diag(log_softmax)) * 2 * t
    assert contrastive_loss(query, key, t).item() == pytest.approx(expected, rel=1e-5)
    # views stacked: the sum of each view's loss, in one call (as the step runs both)
    other_q, other_k = torch.randn(6, 16, generator=g), torch.randn(6, 16, generator=g)
    both = contrastive_loss(torch.stack([query, other_q]), torch.stack([key, other_k]), t)
    torch.testing.assert_close(
        both, contrastive_loss(query, key, t) + contrastive_loss(other_q, other_k, t)
    )


def _dino(**changes):
    torch.manual_seed(0)
    cls = get_method("dino")
    config = cls.Config(**{"output_dim": 256, "hidden_dim": 64, **changes})
    return cls(create_encoder("vit_tiny", image_size=28), config, 28, n_classes=3)


def test_dino_views_schedules_and_frozen_last_layer():
    assert local_crop_size(28, 4) == 12 and local_crop_size(224, 16) == 96
    method = _dino(warmup_teacher_temp=0.04, teacher_temp=0.07, teacher_temp_warmup=0.5)
    method.progress = 0.25
    assert method.teacher_temperature() == pytest.approx(0.055)
    method.progress = 0.9
    assert method.teacher_temperature() == pytest.approx(0.07)
    assert method.momentum_at(0.0) == pytest.approx(0.996) and method.momentum_at(1.0) == 1.0
    sizes = []
    hook = method.encoder.register_forward_pre_hook(lambda m, a: sizes.append(a[0].shape))
    loss = method.training_step(_images(), None, torch.Generator().manual_seed(0))
    hook.remove()
    assert sizes == [(16, 1, 28, 28), (48, 1, 12, 12)]  # 2 global views, 6 local views
    loss.backward()
    last = method.projection_head.last_layer.weight_v
    assert last.grad is not None and last.grad.abs().sum() > 0
    method.epoch = 0
    method.before_optimizer_step()
    assert last.grad is None  # frozen during the first epoch
    center = method.criterion.center.clone()
    method.training_step(_images(), None, torch.Generator().manual_seed(1))
    assert not torch.equal(center, method.criterion.center)  # the teacher centre moves


def test_supervised_uses_binary_cross_entropy_for_multi_label():
    torch.manual_seed(0)
    cls = get_method("supervised")
    method = cls(create_encoder("resnet18"), cls.Config(), 28, n_classes=4).eval()
    labels = torch.tensor([[1, 0, 0, 1]] * 4 + [[0, 1, 1, 0]] * 4)
    images = _images()
    loss = method.training_step(images, labels, torch.Generator().manual_seed(0))
    views = method.augment(images, torch.Generator().manual_seed(0))
    logits = method.classifier(method.encoder(views))
    expected = F.binary_cross_entropy_with_logits(logits, labels.float())
    torch.testing.assert_close(loss, expected)


def _config(data_root, **changes):
    base = dict(dataset="demo-texture", size=28, epochs=2, batch_size=100, device="cpu")
    return PretrainConfig(**{**base, "data_root": str(data_root), **changes})


@pytest.mark.slow
def test_compile_option_compiles_the_backbone_and_dinos_loss(tmp_path, data_root, monkeypatch):
    """``pretrain --compile`` compiles the backbone and the method's loss (DINO's); recorded
    here, not run (a backbone compiles for minutes on a CPU)."""
    calls = []
    monkeypatch.setattr(torch.nn.Module, "compile", lambda self: calls.append(type(self)))
    dino = get_method("dino")
    monkeypatch.setattr(dino, "compile_loss", lambda self: calls.append(type(self)))
    small = {"output_dim": 256, "hidden_dim": 64, "n_local": 2}
    config = _config(data_root, method="dino", epochs=1, compile=True, method_params=small)
    pretrain(config, tmp_path / "run", progress=False)
    assert [cls.__name__ for cls in calls] == ["ResNet", "DINO"]


@pytest.mark.slow
def test_accumulation_and_the_knn_monitor(tmp_path, data_root, caplog):
    caplog.set_level(logging.INFO, logger="embedkit")
    config = _config(data_root, method="supervised", accumulate=2, knn_every=1, lr=1e-3)
    run = pretrain(config, tmp_path / "run", progress=False)
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if "loss" in r]
    monitor = [r for r in records if "knn_accuracy" in r]
    assert [r["step"] for r in steps] == list(range(12))  # 1200 images / (100 x 2) per epoch
    assert [r["epoch"] for r in monitor] == [0, 1]
    assert all(0 <= r["knn_accuracy"] <= 1 for r in monitor)
    assert monitor[-1]["knn_accuracy"] > 0.5  # supervised features separate the textures
    # one line per epoch, without a terminal: the epoch's mean loss, the monitor's accuracy
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("epoch ")]
    assert len(lines) == 2 and lines[1].startswith("epoch 2/2: loss ")
    epoch_two = [r["loss"] for r in steps if r["epoch"] == 1]
    assert f"loss {sum(epoch_two) / len(epoch_two):.4f}," in lines[1]
    assert f"kNN val acc {monitor[1]['knn_accuracy']:.3f}," in lines[1]
    assert " img/s, lr " in lines[0] and lines[1].endswith("about 0:00:00 left")


def test_bad_engine_options_are_refused(tmp_path, data_root):
    with pytest.raises(ConfigError, match="does not split over 2 processes"):
        pretrain(_config(data_root, devices=2, batch_size=101), tmp_path / "a", progress=False)
    with pytest.raises(ConfigError, match="--accumulate must be at least 1"):
        pretrain(_config(data_root, accumulate=0), tmp_path / "b", progress=False)
    with pytest.raises(ConfigError, match="unknown precision"):
        pretrain(_config(data_root, precision="fp8"), tmp_path / "c", progress=False)
    with pytest.raises(ConfigError, match="patches"):
        config = _config(data_root, backbone="vit_tiny", patch_size=8)
        pretrain(config, tmp_path / "d", progress=False)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
@pytest.mark.parametrize(
    "method",
    ["simclr", pytest.param("nnclr", marks=pytest.mark.slow)],  # nnclr: a gathered queue too
)
def test_two_process_data_parallel_run_on_gloo(tmp_path, data_root, method):
    command = [
        os.path.join(os.path.dirname(sys.executable), "embedkit"),
        "pretrain",
        "--method",
        method,
        "--param",
        "queue_size=400" if method == "nnclr" else "temperature=0.2",
        "--output",
        str(tmp_path / "run"),
        "--dataset",
        "demo-texture",
        "--epochs",
        "1",
        "--batch-size",
        "200",
        "--device",
        "cpu",
        "--devices",
        "2",
        "--data-root",
        str(data_root),
        "--no-progress",
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.count("encoder written") == 1  # rank 0 reports, rank 1 does not
    run = tmp_path / "run"
    assert json.loads((run / "config.json").read_text())["world_size"] == 2
    lines = (run / "metrics.jsonl").read_text().splitlines()
    assert (
        len(lines) == 1200 // 200
        and json.loads((run / "run.json").read_text())["status"] == "complete"
    )


@pytest.mark.slow
def test_multi_domain_supervised_pretraining_sees_every_domain(tmp_path, data_root):
    config = _config(data_root, dataset="demo-med+demo-texture", method="supervised", epochs=1)
    run = pretrain(config, tmp_path / "run", progress=False)
    saved = json.loads((run / "config.json").read_text())
    assert [f["path"].rsplit("/", 1)[1] for f in saved["data_files"]] == [
        "demo-med_28.npz",
        "demo-texture_28.npz",
    ]
    assert saved["n_train"] == 2400
    head = load_file(run / "head.safetensors")  # one logit per class of both domains
    assert head["weight"].shape[0] == len(dataset_classes("demo-med+demo-texture"))


def test_lightly_style_checkpoints_load_by_module_name(tmp_path):
    torch.manual_seed(3)
    reference = create_encoder("resnet18").backbone.state_dict()
    positions = {"conv1": "0", "bn1": "1", "layer1": "4", "layer2": "5", "layer3": "6"}
    positions["layer4"] = "7"
    sequential = {}
    for key, value in reference.items():
        head, _, rest = key.partition(".")
        if head in positions:  # torchvision children in nn.Sequential, without fc
            sequential[f"backbone.{positions[head]}.{rest}"] = value
    sequential["projection_head.layers.0.weight"] = torch.zeros(4, 512)  # dropped
    sequential["backbone_momentum.0.weight"] = torch.zeros(1)  # dropped
    torch.save({"state_dict": sequential, "epoch": 99}, tmp_path / "lightly.ckpt")
    loaded = create_encoder("resnet18", str(tmp_path / "lightly.ckpt")).backbone.state_dict()
    for key in ("conv1.weight", "layer4.1.bn2.running_var", "layer2.0.downsample.0.weight"):
        torch.testing.assert_close(loaded[key], reference[key], rtol=0, atol=0)
    hparams = argparse.Namespace(lr=0.1)  # what Lightning checkpoints often pickle
    torch.save({"state_dict": sequential, "hyper_parameters": hparams}, tmp_path / "p.ckpt")
    with pytest.raises(WeightsUnavailableError, match="pickled Python objects"):
        create_encoder("resnet18", str(tmp_path / "p.ckpt"))


@pytest.mark.slow
def test_a_vit_run_embeds_with_its_own_patch_size(tmp_path, data_root):
    from embedkit.embed import EmbedConfig, embed

    # 7 px patches, not the 4 px that 28 px images get by default: an embedder that took the
    # default would build another patch embedding than the run's weights
    config = _config(
        data_root, backbone="vit_tiny", method="supervised", epochs=1, batch_size=600, patch_size=7
    )
    run = pretrain(config, tmp_path / "run", progress=False)
    assert json.loads((run / "config.json").read_text())["pretrain"]["patch_size"] == 7
    embed_config = EmbedConfig(
        dataset="demo-texture",
        splits=("test",),
        run=str(run),
        device="cpu",
        data_root=str(data_root),
    )
    store = embed(embed_config, tmp_path / "s.zarr", progress=False)
    assert store.get("demo-texture", "test").embeddings.shape == (600, 192)
    assert store.encoder["patch_size"] == 7 and store.encoder["backbone"] == "vit_tiny"


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize(("n", "d"), [(48, 640), (300, 96)])  # the Gram path, the direct one
@pytest.mark.parametrize("name", ["barlowtwins", "vicreg"])
def test_gram_losses_equal_lightlys(name, n, d, dtype):
    """Barlow Twins' and VICReg's losses through N x N Gram matrices: lightly's value and
    gradients, to float precision."""
    from lightly.loss import BarlowTwinsLoss, VICRegLoss

    from embedkit.losses.gram import GramBarlowTwinsLoss, GramVICRegLoss

    reference, ours = {
        "barlowtwins": (BarlowTwinsLoss(lambda_param=5e-3), GramBarlowTwinsLoss(lambda_param=5e-3)),
        "vicreg": (VICRegLoss(), GramVICRegLoss()),
    }[name]
    generator = torch.Generator().manual_seed(n)
    z_a = torch.randn(n, d, dtype=dtype, generator=generator)
    z_b = 0.7 * z_a + 0.3 * torch.randn(n, d, dtype=dtype, generator=generator)
    results = []
    for loss in (reference, ours):
        a, b = z_a.clone().requires_grad_(), z_b.clone().requires_grad_()
        value = loss(a, b)
        results.append((value.detach(), *torch.autograd.grad(value, (a, b))))
    tolerance = (
        {"rtol": 1e-9, "atol": 1e-14} if dtype == torch.float64 else {"rtol": 2e-5, "atol": 1e-7}
    )
    for expected, got in zip(results[0], results[1], strict=True):
        torch.testing.assert_close(got, expected, **tolerance)


@pytest.mark.parametrize("form", ["views", "blocks", "one block"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("n_local", [0, 3])
def test_fused_dino_loss_equals_lightlys(n_local, dtype, form):
    """DINO's loss by blocks of views with a written-out gradient: lightly's value,
    gradients and centre over two calls (the second uses the first's centre), given as
    lightly's list of views, as the method's (views, batch, dim) blocks, or as one block
    holding views with and without a matching teacher view."""
    from lightly.loss import DINOLoss

    from embedkit.losses.dino import FusedDINOLoss

    reference, ours = (
        cls(output_dim=512, center_momentum=0.8).to(dtype) for cls in (DINOLoss, FusedDINOLoss)
    )
    generator = torch.Generator().manual_seed(n_local)
    for call in range(2):
        teacher = [3 * torch.randn(6, 512, dtype=dtype, generator=generator) for _ in range(2)]
        student = [3 * torch.randn(6, 512, dtype=dtype, generator=generator)]
        student += [teacher[0] + torch.randn(6, 512, dtype=dtype, generator=generator)]
        student += [torch.randn(6, 512, dtype=dtype, generator=generator) for _ in range(n_local)]
        results = []
        for loss in (reference, ours):
            views = [view.clone().requires_grad_() for view in student]
            given_teacher, given_student = teacher, views
            if loss is ours and form == "blocks":
                given_teacher = torch.stack(teacher)
                given_student = [torch.stack(views[:2])]
                given_student += [torch.stack(views[2:])] if n_local else []
            elif loss is ours and form == "one block":
                given_teacher, given_student = torch.stack(teacher), torch.stack(views)
            # 0.0625 is a float32 number: lightly makes the temperature a float32 tensor
            value = loss(given_teacher, given_student, teacher_temp=0.0625)
            results.append((value.detach(), *torch.autograd.grad(value, views), loss.center))
        # gradients are (|W| softmax - W) / T: where the two nearly cancel, the error is
        # relative to the gradients' scale (largest entry of any view, ~0.2-0.8 here)
        eps = 1e-13 if dtype == torch.float64 else 1e-5
        scale = max(grad.abs().max().item() for grad in results[0][1:-1])
        for expected, got in zip(results[0], results[1], strict=True):
            torch.testing.assert_close(got, expected, rtol=eps, atol=eps * scale)
        assert results[1][0] > 0 and results[1][-1].abs().sum() > 0, call


def test_fused_dino_loss_leaves_its_inputs_and_returns_their_dtype():
    """The loss scales a copy of the logits in place and writes the gradient in the input's
    dtype: float32 inputs are left as they were, and bfloat16 ones (what autocast feeds it)
    get bfloat16 gradients equal to the float32 computation's up to bfloat16 rounding."""
    from types import SimpleNamespace

    from embedkit.losses.dino import FusedDINOLoss, _PairedLogLikelihood

    generator = torch.Generator().manual_seed(5)
    teacher = 3 * torch.randn(2, 6, 512, generator=generator)
    student = 3 * torch.randn(5, 6, 512, generator=generator)
    grads = {}
    for dtype in (torch.float32, torch.bfloat16):
        views = student.to(dtype).requires_grad_()
        before = views.detach().clone()
        value = FusedDINOLoss(output_dim=512)(teacher.to(dtype), views, teacher_temp=0.0625)
        (grads[dtype],) = torch.autograd.grad(value, views)
        assert grads[dtype].dtype == dtype and torch.equal(views.detach(), before)
    # the bfloat16 run sees rounded logits: compare with float32 on those same values
    rounded = student.to(torch.bfloat16).float().requires_grad_()
    value = FusedDINOLoss(output_dim=512)(teacher.to(torch.bfloat16).float(), rounded, 0.0625)
    (expected,) = torch.autograd.grad(value, rounded)
    scale = expected.abs().max().item()
    torch.testing.assert_close(grads[torch.bfloat16].float(), expected, rtol=0, atol=scale / 128)
    # autograd would cast a float32 gradient itself: the backward writes bfloat16 directly
    log_p = torch.log_softmax(student.detach() / 0.1, -1)
    weights = torch.softmax(teacher[0], -1).expand_as(log_p)
    expected = (weights.sum(-1, keepdim=True) * log_p.exp() - weights) / 0.1
    ctx = SimpleNamespace(saved_tensors=(log_p, weights), temperature=0.1)
    ctx.input_dtype = torch.bfloat16
    # the Function gives the log-likelihood: -1 upstream gives the cross-entropy's gradient
    (grad, *_) = _PairedLogLikelihood.backward(ctx, torch.tensor(-1.0))
    assert grad.dtype == torch.bfloat16
    torch.testing.assert_close(grad.float(), expected, rtol=1 / 128, atol=1e-6)


def test_fused_dino_loss_centre_with_bfloat16_weights():
    """Under ``bf16-true`` the centre buffer is bfloat16 and the loss's sums float32: the
    first update makes the centre float32 (lightly's assignment), later ones average in
    place; each equals ``m * centre + (1 - m) * batch mean`` of the float32 teacher."""
    from embedkit.losses.dino import FusedDINOLoss

    loss = FusedDINOLoss(output_dim=512, center_momentum=0.8).to(torch.bfloat16)
    generator = torch.Generator().manual_seed(3)
    expected = torch.zeros(1, 1, 512)
    for _ in range(3):
        teacher = (3 * torch.randn(2, 6, 512, generator=generator)).bfloat16()
        student = torch.randn(4, 6, 512, generator=generator).bfloat16().requires_grad_()
        value = loss(teacher, student, teacher_temp=0.0625)
        value.backward()
        expected = 0.8 * expected + 0.2 * teacher.float().mean((0, 1), keepdim=True)
        assert loss.center.dtype == torch.float32 and torch.isfinite(value)
        torch.testing.assert_close(loss.center, expected, rtol=1e-5, atol=1e-6)


_NEEDS_CXX = pytest.mark.skipif(not c_compiler(), reason="torch.compile needs a C/C++ compiler")


@pytest.mark.slow
@pytest.mark.parametrize(
    "name",
    [
        "dino",
        "moco queue",
        pytest.param("dino, loss compiled", marks=_NEEDS_CXX),
        pytest.param("moco queue, loss compiled", marks=_NEEDS_CXX),
    ],
)
def test_losses_that_move_a_buffer_keep_their_gradients_in_a_compiled_caller(name):
    """DINO's loss moves its centre, and MoCo's its queue, in the graph whose backward reads
    them: torch.compile (seen with 2.14) then gets the gradients wrong (by 0.03-0.08 on
    gradients of ~0.17). Called from a compiled function, each loss runs as written: the
    eager gradients and buffer, bit for bit, over two calls (the second with the moved
    buffer); with their own ``compile()`` (all but the buffer's update compiled) they give
    them up to float rounding."""
    from embedkit.losses.dino import FusedDINOLoss
    from embedkit.losses.ntxent import SyncFreeNTXentLoss

    if name.startswith("dino"):  # the teacher, and the student's blocks of views (with grad)
        make = lambda: FusedDINOLoss(output_dim=256)  # noqa: E731
        fixed_shape, shapes = (2, 8, 256), [(2, 8, 256), (6, 8, 256)]
        apply = lambda loss, fixed, leaves: loss(fixed, leaves, teacher_temp=0.04)  # noqa: E731
        state = lambda loss: loss.center  # noqa: E731
    else:  # the keys, and the queries (with gradients)
        make = lambda: SyncFreeNTXentLoss(0.1, (32, 16))  # noqa: E731
        fixed_shape, shapes = (8, 16), [(8, 16)]
        apply = lambda loss, fixed, leaves: loss(leaves[0], fixed)  # noqa: E731
        state = lambda loss: loss.memory_bank.bank  # noqa: E731
    eager, compiled = make(), make()
    state(compiled).copy_(state(eager))  # the same starting queue
    if name.endswith("compiled"):
        compiled.compile()
    caller = torch.compile(lambda fixed, leaves: apply(compiled, fixed, leaves))
    exact = {"rtol": 0, "atol": 0} if not name.endswith("compiled") else {}
    generator = torch.Generator().manual_seed(9)
    for _ in range(2):
        fixed = 3 * torch.randn(fixed_shape, generator=generator)
        inputs = [torch.randn(shape, generator=generator) for shape in shapes]
        grads = []
        for run in (lambda fixed, leaves: apply(eager, fixed, leaves), caller):
            leaves = [x.clone().requires_grad_() for x in inputs]
            grads.append(torch.autograd.grad(run(fixed, leaves), leaves))
        for got, want in zip(grads[1], grads[0], strict=True):
            torch.testing.assert_close(got, want, **exact)
        torch.testing.assert_close(state(compiled), state(eager), **exact)
        assert state(eager).abs().sum() > 0 and grads[0][0].abs().max() > 0.05


@pytest.mark.slow
@_NEEDS_CXX
def test_dino_compiled_loss_gives_the_written_out_steps():
    """``pretrain --compile`` compiles DINO's loss but the centre's update: training steps
    with the teacher temperature warming up (the second value compiles once more, for any)
    give the written-out loss's values, gradients over every parameter, and centre, up to
    float rounding."""
    warming = dict(warmup_teacher_temp=0.04, teacher_temp=0.07, teacher_temp_warmup=0.5)
    eager, compiled = _dino(**warming), _dino(**warming)
    compiled.compile_loss()
    assert eager.criterion._compiled is None and compiled.criterion._compiled is not None
    for step, progress in enumerate((0.0, 0.2, 0.4)):
        results = []
        for method in (eager, compiled):
            method.progress = progress
            loss = method.training_step(_images(), None, torch.Generator().manual_seed(step))
            weights = [p for p in method.parameters() if p.requires_grad]
            results.append((loss, *torch.autograd.grad(loss, weights), method.criterion.center))
        scale = max(grad.abs().max().item() for grad in results[0][1:-1])
        for want, got in zip(results[0], results[1], strict=True):
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5 * scale)
        assert results[0][-1].abs().sum() > 0 and scale > 0


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_normalize_equals_torchs_with_its_gradient(dtype):
    """The contrastive losses' ``normalize``: F.normalize's values and gradients, for rows
    above the norm's floor, and at or below it (a zero row, and a norm of exactly eps, where
    the clamp passes no gradient to the norm), where the gradient is the upstream one over
    eps."""
    from embedkit.losses.normalize import normalize

    generator = torch.Generator().manual_seed(4)
    x = torch.randn(8, 6, dtype=dtype, generator=generator)
    x[2], x[3], x[4] = 0.0, 1e-14, 0.0
    x[4, 0] = 1e-12  # a norm of exactly eps
    upstream = torch.randn(8, 6, dtype=dtype, generator=generator)
    results = []
    for function in (lambda t: torch.nn.functional.normalize(t, dim=-1), normalize):
        leaf = x.clone().requires_grad_()
        value = function(leaf)
        results.append((value.detach(), *torch.autograd.grad(value, leaf, upstream)))
    for expected, got in zip(results[0], results[1], strict=True):
        scale = expected.abs().amax(-1, keepdim=True).clamp_min(1.0)  # floor rows: ~1e12
        torch.testing.assert_close(got / scale, expected / scale, rtol=0, atol=1e-6)
    torch.testing.assert_close(normalize(x), results[0][0], rtol=0, atol=0)  # no grad


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_sync_free_ntxent_equals_lightlys(dtype):
    """SimCLR's in-batch NT-Xent with the self-similarities at -inf: lightly's value and
    gradients."""
    from lightly.loss import NTXentLoss

    from embedkit.losses.ntxent import SyncFreeNTXentLoss

    generator = torch.Generator().manual_seed(1)
    z0 = torch.randn(12, 32, dtype=dtype, generator=generator)
    z1 = z0 + 0.5 * torch.randn(12, 32, dtype=dtype, generator=generator)
    results = []
    for loss in (NTXentLoss(0.2), SyncFreeNTXentLoss(0.2)):
        a, b = z0.clone().requires_grad_(), z1.clone().requires_grad_()
        value = loss(a, b)
        results.append((value.detach(), *torch.autograd.grad(value, (a, b))))
    eps = 1e-12 if dtype == torch.float64 else 1e-5
    for expected, got in zip(results[0], results[1], strict=True):
        torch.testing.assert_close(got, expected, rtol=eps, atol=eps)
    assert results[1][0] > 0


def test_host_pointer_queue_equals_lightlys_memory_bank():
    """MoCo's queue with its write position on the host: lightly's losses, gradients,
    queue contents and pointer over steps that wrap around (lightly drops the tail of a
    batch at the end of the queue), and after a restore."""
    from lightly.loss import NTXentLoss

    from embedkit.losses.ntxent import SyncFreeNTXentLoss

    reference, ours = NTXentLoss(0.2, (10, 8)), SyncFreeNTXentLoss(0.2, (10, 8))
    ours.memory_bank.bank.copy_(reference.memory_bank.bank)
    generator = torch.Generator().manual_seed(2)
    pointers = []
    for step in range(5):
        q = torch.randn(4, 8, generator=generator)
        k = torch.randn(4, 8, generator=generator)
        results = []
        for loss in (reference, ours):
            query = q.clone().requires_grad_()
            value = loss(query, k)
            results.append((value.detach(), *torch.autograd.grad(value, query)))
        for expected, got in zip(results[0], results[1], strict=True):
            torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(ours.memory_bank.bank, reference.memory_bank.bank)
        assert int(ours.memory_bank.bank_ptr) == int(reference.memory_bank.bank_ptr)
        assert ours.memory_bank.position == int(reference.memory_bank.bank_ptr), step
        pointers.append(ours.memory_bank.position)
    assert pointers == [4, 8, 0, 4, 8]
    fresh = SyncFreeNTXentLoss(0.2, (10, 8))
    fresh.memory_bank.restore(reference.memory_bank.bank, 8)
    q = torch.randn(4, 8, generator=generator, requires_grad=True)  # a training step
    k = torch.randn(4, 8, generator=generator)
    torch.testing.assert_close(fresh(q, k), reference(q, k))
    assert fresh.memory_bank.position == 0 == int(reference.memory_bank.bank_ptr)


@pytest.mark.parametrize("name", ["simsiam", "vicreg", "mocov3"])
def test_batched_losses_equal_the_view_by_view_definition(name):
    """SimSiam's and MoCo v3's symmetric losses and VICReg's variance and covariance terms
    run both views in one call each (fewer kernels per step); the step's loss and gradients
    equal the view-by-view formulation (lightly's losses, MoCo v3's per direction) on the
    same views."""
    from lightly.loss import NegativeCosineSimilarity, VICRegLoss

    torch.manual_seed(0)
    cls = get_method(name)
    small = {
        "vicreg": {"hidden_dim": 96, "projection_dim": 64},
        "simsiam": {"projection_dim": 64},
        "mocov3": {"hidden_dim": 96, "projection_dim": 64},
    }
    config = cls.Config(**small[name])  # 8 rows per view, 64 features: the Gram form
    method = cls(create_encoder("resnet18", image_size=32), config, 32, 2).double().train()
    images = torch.rand(
        8, 3, 32, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(0)
    )

    def reference(views):
        if name == "mocov3":
            p0, p1 = method.prediction_head(method.projection_head(method.encoder(views))).chunk(2)
            k0, k1 = method.momentum_forward(views).chunk(2)
            t = method.config.temperature
            return contrastive_loss(p0, k1, t) + contrastive_loss(p1, k0, t)
        z0, z1 = method.projection_head(method.encoder(views)).chunk(2)
        if name == "vicreg":
            return VICRegLoss()(z0, z1)
        p0, p1 = method.prediction_head(z0), method.prediction_head(z1)
        cosine = NegativeCosineSimilarity()
        return 0.5 * (cosine(p0, z1.detach()) + cosine(p1, z0.detach()))

    results = []
    for compute in (
        lambda: method.training_step(images, None, torch.Generator().manual_seed(1)),
        lambda: reference(method.two_views(images, torch.Generator().manual_seed(1))),
    ):
        method.zero_grad()
        loss = compute()
        loss.backward()
        grads = [p.grad.clone() for p in method.parameters() if p.grad is not None]
        results.append((loss.detach(), grads))  # momentum branches take no gradient
    torch.testing.assert_close(results[0][0], results[1][0], rtol=1e-9, atol=1e-12)
    for got, expected in zip(results[0][1], results[1][1], strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-7, atol=1e-10)
