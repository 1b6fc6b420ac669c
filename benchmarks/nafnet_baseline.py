"""A NAFNet-style baseline for the design study (not a shipped architecture).

Paper: Simple Baselines for Image Restoration (Chen, Chu, Zhang and Sun, ECCV 2022). Written from the paper's
description: a U-shaped stack of "nonlinear activation free" blocks, each a layer norm, pointwise and depthwise
convolutions, SimpleGate (the channels split in two halves that multiply) instead of an activation, and simplified
channel attention (global average pooling, one pointwise conv, a channel-wise product), followed by a gated
pointwise feed-forward part; most blocks sit at the coarsest scale.

``NAFNET_CONFIGS``: ``gopro32`` is the paper's GoPro configuration (width 32, encoder blocks 1, 1, 1, 28, one middle
block, decoder blocks 1, 1, 1, 1; about 17 M parameters); ``light`` has the same layout at the width whose 1280x720
cost on the CPU is that of SDNet ``light_m`` (docs/design_study.md): SDNet ``light`` version 1 without its SVD
modules; ``lean`` is ``light`` without blocks at full resolution, SDNet ``light`` version 2 without its SVD modules.
"""
import torch.nn.functional as F
from torch import nn

# The blocks are SDNet's own normalized gated blocks, so that the SDNet arms built of them differ from this baseline
# by their SVD modules only.
from sdnet_plugin.archs.sdnet_arch import NormGatedBlock as NAFBlock

NAFNET_CONFIGS = {
    'gopro32': dict(width=32, enc_blocks=(1, 1, 1, 28), middle_blocks=1, dec_blocks=(1, 1, 1, 1)),
    'light': dict(width=8, enc_blocks=(1, 1, 1, 28), middle_blocks=1, dec_blocks=(1, 1, 1, 1)),
    'lean': dict(width=8, enc_blocks=(0, 1, 1, 28), middle_blocks=1, dec_blocks=(1, 1, 1, 0)),
}


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
