"""The ViT, its presets, the optimiser recipe and the on-device augmentation (no training here)."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from jax_vit.augment import augment, normalize, random_crop, random_flip, smooth_targets
from jax_vit.configs import PRESETS, ConfigError, get_config, parse_overrides
from jax_vit.model import VisionTransformer, attention_core, count_params, split_qkv
from jax_vit.train_step import init_train_state, learning_rate_schedule, make_recipe, weight_decay_mask


def expected_param_count(config) -> int:
    """The architecture written out by hand: patch conv, CLS, position embeddings, blocks, final norm, head."""
    w, m, p = config.width, config.mlp_dim, config.patch_size
    block = 2 * 2 * w + (w * 3 * w + 3 * w) + (w * w + w) + (w * m + m) + (m * w + w)
    return (p * p * config.in_channels * w + w) + w + (config.num_patches + 1) * w \
        + config.depth * block + 2 * w + (w * config.num_classes + config.num_classes)


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_every_preset_builds_with_the_documented_parameter_count(preset):
    config = get_config(preset)
    model = nnx.eval_shape(lambda: VisionTransformer(config, rngs=nnx.Rngs(0)))
    params = nnx.split(model)[1].to_pure_dict()
    assert count_params(params) == expected_param_count(config)
    assert params["pos_embed"].shape == (1, config.num_patches + 1, config.width)
    assert len(params["blocks"]) == config.depth


def test_seed_presets_match_the_write_ups():
    big, small = get_config("seed-384x8"), get_config("seed-256x6")
    assert (big.width, big.depth, big.num_heads, big.mlp_dim, big.patch_size, big.drop_path_rate) == \
        (384, 8, 6, 1536, 4, 0.2)
    assert (small.width, small.depth, small.num_heads, small.mlp_dim, small.patch_size, small.dropout) == \
        (256, 6, 8, 512, 4, 0.1)
    # Hand-counted: 256-wide, 6 blocks, 65 tokens, 10 classes.
    assert expected_param_count(small) == 3_195_146


def _jitted_forward(model):
    """Eager NNX runs op by op (slow on a busy CPU): compile the forward pass once per `train` value."""
    graphdef, params = nnx.split(model)

    @functools.partial(jax.jit, static_argnames="train")
    def forward(params, images, key, train):
        return nnx.merge(graphdef, params)(images, train=train, rngs=nnx.Rngs(dropout=key) if train else None)

    return lambda images, key, train: forward(params, images, key, train=train)


def test_logits_have_one_row_per_image_and_one_column_per_class():
    config = get_config("tiny", {"in_channels": 1})
    forward = _jitted_forward(VisionTransformer(config, rngs=nnx.Rngs(0)))
    logits = forward(jnp.ones((5, 32, 32, 1)), jax.random.key(0), False)
    assert logits.shape == (5, 10) and logits.dtype == jnp.float32


def test_dropout_and_drop_path_act_in_training_only():
    config = get_config("tiny", {"depth": 2, "dropout": "0.3", "drop_path_rate": "0.5", "attention_dropout": "0.2"})
    model = VisionTransformer(config, rngs=nnx.Rngs(0))
    # The zero-initialised head would hide everything: give it weights.
    model.head.kernel.value = jax.random.normal(jax.random.key(1), model.head.kernel.value.shape)
    images = jax.random.normal(jax.random.key(2), (4, 32, 32, 3))
    forward = _jitted_forward(model)
    evaluation = [forward(images, jax.random.key(k), False) for k in (0, 1)]
    np.testing.assert_array_equal(evaluation[0], evaluation[1])
    training = [forward(images, jax.random.key(k), True) for k in (0, 1)]
    assert not np.allclose(training[0], training[1])
    assert not np.allclose(training[0], evaluation[0])


def test_drop_path_drops_whole_samples_and_rescales_the_rest_in_training_only():
    from jax_vit.model import DropPath

    x = jnp.ones((64, 5, 8))
    dropped = np.asarray(DropPath(0.5)(x, train=True, rngs=nnx.Rngs(dropout=0)))
    per_sample = dropped.reshape(64, -1)
    assert set(np.unique(per_sample)) <= {0.0, 2.0}
    assert np.all(per_sample.min(axis=1) == per_sample.max(axis=1))  # all or nothing per sample
    assert 16 < (per_sample[:, 0] == 0).sum() < 48
    np.testing.assert_array_equal(DropPath(0.5)(x, train=False, rngs=None), x)


def test_keep_mask_is_bernoulli_at_the_asked_rate_for_any_shape():
    from jax_vit.model import keep_mask

    mask, keep = keep_mask(jax.random.key(0), 0.9, (1000, 1001))
    assert mask.shape == (1000, 1001) and mask.dtype == jnp.bool_
    assert abs(keep - 0.9) < 1 / 65536
    assert abs(float(mask.mean()) - keep) < 0.002  # 1M draws: the standard error is 0.0003
    odd, _ = keep_mask(jax.random.key(1), 0.5, (3, 5, 7))  # an odd element count uses half a word
    assert odd.shape == (3, 5, 7) and 0 < int(odd.sum()) < 105
    other, _ = keep_mask(jax.random.key(2), 0.9, (1000, 1001))
    assert float((mask != other).mean()) > 0.1  # different keys, different masks


def test_dropout_keeps_the_expectation_and_is_off_at_evaluation():
    from jax_vit.model import Dropout

    x = jnp.full((512, 512), 3.0)
    dropped = np.asarray(Dropout(0.25)(x, train=True, rngs=nnx.Rngs(dropout=0)))
    assert set(np.unique(dropped)) <= {0.0, 4.0}
    assert abs((dropped == 0).mean() - 0.25) < 0.01
    assert abs(dropped.mean() - 3.0) < 0.03
    np.testing.assert_array_equal(Dropout(0.25)(x, train=False, rngs=None), x)


def test_compute_dtype_is_float32_on_cpu_with_float32_params():
    config = get_config("tiny")
    state = init_train_state(make_recipe(config, 10))
    assert {leaf.dtype for leaf in jax.tree.leaves(state.params)} == {jnp.dtype(jnp.float32)}
    from jax_vit.model import compute_dtype
    assert compute_dtype(config, "cpu") == jnp.float32
    assert compute_dtype(config, "gpu") == jnp.bfloat16 and compute_dtype(config, "tpu") == jnp.bfloat16


def test_overrides_are_typed_and_unknown_keys_are_refused():
    config = get_config("tiny", parse_overrides(["depth=2", "random_flip=false", "ema-decay=0.99"]))
    assert (config.depth, config.random_flip, config.ema_decay) == (2, False, 0.99)
    with pytest.raises(ConfigError, match="unknown config key 'depht'"):
        get_config("tiny", {"depht": "2"})
    with pytest.raises(ConfigError, match="unknown preset"):
        get_config("huge")
    with pytest.raises(ConfigError, match="expected a int"):
        get_config("tiny", {"depth": "two"})


# --- optimiser -------------------------------------------------------------------------------------------

def test_schedule_warms_up_linearly_then_decays_to_the_floor():
    config = get_config("tiny", {"epochs": 10, "warmup_epochs": 2.0, "learning_rate": 1e-3,
                                 "min_learning_rate": 1e-5})
    schedule = learning_rate_schedule(config, steps_per_epoch=100)
    assert float(schedule(0)) == 0.0
    assert float(schedule(100)) == pytest.approx(5e-4)
    assert float(schedule(200)) == pytest.approx(1e-3)
    assert float(schedule(1000)) == pytest.approx(1e-5)
    decay = np.array([float(schedule(s)) for s in range(200, 1001, 50)])
    assert np.all(np.diff(decay) < 0)
    # Cosine: halfway through the decay, halfway between peak and floor.
    assert float(schedule(600)) == pytest.approx((1e-3 + 1e-5) / 2, rel=1e-4)


def test_weight_decay_spares_biases_norms_position_embeddings_and_cls_token():
    config = get_config("tiny", {"weight_decay": "0.5", "grad_clip_norm": "1e9"})
    recipe = make_recipe(config, steps_per_epoch=1)
    state = init_train_state(recipe)
    mask = weight_decay_mask(state.params)
    assert mask["patch_embed"]["kernel"] and mask["head"]["kernel"] and mask["blocks"][0]["mlp"]["fc1"]["kernel"]
    assert not any([mask["pos_embed"], mask["cls_token"], mask["norm"]["scale"], mask["blocks"][0]["norm1"]["bias"],
                    mask["blocks"][0]["attention"]["qkv"]["bias"]])
    # Behaviour: with zero gradients, only decayed leaves move, and they shrink.
    zeros = jax.tree.map(jnp.zeros_like, state.params)

    @jax.jit
    def three_updates(params):
        opt_state = recipe.tx.init(params)
        for _ in range(3):  # step 0 has learning rate 0 (warm-up)
            updates, opt_state = recipe.tx.update(zeros, opt_state, params)
        return optax.apply_updates(params, updates)

    moved = three_updates(state.params)
    for path, decayed in jax.tree_util.tree_leaves_with_path(mask):
        before = _at(state.params, path)
        after = _at(moved, path)
        if decayed and before.any():  # (the head starts at zero and stays there)
            assert np.abs(after).sum() < np.abs(before).sum(), jax.tree_util.keystr(path)
        else:
            np.testing.assert_array_equal(after, before, err_msg=jax.tree_util.keystr(path))


def _at(tree, path):
    for key in path:
        tree = tree[key.key]
    return np.asarray(tree)


# --- augmentation ----------------------------------------------------------------------------------------

def _images(n=8, channels=3, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, 32, 32, channels), dtype=np.uint8)


def test_augment_returns_normalised_floats_and_smoothed_target_distributions():
    config = get_config("tiny", {"label_smoothing": "0.1"})
    labels = jnp.arange(8) % 10
    images, targets = augment(_images(), labels, jax.random.key(0), config)
    assert images.shape == (8, 32, 32, 3) and images.dtype == jnp.float32
    assert targets.shape == (8, 10)
    np.testing.assert_allclose(targets.sum(-1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(targets[np.arange(8), labels], 0.91, rtol=1e-6)
    np.testing.assert_allclose(smooth_targets(labels, 10, 0.0), jax.nn.one_hot(labels, 10))


def test_augment_is_deterministic_per_key_and_varies_between_keys():
    config = get_config("tiny")
    images, labels = _images(), jnp.zeros(8, jnp.int32)
    first = augment(images, labels, jax.random.key(3), config)[0]
    np.testing.assert_array_equal(first, augment(images, labels, jax.random.key(3), config)[0])
    assert not np.array_equal(first, augment(images, labels, jax.random.key(4), config)[0])


def test_without_crop_and_flip_augment_only_normalises():
    config = get_config("tiny", {"crop_padding": 0, "random_flip": False})
    images = _images()
    out, _ = augment(images, jnp.zeros(8, jnp.int32), jax.random.key(0), config)
    np.testing.assert_array_equal(out, normalize(images, config))


def test_random_crop_returns_a_window_of_the_zero_padded_image():
    images = _images(16)
    cropped = np.asarray(random_crop(jnp.asarray(images), jax.random.key(1), padding=4))
    padded = np.pad(images, ((0, 0), (4, 4), (4, 4), (0, 0)))
    offsets = []
    for image, crop in zip(padded, cropped):
        found = [(dy, dx) for dy in range(9) for dx in range(9) if np.array_equal(image[dy:dy + 32, dx:dx + 32], crop)]
        assert found, "crop is not a 32x32 window of the padded image"
        offsets.append(found[0])
    assert len(set(offsets)) > 4  # offsets differ between images


def test_random_flip_mirrors_about_half_the_images():
    images = _images(64)
    flipped = np.asarray(random_flip(jnp.asarray(images), jax.random.key(2)))
    mirrored = [np.array_equal(f, i[:, ::-1]) for f, i in zip(flipped, images)]
    kept = [np.array_equal(f, i) for f, i in zip(flipped, images)]
    assert all(m or k for m, k in zip(mirrored, kept))
    assert 16 < sum(mirrored) < 48


def test_normalisation_centres_the_real_cifar10_sample(cifar10_sample_dir):
    from jax_vit.data import load_dataset

    dataset = load_dataset("cifar10", cifar10_sample_dir)
    normalised = np.asarray(normalize(jnp.asarray(dataset.train_images[:2000]), get_config("tiny")))
    np.testing.assert_allclose(normalised.mean(axis=(0, 1, 2)), 0.0, atol=0.05)
    np.testing.assert_allclose(normalised.std(axis=(0, 1, 2)), 1.0, atol=0.05)


def test_exact_gelu_matches_float64_within_float32_rounding_forward_and_backward():
    import math

    from jax_vit.model import gelu

    x = np.linspace(-10.0, 10.0, 200_001).astype(np.float32)
    x64 = x.astype(np.float64)
    cdf = 0.5 * np.array([math.erfc(-v / math.sqrt(2.0)) for v in x64])
    expected = x64 * cdf
    expected_grad = cdf + x64 * np.exp(-0.5 * x64 ** 2) / math.sqrt(2.0 * math.pi)
    out = np.asarray(jax.jit(gelu)(jnp.asarray(x)), np.float64)
    grad = np.asarray(jax.jit(jax.vmap(jax.grad(gelu)))(jnp.asarray(x)), np.float64)
    # jax.nn.gelu's erfc and PyTorch's float32 F.gelu are off by up to 3.8e-7 here (2.6e-7 for PyTorch's gradient).
    assert np.abs(out - expected).max() < 5e-7
    assert np.abs(grad - expected_grad).max() < 3e-7
    assert np.all(out[x >= 0] >= 0) and np.all(out[x < 0] <= 0)
    np.testing.assert_allclose(out, np.asarray(jax.nn.gelu(jnp.asarray(x), approximate=False)), atol=6e-7)


def test_gelu_keeps_bfloat16_and_the_tanh_form_is_jax_nn_gelu():
    from jax_vit.model import gelu

    x = jnp.linspace(-4.0, 4.0, 101)
    assert gelu(x.astype(jnp.bfloat16)).dtype == jnp.bfloat16
    assert jax.grad(lambda v: gelu(v).sum())(x.astype(jnp.bfloat16)).dtype == jnp.bfloat16
    np.testing.assert_array_equal(gelu(x, approximate=True), jax.nn.gelu(x, approximate=True))


def test_gelu_backward_recomputes_from_its_input_instead_of_keeping_intermediates():
    # Structure, not speed: in the compiled forward+backward of an MLP, the activation's shape is written by
    # two elementwise passes only, GELU forward and its backward. A JVP rule kept Phi's intermediates, which
    # XLA:CPU wrote out as two more full-size arrays (docs/speed.md, "GELU and the attention core").
    import re

    from jax_vit.model import gelu

    keys = jax.random.split(jax.random.key(0), 4)
    x = jax.random.normal(keys[0], (260, 64))
    w1, b1, w2 = (jax.random.normal(k, s) for k, s in zip(keys[1:], ((64, 256), (256,), (256, 64))))

    def loss(w1, b1, w2):
        return jnp.sum(jnp.sin(gelu(x @ w1 + b1) @ w2))

    hlo = jax.jit(jax.grad(loss, (0, 1, 2))).lower(w1, b1, w2).compile().as_text()
    entry = hlo[hlo.index("\nENTRY"):]
    passes = [line for line in entry.splitlines()
              if "kind=kLoop" in line and re.search(r"= f32\[260,256\]", line)]
    assert len(passes) == 2, passes


@pytest.mark.parametrize("heads, head_dim", [(3, 64), (4, 24)])
def test_attention_core_is_jax_dot_product_attention_forward_and_backward(heads, head_dim):
    shape = (2, 17, heads, head_dim)
    q, k, v, cotangent = (jax.random.normal(key, shape) for key in jax.random.split(jax.random.key(3), 4))

    def pullback(attend):
        out, vjp = jax.vjp(attend, q, k, v)
        return out, vjp(cotangent)

    out, grads = pullback(attention_core)
    expected, expected_grads = pullback(functools.partial(jax.nn.dot_product_attention, implementation="xla"))
    np.testing.assert_allclose(out, expected, atol=2e-6, rtol=1e-5)
    for got, want in zip(grads, expected_grads):
        np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-4)
    # attention weights that sum to one: a row of v's mean comes out for equal logits
    uniform = jnp.broadcast_to(v.mean(1, keepdims=True), shape)
    np.testing.assert_allclose(attention_core(jnp.zeros(shape), k, v), uniform, atol=1e-6)


def test_dense_layers_give_nnx_linears_values_and_gradients():
    from jax_vit.model import dense

    x = jax.random.normal(jax.random.key(0), (3, 7, 16))
    cotangent = jax.random.normal(jax.random.key(1), (3, 7, 24))
    ours = dense(16, 24, rngs=nnx.Rngs(2))
    reference = nnx.Linear(16, 24, rngs=nnx.Rngs(2))
    np.testing.assert_array_equal(nnx.state(ours)["kernel"][...], nnx.state(reference)["kernel"][...])

    def pullback(layer):
        graphdef, params = nnx.split(layer)
        out, vjp = jax.vjp(lambda p, v: nnx.merge(graphdef, p)(v), params, x)
        return out, vjp(cotangent)

    (out, (grads, dx)), (want, (want_grads, want_dx)) = pullback(ours), pullback(reference)
    np.testing.assert_allclose(out, want, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(dx, want_dx, rtol=1e-5, atol=1e-5)
    for name in ("kernel", "bias"):
        np.testing.assert_allclose(grads[name][...], want_grads[name][...], rtol=1e-5, atol=1e-5)
    # bfloat16 compute keeps its dtype through the custom backward; any other contraction is passed on
    half = dense(16, 24, dtype=jnp.bfloat16, rngs=nnx.Rngs(2))
    assert half(x).dtype == jnp.bfloat16
    assert jax.grad(lambda v: half(v).astype(jnp.float32).sum())(x.astype(jnp.bfloat16)).dtype == jnp.bfloat16
    from jax_vit.model import dense_dot_general

    a, b = jnp.ones((4, 5)), jnp.ones((6, 5))
    np.testing.assert_array_equal(dense_dot_general(a, b, (((1,), (1,)), ((), ()))), jnp.full((4, 6), 5.0))


def test_dense_weight_gradient_reads_the_output_gradient_without_a_transposed_copy():
    # Structure, not speed: autodiff of nnx.Linear on [batch, tokens, features] made XLA:CPU copy the output
    # gradient into [out, rows] for every weight gradient (docs/speed.md, "The weight gradients without
    # transposed copies"); the dense layers' VJP contracts the rows of the 2-D views directly.
    import re

    from jax_vit.model import dense

    layer = dense(64, 192, rngs=nnx.Rngs(0))
    graphdef, params = nnx.split(layer)
    x = jax.random.normal(jax.random.key(1), (8, 65, 64))

    def loss(params):
        return jnp.sum(jnp.sin(nnx.merge(graphdef, params)(x)))

    hlo = jax.jit(jax.grad(loss)).lower(params).compile().as_text()
    entry = hlo[hlo.index("\nENTRY"):]
    assert re.search(r"= f32\[64,192\]\{1,0\} dot\(", entry), "the weight gradient is one dot"
    assert not [line for line in entry.splitlines() if re.search(r"= f32\[192,520\]", line)]


def test_layer_norm_gives_nnx_layernorms_values_and_gradients_with_the_same_parameters():
    from jax_vit.model import LayerNorm

    x = jax.random.normal(jax.random.key(0), (4, 7, 48)) * 3.0 + 1.5
    cotangent = jax.random.normal(jax.random.key(1), (4, 7, 48))
    ours, reference = LayerNorm(48, epsilon=1e-6, dtype=jnp.float32), nnx.LayerNorm(48, epsilon=1e-6, rngs=nnx.Rngs(0))
    assert jax.tree.map(jnp.shape, nnx.state(ours)) == jax.tree.map(jnp.shape, nnx.state(reference))
    for layer in (ours, reference):  # trained-looking parameters, the same in both
        layer.scale[...] = jax.random.normal(jax.random.key(2), (48,))
        layer.bias[...] = jax.random.normal(jax.random.key(3), (48,))

    def pullback(layer):
        graphdef, params = nnx.split(layer)
        out, vjp = jax.vjp(lambda p, v: nnx.merge(graphdef, p)(v), params, x)
        return out, vjp(cotangent)

    (out, (grads, dx)), (want, (want_grads, want_dx)) = pullback(ours), pullback(reference)
    np.testing.assert_allclose(out, want, atol=5e-6)
    np.testing.assert_allclose(dx, want_dx, atol=5e-6)
    for name in ("scale", "bias"):
        np.testing.assert_allclose(grads[name][...], want_grads[name][...], rtol=1e-5, atol=1e-5)
    # a constant row normalises to the bias (its variance is zero, epsilon keeps it finite)
    flat = jnp.full((1, 48), 2.0)
    np.testing.assert_allclose(ours(flat), ours.bias[...][None], atol=1e-6)
    half = LayerNorm(48, epsilon=1e-6, dtype=jnp.bfloat16)
    assert half(x.astype(jnp.bfloat16)).dtype == jnp.bfloat16
    assert jax.grad(lambda v: half(v).astype(jnp.float32).sum())(x.astype(jnp.bfloat16)).dtype == jnp.bfloat16


def test_split_qkv_gives_the_slices_and_the_slices_gradient_exactly():
    qkv = jax.random.normal(jax.random.key(0), (3, 5, 3, 2, 4))
    cotangents = tuple(jax.random.normal(jax.random.key(i + 1), (3, 5, 2, 4)) for i in range(3))

    def slices(x):
        return x[:, :, 0], x[:, :, 1], x[:, :, 2]

    outputs, vjp = jax.vjp(split_qkv, qkv)
    expected_outputs, expected_vjp = jax.vjp(slices, qkv)
    for got, want in zip(outputs, expected_outputs):
        np.testing.assert_array_equal(got, want)
    (grad,) = vjp(cotangents)
    np.testing.assert_array_equal(grad, expected_vjp(cotangents)[0])
    # each cotangent lands in its own third, untouched
    np.testing.assert_array_equal(grad[:, :, 1], cotangents[1])
