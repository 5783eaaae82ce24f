"""The production train step: one pure per-device function, run data-parallel over all local devices.

The trainer and the speed benchmark both use exactly this, so a benchmark measures the real step:

    from jax_vit.train_step import create_train_state, make_mesh, make_recipe, make_train_step, shard_batch

    mesh = make_mesh()                                   # all devices (of every process) on one "data" axis
    recipe = make_recipe(config, steps_per_epoch)        # model graph, optimiser, learning-rate schedule
    state = create_train_state(recipe, mesh)             # float32 params, replicated on every device
    train_step = make_train_step(recipe, mesh)           # jit(shard_map(per-device step)), state donated
    images, labels = shard_batch(mesh, images_uint8_nhwc, int_labels)   # global batch split over "data"
    state, metrics = train_step(state, images, labels)   # metrics: loss, accuracy, grad_norm, lr (scalars)
                                                         # (+ loss_scale, skipped when computing in float16)

`state` is donated: always rebind it (`state, metrics = train_step(state, ...)`), never reuse the old one.
The global batch must divide evenly over the devices. Augmentation (`jax_vit.augment.augment`) runs inside
the step, so the inputs are the raw uint8 images and integer labels.

In float16 (`recipe.precision`, from `jax_vit.precision`) the step scales the loss dynamically: an update
whose gradients overflow is skipped (params, optimiser state and EMA stay as they were) and the scale halves.

The same per-device function also runs under `jax.pmap` (`make_pmap_train_step`, with a state that has a
leading device axis from `replicate`); one device is simply the one-element case of either.
"""
from __future__ import annotations

import dataclasses
import functools
import os
from typing import Any, Callable

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from jax_vit.augment import augment, model_inputs
from jax_vit.configs import Config
from jax_vit.model import VisionTransformer
from jax_vit.precision import DynamicLossScale, Precision, all_finite, device_precision, select_tree

DATA_AXIS = "data"
# The automatic micro-batch count's ceiling on the CPU: 2 is what was measured (2-core machines); more slices
# make every matmul smaller, and whether they pay on more cores is not measured yet.
MAX_AUTO_MICRO_BATCHES = 2
Metrics = dict[str, jax.Array]


@flax.struct.dataclass
class TrainState:
    step: jax.Array  # int32 scalar: train steps done so far (float16 steps skipped on an overflow count too)
    params: Any  # the model's parameters as a pure dict (nnx.split(model) state's .to_pure_dict())
    opt_state: Any
    ema_params: Any  # exponential moving average of params; None when config.ema_decay == 0
    rng: jax.Array  # raw uint32 key data (checkpointable); step and device keys are folded from it
    # float16 compute only (else None, so float32/bfloat16 checkpoints keep the layout they always had).
    loss_scale: DynamicLossScale | None = None


@dataclasses.dataclass(frozen=True, eq=False)  # compared and hashed by identity: a jit cache key
class Recipe:
    """The static half of training: what the step closes over (nothing here is an array to donate)."""

    config: Config
    graphdef: Any  # nnx.GraphDef of the VisionTransformer
    tx: optax.GradientTransformation
    schedule: optax.Schedule
    steps_per_epoch: int
    precision: Precision  # the compute dtype on this process's devices, and why


def make_mesh(devices=None) -> jax.sharding.Mesh:
    """A one-axis mesh over `devices` for data parallelism. The default, `jax.devices()`, is every process's
    devices: the local ones in a one-process run, all of the run's after `jax_vit.distributed.initialize`."""
    devices = list(devices if devices is not None else jax.devices())
    return jax.make_mesh((len(devices),), (DATA_AXIS,), devices=devices)


def total_steps(config: Config, steps_per_epoch: int) -> int:
    """The optimiser steps of the whole run: `total_steps` where set, else epochs x steps per epoch."""
    return config.total_steps or max(int(config.epochs * steps_per_epoch), 1)


def learning_rate_schedule(config: Config, steps_per_epoch: int) -> optax.Schedule:
    """Linear warm-up from 0 to the peak over `warmup_steps` (or `warmup_epochs`), then cosine decay to
    `min_learning_rate` at the run's last step."""
    total = total_steps(config, steps_per_epoch)
    warmup = config.warmup_steps or int(round(config.warmup_epochs * steps_per_epoch))
    warmup = min(warmup, total - 1)
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=config.learning_rate, warmup_steps=warmup,
        decay_steps=total, end_value=config.min_learning_rate,
    )


def weight_decay_mask(params) -> Any:
    """True for matmul and conv kernels; biases, norm scales, position embeddings and the CLS token are
    left alone, since shrinking them towards zero only fights the normalisation (as in DeiT/big_vision)."""
    return jax.tree_util.tree_map_with_path(lambda path, _: getattr(path[-1], "key", None) == "kernel", params)


def layer_id(path, depth: int) -> int:
    """BEiT's layer index of a parameter: 0 for the patch and position embeddings and the CLS token, i + 1 for
    block i, depth + 1 for the final norm and the head."""
    name = getattr(path[0], "key", None)
    if name in ("patch_embed", "pos_embed", "cls_token"):
        return 0
    if name == "blocks":
        return int(path[1].key) + 1
    return depth + 1


def scale_by_layer_decay(layer_decay: float, depth: int) -> optax.GradientTransformation:
    """Multiplies each parameter's update by layer_decay ** (depth + 1 - layer_id): after AdamW (whose update
    already holds the learning rate and the decoupled weight decay) it is a per-layer learning rate, as in
    BEiT's and timm's parameter groups."""

    def update(updates, state, params=None):
        del params
        scaled = jax.tree_util.tree_map_with_path(
            lambda path, u: u * (layer_decay ** (depth + 1 - layer_id(path, depth))), updates)
        return scaled, state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def make_optimizer(config: Config, steps_per_epoch: int) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """Clip at global norm, then AdamW or momentum SGD (`config.optimizer`), then layer-wise decay if on."""
    schedule = learning_rate_schedule(config, steps_per_epoch)
    if config.optimizer == "sgd":
        # The ViT authors' transfer recipe: optax.sgd's momentum is PyTorch's (a trace of the gradients, no
        # dampening). Weight decay, where asked for, is the L2 term added to the kernels' gradients.
        optimizer = optax.sgd(schedule, momentum=config.momentum or None)
        if config.weight_decay:
            optimizer = optax.chain(optax.add_decayed_weights(config.weight_decay, mask=weight_decay_mask), optimizer)
    else:
        optimizer = optax.adamw(schedule, b1=config.b1, b2=config.b2, weight_decay=config.weight_decay,
                                mask=weight_decay_mask)
    parts = [optax.clip_by_global_norm(config.grad_clip_norm), optimizer]
    if config.layer_decay < 1.0:
        parts.append(scale_by_layer_decay(config.layer_decay, config.depth))
    return optax.chain(*parts), schedule


@functools.lru_cache(maxsize=16)
def make_recipe(config: Config, steps_per_epoch: int) -> Recipe:
    """Cached, so the steps built from it below are too: a resumed or re-evaluated run in the same
    process reuses the compiled step instead of compiling it again."""
    precision = device_precision(config.compute_dtype)
    # The graph definition does not depend on the init values: build it abstractly (no compute).
    graphdef, _ = nnx.split(nnx.eval_shape(
        lambda: VisionTransformer(config, rngs=nnx.Rngs(0), dtype=jnp.dtype(precision.dtype))))
    tx, schedule = make_optimizer(config, steps_per_epoch)
    return Recipe(config=config, graphdef=graphdef, tx=tx, schedule=schedule, steps_per_epoch=steps_per_epoch,
                  precision=precision)


def init_train_state(recipe: Recipe, seed: int | None = None, params=None) -> TrainState:
    """A fresh state on the default device (use `create_train_state` to place it on a mesh).

    `params`: start from these weights (a pure dict of the model's layout, e.g. a pretrained checkpoint's from
    `jax_vit.pretrained`) instead of a random initialisation; the keys still follow from `seed`."""
    seed = recipe.config.seed if seed is None else seed
    params_key, train_key = jax.random.split(jax.random.key(seed))
    if params is None:
        model = VisionTransformer(recipe.config, rngs=nnx.Rngs(params=params_key))
        params = nnx.split(model)[1].to_pure_dict()
    else:
        params = check_params(recipe.config, params)
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        opt_state=recipe.tx.init(params),
        ema_params=jax.tree.map(jnp.copy, params) if recipe.config.ema_decay > 0 else None,
        rng=jax.random.key_data(train_key),
        loss_scale=DynamicLossScale.create() if recipe.precision.loss_scaling else None,
    )


def check_params(config: Config, params):
    """`params` as float32 jax arrays, if they have exactly the tree and shapes of `config`'s model (ValueError
    naming the first difference if not)."""
    expected = nnx.split(nnx.eval_shape(lambda: VisionTransformer(config, rngs=nnx.Rngs(0))))[1].to_pure_dict()
    if jax.tree.structure(expected) != jax.tree.structure(params):
        raise ValueError(f"params do not have the model's layout: {jax.tree.structure(params)} vs "
                         f"{jax.tree.structure(expected)}")
    for (path, want), got in zip(jax.tree_util.tree_leaves_with_path(expected), jax.tree.leaves(params)):
        if tuple(np.shape(got)) != tuple(want.shape):
            raise ValueError(f"{jax.tree_util.keystr(path)}: shape {np.shape(got)}, the model has {want.shape}")
    return jax.tree.map(lambda x: jnp.asarray(x, jnp.float32), params)


def create_train_state(recipe: Recipe, mesh: jax.sharding.Mesh, seed: int | None = None, params=None) -> TrainState:
    """A fresh state, replicated on every device of `mesh` (what `make_train_step` expects); `params` as in
    `init_train_state`."""
    return replicate_on_mesh(mesh, init_train_state(recipe, seed, params))


def put_on_mesh(value, sharding: NamedSharding) -> jax.Array:
    """`value` (the whole array, held by this process) placed with `sharding`. On a mesh spanning several
    processes each one fills only its own devices' shards; `jax.device_put` would first compare the whole
    value across processes (a transfer the size of the array: the training set, the weights)."""
    if sharding.is_fully_addressable:
        return jax.device_put(value, sharding)
    value = np.asarray(value)
    return jax.make_array_from_callback(value.shape, sharding, lambda index: value[index])


def replicate_on_mesh(mesh: jax.sharding.Mesh, tree):
    sharding = NamedSharding(mesh, P())
    return jax.tree.map(lambda x: put_on_mesh(x, sharding), tree)


def shard_batch(mesh: jax.sharding.Mesh, *arrays):
    """Puts global-batch arrays on the mesh, split along their first axis over the data axis (every process
    passes the same global arrays and keeps its devices' rows)."""
    sharding = NamedSharding(mesh, P(DATA_AXIS))
    placed = tuple(put_on_mesh(a, sharding) for a in arrays)
    return placed if len(placed) > 1 else placed[0]


def step_keys(state: TrainState, axis_name: str = DATA_AXIS) -> tuple[jax.Array, jax.Array]:
    """(augmentation key, dropout key) for this step on this device: every step and every device differs,
    and all of it follows from the seed, so a resumed run draws exactly what an uninterrupted one would."""
    key = jax.random.wrap_key_data(state.rng)
    key = jax.random.fold_in(jax.random.fold_in(key, state.step), jax.lax.axis_index(axis_name))
    augment_key, dropout_key = jax.random.split(key)
    return augment_key, dropout_key


def cross_entropy(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """Mean cross-entropy against target distributions (smoothed one-hot, or mixed by Mixup/CutMix)."""
    return optax.softmax_cross_entropy(logits, targets).mean()


def ema_update(ema_params, params, decay: float, step: jax.Array):
    # The (1+t)/(10+t) warm-up keeps early averages from being dominated by the random initialisation.
    step = step.astype(jnp.float32)
    decay = jnp.minimum(decay, (1.0 + step) / (10.0 + step))
    return jax.tree.map(lambda e, p: decay * e + (1.0 - decay) * p, ema_params, params)


def available_cores() -> int:
    """The CPU cores this process may run on (its affinity mask: a container or `taskset` may allow fewer than
    the machine has); XLA:CPU sizes its thread pool the same way."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS has no affinity masks
        return os.cpu_count() or 1


def micro_batch_count(config: Config, batch: int, platform: str | None = None) -> int:
    """How many independent slices the train step runs the model on (`config.micro_batches`; 0: automatic).

    Automatic is one slice per core on the CPU, at most MAX_AUTO_MICRO_BATCHES, and 1 on GPUs and TPUs. XLA:CPU
    runs most kernels of a step on one thread (its elementwise fusions, and the attention's batched matmuls,
    YNNPACK's 1024 problems of 65x32x65 in seed-256x6) and overlaps only kernels that do not depend on each other:
    two slices give it two such chains. On a 2-core Intel Xeon (Ice Lake) seed-256x6's step went from 0.80x to
    0.92x eager PyTorch's speed (docs/speed.md, "Micro-batches on the CPU"). Never more slices than samples.
    """
    count = config.micro_batches
    if count == 0:
        on_cpu = (platform or jax.default_backend()) == "cpu"
        count = min(available_cores(), MAX_AUTO_MICRO_BATCHES) if on_cpu else 1
    return max(1, min(count, batch))


def forward_in_micro_batches(model, inputs: jax.Array, dropout_key: jax.Array, count: int) -> jax.Array:
    """The model's training-mode logits for `inputs`, computed on `count` slices of the batch, concatenated.

    Every sample's logits are what one whole-batch call gives, up to float32 rounding (a ViT mixes no samples);
    only the dropout and DropPath masks differ, since each slice draws from its own key (as each device does
    under data parallelism). With one slice the key is used as it is, so GPU and TPU runs draw what they did.
    """
    if count == 1:
        return model(inputs, train=True, rngs=nnx.Rngs(dropout=dropout_key))
    slices = jnp.array_split(inputs, count)
    return jnp.concatenate([model(x, train=True, rngs=nnx.Rngs(dropout=jax.random.fold_in(dropout_key, i)))
                            for i, x in enumerate(slices)], axis=0)


def train_step_per_device(
    recipe: Recipe, state: TrainState, images: jax.Array, labels: jax.Array, axis_name: str = DATA_AXIS,
) -> tuple[TrainState, Metrics]:
    """One optimiser update, written for one device's shard of the global batch.

    Gradients and metrics are averaged over `axis_name`, so with equal shards the update is the one a
    single device would make on the whole global batch. With a loss scale in the state (float16) the
    gradients of the scaled loss are unscaled in float32, and an update whose gradients are not all finite is
    skipped; the averaged gradients are the same on every device, so every device skips the same steps.
    """
    config = recipe.config
    augment_key, dropout_key = step_keys(state, axis_name)
    inputs, targets = augment(images, labels, augment_key, config)
    scaling = state.loss_scale
    micro = micro_batch_count(config, inputs.shape[0])

    def loss_fn(params):
        model = nnx.merge(recipe.graphdef, params)
        logits = forward_in_micro_batches(model, inputs, dropout_key, micro)
        loss = cross_entropy(logits, targets)
        # Scaling the loss scales every gradient of the float16 backward pass, lifting small ones above
        # float16's underflow; the loss itself and the head's logits are float32.
        return (loss if scaling is None else scaling.scale_loss(loss)), (loss, logits)

    # Under shard_map the params are device-invariant, and differentiating a per-device loss with respect to
    # them would silently *sum* gradients over devices. Marking them device-varying first gives each device
    # its own gradient, which the explicit pmean then averages (under pmap the cast is a no-op).
    params = _as_device_varying(state.params, axis_name)
    (_, (loss, logits)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    # An overflow on any one device makes the mean inf or NaN on all of them: the pmean is also the vote.
    grads = jax.lax.pmean(grads, axis_name)
    if scaling is not None:
        grads = scaling.unscale(grads)
    updates, opt_state = recipe.tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    ema_params = state.ema_params
    if ema_params is not None:
        ema_params = ema_update(ema_params, params, config.ema_decay, state.step)
    metrics = {
        "loss": loss,
        "accuracy": jnp.mean(jnp.argmax(logits, -1) == labels),
    }
    metrics = jax.lax.pmean(metrics, axis_name)
    metrics["grad_norm"] = optax.global_norm(grads)
    metrics["lr"] = recipe.schedule(state.step)
    loss_scale = None
    if scaling is not None:
        finite = all_finite(grads)
        # A skipped step keeps the pre-step params, optimiser state (its step count too) and EMA.
        params, opt_state, ema_params = select_tree(
            finite, (params, opt_state, ema_params), (state.params, state.opt_state, state.ema_params))
        loss_scale = scaling.adjust(finite)
        metrics["loss_scale"] = scaling.scale  # the scale this step used
        metrics["skipped"] = (~finite).astype(jnp.float32)
    new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state, ema_params=ema_params,
                              loss_scale=loss_scale)
    return new_state, metrics


def _as_device_varying(tree, axis_name: str):
    def cast(x):
        aval = jax.typeof(x)
        # Where the type records the axes a value varies over moved between JAX releases.
        varying = getattr(getattr(aval, "manual_axis_type", None), "varying", None)
        if axis_name in (varying if varying is not None else getattr(aval, "vma", ())):
            return x
        return jax.lax.pcast(x, axis_name, to="varying")
    return jax.tree.map(cast, tree)


@functools.lru_cache(maxsize=16)
def make_train_step(recipe: Recipe, mesh: jax.sharding.Mesh) -> Callable[..., tuple[TrainState, Metrics]]:
    """jit(shard_map(train_step_per_device)) over `mesh`: state replicated, batch split, state donated."""
    step = jax.shard_map(
        lambda state, images, labels: train_step_per_device(recipe, state, images, labels),
        mesh=mesh, in_specs=(P(), P(DATA_AXIS), P(DATA_AXIS)), out_specs=(P(), P()),
    )
    return jax.jit(step, donate_argnums=0)


def make_pmap_train_step(recipe: Recipe, devices=None) -> Callable[..., tuple[TrainState, Metrics]]:
    """The same per-device step under `jax.pmap`: state from `replicate`, images shaped (devices, B/devices, ...).
    Metrics come back with a leading device axis (all entries equal)."""
    return jax.pmap(
        lambda state, images, labels: train_step_per_device(recipe, state, images, labels),
        axis_name=DATA_AXIS, devices=devices, donate_argnums=0,
    )


def replicate(tree, num_devices: int):
    """A leading device axis for pmap (jax.device_put_replicated is gone)."""
    return jax.tree.map(lambda x: np.broadcast_to(np.asarray(x), (num_devices,) + np.shape(x)), tree)


def unreplicate(tree):
    return jax.tree.map(lambda x: x[0], tree)


def eval_step_per_device(recipe: Recipe, params, images, labels, mask, axis_name: str = DATA_AXIS):
    """Sums over this shard (padding rows masked out), added over devices; per-example predictions."""
    model = nnx.merge(recipe.graphdef, params)
    logits = model(model_inputs(images, recipe.config), train=False)
    losses = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
    predictions = jnp.argmax(logits, -1)
    sums = {
        "loss_sum": jnp.sum(losses * mask),
        "correct": jnp.sum((predictions == labels) * mask),
        "count": jnp.sum(mask),
    }
    return jax.lax.psum(sums, axis_name), predictions


@functools.lru_cache(maxsize=16)
def make_eval_step(recipe: Recipe, mesh: jax.sharding.Mesh):
    """(params, images, labels, mask) on the mesh -> (summed loss/correct/count, predictions)."""
    step = jax.shard_map(
        lambda params, images, labels, mask: eval_step_per_device(recipe, params, images, labels, mask),
        mesh=mesh, in_specs=(P(), P(DATA_AXIS), P(DATA_AXIS), P(DATA_AXIS)), out_specs=(P(), P(DATA_AXIS)),
    )
    return jax.jit(step)
