"""Tiny prompt encoder of the shapes model: words of the scene vocabulary (colours, shapes, 'and') -> token
ids -> context [B, T, 32] (token embedding + position, one pre-norm self-attention block, MLP). `ShapesClip`
exposes it to ComfyUI as a CLIP that the stock CLIP Text Encode node accepts."""
from __future__ import annotations

import math
import re
from typing import Any, Sequence

import torch
import torch.nn.functional as F

from .renderer import COLOURS, KINDS

PAD = "<pad>"
VOCAB: tuple[str, ...] = (PAD, "and") + COLOURS + KINDS
WORD_ID = {w: i for i, w in enumerate(VOCAB)}
MAX_TOKENS = 8
CONTEXT_DIM = 32


def words(text: str) -> list[str]:
    """Lower-case words of a prompt (commas and full stops are separators)."""
    return [w for w in re.split(r"[\s,.;]+", text.lower()) if w]


def tokenize(text: str) -> list[int]:
    """Prompt -> MAX_TOKENS token ids (padded). ValueError naming the word when a word is not in the
    vocabulary, or when the prompt is too long."""
    ws = words(text)
    for w in ws:
        if w not in WORD_ID or w == PAD:
            raise ValueError(f"the shapes model does not know the word {w!r} (prompt {text!r}); it knows only: "
                             f"{', '.join(COLOURS)}; {', '.join(KINDS)}; and")
    if len(ws) > MAX_TOKENS:
        raise ValueError(f"prompt {text!r} has {len(ws)} words; the shapes model reads at most {MAX_TOKENS} "
                         f"(e.g. 'red circle and blue square')")
    return [WORD_ID[w] for w in ws] + [WORD_ID[PAD]] * (MAX_TOKENS - len(ws))


class PromptEncoder(torch.nn.Module):
    """ids [B, T] -> context c [B, T, CONTEXT_DIM]: embedding + learned position, one self-attention block
    (so colour words bind to their shape word), MLP, final LayerNorm."""

    def __init__(self, dim: int = CONTEXT_DIM, heads: int = 4, hidden: int = 64):
        super().__init__()
        self.heads = heads
        self.tok = torch.nn.Embedding(len(VOCAB), dim)
        self.pos = torch.nn.Parameter(torch.zeros(MAX_TOKENS, dim))
        self.ln1 = torch.nn.LayerNorm(dim)
        self.qkv = torch.nn.Linear(dim, 3 * dim)
        self.proj = torch.nn.Linear(dim, dim)
        self.ln2 = torch.nn.LayerNorm(dim)
        self.mlp = torch.nn.Sequential(torch.nn.Linear(dim, hidden), torch.nn.GELU(), torch.nn.Linear(hidden, dim))
        self.ln_out = torch.nn.LayerNorm(dim)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Small normal init (called by the constructor; training seeds torch before building)."""
        torch.nn.init.normal_(self.tok.weight, std=1.0)
        torch.nn.init.normal_(self.pos, std=0.5)
        for lin in (self.qkv, self.proj, self.mlp[0], self.mlp[2]):
            torch.nn.init.normal_(lin.weight, std=1.0 / math.sqrt(lin.in_features))
            torch.nn.init.zeros_(lin.bias)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        b, t = ids.shape
        x = self.tok(ids) + self.pos[:t]
        q, k, v = self.qkv(self.ln1(x)).view(b, t, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, t, -1)
        x = x + self.proj(a)
        x = x + self.mlp(self.ln2(x))
        return self.ln_out(x)

    def encode(self, texts: str | Sequence[str]) -> torch.Tensor:
        """Prompt(s) -> context [B, T, CONTEXT_DIM] (ValueError for unknown words)."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        ids = torch.tensor([tokenize(t) for t in texts], dtype=torch.long)
        p = next(self.parameters())
        return self(ids.to(p.device))


class ShapesClip:
    """A CLIP stand-in for ComfyUI: CLIP Text Encode calls tokenize(text) then encode_from_tokens_scheduled(tokens)
    and gets CONDITIONING [[c [1,T,32], {}]]. Unknown words raise ValueError naming the word."""

    def __init__(self, encoder: PromptEncoder):
        self.encoder = encoder.eval()
        self.layer_idx = None

    def clone(self) -> "ShapesClip":
        """A shallow copy sharing the encoder (it has no patches to separate)."""
        c = ShapesClip(self.encoder)
        c.layer_idx = self.layer_idx
        return c

    def clip_layer(self, layer_idx: int) -> None:
        """CLIP Set Last Layer: the shapes encoder has a single block, so this has no effect."""
        self.layer_idx = layer_idx

    def tokenize(self, text: str, return_word_ids: bool = False, **_: Any) -> dict:
        """Prompt -> {'shapes': [ids]} (ValueError for unknown words)."""
        return {"shapes": tokenize(text)}

    def encode_from_tokens(self, tokens: dict, return_pooled: bool = False, return_dict: bool = False) -> Any:
        """Context [1,T,32] for tokenize()'s output (pooled output: the mean over tokens)."""
        ids = torch.tensor([tokens["shapes"]], dtype=torch.long)
        with torch.no_grad():
            c = self.encoder(ids).float().cpu()
        pooled = c.mean(1)
        if return_dict:
            return {"cond": c, "pooled_output": pooled}
        return (c, pooled) if return_pooled else c

    def encode_from_tokens_scheduled(self, tokens: dict, unprojected: bool = False, add_dict: dict = {},
                                     show_pbar: bool = True) -> list:
        """CONDITIONING [[c, {}]] for tokenize()'s output (what CLIP Text Encode returns)."""
        return [[self.encode_from_tokens(tokens), dict(add_dict)]]

    def encode(self, text: str) -> torch.Tensor:
        """Prompt -> context [1,T,32]."""
        return self.encode_from_tokens(self.tokenize(text))

    def get_sd(self) -> dict:
        return self.encoder.state_dict()

    def load_model(self) -> None:
        """Nothing to load: the encoder lives on the CPU."""
        return None
