"""Public checkpoint formats load into our own Flax ViT and compute what their own framework computes.

For each format a randomly initialised model of that framework (perturbed, so no bias is zero and no norm the
identity) is saved as that framework saves it; loaded by `jax_vit.pretrained` into `VisionTransformer`, it gives
the framework's own logits on the same images (float32, at most 1e-4 apart). Small configs: width 64, 2 blocks,
4 heads, 8x8 patches at 32 px. Nothing is downloaded: tests/conftest.py sets HF_HUB_OFFLINE=1.
"""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jax_vit.configs import get_config
from jax_vit.model import VisionTransformer
from jax_vit.pretrained import PretrainedError, init_params, load_pretrained, resize_posemb

torch = pytest.importorskip("torch")
WIDTH, DEPTH, HEADS, MLP, PATCH, SIZE, CLASSES = 64, 2, 4, 128, 8, 32, 7
TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(0).standard_normal((3, SIZE, SIZE, 3)).astype(np.float32)


def _perturb(module, scale=0.05):
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for parameter in module.parameters():
            parameter.add_(scale * torch.randn(parameter.shape, generator=generator))
    return module.eval()


def _our_logits(pretrained, images, head_kernel, head_bias, **changes):
    """Our ViT built from the checkpoint's architecture, with the reference model's head (the fine-tuning
    head would be zeros), on `images` (NHWC floats)."""
    config = get_config("tiny", {**pretrained.architecture, "num_classes": head_kernel.shape[1],
                                 "compute_dtype": "float32", **changes})
    params = init_params(pretrained, config)
    params["head"] = {"kernel": np.asarray(head_kernel, np.float32), "bias": np.asarray(head_bias, np.float32)}
    graphdef, state = nnx.split(VisionTransformer(config, rngs=nnx.Rngs(0)))
    state.replace_by_pure_dict(jax.tree.map(jnp.asarray, params))
    return np.asarray(nnx.merge(graphdef, state)(jnp.asarray(images)))


def _nchw(images):
    return torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))


# --- timm ------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def timm():
    from benchmarks.torchvision_compat import import_torchvision

    import_torchvision()  # timm imports torchvision, which needs its op schemas on the CPU torch build
    return pytest.importorskip("timm")


TIMM_ARGS = dict(img_size=SIZE, patch_size=PATCH, embed_dim=WIDTH, depth=DEPTH, num_heads=HEADS, num_classes=CLASSES)


@pytest.fixture(scope="module")
def timm_checkpoint(timm, tmp_path_factory):
    """timm's create_model(pretrained=False), saved as a Hub repo is (model.safetensors + config.json)."""
    from timm.models._hub import save_for_hf

    model = _perturb(timm.create_model("vit_tiny_patch16_224", pretrained=False, **TIMM_ARGS))
    folder = tmp_path_factory.mktemp("timm") / "vit"
    save_for_hf(model, folder, model_args=TIMM_ARGS, safe_serialization=True)
    return model, folder


def test_a_timm_safetensors_checkpoint_gives_timms_logits(timm_checkpoint, images):
    model, folder = timm_checkpoint
    pretrained = load_pretrained(str(folder))
    assert pretrained.format == "timm" and pretrained.input_norm == "inception"
    assert pretrained.architecture == {"width": WIDTH, "depth": DEPTH, "num_heads": HEADS, "mlp_dim": 4 * WIDTH,
                                       "patch_size": PATCH, "layer_norm_epsilon": 1e-6, "gelu_approximation": "none",
                                       "qkv_bias": True}
    with torch.no_grad():
        reference = model(_nchw(images)).numpy()
    ours = _our_logits(pretrained, images, model.head.weight.detach().numpy().T, model.head.bias.detach().numpy())
    assert np.abs(ours - reference).max() <= TOLERANCE


def test_a_bare_timm_state_dict_needs_the_head_count_its_width_does_not_give(timm_checkpoint, images, tmp_path):
    model, folder = timm_checkpoint
    bare = tmp_path / "weights.safetensors"
    bare.write_bytes((folder / "model.safetensors").read_bytes())  # no config.json beside it
    with pytest.raises(PretrainedError, match=r"heads of a width-64 timm ViT is not recorded.*--set num_heads=N"):
        load_pretrained(str(bare))
    pretrained = load_pretrained(str(bare), num_heads=HEADS)
    with torch.no_grad():
        reference = model(_nchw(images)).numpy()
    ours = _our_logits(pretrained, images, model.head.weight.detach().numpy().T, model.head.bias.detach().numpy())
    assert np.abs(ours - reference).max() <= TOLERANCE
    assert any("mean 0.5" in note for note in pretrained.notes)  # the normalisation it assumed is said


def test_the_fine_tuning_head_is_new_and_the_position_embeddings_are_the_checkpoints_bit_for_bit(timm_checkpoint):
    model, folder = timm_checkpoint
    pretrained = load_pretrained(str(folder))
    config = get_config("tiny", {**pretrained.architecture, "num_classes": 10})
    params = init_params(pretrained, config)
    assert np.array_equal(params["pos_embed"], model.pos_embed.detach().numpy())  # same grid: untouched
    assert not params["head"]["kernel"].any() and params["head"]["kernel"].shape == (WIDTH, 10)
    assert not params["head"]["bias"].any()
    assert any("head (7 classes) replaced" in note for note in pretrained.notes)
    bigger = init_params(pretrained, config.replace(resolution=64))  # an 8x8 grid from the 4x4 one
    assert bigger["pos_embed"].shape == (1, 65, WIDTH)
    assert np.array_equal(bigger["pos_embed"][:, 0], params["pos_embed"][:, 0])  # CLS position kept


@pytest.mark.parametrize("name, args, message", [
    ("deit_tiny_distilled_patch16_224", {}, "DeiT's distillation token"),
    ("vit_tiny_patch16_224", {"global_pool": "avg", "class_token": False}, "global-average-pool head"),
    ("vit_tiny_patch16_224", {"class_token": False, "global_pool": "avg", "fc_norm": False},
     "without a class token"),
    ("vit_tiny_patch16_224", {"init_values": 1e-5}, "LayerScale"),
    ("vit_tiny_patch16_224", {"reg_tokens": 4}, "register tokens"),
])
def test_timm_models_that_are_not_class_token_vits_are_refused_naming_what_is(timm, tmp_path, name, args, message):
    from timm.models._hub import save_for_hf

    small = dict(img_size=SIZE, patch_size=PATCH, embed_dim=WIDTH, depth=1, num_heads=HEADS, num_classes=3)
    save_for_hf(timm.create_model(name, pretrained=False, **small, **args), tmp_path / "m", safe_serialization=True)
    with pytest.raises(PretrainedError) as error:
        load_pretrained(str(tmp_path / "m"))
    assert message in str(error.value) and "supported: class-token ViTs" in str(error.value)
    assert "\n" not in str(error.value)


def test_a_checkpoint_of_another_architecture_is_refused(timm, tmp_path):
    from timm.models._hub import save_for_hf

    save_for_hf(timm.create_model("resnet10t", pretrained=False, num_classes=3), tmp_path / "r",
                safe_serialization=True)
    with pytest.raises(PretrainedError, match=r"is not a timm ViT \(no patch_embed.proj.weight\)"):
        load_pretrained(str(tmp_path / "r"))


def test_a_hybrid_vit_is_refused(timm, tmp_path):
    from timm.models._hub import save_for_hf

    model = timm.create_model("vit_tiny_r_s16_p8_224", pretrained=False, img_size=SIZE, num_classes=3, depth=1)
    save_for_hf(model, tmp_path / "h", safe_serialization=True)
    with pytest.raises(PretrainedError, match="a hybrid"):
        load_pretrained(str(tmp_path / "h"))


# --- Hugging Face transformers ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def transformers():
    return pytest.importorskip("transformers")


def _vit_config(transformers, **changes):
    settings = dict(hidden_size=WIDTH, num_hidden_layers=DEPTH, num_attention_heads=HEADS, intermediate_size=MLP,
                    image_size=SIZE, patch_size=PATCH, num_labels=CLASSES)
    return transformers.ViTConfig(**{**settings, **changes})


@pytest.mark.parametrize("changes", [{}, {"hidden_act": "gelu_pytorch_tanh", "qkv_bias": False}])
def test_a_transformers_vit_folder_gives_transformers_logits(transformers, tmp_path, images, changes):
    model = _perturb(transformers.ViTForImageClassification(_vit_config(transformers, **changes)))
    model.save_pretrained(tmp_path / "hf")
    pretrained = load_pretrained(str(tmp_path / "hf"))
    assert pretrained.format == "transformers" and pretrained.architecture["layer_norm_epsilon"] == 1e-12
    assert pretrained.architecture["qkv_bias"] == changes.get("qkv_bias", True)
    assert pretrained.architecture["gelu_approximation"] == ("tanh" if changes else "none")
    with torch.no_grad():
        reference = model(pixel_values=_nchw(images)).logits.numpy()
    ours = _our_logits(pretrained, images, model.classifier.weight.detach().numpy().T,
                       model.classifier.bias.detach().numpy())
    assert np.abs(ours - reference).max() <= TOLERANCE


def test_a_transformers_vit_model_drops_its_pooler_and_gives_the_same_features(transformers, tmp_path, images):
    """ViTModel (google/vit-base-patch16-224-in21k's class) has the pre-logits pooler instead of a classifier;
    an identity head makes our logits its final-norm CLS features."""
    model = _perturb(transformers.ViTModel(_vit_config(transformers)))
    model.save_pretrained(tmp_path / "hf")
    (tmp_path / "hf" / "preprocessor_config.json").write_text(json.dumps(
        {"image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225]}))
    pretrained = load_pretrained(str(tmp_path / "hf"))
    assert pretrained.input_norm == "imagenet"
    assert any(note.startswith("pooler") for note in pretrained.notes)
    with torch.no_grad():
        reference = model(pixel_values=_nchw(images)).last_hidden_state[:, 0].numpy()
    ours = _our_logits(pretrained, images, np.eye(WIDTH), np.zeros(WIDTH))
    assert np.abs(ours - reference).max() <= TOLERANCE


def test_a_transformers_model_of_another_type_is_refused(transformers, tmp_path):
    config = transformers.DeiTConfig(hidden_size=WIDTH, num_hidden_layers=1, num_attention_heads=HEADS,
                                     intermediate_size=MLP, image_size=SIZE, patch_size=PATCH)
    transformers.DeiTForImageClassificationWithTeacher(config).save_pretrained(tmp_path / "deit")
    with pytest.raises(PretrainedError, match="model of type 'deit'.*supported: class-token ViTs"):
        load_pretrained(str(tmp_path / "deit"))


# --- the ViT authors' .npz -------------------------------------------------------------------------------

def _authors_vit(width, depth, heads, mlp, patch, num_classes, representation_size=None):
    """google-research/vision_transformer's vit_jax/models_vit.py ViT (classifier 'token', no ResNet root),
    written out with the same Flax Linen modules and auto-generated names, for the reference forward."""
    import flax.linen as nn

    class MlpBlock(nn.Module):
        @nn.compact
        def __call__(self, x):
            y = nn.gelu(nn.Dense(mlp)(x))  # linen's gelu: approximate=True
            return nn.Dense(x.shape[-1])(y)

    class Encoder1DBlock(nn.Module):
        @nn.compact
        def __call__(self, inputs):
            x = nn.LayerNorm()(inputs)
            x = nn.MultiHeadDotProductAttention(num_heads=heads, deterministic=True)(x, x) + inputs
            return x + MlpBlock()(nn.LayerNorm()(x))

    class AddPositionEmbs(nn.Module):
        @nn.compact
        def __call__(self, x):
            return x + self.param("pos_embedding", nn.initializers.normal(0.02), (1, x.shape[1], x.shape[2]))

    class Encoder(nn.Module):  # the authors' Encoder, which their ViT names "Transformer"
        @nn.compact
        def __call__(self, x):
            x = AddPositionEmbs(name="posembed_input")(x)
            for i in range(depth):
                x = Encoder1DBlock(name=f"encoderblock_{i}")(x)
            return nn.LayerNorm(name="encoder_norm")(x)

    class VisionTransformer(nn.Module):
        @nn.compact
        def __call__(self, x):
            x = nn.Conv(width, (patch, patch), strides=(patch, patch), padding="VALID", name="embedding")(x)
            n, h, w, c = x.shape
            x = x.reshape(n, h * w, c)
            cls = self.param("cls", nn.initializers.zeros, (1, 1, c))
            x = Encoder(name="Transformer")(jnp.concatenate([jnp.tile(cls, [n, 1, 1]), x], axis=1))[:, 0]
            if representation_size is not None:
                x = nn.tanh(nn.Dense(representation_size, name="pre_logits")(x))
            return nn.Dense(num_classes, name="head")(x) if num_classes else x

    return VisionTransformer()


# Linen's auto-names inside a block -> the released files' pre-Linen names (one counter across the block);
# the test checks this against flax's convert_pre_linen, which is what the authors' checkpoint.load applies.
_PRE_LINEN = {"LayerNorm_0": "LayerNorm_0", "MultiHeadDotProductAttention_0": "MultiHeadDotProductAttention_1",
              "LayerNorm_1": "LayerNorm_2", "MlpBlock_0": "MlpBlock_3"}


def _write_authors_npz(params, path, prefix=""):
    from flax.traverse_util import flatten_dict

    flat = {}
    for keys, value in flatten_dict(jax.device_get(params)).items():
        keys = [_PRE_LINEN.get(k, k) if i and keys[i - 1].startswith("encoderblock_") else k
                for i, k in enumerate(keys)]
        flat[prefix + "/".join(keys)] = np.asarray(value)
    np.savez(path, **flat)
    return flat


def _perturbed_linen(model, x, seed=0):
    params = model.init(jax.random.key(seed), x)["params"]
    keys = iter(jax.random.split(jax.random.key(seed + 1), len(jax.tree.leaves(params))))
    return jax.tree.map(lambda p: p + 0.05 * jax.random.normal(next(keys), p.shape), params)


@pytest.mark.parametrize("prefix", ["", "opt/target/"])
def test_a_vit_authors_npz_gives_their_models_logits(tmp_path, images, prefix):
    from flax.training.checkpoints import convert_pre_linen

    reference_model = _authors_vit(WIDTH, DEPTH, HEADS, MLP, PATCH, CLASSES)
    params = _perturbed_linen(reference_model, jnp.asarray(images))
    flat = _write_authors_npz(params, tmp_path / "vit.npz", prefix)
    assert f"{prefix}Transformer/encoderblock_1/MultiHeadDotProductAttention_1/query/kernel" in flat
    assert f"{prefix}Transformer/encoderblock_0/MlpBlock_3/Dense_1/bias" in flat
    # The authors' checkpoint.load: recover the tree from the '/' names, then convert_pre_linen.
    tree = {}
    for name, value in flat.items():
        node = tree
        *parents, leaf = name[len(prefix):].split("/")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    assert jax.tree.structure(convert_pre_linen(tree)) == jax.tree.structure(jax.device_get(params))

    pretrained = load_pretrained(str(tmp_path / "vit.npz"))
    assert pretrained.format == "vit_jax npz" and pretrained.input_norm == "inception"
    assert pretrained.architecture["gelu_approximation"] == "tanh"
    reference = np.asarray(reference_model.apply({"params": params}, jnp.asarray(images)))
    ours = _our_logits(pretrained, images, params["head"]["kernel"], params["head"]["bias"])
    assert np.abs(ours - reference).max() <= TOLERANCE


def test_an_in21k_npz_drops_its_pre_logits_layer_and_keeps_the_features(tmp_path, images):
    with_pre_logits = _authors_vit(WIDTH, DEPTH, HEADS, MLP, PATCH, 21, representation_size=WIDTH)
    params = _perturbed_linen(with_pre_logits, jnp.asarray(images))
    _write_authors_npz(params, tmp_path / "in21k.npz")
    pretrained = load_pretrained(str(tmp_path / "in21k.npz"))
    assert any(note.startswith("pre_logits") for note in pretrained.notes)
    features_only = _authors_vit(WIDTH, DEPTH, HEADS, MLP, PATCH, 0)
    encoder = {k: v for k, v in params.items() if k not in ("pre_logits", "head")}
    reference = np.asarray(features_only.apply({"params": encoder}, jnp.asarray(images)))
    ours = _our_logits(pretrained, images, np.eye(WIDTH), np.zeros(WIDTH))
    assert np.abs(ours - reference).max() <= TOLERANCE


def test_timms_own_npz_reader_agrees_with_ours(timm, tmp_path, images):
    """timm's `_load_weights` reads the same files into timm's ViT (exact GELU): our reader with exact GELU
    gives timm's logits, so both read the same names into the same places."""
    from timm.models.vision_transformer import _load_weights

    params = _perturbed_linen(_authors_vit(WIDTH, DEPTH, HEADS, MLP, PATCH, CLASSES), jnp.asarray(images))
    _write_authors_npz(params, tmp_path / "vit.npz")
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, **TIMM_ARGS, mlp_ratio=MLP / WIDTH).eval()
    _load_weights(model, str(tmp_path / "vit.npz"))
    with torch.no_grad():
        reference = model(_nchw(images)).numpy()
    pretrained = load_pretrained(str(tmp_path / "vit.npz"))
    ours = _our_logits(pretrained, images, params["head"]["kernel"], params["head"]["bias"],
                       gelu_approximation="none")
    assert np.abs(ours - reference).max() <= TOLERANCE


def test_an_npz_without_a_class_token_is_refused(tmp_path, images):
    params = _perturbed_linen(_authors_vit(WIDTH, 1, HEADS, MLP, PATCH, CLASSES), jnp.asarray(images))
    flat = _write_authors_npz(params, tmp_path / "vit.npz")
    flat.pop("cls")
    np.savez(tmp_path / "gap.npz", **flat)
    with pytest.raises(PretrainedError, match=r"without a class token \(classifier 'gap'\)"):
        load_pretrained(str(tmp_path / "gap.npz"))


# --- position embeddings -----------------------------------------------------------------------------------

def test_position_embeddings_are_untouched_at_the_same_grid():
    posemb = np.random.default_rng(0).standard_normal((1, 1 + 14 * 14, 8)).astype(np.float32)
    assert resize_posemb(posemb, 14) is posemb


def test_a_linear_position_embedding_stays_exactly_linear_on_a_new_grid_and_cls_is_kept():
    """Bilinear with corners aligned (the ViT authors' scipy.ndimage.zoom(order=1)): a table that is linear in
    the grid position, a + b*row + c*col on [0, 1] x [0, 1], is the same linear function on the new grid."""
    def table(grid, a, b, c):
        u = np.linspace(0.0, 1.0, grid)
        return a + b * u[:, None, None] + c * u[None, :, None]

    a, b, c = (np.array([0.5, -1.0, 2.0]), np.array([1.0, 0.25, -3.0]), np.array([-2.0, 0.5, 1.0]))
    cls = np.full((1, 1, 3), 7.0)
    posemb = np.concatenate([cls, table(14, a, b, c).reshape(1, 196, 3)], axis=1).astype(np.float32)
    for grid in (24, 7, 2):  # 224 -> 384 px at patch 16 (the ViT authors' fine-tuning), and down
        resized = resize_posemb(posemb, grid)
        assert resized.shape == (1, 1 + grid * grid, 3) and resized.dtype == np.float32
        assert np.array_equal(resized[:, 0], posemb[:, 0])
        np.testing.assert_allclose(resized[0, 1:], table(grid, a, b, c).reshape(-1, 3), atol=1e-5)


# --- missing and corrupt files, the hub cache -------------------------------------------------------------

def test_a_missing_file_names_itself_and_where_to_get_one():
    with pytest.raises(PretrainedError, match=r"checkpoint /nonexistent/ViT-B_16.npz does not exist.*vit_models"):
        load_pretrained("/nonexistent/ViT-B_16.npz")


def test_a_repo_missing_from_the_cache_fails_at_once_naming_the_repo_and_download(tmp_path, monkeypatch):
    import time

    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    start = time.perf_counter()
    with pytest.raises(PretrainedError, match=r"timm/vit_base_patch16_224.augreg_in21k is not in the Hugging Face "
                                              r"cache.*add --download"):
        load_pretrained("timm/vit_base_patch16_224.augreg_in21k")
    with pytest.raises(PretrainedError, match=r"could not download google/vit-base-patch16-224-in21k.*HF_HUB_OFFLINE"):
        load_pretrained("google/vit-base-patch16-224-in21k", download=True)  # HF_HUB_OFFLINE=1 here
    assert time.perf_counter() - start < 5


def test_a_repo_in_the_cache_is_read_from_it_without_network(timm_checkpoint, tmp_path, monkeypatch):
    from huggingface_hub import constants

    _, folder = timm_checkpoint
    revision = "0" * 40
    snapshot = tmp_path / "models--timm--vit_test" / "snapshots" / revision
    snapshot.mkdir(parents=True)
    for name in ("config.json", "model.safetensors"):
        (snapshot / name).write_bytes((folder / name).read_bytes())
    (tmp_path / "models--timm--vit_test" / "refs").mkdir()
    (tmp_path / "models--timm--vit_test" / "refs" / "main").write_text(revision)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    pretrained = load_pretrained("hf-hub:timm/vit_test")
    assert pretrained.path == str(snapshot / "model.safetensors") and pretrained.architecture["width"] == WIDTH


@pytest.mark.parametrize("name, data, message", [
    ("model.safetensors", b"\x08\x00\x00\x00\x00\x00\x00\x00{garbage", "is not a readable safetensors file"),
    ("vit.npz", b"PK\x03\x04 not really a zip", "is not a readable .npz file"),
])
def test_a_corrupt_file_is_refused_in_one_line_naming_it(tmp_path, name, data, message):
    (tmp_path / name).write_bytes(data)
    with pytest.raises(PretrainedError) as error:
        load_pretrained(str(tmp_path / name))
    assert message in str(error.value) and str(tmp_path / name) in str(error.value)
    assert "download it again" in str(error.value) and "\n" not in str(error.value)


def test_a_truncated_timm_download_is_refused(timm_checkpoint, tmp_path):
    _, folder = timm_checkpoint
    data = (folder / "model.safetensors").read_bytes()
    (tmp_path / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(PretrainedError, match="is not a readable safetensors file"):
        load_pretrained(str(tmp_path / "model.safetensors"))
