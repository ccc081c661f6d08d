"""testbed-clip's model class: a dual encoder whose text side is mean-pooled, as MiniLM was trained.

transformers' ``VisionTextDualEncoderModel`` reads its text tower through BERT's pooler (a tanh
layer over the ``[CLS]`` token). all-MiniLM-L6-v2 was trained as a sentence-transformers model
with **mean pooling** over the tokens and no pooler; read through the pooler it compresses
contrasts between captions (the cosine of "a male pilot" and "a female pilot" is about 0.91
pooled and 0.75 mean-pooled). :class:`MeanPooledDualEncoder` is the same model with one change:
``get_text_features`` and ``forward`` pool the text tower's last hidden states by the
attention-masked mean (:func:`mean_pool`) before ``text_projection``. The checkpoint format is
the parent's (``save_pretrained`` / ``from_pretrained`` of this class); loading it with the
parent class would silently go back to the pooler, so ``fairvlm.testbed.load_hf`` always uses
this one.
"""

from __future__ import annotations

import torch
from transformers import VisionTextDualEncoderModel
from transformers.models.clip.modeling_clip import CLIPOutput


def mean_pool(hidden: torch.Tensor, attention_mask: torch.Tensor | None) -> torch.Tensor:
    """Attention-masked mean of ``hidden`` ``(n, t, d)`` over tokens (sentence-transformers' rule)."""
    if attention_mask is None:
        return hidden.mean(1)
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)


class MeanPooledDualEncoder(VisionTextDualEncoderModel):
    """A ``VisionTextDualEncoderModel`` whose text features are mean-pooled (module docstring)."""

    def text_pooled(self, input_ids, attention_mask=None, position_ids=None, token_type_ids=None):
        """``(text tower outputs, mean-pooled last hidden state)`` before the projection."""
        out = self.text_model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                              token_type_ids=token_type_ids, return_dict=True)
        return out, mean_pool(out.last_hidden_state, attention_mask)

    def get_text_features(self, input_ids, attention_mask=None, position_ids=None, token_type_ids=None,
                          **kwargs):
        out, pooled = self.text_pooled(input_ids, attention_mask, position_ids, token_type_ids)
        out.pooler_output = self.text_projection(pooled)
        return out

    def forward(self, input_ids=None, pixel_values=None, attention_mask=None, position_ids=None,
                return_loss=None, token_type_ids=None, output_attentions=None, output_hidden_states=None,
                return_dict=None, **kwargs):
        vision_outputs = self.vision_model(pixel_values=pixel_values, output_attentions=output_attentions,
                                           output_hidden_states=output_hidden_states, return_dict=True)
        text_outputs, pooled = self.text_pooled(input_ids, attention_mask, position_ids, token_type_ids)
        image_embeds = self.visual_projection(vision_outputs.pooler_output)
        text_embeds = self.text_projection(pooled)
        image_embeds = image_embeds / image_embeds.norm(dim=-1, keepdim=True)
        text_embeds = text_embeds / text_embeds.norm(dim=-1, keepdim=True)
        logits_per_text = text_embeds @ image_embeds.t() * self.logit_scale.exp()
        logits_per_image = logits_per_text.t()
        loss = None
        if return_loss:
            target = torch.arange(len(logits_per_text), device=logits_per_text.device)
            loss = 0.5 * (torch.nn.functional.cross_entropy(logits_per_text, target)
                          + torch.nn.functional.cross_entropy(logits_per_image, target))
        return CLIPOutput(loss=loss, logits_per_image=logits_per_image, logits_per_text=logits_per_text,
                          text_embeds=text_embeds, image_embeds=image_embeds, text_model_output=text_outputs,
                          vision_model_output=vision_outputs)
