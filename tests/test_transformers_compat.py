"""GroundingDINO's text encoder gives the same numbers under transformers 4.57 and 5.x.

groundingdino-py's own BERT wrapper needs transformers 4 internals; under transformers 5 torch_seg swaps in its
own (torch_seg/_transformers_compat.py). These tests pin that swap to transformers 4's arithmetic: the additive
attention mask against its formula, the wrapper against groundingdino's where both can run (transformers 4), and
the text features of fixed weights against numbers recorded with transformers 4.57.6 (any version).
"""
import numpy as np
import pytest
import torch

from torch_seg import _transformers_compat
from torch_seg.text_encoder import SMALL_BERT, write_text_encoder_folder

CAPTION = "paper bag . car ."
CAPTION_IDS = [101, 3259, 4524, 1012, 2482, 1012, 102]  # bert-base-uncased's WordPiece ids
# Recorded with transformers 4.57.6 (groundingdino's own wrapper), torch 2.13.0 CPU, for `fixed_weight_bert`:
# last_hidden_state[0, :, :4] and pooler_output[0, :4] for CAPTION under GroundingDINO's phrase mask.
RECORDED_HIDDEN = [[-1.6460292, -1.1450088, 0.4152897, 0.8261752],
                   [-1.3323004, -0.6457790, 1.4976466, 0.1931358],
                   [-1.3999649, -0.2922027, 1.2066133, 0.8581914],
                   [-1.6591463, -0.6228154, 1.0685806, 1.1703254],
                   [-1.9565613, -0.8162052, 1.3482126, 0.8627024],
                   [-1.6223135, -0.7664683, 1.6534820, 1.4671832],
                   [-1.9509207, -1.0155817, 0.9567154, 0.3314804]]
RECORDED_POOLED = [-0.7095973, 0.3163439, 0.0671603, 0.8479158]


def transformers4_extended_mask(mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """transformers 4.57's ModuleUtilsMixin.get_extended_attention_mask for an encoder, written out."""
    mask = mask[:, None, :, :] if mask.dim() == 3 else mask[:, None, None, :]
    return torch.where(mask.bool(), torch.tensor(0.0, dtype=dtype), torch.tensor(torch.finfo(dtype).min, dtype=dtype))


@pytest.fixture(scope="module")
def text_encoder_folder(tmp_path_factory):
    return write_text_encoder_folder(tmp_path_factory.mktemp("bert"), **SMALL_BERT)


def fixed_weight_bert(folder):
    """A small BertModel whose every weight comes from one seeded generator, whatever transformers initialises."""
    from transformers import BertConfig, BertModel

    model = BertModel(BertConfig.from_pretrained(folder)).eval()
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, param in sorted(model.named_parameters()):
            noise = torch.randn(param.shape, generator=generator) * 0.2
            param.copy_(noise + 1.0 if name.endswith("LayerNorm.weight") else noise)
    return model


def groundingdino_text_inputs(tokenizer, caption=CAPTION):
    """What GroundingDINO.forward hands its BERT: ids, a per-phrase 3-D attention mask, per-phrase positions."""
    from groundingdino.models.GroundingDINO.bertwarper import generate_masks_with_special_tokens_and_transfer_map

    tokenized = tokenizer([caption], padding="longest", return_tensors="pt")
    special = tokenizer.convert_tokens_to_ids(["[CLS]", "[SEP]", ".", "?"])
    mask, position_ids, _ = generate_masks_with_special_tokens_and_transfer_map(tokenized, special, tokenizer)
    return dict(input_ids=tokenized["input_ids"], token_type_ids=tokenized["token_type_ids"],
                attention_mask=mask, position_ids=position_ids)


def groundingdino_bert_wrapper():
    """The wrapper class GroundingDINO builds, after torch_seg's one compatibility hook has run."""
    _transformers_compat.install()
    from groundingdino.models.GroundingDINO import groundingdino

    return groundingdino.BertModelWarper


@pytest.mark.parametrize("shape", [(2, 5), (2, 5, 5)], ids=["padding_mask", "phrase_mask"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("mask_dtype", [torch.bool, torch.long])
def test_attention_mask_is_transformers_4s(shape, dtype, mask_dtype):
    mask = (torch.rand(shape, generator=torch.Generator().manual_seed(1)) > 0.4).to(mask_dtype)
    got = _transformers_compat.extended_attention_mask(mask, dtype)
    assert got.dtype == dtype and got.shape == transformers4_extended_mask(mask, dtype).shape
    assert torch.equal(got, transformers4_extended_mask(mask, dtype))


def test_attention_mask_equals_transformers_4s_own_method_where_it_exists(text_encoder_folder):
    from transformers import BertConfig, BertModel

    if not hasattr(BertModel, "get_extended_attention_mask"):
        pytest.skip("this transformers has no get_extended_attention_mask to compare with")
    model = BertModel(BertConfig.from_pretrained(text_encoder_folder))
    mask = torch.rand(2, 5, 5, generator=torch.Generator().manual_seed(2)) > 0.4
    expected = model.get_extended_attention_mask(mask, mask.shape[:2], dtype=torch.float32)
    assert torch.equal(_transformers_compat.extended_attention_mask(mask, torch.float32), expected)


def test_offline_tokenizer_folder_tokenizes_like_bert_base_uncased(text_encoder_folder):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(text_encoder_folder)
    encoded = tokenizer(CAPTION, return_offsets_mapping=True)
    assert encoded["input_ids"] == CAPTION_IDS, "every word [UNK]: the vocabulary was not loaded"
    assert tokenizer.decode(encoded["input_ids"][1:3]) == "paper bag"


def test_compat_hook_replaces_groundingdinos_wrapper_only_where_it_cannot_run():
    wrapper = groundingdino_bert_wrapper()
    assert (wrapper is _transformers_compat.BertModelWarper) == (not _transformers_compat.original_wrapper_works())


def test_compat_wrapper_computes_exactly_what_groundingdinos_own_does(text_encoder_folder):
    if not _transformers_compat.original_wrapper_works():
        pytest.skip("groundingdino's own BERT wrapper needs transformers 4")
    from groundingdino.models.GroundingDINO.bertwarper import BertModelWarper as Original
    from transformers import AutoTokenizer

    bert = fixed_weight_bert(text_encoder_folder)
    inputs = groundingdino_text_inputs(AutoTokenizer.from_pretrained(text_encoder_folder))
    with torch.no_grad():
        expected = Original(bert)(**inputs)
        got = _transformers_compat.BertModelWarper(bert)(**inputs)
    assert torch.equal(got["last_hidden_state"], expected["last_hidden_state"])
    assert torch.equal(got["pooler_output"], expected["pooler_output"])


def test_groundingdino_text_features_match_the_transformers_4_record(text_encoder_folder):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(text_encoder_folder)
    inputs = groundingdino_text_inputs(tokenizer)
    assert inputs["input_ids"].tolist() == [CAPTION_IDS]
    with torch.no_grad():
        out = groundingdino_bert_wrapper()(fixed_weight_bert(text_encoder_folder))(**inputs)
    hidden, pooled = out["last_hidden_state"][0, :, :4].numpy(), out["pooler_output"][0, :4].numpy()
    np.testing.assert_allclose(hidden, RECORDED_HIDDEN, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(pooled, RECORDED_POOLED, rtol=1e-5, atol=1e-5)


def test_offline_clip_alphabet_is_clips_byte_level_alphabet():
    from torch_seg.seeders.clipseg import _byte_level_alphabet

    alphabet = _byte_level_alphabet()
    assert len(set(alphabet)) == 256 and alphabet[0] == "!" and alphabet[-1] == chr(256 + 67)
    try:
        from transformers.models.clip.tokenization_clip import bytes_to_unicode  # transformers 4 only
    except ImportError:
        return
    assert alphabet == list(bytes_to_unicode().values())
