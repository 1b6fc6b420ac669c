import torch.nn.functional as F
from basicsr.archs.arch_util import ResidualBlockNoBN, make_layer
from basicsr.utils.registry import ARCH_REGISTRY
from torch import nn

from sdnet_plugin.ops import ModulatedDeformConv2d

# Preset name -> settings. Parameters and MACs at 1280x720 (benchmarks/speed.py): tiny 0.43 M / 48 G, small 1.21 M /
# 149 G, base 2.46 M / 311 G.
SDNET_PRESETS = {
    'tiny': dict(num_feat=16, num_block=(1, 1, 2), svd_levels=(1, 2)),
    'small': dict(num_feat=24, num_block=(1, 2, 3), svd_levels=(0, 1, 2)),
    'base': dict(num_feat=32, num_block=(2, 2, 4), svd_levels=(0, 1, 2)),
}


class SVDModule(nn.Module):
    """Spatially variant deconvolution: a modulated deformable conv whose sampling points and modulation scalars
    are predicted per pixel from the blur features, added back to the features (``x + act(dcn(x))``)."""

    def __init__(self, num_feat, kernel_size=3, dilation=1, backend='auto'):
        super().__init__()
        self.dcn = ModulatedDeformConv2d(num_feat, num_feat, kernel_size, dilation=dilation, backend=backend)
        self.act = nn.LeakyReLU(0.1, inplace=True)

    def forward(self, x):
        out, offset, _ = self.dcn(x)
        return x + self.act(out), offset


@ARCH_REGISTRY.register()
class SDNet(nn.Module):
    """SDNet: spatially variant deconvolution network for dynamic scene deblurring.

    Paper: Efficient Dynamic Scene Deblurring Using Spatially Variant Deconvolution Network with Optical Flow Guided
    Training (Yuan, Su and Ma, CVPR 2020).

    A three-scale encoder-decoder of residual blocks without normalization (strides 1, 2, 4), with skip connections
    and a global residual (output = input + residual). SVD modules follow the residual blocks of the chosen decoder
    levels; their offsets, in that level's pixels, can be returned for the flow-guided offset loss.

    Args:
        preset (str): ``'tiny'``, ``'small'`` or ``'base'``; fills the settings left as None. Default: ``'base'``.
        num_in_ch (int): Input channels. Default: 3.
        num_out_ch (int): Output channels. Default: 3.
        num_feat (int | None): Channels at full resolution (x2, x4 at the coarser levels). Default: from preset.
        num_block (tuple[int] | None): Residual blocks per level (full, 1/2, 1/4). Default: from preset.
        svd_levels (tuple[int] | None): Levels (0 = full, 1 = 1/2, 2 = 1/4) with an SVD module. Default: preset.
        deform_kernel_size (int): Kernel size of the SVD modules. Default: 3.
        deform_dilation (int): Dilation of the SVD modules. Default: 1.
        dcn_backend (str): Deformable conv backend (``'auto'``, ``'mmcv'``, ``'torchvision'``, ``'torch'``).
            Default: ``'auto'``.
    """

    num_levels = 3

    def __init__(self, preset='base', num_in_ch=3, num_out_ch=3, num_feat=None, num_block=None, svd_levels=None,
                 deform_kernel_size=3, deform_dilation=1, dcn_backend='auto'):
        super().__init__()
        if preset not in SDNET_PRESETS:
            raise ValueError(f'unknown SDNet preset {preset!r}; choose one of {", ".join(SDNET_PRESETS)}')
        settings = SDNET_PRESETS[preset]
        num_feat = num_feat or settings['num_feat']
        num_block = tuple(num_block or settings['num_block'])
        svd_levels = tuple(settings['svd_levels'] if svd_levels is None else svd_levels)
        if len(num_block) != self.num_levels or any(lv not in range(self.num_levels) for lv in svd_levels):
            raise ValueError(f'num_block needs {self.num_levels} entries and svd_levels values in 0..2, '
                             f'got {num_block} and {svd_levels}')
        self.in_channels, self.out_channels = num_in_ch, num_out_ch
        self.deform_kernel_size, self.deform_dilation = deform_kernel_size, deform_dilation
        self.svd_levels = svd_levels
        chans = [num_feat * 2**lv for lv in range(self.num_levels)]

        self.conv_first = nn.Conv2d(num_in_ch, chans[0], 3, 1, 1)
        self.encoders = nn.ModuleList()
        self.downs = nn.ModuleList()
        for lv in range(self.num_levels - 1):
            self.encoders.append(make_layer(ResidualBlockNoBN, num_block[lv], num_feat=chans[lv]))
            self.downs.append(nn.Sequential(nn.Conv2d(chans[lv], chans[lv + 1], 3, 2, 1), nn.LeakyReLU(0.1, True)))
        self.bottleneck = make_layer(ResidualBlockNoBN, num_block[-1], num_feat=chans[-1])
        self.ups = nn.ModuleList()
        self.decoders = nn.ModuleList()
        for lv in range(self.num_levels - 2, -1, -1):  # 1, 0
            self.ups.append(nn.Sequential(nn.Conv2d(chans[lv + 1], chans[lv] * 4, 3, 1, 1), nn.PixelShuffle(2)))
            self.decoders.append(make_layer(ResidualBlockNoBN, num_block[lv], num_feat=chans[lv]))
        self.svd = nn.ModuleDict({
            str(lv): SVDModule(chans[lv], deform_kernel_size, deform_dilation, dcn_backend)
            for lv in svd_levels
        })
        self.conv_last = nn.Conv2d(chans[0], num_out_ch, 3, 1, 1)
        if num_in_ch == num_out_ch:
            # The untrained network returns its input (global residual of zero), a far better start than noise.
            nn.init.zeros_(self.conv_last.weight)
            nn.init.zeros_(self.conv_last.bias)
        self.lrelu = nn.LeakyReLU(0.1, inplace=True)

    @property
    def pad_multiple(self):
        return 2**(self.num_levels - 1)

    def _apply_svd(self, feat, level, offsets, height, width):
        if str(level) not in self.svd:
            return feat
        feat, offset = self.svd[str(level)](feat)
        stride = 2**level
        offsets.append({
            'offset': offset[..., :-(-height // stride), :-(-width // stride)],
            'stride': stride,
            'kernel_size': self.deform_kernel_size,
            'dilation': self.deform_dilation,
            'level': level,
        })
        return feat

    def forward(self, x, return_offsets=False):
        """
        Args:
            x (Tensor): ``(B, C_in, H, W)`` blurry image in [0, 1]; any H, W.
            return_offsets (bool): Also return the SVD modules' offsets. Default: False.

        Returns:
            Tensor | tuple[Tensor, list[dict]]: restored image ``(B, C_out, H, W)``; with ``return_offsets``, also
            one dict per SVD module, coarsest first: ``offset`` ``(B, 2K, ceil(H/stride), ceil(W/stride))`` in that
            level's pixels, ``stride``, ``kernel_size``, ``dilation``, ``level``.
        """
        height, width = x.shape[-2:]
        pad_h, pad_w = (-height) % self.pad_multiple, (-width) % self.pad_multiple
        inp = F.pad(x, (0, pad_w, 0, pad_h), mode='replicate') if pad_h or pad_w else x
        offsets = []

        feat = self.lrelu(self.conv_first(inp))
        skips = []
        for encoder, down in zip(self.encoders, self.downs):
            feat = encoder(feat)
            skips.append(feat)
            feat = down(feat)
        feat = self._apply_svd(self.bottleneck(feat), self.num_levels - 1, offsets, height, width)
        for level, up, decoder in zip(range(self.num_levels - 2, -1, -1), self.ups, self.decoders):
            feat = decoder(self.lrelu(up(feat)) + skips[level])
            feat = self._apply_svd(feat, level, offsets, height, width)

        out = self.conv_last(feat)[..., :height, :width]
        if self.in_channels == self.out_channels:
            out = out + x
        return (out, offsets) if return_offsets else out
