"""Each backward decomposition equals PyTorch's own backward, on the configurations models use."""

import pytest

torch = pytest.importorskip("torch")
import torch.nn.functional as F  # noqa: E402
from onnxcam.exporter import decompositions as d  # noqa: E402

aten = torch.ops.aten


def grad_of(forward, x):
    x = x.clone().requires_grad_(True)
    y = forward(x)
    g = torch.randn_like(y, dtype=torch.float64)
    (expected,) = torch.autograd.grad(y, x, g)
    return y, g, expected


@pytest.mark.parametrize("stride,padding,dilation,groups,size", [
    (1, 1, 1, 1, 9), (2, 1, 1, 1, 9), (2, 1, 1, 1, 10), (2, 3, 1, 1, 15), (1, 2, 2, 1, 8), (2, 2, 1, 4, 11),
])
def test_convolution_backward(stride, padding, dilation, groups, size):
    x = torch.randn(2, 8, size, size, dtype=torch.float64)
    w = torch.randn(12, 8 // groups, 3, 3, dtype=torch.float64)
    y, g, expected = grad_of(lambda t: F.conv2d(t, w, None, stride, padding, dilation, groups), x)
    actual, gw, gb = d._convolution_backward(g, x, w, None, [stride] * 2, [padding] * 2, [dilation] * 2, False,
                                             [0, 0], groups, [True, False, False])
    assert gw is None and gb is None
    torch.testing.assert_close(actual, expected, rtol=1e-10, atol=1e-10)


def test_convolution_backward_refuses_parameter_gradients():
    x, w = torch.randn(1, 2, 5, 5), torch.randn(3, 2, 3, 3)
    with pytest.raises(RuntimeError, match="freeze"):
        d._convolution_backward(torch.randn(1, 3, 3, 3), x, w, None, [1, 1], [0, 0], [1, 1], False, [0, 0], 1,
                                [True, True, False])


@pytest.mark.parametrize("kernel,stride,padding,dilation,ceil_mode,size", [
    (3, 2, 1, 1, False, 14), (2, 2, 0, 1, False, 14), (3, 2, 0, 1, True, 14), (3, 1, 1, 1, False, 7),
    (3, 2, 1, 2, False, 15), (2, 2, 0, 1, True, 7),
])
def test_max_pool_backward_is_scatter_free_and_exact(kernel, stride, padding, dilation, ceil_mode, size):
    x = torch.randn(2, 3, size, size, dtype=torch.float64)
    y, indices = F.max_pool2d(x, kernel, stride, padding, dilation, ceil_mode, return_indices=True)
    _, g, expected = grad_of(lambda t: F.max_pool2d(t, kernel, stride, padding, dilation, ceil_mode), x)
    actual = d._max_pool2d_with_indices_backward(g, x, [kernel] * 2, [stride] * 2, [padding] * 2, [dilation] * 2,
                                                 ceil_mode, indices)
    torch.testing.assert_close(actual, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("kernel,stride,padding,ceil_mode,count_include_pad,size", [
    (2, 2, 0, False, True, 14), (3, 2, 1, False, True, 14), (3, 2, 1, False, False, 14), (3, 2, 0, True, True, 14),
    (3, 1, 1, False, False, 6),
])
def test_avg_pool_backward(kernel, stride, padding, ceil_mode, count_include_pad, size):
    x = torch.randn(2, 3, size, size, dtype=torch.float64)
    _, g, expected = grad_of(lambda t: F.avg_pool2d(t, kernel, stride, padding, ceil_mode, count_include_pad), x)
    actual = d._avg_pool2d_backward(g, x, [kernel] * 2, [stride] * 2, [padding] * 2, ceil_mode, count_include_pad,
                                    None)
    torch.testing.assert_close(actual, expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("size_in,size_out", [
    ((7, 7), (1, 1)), ((7, 7), (7, 7)), ((14, 14), (7, 7)), ((10, 13), (3, 4)),
])
def test_adaptive_avg_pool_backward(size_in, size_out):
    x = torch.randn(2, 3, *size_in, dtype=torch.float64)
    _, g, expected = grad_of(lambda t: F.adaptive_avg_pool2d(t, size_out), x)
    torch.testing.assert_close(d._adaptive_avg_pool2d_backward(g, x), expected, rtol=1e-12, atol=1e-12)


def test_relu_backward_is_plain_unless_guided():
    x, g = torch.randn(100, dtype=torch.float64), torch.randn(100, dtype=torch.float64)
    y = F.relu(x)
    torch.testing.assert_close(d._threshold_backward(g, y, 0), aten.threshold_backward(g, y, 0))
    with d.guided_rule():
        guided = d._threshold_backward(g, y, 0)
        guided6 = d._hardtanh_backward(g, x, 0.0, 6.0)
    assert torch.equal(guided, torch.where(x > 0, F.relu(g), 0))
    assert torch.equal(guided6, torch.where((x > 0) & (x < 6), F.relu(g), 0))
    assert (guided < 0).sum() == 0 and (d._threshold_backward(g, y, 0) < 0).sum() > 0



@pytest.mark.parametrize("pad", [(0, 1, 0, 1), (1, 1, 2, 0), (2, -1, 0, 3), (1, 2)])
def test_constant_pad(pad):
    x = torch.randn(2, 3, 6, 7, dtype=torch.float64)
    torch.testing.assert_close(d._constant_pad_nd(x, list(pad), 0.5), F.pad(x, pad, value=0.5))


@pytest.mark.parametrize("mode, align_corners", [("bilinear", False), ("bilinear", True), ("nearest", None),
                                                 ("nearest-exact", None)])
@pytest.mark.parametrize("size", [{"size": (13, 9)}, {"scale_factor": 2}, {"scale_factor": (1.5, 2.5)},
                                  {"size": (5, 7)}, {"size": (2, 3)}])
def test_upsampling_as_matrix_products_equals_interpolate_and_its_backward(mode, align_corners, size):
    x = torch.randn(2, 3, 5, 7, dtype=torch.float64)
    y, g, expected = grad_of(lambda t: F.interpolate(t, mode=mode, align_corners=align_corners, **size), x)
    factor = size.get("scale_factor")
    scales = (factor if isinstance(factor, tuple) else (factor, factor)) if factor else (None, None)
    leaf = x.clone().requires_grad_(True)
    actual_y = d.upsample(leaf, tuple(y.shape[2:]), mode, bool(align_corners), scales)
    (actual,) = torch.autograd.grad(actual_y, leaf, g)
    torch.testing.assert_close(actual_y, y, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(actual, expected, rtol=1e-12, atol=1e-12)
