"""CROWN's backward pass in patch form, for the neurons of a convolutional layer.

A neuron of a convolution at position `q` depends only on the inputs in its
receptive field, and so do the coefficients of its linear bounds on every
earlier tensor. Patch form keeps, for each bounded row, only the window of
coefficients `[Kh, Kw, C]` on that field (auto_LiRPA's `Patches`), where the
dense form (`tfgeom.verify.crown.backward`) carries the whole map `[H, W, C]`: on a
conv(4x4, s2)-conv(4x4, s2) stack the second layer's neurons need 4x4x8
instead of 13x13x8 coefficients on the first layer's output, and 10x10
instead of 28x28 on the input.

A window of a row at target position `q` covers positions
`q * stride - pad + [0, K)` of the current tensor (per spatial axis). Going
back through a convolution `(k, s, p)` the window becomes
`(K - 1) s + k` wide with stride `stride * s` and pad `pad * s + p`, and
the coefficients are the transposed convolution of the window with the
kernel. Element-wise operators (activation relaxations, BatchNorm-like
diagonal maps) multiply the window by the same window of their maps, cut
out of the maps with `tf.image.extract_patches`. Positions of a window that
fall outside the tensor (padding) are zeroed after each convolution, so
they never contribute.

Max-pooling is a convolution-like step: each window entry spreads its
coefficient over the pooling window with the relaxation's selection
weights (the lower bound's for positive coefficients, the upper bound's for
negative ones), an overlap-add done by a transposed convolution with a 0/1
kernel.

Used for chains `Input -> (Conv2D | MaxPooling2D | diagonal affine |
activation)* -> target` on 2-D (`[H, W, C]`) tensors, where every window is
at most half its map; anything else (residual adds, concatenations, dense
layers, depthwise convolutions) takes the dense pass.
"""
from typing import NamedTuple

import numpy as np
import tensorflow as tf

from tfgeom.verify.operators import Activation, Affine, MaxPool


class ConvGeometry(NamedTuple):
    """A 2-D convolution as the patch pass needs it: `kernel [kh, kw, cin, cout]`, `strides`, `pads` (top, left)."""

    kernel: tf.Tensor
    strides: tuple
    pads: tuple


class PoolGeometry(NamedTuple):
    """A 2-D max-pooling as the patch pass needs it: `pool` size, `strides`, `pads` (top, left), `channels`."""

    pool: tuple
    strides: tuple
    pads: tuple
    channels: int

    @property
    def kernel(self):
        """`[ph, pw, C, C k]`: window entry `(di, dj)` of channel `c` (input channel `c k + di pw + dj` of a
        transposed convolution) goes to offset `(di, dj)`, channel `c`; `k = ph pw` (the pool's window order)."""
        ph, pw = self.pool
        k = ph * pw
        kernel = np.zeros((ph, pw, self.channels, self.channels * k), np.float32)
        for c in range(self.channels):
            for di in range(ph):
                for dj in range(pw):
                    kernel[di, dj, c, c * k + di * pw + dj] = 1.0
        return tf.constant(kernel)


def same_pads(in_shape, kernel_size, strides, padding):
    """`(top, left)` padding of a Keras/TF convolution (`"same"` pads `total // 2` before)."""
    if padding == "valid":
        return 0, 0
    pads = []
    for size, k, s in zip(in_shape[:2], kernel_size, strides):
        out = -(-size // s)
        pads.append(max((out - 1) * s + k - size, 0) // 2)
    return tuple(pads)


class Window(NamedTuple):
    """Where each row's coefficients sit on the current tensor: size `(Kh, Kw)`, `stride`, `pad` per axis."""

    size: tuple
    stride: tuple
    pad: tuple

    def through(self, conv):
        """The window on a convolution's (or pooling's) input."""
        kh, kw = conv.pool if isinstance(conv, PoolGeometry) else (int(conv.kernel.shape[0]), int(conv.kernel.shape[1]))
        (sh, sw), (ph, pw) = conv.strides, conv.pads
        return Window(((self.size[0] - 1) * sh + kh, (self.size[1] - 1) * sw + kw),
                      (self.stride[0] * sh, self.stride[1] * sw),
                      (self.pad[0] * sh + ph, self.pad[1] * sw + pw))


def _geometry(node):
    return getattr(node, "conv", None)


def _elementwise(node):
    return isinstance(node, Activation) or (isinstance(node, Affine) and node.diagonal and len(node.shape) == 3
                                            and _geometry(node) is None)


def row_size(graph, target):
    """Coefficients per row of the patch pass (its largest window), or None when it does not apply or pay.

    It applies when every node from `target` back to the input has one input
    and is a 2-D convolution (with a `conv` geometry), an element-wise node
    of the same `[H, W, C]` shape or the input; it pays when every window is
    at most half its tensor.
    """
    nodes = graph.nodes
    path, n = [], target
    while n != 0:
        node = nodes[n]
        if len(node.inputs) != 1 or len(node.shape) != 3:
            return None
        if _geometry(node) is None and not _elementwise(node):
            return None
        if _elementwise(node) and nodes[node.inputs[0]].shape != node.shape:
            return None
        path.append(n)
        n = node.inputs[0]
    if len(nodes[0].shape) != 3 or not any(_geometry(nodes[i]) is not None for i in path):
        return None
    window = Window((1, 1), (1, 1), (0, 0))
    largest = nodes[target].shape[2]
    for i in path:
        conv = _geometry(nodes[i])
        if conv is not None:
            window = window.through(conv)
            h, w, c = nodes[nodes[i].inputs[0]].shape
            if window.size[0] * window.size[1] * 2 > h * w:
                return None
            largest = max(largest, window.size[0] * window.size[1] * c)
    return largest


def _cut(v, window, positions, out_hw):
    """The windows of map `v [B, H, W, C]` (B = 1 or N) at the rows' target positions: `[B, S, Kh, Kw, C]`.

    `positions [S]` are flat indices into the target's `out_hw` grid."""
    (kh, kw), (sh, sw), (ph, pw) = window
    h, w = int(v.shape[1]), int(v.shape[2])
    bottom = max(0, (out_hw[0] - 1) * sh - ph + kh - h)
    right = max(0, (out_hw[1] - 1) * sw - pw + kw - w)
    # negative pads (a window starting inside the map) crop instead
    v = v[:, max(0, -ph):, max(0, -pw):]
    v = tf.pad(v, [[0, 0], [max(0, ph), bottom], [max(0, pw), right], [0, 0]])
    cut = tf.image.extract_patches(v, [1, kh, kw, 1], [1, sh, sw, 1], [1, 1, 1, 1], "VALID")
    cut = cut[:, :out_hw[0], :out_hw[1]]
    b = tf.shape(cut)[0]
    flat = tf.reshape(cut, [b, out_hw[0] * out_hw[1], -1])
    picked = tf.gather(flat, positions, axis=1)
    return tf.reshape(picked, [b, -1, kh, kw, int(v.shape[3])])


def _conv_back(a, conv, window):
    """Coefficients on a convolution's input from those on its output (`a [N, S, Kh, Kw, cout]`)."""
    nb, s = tf.shape(a)[0], tf.shape(a)[1]
    kernel = conv.kernel
    cin = int(kernel.shape[2])
    new = window.through(conv)
    flat = tf.reshape(a, [-1, *a.shape[2:]])
    out = tf.nn.conv2d_transpose(flat, kernel, [tf.shape(flat)[0], new.size[0], new.size[1], cin],
                                 list(conv.strides), "VALID")
    return tf.reshape(out, [nb, s, new.size[0], new.size[1], cin]), new


def _pool_entries(node, a, const, l, u, cut):
    """`(const, coefficients of the window entries [N, S, Kh, Kw, C k])` of a max-pooling's relaxation."""
    select, select_u, bu = node.relaxation(l, u)
    k = int(select.shape[-1])
    grid = [-1, *node.shape[:2], node.shape[2] * k]
    ap, an = tf.maximum(a, 0.0), tf.minimum(a, 0.0)
    const = const + tf.reduce_sum(an * cut(tf.reshape(bu, [-1, *node.shape])), [2, 3, 4])
    return const, tf.repeat(ap, k, -1) * cut(tf.reshape(select, grid)) + tf.repeat(an, k, -1) * cut(
        tf.reshape(select_u, grid))


def _fused(step):
    """`step` XLA-compiled: it gathers and multiplies tensors `S` times larger than the maps, which XLA fuses
    (the passes around it stay TensorFlow graphs: XLA's CPU transposed convolutions are slower)."""
    return tf.function(step, jit_compile=True, autograph=False)


def _pool_back(entries, pool, window):
    """Coefficients on a max-pooling's input from its window entries `[N, S, Kh, Kw, C k]`: a plain
    rearrangement when the windows tile the input (stride = pool size), else an overlap-add."""
    if tuple(pool.strides) != tuple(pool.pool):
        return _conv_back(entries, pool, window)
    (ph, pw), c = pool.pool, pool.channels
    nb, s = tf.shape(entries)[0], tf.shape(entries)[1]
    kh, kw = window.size
    tiles = tf.reshape(entries, [nb, s, kh, kw, c, ph, pw])
    tiles = tf.transpose(tiles, [0, 1, 2, 5, 3, 6, 4])  # [N, S, Kh, ph, Kw, pw, C]
    return tf.reshape(tiles, [nb, s, kh * ph, kw * pw, c]), window.through(pool)


def backward(graph, target, rows, signs, bounds, input_set):
    """Lower bounds of `sign * y_target[row]` over the input set, by CROWN's backward pass in patch form.

    Args:
        rows: `[S]` flat indices into the target node's output.
        signs: `[S]` +1 (lower bound) or -1 (minus the upper bound).
        bounds: `(l, u)` of every node before `target`.

    Returns:
        `[N, S]` lower bounds.
    """
    nodes = graph.nodes
    out_h, out_w, channels = nodes[target].shape
    nb = tf.shape(input_set.center)[0]
    positions = rows // channels
    a = tf.one_hot(rows % channels, channels) * signs[:, None]
    a = tf.broadcast_to(a[None, :, None, None, :], [nb, tf.shape(rows)[0], 1, 1, channels])
    const = tf.zeros([nb, tf.shape(rows)[0]])
    window = Window((1, 1), (1, 1), (0, 0))
    n = target

    def cut(v):
        return _cut(v, window, positions, (out_h, out_w))

    def dot(coeff, v):
        return tf.reduce_sum(coeff * cut(v), [2, 3, 4])

    while n != 0:
        node = nodes[n]
        parent = node.inputs[0]
        conv = _geometry(node)
        if isinstance(node, MaxPool):
            const, entries = _fused(lambda a, const, l, u: _pool_entries(node, a, const, l, u, cut))(
                a, const, *bounds[parent])
            a, window = _pool_back(entries, conv, window)
            h, w = nodes[parent].shape[:2]
            a = a * cut(tf.ones([1, h, w, 1]))
        elif conv is not None:
            const = const + tf.reduce_sum(a * conv_bias(node), [2, 3, 4])
            a, window = _conv_back(a, conv, window)
            h, w = nodes[parent].shape[:2]
            a = a * cut(tf.ones([1, h, w, 1]))  # padding positions carry no coefficient
        elif isinstance(node, Activation):
            const, a = _fused(lambda a, const, l, u: node.backward_relaxed(
                a, const, [cut(r) for r in node.relaxation(l, u)]))(a, const, *bounds[parent])
        else:  # diagonal affine: y = scale * x + bias
            scale = node.linear(tf.ones([1, *node.shape]))
            const = const + dot(a, node.bias[None])
            a = a * cut(scale)
        n = parent
    return const + input_set.concretize_with(a, dot)


def conv_bias(node):
    """The bias of a convolution node per channel (`[C]`; its map is constant over positions)."""
    return node.bias[0, 0] if len(node.bias.shape) == 3 else node.bias


def compiled(graph, target, kind, jit=True):
    """`backward` for one graph, target and input-set kind, compiled once and cached on the graph."""
    return graph.program(
        ("patches", target, kind),
        lambda rows, signs, bounds, input_set: backward(graph, target, rows, signs, bounds, input_set), jit=jit)

