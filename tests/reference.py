"""Independent float64 reference for N-d convolution, written from the definition with explicit loops.

It pads with np.pad and walks every output position and kernel tap, so it shares
nothing with xpconv's im2col engine.  Layout: x (N, C, *s), w (O, C // groups, *k).
"""
from __future__ import annotations

import numpy as np


def _out_size(size, k, s, lo, hi, d):
    return (size + lo + hi - d * (k - 1) - 1) // s + 1


def conv_reference(x, w, b, stride, pads, dilation, groups):
    """y[n, o, *j] = b[o] + sum_{c, *t} x_pad[n, g*Cg + c, *(j*stride + t*dilation)] * w[o, c, *t]."""
    x, w = np.asarray(x, np.float64), np.asarray(w, np.float64)
    n, _, *spatial = x.shape
    o, cg, *kernel = w.shape
    og = o // groups
    xpad = np.pad(x, [(0, 0), (0, 0), *pads])
    out = [_out_size(sz, k, s, lo, hi, d)
           for sz, k, s, (lo, hi), d in zip(spatial, kernel, stride, pads, dilation, strict=True)]
    y = np.zeros((n, o, *out))
    for g in range(groups):
        xg, wg = xpad[:, g * cg:(g + 1) * cg], w[g * og:(g + 1) * og]
        for j in np.ndindex(*out):
            for t in np.ndindex(*kernel):
                pos = tuple(ji * s + ti * d for ji, ti, s, d in zip(j, t, stride, dilation, strict=True))
                patch = xg[(slice(None), slice(None), *pos)]                        # (N, Cg)
                y[(slice(None), slice(g * og, (g + 1) * og), *j)] += patch @ wg[(slice(None), slice(None), *t)].T
    if b is not None:
        y += np.asarray(b, np.float64).reshape(1, o, *([1] * len(out)))
    return y


def conv_backward_reference(dy, x, w, stride, pads, dilation, groups):
    """(dx, dw, db) by the chain rule applied to each term of :func:`conv_reference`."""
    dy, x, w = (np.asarray(a, np.float64) for a in (dy, x, w))
    _, _, *spatial = x.shape
    o, cg, *kernel = w.shape
    og = o // groups
    xpad = np.pad(x, [(0, 0), (0, 0), *pads])
    dxpad, dw = np.zeros_like(xpad), np.zeros_like(w)
    for g in range(groups):
        cs, os_ = slice(g * cg, (g + 1) * cg), slice(g * og, (g + 1) * og)
        for j in np.ndindex(*dy.shape[2:]):
            dyj = dy[(slice(None), os_, *j)]                                         # (N, Og)
            for t in np.ndindex(*kernel):
                pos = tuple(ji * s + ti * d for ji, ti, s, d in zip(j, t, stride, dilation, strict=True))
                wt = w[(os_, slice(None), *t)]                                       # (Og, Cg)
                dxpad[(slice(None), cs, *pos)] += dyj @ wt
                dw[(os_, slice(None), *t)] += dyj.T @ xpad[(slice(None), cs, *pos)]
    crop = tuple(slice(lo, lo + sz) for (lo, _), sz in zip(pads, spatial, strict=True))
    return dxpad[(slice(None), slice(None), *crop)], dw, dy.sum(axis=(0, *range(2, dy.ndim)))


def same_pads(kernel, dilation):
    """PyTorch's padding='same' split: the odd extra element goes to the high side."""
    pads = []
    for k, d in zip(kernel, dilation, strict=True):
        total = d * (k - 1)
        pads.append((total // 2, total - total // 2))
    return pads
