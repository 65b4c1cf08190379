"""Independent float64 references: explicit loops in NumPy, no PyTorch convolution."""

import numpy as np


def depthwise_conv2d_loops(x, w, b=None, stride=(1, 1), padding=(0, 0), dilation=(1, 1)):
    """Depthwise convolution by its definition, in float64.

    out[n, o, p, q] = b[o] + sum_{i,j} w[o, 0, i, j] * xpad[n, o // m, p*sh + i*dh, q*sw + j*dw]
    """
    x = np.asarray(x, dtype=np.float64)
    w = np.asarray(w, dtype=np.float64)
    n, c, h, wd = x.shape
    oc, _, kh, kw = w.shape
    m = oc // c
    (sh, sw), (ph, pw), (dh, dw) = stride, padding, dilation
    xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    oh = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    ow = (wd + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    out = np.zeros((n, oc, oh, ow))
    for o in range(oc):
        for p in range(oh):
            for q in range(ow):
                for i in range(kh):
                    for j in range(kw):
                        out[:, o, p, q] += w[o, 0, i, j] * xp[:, o // m, p * sh + i * dh, q * sw + j * dw]
        if b is not None:
            out[:, o] += float(b[o])
    return out
