"""One PyTorch training step from the JAX trainer's state gives the same loss and (nearly) the same update.

The JAX side is the production step (`jax_vit.train_step.make_train_step`), on one device. Augmentation,
dropout and DropPath are switched off so both sides see identical inputs and compute deterministically.
"""
import copy

import jax
import numpy as np
import pytest
import torch

from benchmarks.torch_train import Schedule, TorchTrainStep, decays
from benchmarks.torch_vit import VisionTransformer as TorchViT
from benchmarks.weight_transfer import (
    flax_params_to_numpy,
    load_flax_weights,
    torch_params_to_flax_numpy,
    torch_to_flax_name_and_layout,
)
from jax_vit.augment import normalize
from jax_vit.configs import get_config
from jax_vit.train_step import (
    create_train_state,
    learning_rate_schedule,
    make_mesh,
    make_recipe,
    make_train_step,
    shard_batch,
    weight_decay_mask,
)

STEPS_PER_EPOCH = 4


def deterministic(preset):
    # Two warm-up steps (the first at lr 0, as in Optax), then cosine: the test crosses both phases.
    return get_config(preset).replace(
        dropout=0.0, attention_dropout=0.0, drop_path_rate=0.0, crop_padding=0, random_flip=False,
        epochs=2, warmup_epochs=0.5, compute_dtype="float32",
        weight_decay=0.5,  # large enough that decaying the wrong parameters would show in the updates
    )


def test_torch_schedule_is_optax_warmup_cosine_at_every_step():
    config = get_config("seed-384x8")
    steps_per_epoch = 19
    optax_schedule = learning_rate_schedule(config, steps_per_epoch)
    torch_schedule = Schedule.from_config(config, steps_per_epoch)
    for step in range(0, config.epochs * steps_per_epoch + 5, 7):
        assert torch_schedule.lr_at_step(step) == pytest.approx(float(optax_schedule(step)), rel=1e-5, abs=1e-9)


@pytest.mark.parametrize("preset", ["tiny", "seed-256x6"])
def test_three_steps_give_the_same_losses_and_parameters(preset):
    config = deterministic(preset)
    rng = np.random.default_rng(0)
    batches = [
        (rng.integers(0, 256, (8, 32, 32, 3), dtype=np.uint8), rng.integers(0, 10, 8).astype(np.int32))
        for _ in range(3)
    ]
    mesh = make_mesh(jax.devices()[:1])
    recipe = make_recipe(config, STEPS_PER_EPOCH)
    state = create_train_state(recipe, mesh)
    jax_step = make_train_step(recipe, mesh)

    device = torch.device("cpu")
    torch_model = load_flax_weights(TorchViT(config), state.params)
    torch_step = TorchTrainStep(torch_model, config, Schedule.from_config(config, STEPS_PER_EPOCH), device)

    for images, labels in batches:
        state, metrics = jax_step(state, *shard_batch(mesh, images, labels))
        torch_images = torch.from_numpy(np.array(normalize(images, config))).permute(0, 3, 1, 2)
        torch_loss = torch_step(torch_images.contiguous(), torch.from_numpy(labels).long())
        assert float(torch_loss) == pytest.approx(float(metrics["loss"]), abs=1e-5)

    before = flax_params_to_numpy(create_train_state(recipe, mesh).params)
    jax_params = flax_params_to_numpy(state.params)
    torch_params = torch_params_to_flax_numpy(torch_model)
    for name, value in jax_params.items():
        jax_update, torch_update = value - before[name], torch_params[name] - before[name]
        assert np.abs(jax_update).max() > config.learning_rate / 4, name  # every parameter really moved
        # Compared as whole updates: Adam turns float32 noise in near-zero gradients (the key bias's gradient
        # is exactly zero in exact arithmetic) into visible steps on single elements, in both frameworks.
        difference = np.linalg.norm(torch_update - jax_update) / np.linalg.norm(jax_update)
        assert difference < 1e-2, f"{name}: updates differ by {difference:.2%}"


def test_weight_decay_applies_to_the_same_parameters_in_both_frameworks():
    config = get_config("tiny")
    state = create_train_state(make_recipe(config, STEPS_PER_EPOCH), make_mesh(jax.devices()[:1]))
    jax_decayed = {
        name for name, decayed in flax_params_to_numpy(weight_decay_mask(state.params)).items() if decayed
    }
    torch_decayed = {
        flax_name for name, param in TorchViT(config).named_parameters()
        for flax_name, _ in [torch_to_flax_name_and_layout(name, param.detach().numpy())]
        if decays(name, param)
    }
    assert torch_decayed == jax_decayed
    assert "patch_embed.kernel" in jax_decayed and "pos_embed" not in jax_decayed


def _baseline_step(config, steps, batch):
    """The PyTorch baseline's step from the JAX trainer's initial weights, after `steps` steps on `batch`, and
    their losses."""
    state = create_train_state(make_recipe(config, STEPS_PER_EPOCH), make_mesh(jax.devices()[:1]))
    model = load_flax_weights(TorchViT(config), state.params)
    step = TorchTrainStep(model, config, Schedule.from_config(config, STEPS_PER_EPOCH), torch.device("cpu"))
    return step, [float(step(*batch)) for _ in range(steps)]


def _weights(step):
    return [p.detach().clone() for p in step.model.parameters()]


def _set_scale(scaler, scale):
    scaler.load_state_dict({**scaler.state_dict(), "scale": scale})  # also for a copy not yet used


def test_the_float16_baseline_scales_the_loss_skips_an_overflow_and_tracks_float32():
    # float16 autocast with a GradScaler, as on a T4: torch autocasts to float16 on this CPU too.
    config = deterministic("tiny").replace(compute_dtype="float16", epochs=20, depth=1)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (8, 32, 32, 3), dtype=np.uint8)
    batch = (torch.from_numpy(np.array(normalize(images, config))).permute(0, 3, 1, 2).contiguous(),
             torch.from_numpy(rng.integers(0, 10, 8)).long())  # one batch again and again: the loss must fall
    step, losses = _baseline_step(config, 6, batch)
    assert step.scaler is not None and step.scaler.get_scale() == 2.0**15
    _, float32_losses = _baseline_step(config.replace(compute_dtype="float32"), 6, batch)
    assert losses[-1] < losses[0] - 0.3 and losses == pytest.approx(float32_losses, rel=1e-2)
    assert losses[1:] != float32_losses[1:]  # float16 did compute
    assert TorchTrainStep(step.model, config.replace(compute_dtype="bfloat16"), Schedule.from_config(config, 4),
                          torch.device("cpu")).scaler is None  # bfloat16 needs no loss scaling
    start = copy.deepcopy(step)  # model, optimizer, schedule and scaler together

    # 2^30 overflows float16 in the backward pass: halve until the batch fits, each overflow skipping its update.
    _set_scale(step.scaler, 2.0**30)
    skipped = 0
    while True:
        before, scale = _weights(step), step.scaler.get_scale()
        step(*batch)
        if step.scaler.get_scale() == scale:  # no overflow: the weights moved
            assert any(not torch.equal(a, b) for a, b in zip(before, _weights(step)))
            break
        assert step.scaler.get_scale() == scale / 2 and all(torch.equal(a, b) for a, b in zip(before, _weights(step)))
        skipped += 1
    fitting = step.scaler.get_scale()
    assert skipped >= 1

    # Twice the largest scale that fits, from the same state: exactly one skipped update, then updates.
    _set_scale(start.scaler, 2.0 * fitting)
    before = _weights(start)
    start(*batch)
    assert start.scaler.get_scale() == fitting and all(torch.equal(a, b) for a, b in zip(before, _weights(start)))
    start(*batch)
    assert start.scaler.get_scale() == fitting and any(not torch.equal(a, b) for a, b in zip(before, _weights(start)))
