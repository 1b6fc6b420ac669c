import pytest
import torch

from sdnet_plugin.archs.sdnet_arch import SDNet
from sdnet_plugin.losses.flow_offset_loss import FlowGuidedOffsetLoss, downsample_flow, flow_to_offsets
from sdnet_plugin.ops import modulated_deform_conv2d


def random_flow(batch=2, h=12, w=10, scale=4.0, seed=0):
    return torch.randn(batch, 4, h, w, generator=torch.Generator().manual_seed(seed)) * scale


def module_spec(flow, stride, kernel_size=3, dilation=1, offset=None):
    if offset is None:
        offset = flow_to_offsets(flow, kernel_size, dilation, stride)
    return dict(offset=offset, stride=stride, kernel_size=kernel_size, dilation=dilation)


def test_targets_by_hand_under_stride_and_dilation():
    """Stride 2, dilation 2, 3x3 kernel; the top-left 2x2 block of the flow averages to
    F_first = (u, v) = (4, -2) and F_last = (-6, 8) input pixels, i.e. (2, -1) and (-3, 4) feature pixels."""
    flow = torch.zeros(1, 4, 4, 4)
    block = torch.tensor([4.0, -2.0, -6.0, 8.0]).view(4, 1, 1)
    flow[0, :, :2, :2] = block + torch.tensor([[1.0, -1.0], [-2.0, 2.0]])  # zero-mean wiggle: averaged away
    offsets = flow_to_offsets(flow, kernel_size=3, dilation=2, stride=2)
    assert offsets.shape == (1, 18, 2, 2)
    # point j sits at a_first * F_first + a_last * F_last (a = 1, .75, .5, .25, 0 / 0, .25, .5, .75, 1), minus its
    # grid position ((j // 3) - 1) * 2, ((j % 3) - 1) * 2; pairs are (dy, dx)
    expected = torch.tensor([[1, 4], [1.25, 1.5], [1.5, -1], [-0.25, 2.5], [0, 0], [1, -2.75], [0, 0.5], [1, -2.25],
                             [2, -5]])
    torch.testing.assert_close(offsets[0, :, 0, 0].view(9, 2), expected)
    # static blocks: every point on its own grid position
    grid = torch.tensor([[(i - 1) * 2, (j - 1) * 2] for i in range(3) for j in range(3)], dtype=torch.float32)
    torch.testing.assert_close(offsets[0, :, 1, 1].view(9, 2), -grid)


def test_odd_sizes_pad_by_replication_like_the_network():
    flow = torch.arange(4 * 5 * 5, dtype=torch.float32).view(1, 4, 5, 5)
    small = downsample_flow(flow, 2)
    assert small.shape == (1, 4, 3, 3)
    torch.testing.assert_close(small[0, :, 2, 2], flow[0, :, 4, 4] / 2)  # a cell made of the corner pixel only
    torch.testing.assert_close(small[0, :, 0, 0], flow[0, :, :2, :2].mean((1, 2)) / 2)
    assert torch.equal(downsample_flow(flow, 1), flow)


def test_target_offsets_sample_along_the_trajectory():
    """With the target offsets, a DCN whose only non-zero tap is kernel point 0 (resp. 8) reads the image at
    p + F_first (resp. p + F_last): the loss and the DCN agree on the (dy, dx) layout and the flow convention."""
    h, w = 9, 11
    image = torch.rand(1, 1, h, w)
    flow = torch.zeros(1, 4, h, w)
    flow[:, 0], flow[:, 1], flow[:, 2], flow[:, 3] = 2.0, -1.0, -3.0, 1.0  # u_first, v_first, u_last, v_last
    offsets = flow_to_offsets(flow)
    for point, (u, v) in ((0, (2, -1)), (8, (-3, 1))):
        weight = torch.zeros(1, 1, 3, 3)
        weight.view(-1)[point] = 1.0
        out = modulated_deform_conv2d(image, offsets, torch.ones(1, 9, h, w), weight, padding=1, backend='torch')
        expected = torch.zeros_like(image)
        ys, xs = slice(max(0, -v), min(h, h - v)), slice(max(0, -u), min(w, w - u))
        expected[..., ys, xs] = image[..., ys.start + v:ys.stop + v, xs.start + u:xs.stop + u]
        torch.testing.assert_close(out, expected)


@pytest.mark.parametrize('criterion', ['l1', 'charbonnier'])
def test_zero_at_targets_and_grows_with_perturbation(criterion):
    flow = random_flow()
    specs = [module_spec(flow, 4, 3, 1), module_spec(flow, 2, 3, 2), module_spec(flow, 1, 5, 1)]
    loss_fn = FlowGuidedOffsetLoss(criterion=criterion, eps=1e-3)
    floor = 0.0 if criterion == 'l1' else 1e-3  # sqrt(0 + eps^2)
    assert loss_fn(specs, flow).item() == pytest.approx(floor, abs=1e-6)
    values = []
    for delta in (0.1, 0.5, 2.0):
        perturbed = [dict(s, offset=s['offset'] + delta) for s in specs]
        values.append(loss_fn(perturbed, flow).item())
    assert values[0] < values[1] < values[2]
    if criterion == 'l1':
        assert values == pytest.approx([0.1, 0.5, 2.0], rel=1e-5)
    else:
        assert values == pytest.approx([(d * d + 1e-6)**0.5 for d in (0.1, 0.5, 2.0)], rel=1e-5)


def test_order_invariant_loss_accepts_either_time_order_per_pixel():
    flow = random_flow(h=8, w=8)
    swapped = flow[:, [2, 3, 0, 1]]  # the same trajectory, traversed the other way
    ordered, invariant = FlowGuidedOffsetLoss(), FlowGuidedOffsetLoss(order_invariant=True)
    reversed_spec = module_spec(flow, 2, offset=flow_to_offsets(swapped, 3, 1, 2))
    assert ordered([reversed_spec], flow).item() > 0.5
    assert invariant([reversed_spec], flow).item() == pytest.approx(0.0, abs=1e-6)
    # per pixel: the left half follows one order, the right half the other
    mixed = flow_to_offsets(flow, 3, 1, 1)
    mixed[..., 4:] = flow_to_offsets(swapped, 3, 1, 1)[..., 4:]
    assert invariant([module_spec(flow, 1, offset=mixed)], flow).item() == pytest.approx(0.0, abs=1e-6)
    # away from both orders it still grows, and it never exceeds the ordered loss
    for delta in (0.5, 2.0):
        spec = module_spec(flow, 1, offset=mixed + delta)
        assert delta * 0.9 < invariant([spec], flow).item() <= ordered([spec], flow).item()


def test_loss_weight_module_weights_and_sum_reduction():
    flow = random_flow(h=8, w=8)
    first = module_spec(flow, 2)
    second = module_spec(flow, 1)
    first['offset'] = first['offset'] + 1.0  # error 1 on the first module, 3 on the second
    second['offset'] = second['offset'] - 3.0
    assert FlowGuidedOffsetLoss()([first, second], flow).item() == pytest.approx((1 + 3) / 2)
    assert FlowGuidedOffsetLoss(loss_weight=0.5)([first, second], flow).item() == pytest.approx(1.0)
    weighted = FlowGuidedOffsetLoss(module_weights=[2.0, 0.0])([first, second], flow)
    assert weighted.item() == pytest.approx(2.0 * 1 / 2)
    total = FlowGuidedOffsetLoss(reduction='sum')([first, second], flow)
    assert total.item() == pytest.approx(1.0 * first['offset'].numel() + 3.0 * second['offset'].numel())


@pytest.mark.parametrize('stride', [1, 2])
def test_motion_threshold_supervises_moving_pixels_only(stride):
    flow = torch.zeros(1, 4, 8, 8)
    flow[:, 2, :, 4:] = 3.0  # right half moves 3 input pixels in the last frame, left half is static
    target = flow_to_offsets(flow, stride=stride)
    half = target.shape[-1] // 2
    wrong_static = target.clone()
    wrong_static[..., :half] += 1.0
    wrong_moving = target.clone()
    wrong_moving[..., half:] += 1.0
    loss_fn = FlowGuidedOffsetLoss(motion_threshold=2.0)
    assert loss_fn([module_spec(flow, stride, offset=wrong_static)], flow).item() == 0.0
    assert loss_fn([module_spec(flow, stride, offset=wrong_moving)], flow).item() == pytest.approx(1.0)
    assert FlowGuidedOffsetLoss(motion_threshold=5.0)([module_spec(flow, stride, offset=wrong_moving)],
                                                      flow).item() == 0.0  # 3 px is below 5: nothing supervised
    assert FlowGuidedOffsetLoss()([module_spec(flow, stride, offset=wrong_static)], flow).item() == pytest.approx(0.5)


def test_size_mismatch_and_bad_options_raise_clear_errors():
    flow = random_flow(h=8, w=8)
    specs = [module_spec(random_flow(h=10, w=8), 2)]
    with pytest.raises(ValueError, match='flow and image sizes differ'):
        FlowGuidedOffsetLoss()(specs, flow)
    with pytest.raises(ValueError, match=r'flow must be \(B, 4, H, W\)'):
        FlowGuidedOffsetLoss()([module_spec(flow, 1)], flow[:, :2])
    with pytest.raises(ValueError, match='module_weights has 2 entries for 1'):
        FlowGuidedOffsetLoss(module_weights=[1, 1])([module_spec(flow, 1)], flow)
    with pytest.raises(ValueError, match='no SVD module'):
        FlowGuidedOffsetLoss()([], flow)
    with pytest.raises(ValueError, match='criterion'):
        FlowGuidedOffsetLoss(criterion='l2')
    with pytest.raises(ValueError, match='reduction'):
        FlowGuidedOffsetLoss(reduction='none')


def test_gradients_reach_the_offset_heads_of_sdnet():
    torch.manual_seed(0)
    net = SDNet('tiny', dcn_backend='torch')
    x = torch.rand(2, 3, 13, 18)
    flow = random_flow(2, 13, 18, scale=6.0)
    _, offsets = net(x, return_offsets=True)
    loss = FlowGuidedOffsetLoss(loss_weight=0.1)(offsets, flow)
    assert loss.item() > 0
    loss.backward()
    for level, svd in net.svd.items():
        assert svd.dcn.conv_offset[-1].weight.grad.abs().sum() > 0, f'offset head of level {level}'
    # once a head is non-zero, the loss also trains the features it predicts from
    net.zero_grad()
    for svd in net.svd.values():
        torch.nn.init.normal_(svd.dcn.conv_offset[-1].weight, std=0.01)
    _, offsets = net(x, return_offsets=True)
    FlowGuidedOffsetLoss()(offsets, flow).backward()
    assert net.conv_first.weight.grad.abs().sum() > 0
    assert net.conv_last.weight.grad is None or net.conv_last.weight.grad.abs().sum() == 0
    # a few optimisation steps on the offset loss alone bring the offsets towards a uniform motion's targets
    flow = torch.tensor([3.0, -2.0, -3.0, 2.0]).view(1, 4, 1, 1).expand(2, 4, 13, 18)
    heads = [p for svd in net.svd.values() for p in svd.dcn.conv_offset[-1].parameters()]
    optimizer = torch.optim.Adam(heads, lr=0.05)
    losses = []
    for _ in range(15):
        optimizer.zero_grad()
        _, offsets = net(x, return_offsets=True)
        loss = FlowGuidedOffsetLoss()(offsets, flow)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0]


def test_flow_to_offsets_dtype_and_device_follow_the_flow():
    flow = random_flow(1, 6, 6).double()
    assert flow_to_offsets(flow, 5, 1, 2).dtype == torch.float64
