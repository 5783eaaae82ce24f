"""Make groundingdino-py 0.4.0's BERT wrapper run under transformers 5 as it does under transformers 4.

GroundingDINO does not call `BertModel.forward`: its `BertModelWarper` (groundingdino/models/GroundingDINO/
bertwarper.py) keeps BERT's embeddings, encoder and pooler and re-implements transformers 4's forward around
them, so that it can hand the encoder its own 3-D self-attention mask (each token attends only within its
phrase). It leans on transformers 4 internals that transformers 5 removed or renamed:
  - `BertModel.get_head_mask` (gone in 5.0), `get_extended_attention_mask` (5.0-5.10 take `dtype` where the
    wrapper passes a device; gone by 5.24) and `invert_attention_mask` (gone by 5.24): the wrapper copies all
    three in its `__init__`, so building GroundingDINO dies with AttributeError;
  - its forward then calls `BertEmbeddings(past_key_values_length=...)` (renamed `cache_length` by 5.24),
    `BertEncoder(head_mask=..., output_attentions=..., return_dict=...)` (no longer parameters since 5.0) and
    reads the outputs' `past_key_values` field (renamed `cache` by 5.24).
GroundingDINO uses BERT one way only: input_ids, token_type_ids, position_ids and an attention mask (2-D
padding or 3-D phrase mask), no cache, no head mask, no cross-attention, reading `last_hidden_state`. The
wrapper below does exactly that with calls that transformers 4.57 and every 5.x accept, and builds the
additive mask with transformers 4's own formula (`extended_attention_mask`), so the numbers are unchanged.

Checked with transformers 4.57.6 (where this is a no-op: groundingdino's own wrapper runs), 5.0.0, 5.10.4 and
5.24.0: the same random-weight GroundingDINO gives bit-identical logits and boxes under all four
(tests/test_transformers_compat.py pins the arithmetic). `install()` is called by
`torch_seg.seeders.gdino.build_gdino_model` before GroundingDINO builds its BERT.
"""
from __future__ import annotations

import torch
from torch import nn


def extended_attention_mask(attention_mask: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """transformers 4's `get_extended_attention_mask` for an encoder (not a decoder): 1/True = attend.

    (batch, seq) or (batch, from_seq, to_seq) -> additive mask broadcastable to (batch, heads, from, to):
    0 where a token may attend, the dtype's lowest value where it may not.
    """
    if attention_mask.dim() == 3:
        mask = attention_mask[:, None, :, :]
    elif attention_mask.dim() == 2:
        mask = attention_mask[:, None, None, :]
    else:
        raise ValueError(f"attention mask must be (batch, seq) or (batch, seq, seq), got {tuple(attention_mask.shape)}")
    mask = mask.to(dtype=dtype)
    return (1.0 - mask) * torch.finfo(dtype).min


class BertModelWarper(nn.Module):
    """GroundingDINO's BERT wrapper for transformers 5: same submodules (so checkpoints load), same outputs."""

    def __init__(self, bert_model):
        super().__init__()
        self.config = bert_model.config
        self.embeddings = bert_model.embeddings
        self.encoder = bert_model.encoder
        self.pooler = bert_model.pooler

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, position_ids=None,
                inputs_embeds=None, return_dict=None, **unsupported):
        from transformers.modeling_outputs import BaseModelOutputWithPoolingAndCrossAttentions

        used = sorted(name for name, value in unsupported.items() if value is not None and value is not False)
        if used:
            raise NotImplementedError(f"GroundingDINO's BERT under transformers 5 does not support {used}")
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("give exactly one of input_ids or inputs_embeds")
        input_shape = input_ids.shape if input_ids is not None else inputs_embeds.shape[:-1]
        device = input_ids.device if input_ids is not None else inputs_embeds.device
        if attention_mask is None:
            attention_mask = torch.ones(input_shape, device=device)
        if token_type_ids is None:
            token_type_ids = torch.zeros(input_shape, dtype=torch.long, device=device)
        dtype = self.embeddings.word_embeddings.weight.dtype  # transformers 4 took the model's dtype
        embedding_output = self.embeddings(input_ids=input_ids, token_type_ids=token_type_ids,
                                           position_ids=position_ids, inputs_embeds=inputs_embeds)
        sequence_output = self.encoder(embedding_output,
                                       attention_mask=extended_attention_mask(attention_mask, dtype))[0]
        pooled_output = self.pooler(sequence_output) if self.pooler is not None else None
        if return_dict is False:
            return sequence_output, pooled_output
        return BaseModelOutputWithPoolingAndCrossAttentions(last_hidden_state=sequence_output,
                                                            pooler_output=pooled_output)


def original_wrapper_works() -> bool:
    """True under transformers 4: BertModel still has every helper that groundingdino's wrapper copies."""
    from transformers import BertModel

    return all(hasattr(BertModel, name)
               for name in ("get_extended_attention_mask", "invert_attention_mask", "get_head_mask"))


def install() -> bool:
    """Point GroundingDINO at the wrapper above where its own cannot run. Returns True if it did."""
    if original_wrapper_works():
        return False
    from groundingdino.models.GroundingDINO import bertwarper, groundingdino

    # GroundingDINO.__init__ looks the class up in its own module's namespace (imported from bertwarper).
    groundingdino.BertModelWarper = bertwarper.BertModelWarper = BertModelWarper
    return True
