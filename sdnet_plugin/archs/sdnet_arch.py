import torch
import torch.nn.functional as F
from basicsr.archs.arch_util import ResidualBlockNoBN, make_layer
from basicsr.utils.registry import ARCH_REGISTRY
from torch import nn

from sdnet_plugin.ops import ModulatedDeformConv2d

# Preset name -> version -> settings. A preset's meaning never changes within a version: a changed design is a new
# version, and checkpoints store the version they were trained with (``preset_version``), so they always rebuild
# their own network. Checkpoints written before presets had versions store none and mean version 1.
# Parameters and GMACs at 1280x720 (benchmarks/speed.py): tiny 0.43 M / 48.1, small 1.21 M / 149.1, base 2.46 M /
# 311.4, light_s 1.10 M / 27.2, light_m 1.80 M / 42.1, light_l 3.98 M / 92.3.
_COARSE = dict(svd_levels=(2, 3), svd_head_ratio=0.5)  # SVD modules at 1/4 and 1/8, narrow offset heads
SDNET_PRESET_VERSIONS = {
    'tiny': {1: dict(num_feat=16, num_block=(1, 1, 2), svd_levels=(1, 2))},
    'small': {1: dict(num_feat=24, num_block=(1, 2, 3), svd_levels=(0, 1, 2))},
    'base': {1: dict(num_feat=32, num_block=(2, 2, 4), svd_levels=(0, 1, 2))},
    # Four levels of gated depthwise blocks, most of them at 1/8 and none at full resolution (memory traffic there
    # costs more than the arithmetic); SVD modules at 1/4 and 1/8, where the blur of GoPro-like footage spans a
    # few feature pixels.
    'light_s': {1: dict(_COARSE, block_type='gated', num_feat=16, num_block=(0, 1, 2, 6), num_dec_block=(0, 1, 1))},
    'light_m': {1: dict(_COARSE, block_type='gated', num_feat=16, num_block=(0, 2, 4, 12), num_dec_block=(0, 1, 2))},
    'light_l': {1: dict(_COARSE, block_type='gated', num_feat=24, num_block=(0, 2, 4, 12), num_dec_block=(0, 1, 2))},
    # Five levels of normalized gated blocks (:class:`NormGatedBlock`), 28 of them at 1/8, SVD modules at 1/4 and
    # 1/8: the backbone of the design study's NAFNet-style peer with SVD modules added. Version 2 has no blocks at
    # full resolution (that level only converts to and from 8 channels): 0.35 s instead of 0.75 s per 1280x720 frame
    # on one CPU thread, where the two 8-channel blocks cost more memory traffic than all blocks at 1/8, and more
    # held-out gain per CPU-minute in the design study (arms light_lean_warm and light_warm).
    'light': {1: dict(_COARSE, block_type='norm_gated', num_feat=8, num_block=(1, 1, 1, 28, 1),
                      num_dec_block=(1, 1, 1, 1)),
              2: dict(_COARSE, block_type='norm_gated', num_feat=8, num_block=(0, 1, 1, 28, 1),
                      num_dec_block=(0, 1, 1, 1))},
}  # yapf: disable
# The current version of every preset (what an option file without ``preset_version`` builds).
SDNET_PRESETS = {name: versions[max(versions)] for name, versions in SDNET_PRESET_VERSIONS.items()}
# What ``SDNet()`` (and ``type: SDNet`` without ``preset``) builds: the design study's pick (docs/design_study.md).
# Until presets had versions the default was ``base``; stored options from then mean ``base``.
DEFAULT_PRESET = 'light'
BLOCK_TYPES = ('residual', 'gated', 'norm_gated')


def preset_settings(preset, version=None):
    """Settings of ``preset`` at ``version`` (None: the current one).

    Raises:
        ValueError: Unknown preset or version (one line, naming the known ones).
    """
    if preset not in SDNET_PRESET_VERSIONS:
        raise ValueError(f'unknown SDNet preset {preset!r}; choose one of {", ".join(SDNET_PRESET_VERSIONS)}')
    versions = SDNET_PRESET_VERSIONS[preset]
    version = max(versions) if version is None else version
    if version not in versions:
        raise ValueError(f'SDNet preset {preset!r} has no version {version!r} (this sdnet-plugin knows '
                         f'{", ".join(map(str, versions))}); the weights need another sdnet-plugin version')
    return version, dict(versions[version])


def pin_preset_version(network_opt):
    """Network options of a stored checkpoint with the preset version made explicit.

    SDNet options without ``preset_version`` were written before presets had versions: they mean version 1, and
    without ``preset`` they mean ``base``, the default of that time.

    Args:
        network_opt (dict): ``network_g`` of a checkpoint (``{'type': 'SDNet', 'preset': ..., ...}``).

    Returns:
        dict: A copy, with ``preset_version`` for SDNet options.
    """
    network_opt = dict(network_opt)
    if network_opt.get('type') == 'SDNet' and network_opt.get('preset_version') is None:
        network_opt['preset_version'] = 1
        network_opt.setdefault('preset', 'base')
    return network_opt


class GatedBlock(nn.Module):
    """Residual block of a depthwise convolution and a gated pointwise MLP, without normalization.

    ``x + scale * pw_out(a * b)`` with ``(a, b) = split(pw_in(dw(x)))``: the depthwise ``k x k`` convolution mixes
    space at a cost linear in the channels, the gate (one half of the expanded features multiplies the other) is the
    nonlinearity, and the per-channel ``scale`` starts at zero, so a new block is the identity (there is no
    normalization layer to keep a deep stack's features in range at the start).

    Args:
        num_feat (int): Channels.
        kernel_size (int): Depthwise kernel size. Default: 5.
        expansion (int): Width of the gated features, in multiples of ``num_feat``. Default: 2.
    """

    def __init__(self, num_feat, kernel_size=5, expansion=2):
        super().__init__()
        hidden = num_feat * expansion
        self.dw = nn.Conv2d(num_feat, num_feat, kernel_size, 1, kernel_size // 2, groups=num_feat)
        self.pw_in = nn.Conv2d(num_feat, 2 * hidden, 1)
        self.pw_out = nn.Conv2d(hidden, num_feat, 1)
        self.scale = nn.Parameter(torch.zeros(1, num_feat, 1, 1))

    def forward(self, x):
        """``(B, C, H, W)`` -> ``(B, C, H, W)``."""
        a, b = self.pw_in(self.dw(x)).chunk(2, dim=1)
        return x + self.pw_out(a * b) * self.scale


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
    """The first half of the channels times the second half, ``(B, 2C, H, W)`` -> ``(B, C, H, W)``."""
    a, b = x.chunk(2, dim=1)
    return a * b


class NormGatedBlock(nn.Module):
    """Block in the manner of NAFNet (Chen et al., "Simple Baselines for Image Restoration", ECCV 2022): a spatial
    part (layer norm, pointwise expansion, 3x3 depthwise conv, gate, simplified channel attention, pointwise
    projection) and a gated pointwise feed-forward part, each added with a per-channel scale that starts at zero.

    Args:
        num_feat (int): Channels.
        dw_expand (int): Expansion of the spatial part before the gate. Default: 2.
        ffn_expand (int): Expansion of the feed-forward part before the gate. Default: 2.
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
        """``(B, C, H, W)`` -> ``(B, C, H, W)``.

        Without autograd (inference, validation) the per-channel scales, and for one image the channel attention
        too, are folded into the weights of the 1x1 convolutions that precede them: the same function with three
        fewer passes over the features (about 12 % of a 1280x720 frame of the ``light`` preset on the CPU).
        """
        y = simple_gate(self.dw(self.pw1(self.norm1(x))))
        attention = self.attention(F.adaptive_avg_pool2d(y, 1))
        if torch.is_grad_enabled() or torch.jit.is_tracing():  # training, and ONNX export with any batch size
            x = x + self.pw2(y * attention) * self.beta
            return x + self.ffn_out(simple_gate(self.ffn_in(self.norm2(x)))) * self.gamma
        weight = self.pw2.weight * self.beta.view(-1, 1, 1, 1)
        if x.shape[0] == 1:
            weight = weight * attention.view(1, -1, 1, 1)
        else:
            y = y * attention
        x = x + F.conv2d(y, weight, self.pw2.bias * self.beta.view(-1))
        y = simple_gate(self.ffn_in(self.norm2(x)))
        return x + F.conv2d(y, self.ffn_out.weight * self.gamma.view(-1, 1, 1, 1),
                            self.ffn_out.bias * self.gamma.view(-1))


class SVDModule(nn.Module):
    """Spatially variant deconvolution: a modulated deformable conv whose sampling points and modulation scalars
    are predicted per pixel from the blur features, added back to the features (``x + act(dcn(x))``).

    Args:
        num_feat (int): Channels.
        kernel_size (int): Deformable kernel size. Default: 3.
        dilation (int): Its dilation. Default: 1.
        backend (str): DCN backend. Default: ``'auto'``.
        plain (bool): A plain ``kernel_size`` convolution in place of the deformable one (the paper's "backbone
            alone" ablation); it returns no offsets. Default: False.
        head_channels (int | None): Width of the offset head. Default: None (``num_feat``).
    """

    def __init__(self, num_feat, kernel_size=3, dilation=1, backend='auto', plain=False, head_channels=None):
        super().__init__()
        if plain:
            self.conv = nn.Conv2d(num_feat, num_feat, kernel_size, 1, dilation * (kernel_size - 1) // 2, dilation)
        else:
            self.dcn = ModulatedDeformConv2d(num_feat, num_feat, kernel_size, dilation=dilation,
                                             hidden_channels=head_channels, backend=backend)
        self.act = nn.LeakyReLU(0.1, inplace=True)

    def forward(self, x):
        """``(B, C, H, W)`` -> features ``(B, C, H, W)`` and offsets ``(B, 2K, H, W)`` (None when plain)."""
        if hasattr(self, 'conv'):
            return x + self.act(self.conv(x)), None
        out, offset, _ = self.dcn(x)
        return x + self.act(out), offset


@ARCH_REGISTRY.register()
class SDNet(nn.Module):
    """SDNet: spatially variant deconvolution network for dynamic scene deblurring.

    Paper: Efficient Dynamic Scene Deblurring Using Spatially Variant Deconvolution Network with Optical Flow Guided
    Training (Yuan, Su and Ma, CVPR 2020).

    An encoder-decoder (one level per entry of ``num_block``, strides 1, 2, 4, ...; channels double per level) with
    skip connections and a global residual (output = input + residual). SVD modules follow the blocks of the chosen
    decoder levels; their offsets, in that level's pixels, can be returned for the flow-guided offset loss.

    Two block families:

    * ``'residual'`` (the paper's design, presets ``tiny``, ``small``, ``base``): residual blocks of two 3x3 convs
      without normalization, strided 3x3 convs down, 3x3 conv + pixel shuffle up, LeakyReLU between stages.
    * ``'gated'`` (presets ``light_s``, ``light_m``, ``light_l``): :class:`GatedBlock` stacks with most blocks at
      the coarsest level, 2x2 stride-2 convs down, 1x1 conv + pixel shuffle up.
    * ``'norm_gated'`` (preset ``light``): :class:`NormGatedBlock` stacks, downs and ups as ``'gated'``.

    Args:
        preset (str): A name of :data:`SDNET_PRESET_VERSIONS`; fills the settings left as None. Default:
            :data:`DEFAULT_PRESET` (``'light'``).
        preset_version (int | None): Version of the preset. Default: None (the current one).
        num_in_ch (int): Input channels. Default: 3.
        num_out_ch (int): Output channels. Default: 3.
        num_feat (int | None): Channels at full resolution (x2 per coarser level). Default: from preset.
        num_block (tuple[int] | None): Blocks per encoder level, the last entry being the bottleneck; its length is
            the number of levels. Default: from preset.
        num_dec_block (tuple[int] | None): Blocks per decoder level (full resolution first). Default: from preset,
            else ``num_block[:-1]``.
        svd_levels (tuple[int] | None): Levels (0 = full, 1 = 1/2, ...) with an SVD module. Default: from preset.
        block_type (str | None): ``'residual'``, ``'gated'`` or ``'norm_gated'``. Default: from preset, else
            ``'residual'``.
        plain_svd (bool): Plain convolutions in place of the SVD modules (the paper's "backbone alone").
            Default: False.
        svd_head_ratio (float | None): Width of the SVD modules' offset heads relative to their features.
            Default: from preset, else 1.
        deform_kernel_size (int): Kernel size of the SVD modules. Default: 3.
        deform_dilation (int): Dilation of the SVD modules. Default: 1.
        dcn_backend (str): Deformable conv backend (``'auto'``, ``'mmcv'``, ``'torchvision'``, ``'torch'``).
            Default: ``'auto'``.
    """

    def __init__(self, preset=DEFAULT_PRESET, num_in_ch=3, num_out_ch=3, num_feat=None, num_block=None, svd_levels=None,
                 deform_kernel_size=3, deform_dilation=1, dcn_backend='auto', preset_version=None, num_dec_block=None,
                 block_type=None, plain_svd=False, svd_head_ratio=None):
        super().__init__()
        self.preset = preset
        self.preset_version, settings = preset_settings(preset, preset_version)
        num_feat = num_feat or settings['num_feat']
        num_block = tuple(num_block or settings['num_block'])
        svd_levels = tuple(settings['svd_levels'] if svd_levels is None else svd_levels)
        self.block_type = block_type or settings.get('block_type', 'residual')
        self.num_levels = len(settings['num_block'])
        num_dec_block = tuple(num_dec_block or settings.get('num_dec_block') or num_block[:-1])
        if len(num_block) != self.num_levels or len(num_dec_block) != self.num_levels - 1 or any(
                lv not in range(self.num_levels) for lv in svd_levels):
            raise ValueError(f'num_block needs {self.num_levels} entries, num_dec_block {self.num_levels - 1} and '
                             f'svd_levels values in 0..{self.num_levels - 1}, got {num_block}, {num_dec_block} and '
                             f'{svd_levels}')
        if self.block_type not in BLOCK_TYPES:
            raise ValueError(f'block_type must be one of {", ".join(BLOCK_TYPES)}, got {self.block_type!r}')
        self.in_channels, self.out_channels = num_in_ch, num_out_ch
        self.deform_kernel_size, self.deform_dilation = deform_kernel_size, deform_dilation
        self.svd_levels = svd_levels
        chans = [num_feat * 2**lv for lv in range(self.num_levels)]
        residual = self.block_type == 'residual'
        head_ratio = svd_head_ratio or settings.get('svd_head_ratio', 1)

        block = {'residual': ResidualBlockNoBN, 'gated': GatedBlock, 'norm_gated': NormGatedBlock}[self.block_type]

        def blocks(count, channels):
            return make_layer(block, count, num_feat=channels)

        self.conv_first = nn.Conv2d(num_in_ch, chans[0], 3, 1, 1)
        self.encoders = nn.ModuleList()
        self.downs = nn.ModuleList()
        for lv in range(self.num_levels - 1):
            self.encoders.append(blocks(num_block[lv], chans[lv]))
            self.downs.append(
                nn.Sequential(nn.Conv2d(chans[lv], chans[lv + 1], 3, 2, 1), nn.LeakyReLU(0.1, True)
                              ) if residual else nn.Conv2d(chans[lv], chans[lv + 1], 2, 2))
        self.bottleneck = blocks(num_block[-1], chans[-1])
        self.ups = nn.ModuleList()
        self.decoders = nn.ModuleList()
        for lv in range(self.num_levels - 2, -1, -1):  # coarse to fine
            self.ups.append(
                nn.Sequential(
                    nn.Conv2d(chans[lv + 1], chans[lv] * 4, 3 if residual else 1, 1, 1 if residual else 0),
                    nn.PixelShuffle(2)))
            self.decoders.append(blocks(num_dec_block[lv], chans[lv]))
        self.svd = nn.ModuleDict({
            str(lv):
            SVDModule(chans[lv], deform_kernel_size, deform_dilation, dcn_backend, plain_svd,
                      max(1, round(chans[lv] * head_ratio))) for lv in svd_levels
        })
        self.conv_last = nn.Conv2d(chans[0], num_out_ch, 3, 1, 1)
        if num_in_ch == num_out_ch:
            # The untrained network returns its input (global residual of zero), a far better start than noise.
            nn.init.zeros_(self.conv_last.weight)
            nn.init.zeros_(self.conv_last.bias)
        self.lrelu = nn.LeakyReLU(0.1, inplace=True) if residual else nn.Identity()

    @property
    def pad_multiple(self):
        return 2**(self.num_levels - 1)

    def _apply_svd(self, feat, level, offsets, height, width):
        if str(level) not in self.svd:
            return feat
        feat, offset = self.svd[str(level)](feat)
        if offset is None:  # plain convolution
            return feat
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
            Tensor | tuple[Tensor, list[dict]]: restored image ``(B, C_out, H, W)`` in the input's dtype (the
            layers compute in their weights' dtype, or autocast's); with ``return_offsets``, also
            one dict per SVD module, coarsest first: ``offset`` ``(B, 2K, ceil(H/stride), ceil(W/stride))`` in that
            level's pixels, ``stride``, ``kernel_size``, ``dilation``, ``level`` (empty with ``plain_svd``).
        """
        height, width = x.shape[-2:]
        pad_h, pad_w = (-height) % self.pad_multiple, (-width) % self.pad_multiple
        inp = F.pad(x, (0, pad_w, 0, pad_h), mode='replicate') if pad_h or pad_w else x
        offsets = []

        # the network computes in its weights' dtype (a bfloat16 copy for fast CPU inference), the global residual
        # in the input's
        feat = self.lrelu(self.conv_first(inp.to(self.conv_first.weight.dtype)))
        skips = []
        for encoder, down in zip(self.encoders, self.downs):
            feat = encoder(feat)
            skips.append(feat)
            feat = down(feat)
        feat = self._apply_svd(self.bottleneck(feat), self.num_levels - 1, offsets, height, width)
        for level, up, decoder in zip(range(self.num_levels - 2, -1, -1), self.ups, self.decoders):
            feat = decoder(self.lrelu(up(feat)) + skips[level])
            feat = self._apply_svd(feat, level, offsets, height, width)

        out = self.conv_last(feat)[..., :height, :width].to(x.dtype)
        if self.in_channels == self.out_channels:
            out = out + x
        return (out, offsets) if return_offsets else out
