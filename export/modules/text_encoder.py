"""CLIP text encoder giving one joint-space embedding per token (IVTP Eq. 5), not just the pooled EOS."""
import torch
from torch import nn

from export.modules.layers import NEG_INF, clip_layer, layer_norm


class TokenEmbeddings(nn.Module):
    """input_ids [B, L] (L <= 77) -> text_projection(final_layer_norm(h)) [B, L, P]. Causal, like CLIP."""

    def __init__(self, text_model, text_projection):
        super().__init__()
        self.text_model, self.text_projection = text_model, text_projection

    def forward(self, input_ids: torch.Tensor):
        tm = self.text_model
        n = input_ids.shape[1]
        positions = torch.arange(n, device=input_ids.device)
        x = tm.embeddings.token_embedding(input_ids) + tm.embeddings.position_embedding(positions)[None]
        causal = torch.ones(n, n, dtype=torch.bool, device=x.device).tril()
        bias = torch.where(causal, 0.0, NEG_INF)[None, None]
        for layer in tm.encoder.layers:
            x, _, _ = clip_layer(layer, x, bias)
        return self.text_projection(layer_norm(tm.final_layer_norm, x)).float()
