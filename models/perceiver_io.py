"""One multimodal Perceiver IO for every stage, built on perceiver-pytorch's blocks.

(The original code trained with depth 3 but searched and transferred with depth 4, used different heads in different
stages, and kept its heads in a plain list that was never saved; here every stage uses this one network.)

image [b, 3, h, w] --(conv stem)--Fourier positions--> tokens [b, h*w, c + 2*(2*bands+1)] --\
                                                                             cross-attention (k/v projection of
text  [b, n, d] (+ padding mask) --learned positions--> tokens [b, n, d] ---/  the active modality) -> latents
latents [num_latents, latent_dim] -> cross-attn + FF -> depth x (self-attn + FF) -> mean over latents -> task head

Query, output projection, latents and the latent transformer are shared by both modalities; each modality has its
own input adapter and its own k/v projection. The image adapter reads raw pixels (`image_stem="pixels"`, the
original's) or, with `image_stem="conv"`, the output of a small convolutional stem (a 3x3 convolution, ReLU and 2x2
max-pool per entry of `stem_channels`), as the Perceiver IO paper reads ImageNet through a conv + max-pool
preprocessing where data or compute is limited: 4^k times fewer, richer positions for the cross-attention. The stem's
convolutions carry CPG masks like every linear layer (models/cpg.py). Heads are registered per task
(`heads[<task>]`), so they are saved and restored with the checkpoint. Every latent feed-forward can grow (CPG
"growing"): a growth adds a branch of extra hidden units, which is the same function as a wider GEGLU feed-forward
whose new units are appended; a branch is used by the task that created it and every later task, so earlier tasks
compute exactly what they did before. The conv stem does not grow: its capacity for a new task is what pruning
freed, and the picked filters of earlier tasks.

Which task the network computes (its head, its modality's adapter and k/v projection, the growth branches it may use,
and, through models/cpg.py, the masks of its weights) is one `ActiveTask` object that every module depending on it
holds a reference to; `MultimodalPerceiverIO.activate` is the only place that changes it.

Attention is perceiver-pytorch's `Attention` (same modules and state_dict keys) computed by PyTorch's fused
`scaled_dot_product_attention`, which never materialises the [latents x tokens] attention matrix (50,176 image
tokens per sample on CUB); `use_fused_attention(model, False)` selects perceiver-pytorch's einsum forward instead.
"""
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from einops import rearrange, repeat
from perceiver_pytorch import perceiver_io as pio
from perceiver_pytorch.perceiver_io import GEGLU, FeedForward, PreNorm
from perceiver_pytorch.perceiver_pytorch import fourier_encode
from torch import nn

from utils.config import DEFAULT_STEM_CHANNELS, IMAGE_STEMS

MODALITIES = ("image", "text")


@dataclass
class ActiveTask:
    """The task forward computes. One instance per network, shared by reference with the k/v projection, the
    feed-forwards and the CPG masks, so that changing it (MultimodalPerceiverIO.activate) switches all of them
    together; a module never keeps its own copy."""
    name: str | None = None          # the head
    task_id: int = 1                 # growth branches and masked weights of tasks 1..task_id
    modality: str = MODALITIES[0]    # the input adapter and the k/v projection


def conv_stem(channels, widths):
    """A 3x3 convolution (stride 1, padding 1), ReLU and 2x2 max-pool per entry of `widths` (its output channels):
    [b, channels, h, w] -> [b, widths[-1], h / 2^k, w / 2^k]."""
    layers = []
    for width in widths:
        layers += [nn.Conv2d(channels, width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2, ceil_mode=True)]
        channels = width
    return nn.Sequential(*layers)


class ImageAdapter(nn.Module):
    """RGB pixels (or, with `stem_channels`, a convolutional stem's feature maps) plus Fourier position features per
    axis: channels + 2 * (2 * num_freq_bands + 1) per position (29 for pixels with 6 bands)."""

    def __init__(self, num_freq_bands, max_freq, channels=3, stem_channels=None):
        super().__init__()
        self.num_freq_bands, self.max_freq = num_freq_bands, max_freq
        if stem_channels:
            self.stem = conv_stem(channels, stem_channels)
            channels = stem_channels[-1]
        self.out_dim = channels + 2 * (2 * num_freq_bands + 1)

    def forward(self, img):
        if hasattr(self, "stem"):
            img = self.stem(img)
        b, _, h, w = img.shape
        axes = [torch.linspace(-1.0, 1.0, steps=s, device=img.device, dtype=img.dtype) for s in (h, w)]
        pos = torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1)                 # [h, w, 2]
        enc = fourier_encode(pos, self.max_freq, self.num_freq_bands)                    # [h, w, 2, 2*bands+1]
        enc = repeat(rearrange(enc, "h w a f -> h w (a f)"), "... -> b ...", b=b)
        x = torch.cat((rearrange(img, "b c h w -> b h w c"), enc), dim=-1)
        return rearrange(x, "b h w d -> b (h w) d")


class TextAdapter(nn.Module):
    """Text-encoder features [b, n, d] plus a learned position embedding."""

    def __init__(self, dim, max_length):
        super().__init__()
        self.out_dim = dim
        self.pos_emb = nn.Embedding(max_length, dim)

    def forward(self, x):
        return x + self.pos_emb(torch.arange(x.shape[1], device=x.device))


class Attention(pio.Attention):
    """perceiver-pytorch's Attention (to_q, to_kv, to_out unchanged) computed with scaled_dot_product_attention.

    `fused = False` (or `use_fused_attention(model, False)`) runs perceiver-pytorch's own einsum forward. The padding
    mask is [b, n] bool, True = a real token, as there; the scale is its dim_head ** -0.5. One difference: a sample
    with no real token at all gets a zero output here, the mean of its values in perceiver-pytorch."""

    fused = True

    def forward(self, x, context=None, mask=None, inverted_attention=False):
        if not self.fused or inverted_attention:
            return super().forward(x, context=context, mask=mask, inverted_attention=inverted_attention)
        h = self.heads
        q = self.to_q(x)
        k, v = self.to_kv(x if context is None else context).chunk(2, dim=-1)
        q, k, v = (rearrange(t, "b n (h d) -> b h n d", h=h) for t in (q, k, v))
        if mask is not None:
            mask = rearrange(mask, "b ... -> b () () (...)")                              # [b, 1, 1, n]
        dropout = getattr(self, "dropout", 0.0)           # none in perceiver-pytorch 0.11's Attention
        dropout = dropout.p if isinstance(dropout, nn.Dropout) else float(dropout or 0.0)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout if self.training else 0.0,
                                             scale=self.scale)
        return self.to_out(rearrange(out, "b h n d -> b n (h d)"))


def use_fused_attention(model, on=True):
    """Compute every attention of `model` with scaled_dot_product_attention (on) or perceiver-pytorch's einsum
    forward (off, for comparison). Returns the number of attention modules switched."""
    modules = [m for m in model.modules() if isinstance(m, Attention)]
    for m in modules:
        m.fused = bool(on)
    return len(modules)


class ModalityKV(nn.Module):
    """The cross-attention's `to_kv`: one bias-free projection per modality, that of the active task's modality
    (perceiver-pytorch's Attention calls to_kv(context) and nothing else, so the choice cannot be an argument)."""

    def __init__(self, input_dims, out_dim, active):
        super().__init__()
        self.projections = nn.ModuleDict({m: nn.Linear(d, out_dim, bias=False) for m, d in input_dims.items()})
        self.active = active

    def forward(self, context):
        return self.projections[self.active.modality](context)


class GrowableFeedForward(nn.Module):
    """perceiver-pytorch's GEGLU FeedForward plus growth branches (extra hidden units, CPG "growing")."""

    def __init__(self, dim, mult, active):
        super().__init__()
        self.dim, self.hidden = dim, dim * mult
        self.base = FeedForward(dim, mult)
        self.branches = nn.ModuleList()
        self.active = active

    def add_branch(self, hidden, task_id):
        branch = nn.Sequential(nn.Linear(self.dim, hidden * 2), GEGLU(), nn.Linear(hidden, self.dim, bias=False))
        branch.register_buffer("created_by", torch.tensor(int(task_id)))
        self.branches.append(branch)

    @property
    def total_hidden(self):
        return self.hidden + sum(b[2].in_features for b in self.branches)

    def forward(self, x):
        out = self.base(x)
        for branch in self.branches:
            if int(branch.created_by) <= self.active.task_id:
                out = out + branch(x)
        return out


def init_weight(weight):
    """A fresh initialisation of a layer's weight in place: Xavier-uniform for a linear layer's [out, in], Kaiming-
    uniform (ReLU) for a convolution's [out, in, k, k]. Used at construction and for weights a new task is handed."""
    if weight.dim() > 2:
        nn.init.kaiming_uniform_(weight, nonlinearity="relu")
    else:
        nn.init.xavier_uniform_(weight)
    return weight


class MultimodalPerceiverIO(nn.Module):
    def __init__(self, *, text_dim=384, max_text_length=128, num_freq_bands=6, max_freq=10.0, depth=3,
                 num_latents=256, latent_dim=512, cross_heads=1, cross_dim_head=64, latent_heads=8,
                 latent_dim_head=64, ff_mult=4, image_channels=3, image_stem="pixels",
                 stem_channels=tuple(DEFAULT_STEM_CHANNELS)):
        super().__init__()
        if image_stem not in IMAGE_STEMS:
            raise ValueError(f"image_stem {image_stem!r} is not one of {IMAGE_STEMS}")
        self.config = dict(text_dim=text_dim, max_text_length=max_text_length, num_freq_bands=num_freq_bands,
                           max_freq=max_freq, depth=depth, num_latents=num_latents, latent_dim=latent_dim,
                           cross_heads=cross_heads, cross_dim_head=cross_dim_head, latent_heads=latent_heads,
                           latent_dim_head=latent_dim_head, ff_mult=ff_mult, image_channels=image_channels)
        stem = None
        if image_stem == "conv":          # only then in the config: a pixels network's checkpoint keeps its bytes
            stem = [int(c) for c in stem_channels]
            self.config.update(image_stem=image_stem, stem_channels=stem)
        self.adapters = nn.ModuleDict({"image": ImageAdapter(num_freq_bands, max_freq, image_channels, stem),
                                       "text": TextAdapter(text_dim, max_text_length)})
        self.active = ActiveTask()
        self.latents = nn.Parameter(torch.randn(num_latents, latent_dim))
        cross_attn = Attention(latent_dim, heads=cross_heads, dim_head=cross_dim_head)
        cross_attn.to_kv = ModalityKV({m: a.out_dim for m, a in self.adapters.items()},
                                      2 * cross_heads * cross_dim_head, self.active)
        cross_ff = GrowableFeedForward(latent_dim, ff_mult, self.active)
        self.cross_attend_blocks = nn.ModuleList([PreNorm(latent_dim, cross_attn), PreNorm(latent_dim, cross_ff)])
        self.layers = nn.ModuleList([
            nn.ModuleList([PreNorm(latent_dim, Attention(latent_dim, heads=latent_heads, dim_head=latent_dim_head)),
                           PreNorm(latent_dim, GrowableFeedForward(latent_dim, ff_mult, self.active))])
            for _ in range(depth)])
        self.heads = nn.ModuleDict()
        self._init_weights()

    def _init_weights(self):
        # Xavier-uniform weights and zero biases for every linear layer, as the original's init_weights=True; the
        # conv stem's convolutions Kaiming-uniform (they feed ReLUs), zero biases
        for module in self.modules():
            if isinstance(module, (nn.Linear, nn.Conv2d)):
                init_weight(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    # ---- modality, tasks and heads --------------------------------------------------------------------------
    @property
    def kv(self):
        return self.cross_attend_blocks[0].fn.to_kv

    @property
    def modality(self):
        return self.active.modality

    @property
    def active_task(self):
        return self.active.name

    def activate(self, task):
        """Make `task` (an ActiveTask: head, task id, modality) the one forward computes, in every module at once.
        Returns the task active before, so that a caller can restore it with activate(previous)."""
        if task.modality not in MODALITIES:
            raise ValueError(f"unknown modality {task.modality!r}")
        if task.name is not None and task.name not in self.heads:
            raise KeyError(f"model has no head for task {task.name!r} (has {list(self.heads)})")
        previous = replace(self.active)
        # in place: the modules hold this object, not a copy
        self.active.name, self.active.task_id, self.active.modality = task.name, int(task.task_id), task.modality
        return previous

    def add_task(self, name, num_classes):
        if name not in self.heads:
            self.heads[name] = nn.Sequential(nn.LayerNorm(self.config["latent_dim"]),
                                             nn.Linear(self.config["latent_dim"], num_classes))
            nn.init.normal_(self.heads[name][1].weight, std=0.01)
            nn.init.zeros_(self.heads[name][1].bias)

    def feedforwards(self):
        return [m for m in self.modules() if isinstance(m, GrowableFeedForward)]

    def grow(self, extra_hidden, task_id):
        """Add `extra_hidden` units to every latent feed-forward, usable by task `task_id` and later tasks."""
        for ff in self.feedforwards():
            ff.add_branch(extra_hidden, task_id)
            for lin in (ff.branches[-1][0], ff.branches[-1][2]):
                nn.init.xavier_uniform_(lin.weight)
                if lin.bias is not None:
                    nn.init.zeros_(lin.bias)

    @property
    def width_multiplier(self):
        ff = self.feedforwards()[0]
        return ff.total_hidden / ff.hidden

    # ---- forward --------------------------------------------------------------------------------------------
    def encode(self, x, mask=None):
        """Latents after the encoder and latent transformer: [b, num_latents, latent_dim]."""
        data = self.adapters[self.active.modality](x)                                    # [b, n, d]
        lat = repeat(self.latents, "n d -> b n d", b=data.shape[0])
        cross_attn, cross_ff = self.cross_attend_blocks
        lat = cross_attn(lat, context=data, mask=mask) + lat
        lat = cross_ff(lat) + lat
        for self_attn, self_ff in self.layers:
            lat = self_attn(lat) + lat
            lat = self_ff(lat) + lat
        return lat

    def forward(self, x, mask=None):
        return self.heads[self.active.name](self.encode(x, mask).mean(dim=1))
