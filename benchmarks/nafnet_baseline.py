"""A NAFNet-style baseline for the design study (not a shipped architecture).

Paper: Simple Baselines for Image Restoration (Chen, Chu, Zhang and Sun, ECCV 2022). Written from the paper's
description: a U-shaped stack of "nonlinear activation free" blocks, each a layer norm, pointwise and depthwise
convolutions, SimpleGate (the channels split in two halves that multiply) instead of an activation, and simplified
channel attention (global average pooling, one pointwise conv, a channel-wise product), followed by a gated
pointwise feed-forward part; most blocks sit at the coarsest scale.

``NAFNET_CONFIGS``: ``gopro32`` is the paper's GoPro configuration (width 32, encoder blocks 1, 1, 1, 28, one middle
block, decoder blocks 1, 1, 1, 1; about 17 M parameters); ``light`` has the same layout at the width whose 1280x720
cost on the CPU is that of SDNet ``light_m`` (docs/design_study.md).
"""
import torch
import torch.nn.functional as F
from torch import nn

NAFNET_CONFIGS = {
    'gopro32': dict(width=32, enc_blocks=(1, 1, 1, 28), middle_blocks=1, dec_blocks=(1, 1, 1, 1)),
    'light': dict(width=8, enc_blocks=(1, 1, 1, 28), middle_blocks=1, dec_blocks=(1, 1, 1, 1)),
}


class ChannelNorm(nn.LayerNorm):
    """Layer norm over the channels of every pixel (``(B, C, H, W)`` -> same), with a per-channel affine map.

    Runs as :func:`torch.nn.functional.layer_norm` on the ``(B, H, W, C)`` view, which is free for channels-last
    tensors.

    Args:
        num_feat (int): Channels.
        eps (float): Added to the variance. Default: 1e-6.
    """

    def __init__(self, num_feat, eps=1e-6):
        super().__init__(num_feat, eps=eps)

    def forward(self, x):
        """``(B, C, H, W)`` -> ``(B, C, H, W)``."""
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


def simple_gate(x):
    """SimpleGate: the first half of the channels times the second half, ``(B, 2C, H, W)`` -> ``(B, C, H, W)``."""
    a, b = x.chunk(2, dim=1)
    return a * b


class NAFBlock(nn.Module):
    """Nonlinear-activation-free block: a spatial part and a feed-forward part, each with a learned residual scale
    that starts at zero.

    Args:
        num_feat (int): Channels.
        dw_expand (int): Expansion of the spatial part before SimpleGate. Default: 2.
        ffn_expand (int): Expansion of the feed-forward part before SimpleGate. Default: 2.
    """

    def __init__(self, num_feat, dw_expand=2, ffn_expand=2):
        super().__init__()
        dw_ch, ffn_ch = num_feat * dw_expand, num_feat * ffn_expand
        self.norm1 = ChannelNorm(num_feat)
        self.pw1 = nn.Conv2d(num_feat, dw_ch, 1)
        self.dw = nn.Conv2d(dw_ch, dw_ch, 3, 1, 1, groups=dw_ch)
        self.attention = nn.Conv2d(dw_ch // 2, dw_ch // 2, 1)  # simplified channel attention
        self.pw2 = nn.Conv2d(dw_ch // 2, num_feat, 1)
        self.norm2 = ChannelNorm(num_feat)
        self.ffn_in = nn.Conv2d(num_feat, ffn_ch, 1)
        self.ffn_out = nn.Conv2d(ffn_ch // 2, num_feat, 1)
        self.beta = nn.Parameter(torch.zeros(1, num_feat, 1, 1))
        self.gamma = nn.Parameter(torch.zeros(1, num_feat, 1, 1))

    def forward(self, x):
        """``(B, C, H, W)`` -> ``(B, C, H, W)``."""
        y = simple_gate(self.dw(self.pw1(self.norm1(x))))
        y = y * self.attention(F.adaptive_avg_pool2d(y, 1))
        x = x + self.pw2(y) * self.beta
        y = self.ffn_out(simple_gate(self.ffn_in(self.norm2(x))))
        return x + y * self.gamma


class NAFNetBaseline(nn.Module):
    """U-shaped NAFNet: intro conv, encoder levels (blocks, then a 2x2 stride-2 conv doubling the channels), middle
    blocks, decoder levels (1x1 conv + pixel shuffle halving the channels, skip added, blocks), ending conv, and a
    global residual.

    Args:
        width (int): Channels at full resolution. Default: 32.
        enc_blocks (tuple[int]): Blocks per encoder level, full resolution first. Default: (1, 1, 1, 28).
        middle_blocks (int): Blocks at the coarsest level. Default: 1.
        dec_blocks (tuple[int]): Blocks per decoder level, coarsest first. Default: (1, 1, 1, 1).
        num_in_ch (int): Image channels (in and out). Default: 3.
        zero_start (bool): Start the ending conv at zero, so that the untrained network returns its input as SDNet
            does (with the default initialisation it starts about 10 dB below the blurry input on the study's
            held-out renders; the paper does not say). Default: True.
    """

    def __init__(self, width=32, enc_blocks=(1, 1, 1, 28), middle_blocks=1, dec_blocks=(1, 1, 1, 1), num_in_ch=3,
                 zero_start=True):
        super().__init__()
        if len(enc_blocks) != len(dec_blocks):
            raise ValueError(f'enc_blocks and dec_blocks need the same length, got {enc_blocks} and {dec_blocks}')
        self.intro = nn.Conv2d(num_in_ch, width, 3, 1, 1)
        self.encoders, self.downs, self.ups, self.decoders = (nn.ModuleList() for _ in range(4))
        ch = width
        for count in enc_blocks:
            self.encoders.append(nn.Sequential(*(NAFBlock(ch) for _ in range(count))))
            self.downs.append(nn.Conv2d(ch, 2 * ch, 2, 2))
            ch *= 2
        self.middle = nn.Sequential(*(NAFBlock(ch) for _ in range(middle_blocks)))
        for count in dec_blocks:
            self.ups.append(nn.Sequential(nn.Conv2d(ch, 2 * ch, 1, bias=False), nn.PixelShuffle(2)))
            ch //= 2
            self.decoders.append(nn.Sequential(*(NAFBlock(ch) for _ in range(count))))
        self.ending = nn.Conv2d(width, num_in_ch, 3, 1, 1)
        if zero_start:
            nn.init.zeros_(self.ending.weight)
            nn.init.zeros_(self.ending.bias)
        self.pad_multiple = 2**len(enc_blocks)

    def forward(self, x):
        """
        Args:
            x (Tensor): ``(B, C, H, W)`` blurry image in [0, 1]; any H, W.

        Returns:
            Tensor: ``(B, C, H, W)`` restored image.
        """
        height, width = x.shape[-2:]
        pad_h, pad_w = (-height) % self.pad_multiple, (-width) % self.pad_multiple
        feat = self.intro(F.pad(x, (0, pad_w, 0, pad_h), mode='replicate') if pad_h or pad_w else x)
        skips = []
        for encoder, down in zip(self.encoders, self.downs):
            feat = encoder(feat)
            skips.append(feat)
            feat = down(feat)
        feat = self.middle(feat)
        for up, decoder, skip in zip(self.ups, self.decoders, reversed(skips)):
            feat = decoder(up(feat) + skip)
        return self.ending(feat)[..., :height, :width] + x


def build_nafnet(config):
    """``NAFNetBaseline`` of a name in :data:`NAFNET_CONFIGS`."""
    if config not in NAFNET_CONFIGS:
        raise ValueError(f'unknown NAFNet configuration {config!r}; choose one of {", ".join(NAFNET_CONFIGS)}')
    return NAFNetBaseline(**NAFNET_CONFIGS[config])
