"""Fused per-pixel loops for the CPU path, compiled by numba for the host CPU.

Each kernel replaces a chain of OpenCV/numpy passes whose cost on a CPU is memory traffic, not
arithmetic: the chain wrote and re-read a full-size temporary per step, a kernel reads its inputs once
and keeps its intermediates in registers or small per-tile buffers (L1-sized). They release the GIL, so the node's
executor keeps receiving while a frame is post-processed.

``fastmath`` is a subset on purpose: contraction and reassociation let LLVM vectorise, while ``nnan`` and
``ninf`` stay off so that comparisons keep IEEE semantics (a NaN logit never wins the arg-max).

Kernels are compiled when a ``SegmentationPipeline`` is built (``compile_for``; about a second each the first
time), not on its first frame, and cached on disk next to this file, or in numba's user cache directory
where the package folder is read-only.
"""
from __future__ import annotations

import functools

import numpy as np
from numba import njit, types
from numba.extending import intrinsic

_FASTMATH = {"contract", "arcp", "nsz", "afn", "reassoc"}
_TILE = 2048  # pixels per tile: K planes of it plus the running max/sum/arg-max stay in L1/L2

# exp(x) for x ≤ 0: x = n·ln2 + r with |r| ≤ ln2/2, exp(r) by its degree-6 Taylor polynomial (relative error
# < 1.3e-7 on that interval), 2^n written into a float's exponent bits. x is clamped at -87 so 2^n stays a normal
# float; exp(-87) ≈ 1.6e-38 is 0 for our sums. One float32 ln2 (1.9e-9 off) costs a relative error of n · 1.9e-9:
# below 2e-8 for the terms that weigh in a sum (n ≤ 8). A hi/lo split of ln2 would not survive ``reassoc`` anyway
# (LLVM folds it back into this one constant).
_LN2 = np.float32(0.6931471805599453)
_LOG2E = np.float32(1.4426950408889634)
_EXP_MIN = np.float32(-87.0)


# Class counts up to which ``argmax_softmax`` runs the per-pixel kernels of ``unrolled_argmax`` (LLVM unrolls
# their class loops and vectorises across pixels): 0.46× (labels) and 0.56× (labels + confidence, both kernels at
# 512 bits) the time of the tiled kernel at 9 classes. Past these (11 classes with the exps, 40 without) LLVM stops
# unrolling and the per-pixel loop runs scalar, 6-8× slower than the tiled kernel (measured on x86-64 with
# AVX-512, numba 0.68).
UNROLL_LABELS = 20
UNROLL_CONFIDENCE = 10


def argmax_softmax(logits, labels, confidence) -> None:
    """K×N float32 logits → labels[N] (arg-max, ties to the lowest id) and confidence[N] (max softmax).

    Either output may be an empty array, and is then not computed (labels-only skips every exp). NaN logits
    (a broken network) are ignored; a pixel whose logits are all NaN gets label 0, confidence 0. Up to
    ``UNROLL_LABELS`` / ``UNROLL_CONFIDENCE`` classes the kernels of ``unrolled_argmax``, else the tiled one.
    """
    k_classes = logits.shape[0]
    want_conf = confidence.size > 0
    if k_classes <= (UNROLL_CONFIDENCE if want_conf else UNROLL_LABELS):
        labels_only, with_confidence = unrolled_argmax(k_classes)
        if not want_conf:
            if labels.size:
                labels_only(logits, labels)
            return
        with_confidence(logits, labels if labels.size else np.empty(logits.shape[1], np.uint8), confidence)
    else:
        argmax_softmax_tiled(logits, labels, confidence)


@intrinsic
def _int_bits_as_float(typingctx, bits):  # pragma: no cover - compiled
    """An int32's bits read as a float32 (2^n from the exponent field), a register move in the vector code."""
    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], context.get_value_type(types.float32))
    return types.float32(types.int32), codegen


@intrinsic
def _full_width_vectors(typingctx):  # pragma: no cover - compiled
    """Let LLVM's loop vectoriser use 512-bit vectors in the kernel that calls this.

    On x86 CPUs with AVX-512 LLVM vectorises at 256 bits by default (the "prefer-256-bit" tuning, against the clock
    drops of early AVX-512 parts); the function attribute "prefer-vector-width"="512" lifts that for one function.
    The exp-bound arg-max kernels run in 0.68× (per pixel) and 0.78× (tiled) the time with it on this machine
    (Emerald Rapids); the memory-bound kernels gain nothing, so they keep the default. CPUs without AVX-512 and
    other targets ignore the attribute. llvmlite's ``FunctionAttributes`` only admits enum attributes, so this
    string attribute goes into the set underneath; if a later llvmlite stores them otherwise, nothing is added
    and the kernel compiles at the default width.
    """
    def codegen(context, builder, signature, args):
        try:
            set.add(builder.function.attributes, '"prefer-vector-width"="512"')
        except TypeError:
            pass
        return context.get_dummy_value()
    return types.none(), codegen


@njit(fastmath=_FASTMATH, nogil=True, cache=True, boundscheck=False, inline="always")
def _exp_negative(d):  # pragma: no cover - compiled
    """exp(d) for d ≤ 0 (see the constants above); NaN counts as −87, a weight of ≈ 0."""
    d = d if d > _EXP_MIN else _EXP_MIN
    nn = np.int32(d * _LOG2E - np.float32(0.5))  # round(d·log2 e): d ≤ 0, truncation
    nf = np.float32(nn)
    r = d - nf * _LN2
    one = np.float32(1.0)
    r2 = r * r  # Estrin's scheme: a shorter dependency chain than Horner's, same polynomial
    poly = (one + r) + r2 * ((np.float32(1 / 2) + r * np.float32(1 / 6)) + r2 * (
        (np.float32(1 / 24) + r * np.float32(1 / 120)) + r2 * np.float32(1 / 720)))
    return poly * _int_bits_as_float((nn + np.int32(127)) << np.int32(23))


@functools.cache
def unrolled_argmax(k_classes: int):
    """(labels_only(logits, labels), with_confidence(logits, labels, confidence)) compiled for exactly
    ``k_classes`` classes: the class count is a constant of the compiled code, so LLVM unrolls the class loops and
    each vector of pixels keeps its running max, arg-max and sum in registers, where the tiled kernel stores and
    reloads them per class. Compiled once per class count and cached on disk (numba keys the cache on it)."""
    K = int(k_classes)

    @njit(fastmath=_FASTMATH, nogil=True, cache=True, boundscheck=False, inline="always")
    def leader(logits, p):  # pragma: no cover - compiled
        """Pixel p's largest logit and its class: ties keep the lower id; a NaN never wins, a NaN leader loses."""
        best = logits[0, p]
        arg = np.int32(0)
        for k in range(1, K):
            x = logits[k, p]
            wins = x > best or (best != best and x == x)
            best = x if wins else best
            arg = np.int32(k) if wins else arg
        return best, arg

    @njit(fastmath=_FASTMATH, nogil=True, cache=True, boundscheck=False)
    def labels_only(logits, labels):  # pragma: no cover - compiled
        for p in range(logits.shape[1]):
            labels[p] = leader(logits, p)[1]

    # error_model="numpy": 1/x without Python's zero-division check, whose branch would stop the vectoriser
    @njit(fastmath=_FASTMATH, nogil=True, cache=True, boundscheck=False, error_model="numpy")
    def with_confidence(logits, labels, confidence):  # pragma: no cover - compiled
        _full_width_vectors()
        one = np.float32(1.0)
        for p in range(logits.shape[1]):
            best, arg = leader(logits, p)
            total = np.float32(0.0)  # two passes over the pixel's logits, the second from L1: no rescaling
            for k in range(K):
                total += _exp_negative(logits[k, p] - best)
            c = one / total  # total ≥ 1: the leader's own term is exp(0)
            c = c if c < one else one
            confidence[p] = c if best == best else np.float32(0.0)  # all-NaN pixel: no confidence
            labels[p] = arg

    return labels_only, with_confidence


# error_model="numpy": 1/x unchecked, as in with_confidence (0.91× the time at 15 classes)
@njit(fastmath=_FASTMATH, nogil=True, cache=True, boundscheck=False, error_model="numpy")
def argmax_softmax_tiled(logits, labels, confidence):  # pragma: no cover - compiled
    """``argmax_softmax`` for any class count, tile by tile.

    Confidence = 1 / Σ_k exp(l_k − max_k l), exact for any logit magnitude (no overflow), in one pass over
    the K planes with the running max (the "online softmax"): when a class takes the lead, the sum so far
    is rescaled by exp(old max − new max), so each logit costs one exp of a value ≤ 0 and the first none.
    """
    _full_width_vectors()
    k_classes, n = logits.shape
    want_labels = labels.size > 0
    want_conf = confidence.size > 0
    best = np.empty(_TILE, np.float32)
    arg = np.empty(_TILE, np.int32)
    total = np.empty(_TILE, np.float32)
    one = np.float32(1.0)
    for start in range(0, n, _TILE):
        m = min(_TILE, n - start)
        row = logits[0, start:start + m]
        for p in range(m):
            best[p] = row[p]
            arg[p] = 0
            total[p] = one  # exp(l_0 − l_0); an all-NaN start is rescaled to ≈ 0 by the first valid leader
        for k in range(1, k_classes):
            row = logits[k, start:start + m]
            kk = np.int32(k)
            if not want_conf:
                for p in range(m):
                    # strictly greater: ties keep the lower id; a NaN never wins, and a NaN best so far loses
                    wins = row[p] > best[p] or (best[p] != best[p] and row[p] == row[p])
                    best[p] = row[p] if wins else best[p]
                    arg[p] = kk if wins else arg[p]
                continue
            for p in range(m):
                x = row[p]
                b = best[p]
                wins = x > b or (b != b and x == x)  # as above
                d = b - x if wins else x - b  # ≤ 0; NaN when either is NaN, clamped below to a ≈ 0 weight
                e = _exp_negative(d)
                t = total[p]
                total[p] = t * e + one if wins else t + e  # a new leader: the old sum in its units, plus itself
                best[p] = x if wins else b
                arg[p] = kk if wins else arg[p]
        if want_conf:
            out = confidence[start:start + m]
            for p in range(m):
                c = one / total[p]  # total ≥ 1: the leader's own term is exp(0)
                c = c if c < one else one
                out[p] = c if best[p] == best[p] else np.float32(0.0)  # all-NaN pixel: no confidence
        if want_labels:
            out_l = labels[start:start + m]
            for p in range(m):
                out_l[p] = arg[p]


@njit(fastmath=_FASTMATH, nogil=True, cache=True, boundscheck=False)
def hwc_to_chw(image, scale, offset, out):  # pragma: no cover - compiled
    """h×w×3 uint8 → 3×h×w float32, x · scale[c] + offset[c] per channel, in one pass."""
    h, w, _ = image.shape
    src = image.reshape(h * w * 3)
    o0, o1, o2 = out[0].reshape(h * w), out[1].reshape(h * w), out[2].reshape(h * w)
    s0, s1, s2 = scale[0], scale[1], scale[2]
    b0, b1, b2 = offset[0], offset[1], offset[2]
    for i in range(h * w):
        o0[i] = np.float32(src[3 * i]) * s0 + b0
        o1[i] = np.float32(src[3 * i + 1]) * s1 + b1
        o2[i] = np.float32(src[3 * i + 2]) * s2 + b2


# Horizontal factors ``resize_to_chw`` handles: 1280 → 640, 1920 → 640, 2560 → 640 and the same width
RESIZE_COLUMN_FACTORS = (1, 2, 3, 4)


@njit(fastmath=_FASTMATH, nogil=True, cache=True, boundscheck=False)
def resize_to_chw(image, rows0, rows1, row_weights, factor, scale, offset, out, top):  # pragma: no cover - compiled
    """h×w×3 uint8 → rows ``top``.. of a 3×H×W float32 array: bilinear resize, then x · scale[c] + offset[c].

    cv2.resize's INTER_LINEAR pixel centres, done in float: output row i blends source rows ``rows0[i]`` and
    ``rows1[i]`` with weight ``row_weights[i]`` on the second; output column x samples source x' = factor·x +
    (factor − 1)/2, a pixel centre for odd factors and the midpoint of two for even ones. Each factor has its own
    loop with constant strides, which LLVM vectorises; a per-column tap table would need a gather per sample.
    """
    src_w = image.shape[1]
    width = out.shape[2]
    blended = np.empty(src_w * 3, np.float32)
    half = np.float32(0.5)
    s0, s1, s2 = scale[0], scale[1], scale[2]
    b0, b1, b2 = offset[0], offset[1], offset[2]
    for i in range(rows0.size):
        r0 = image[rows0[i]].reshape(src_w * 3)
        r1 = image[rows1[i]].reshape(src_w * 3)
        b = row_weights[i]
        a = np.float32(1.0) - b
        for j in range(src_w * 3):
            blended[j] = np.float32(r0[j]) * a + np.float32(r1[j]) * b
        o0, o1, o2 = out[0, top + i], out[1, top + i], out[2, top + i]
        if factor == 1:
            for x in range(width):
                o0[x] = blended[3 * x] * s0 + b0
                o1[x] = blended[3 * x + 1] * s1 + b1
                o2[x] = blended[3 * x + 2] * s2 + b2
        elif factor == 2:
            for x in range(width):
                o0[x] = (blended[6 * x] + blended[6 * x + 3]) * half * s0 + b0
                o1[x] = (blended[6 * x + 1] + blended[6 * x + 4]) * half * s1 + b1
                o2[x] = (blended[6 * x + 2] + blended[6 * x + 5]) * half * s2 + b2
        elif factor == 3:
            for x in range(width):
                o0[x] = blended[9 * x + 3] * s0 + b0
                o1[x] = blended[9 * x + 4] * s1 + b1
                o2[x] = blended[9 * x + 5] * s2 + b2
        else:
            for x in range(width):
                o0[x] = (blended[12 * x + 3] + blended[12 * x + 6]) * half * s0 + b0
                o1[x] = (blended[12 * x + 4] + blended[12 * x + 7]) * half * s1 + b1
                o2[x] = (blended[12 * x + 5] + blended[12 * x + 8]) * half * s2 + b2


@njit(fastmath=_FASTMATH, nogil=True, cache=True, boundscheck=False)
def upsample_clipped(small, rows0, rows1, row_weights, factor, top, out):  # pragma: no cover - compiled
    """Rows ``top``.. of an h×w float32 image → H×(factor·w) float32, bilinear at cv2.resize's pixel centres
    (clamped at the edges), each value clipped to ≤ 1 (bilinear weights may round a hair above it).

    Output row i blends rows ``top + rows0[i]`` and ``top + rows1[i]``; output column factor·m + r samples
    m + (r + 0.5)/factor − 0.5, i.e. fixed weights per phase r, each phase a loop with constant strides.
    """
    w = out.shape[1] // factor
    padded = np.empty(w + 2, np.float32)  # the blended row with its edge pixels repeated: cv2's clamping
    one = np.float32(1.0)
    for i in range(rows0.size):
        r0 = small[top + rows0[i]]
        r1 = small[top + rows1[i]]
        b = row_weights[i]
        a = one - b
        for j in range(w):
            padded[j + 1] = r0[j] * a + r1[j] * b
        padded[0] = padded[1]
        padded[w + 1] = padded[w]
        o = out[i]
        if factor == 1:
            for m in range(w):
                o[m] = min(padded[m + 1], one)
        elif factor == 2:
            for m in range(w):
                o[2 * m] = min(np.float32(0.25) * padded[m] + np.float32(0.75) * padded[m + 1], one)
                o[2 * m + 1] = min(np.float32(0.75) * padded[m + 1] + np.float32(0.25) * padded[m + 2], one)
        elif factor == 3:
            for m in range(w):
                o[3 * m] = min(np.float32(1 / 3) * padded[m] + np.float32(2 / 3) * padded[m + 1], one)
                o[3 * m + 1] = min(padded[m + 1], one)
                o[3 * m + 2] = min(np.float32(2 / 3) * padded[m + 1] + np.float32(1 / 3) * padded[m + 2], one)
        else:
            for m in range(w):
                o[4 * m] = min(np.float32(0.375) * padded[m] + np.float32(0.625) * padded[m + 1], one)
                o[4 * m + 1] = min(np.float32(0.125) * padded[m] + np.float32(0.875) * padded[m + 1], one)
                o[4 * m + 2] = min(np.float32(0.875) * padded[m + 1] + np.float32(0.125) * padded[m + 2], one)
                o[4 * m + 3] = min(np.float32(0.625) * padded[m + 1] + np.float32(0.375) * padded[m + 2], one)


@njit(nogil=True, cache=True, boundscheck=False)
def two_order_statistics(image, step, rank_lo, rank_hi):  # pragma: no cover - compiled
    """The ``rank_lo``-th and ``rank_hi``-th smallest (0-based) of ``image[::step, ::step]``, an 8/16-bit image,
    read off a histogram over the sample's own [min, max]: two passes over the sample, no copy, no sort."""
    h, w = image.shape
    lo = image[0, 0]
    hi = lo
    for y in range(0, h, step):
        for x in range(0, w, step):
            v = image[y, x]
            lo = min(lo, v)
            hi = max(hi, v)
    counts = np.zeros(np.int64(hi) - np.int64(lo) + 1, np.int64)
    for y in range(0, h, step):
        for x in range(0, w, step):
            counts[np.int64(image[y, x]) - np.int64(lo)] += 1
    found_lo = found_hi = np.int64(lo)
    seen = np.int64(0)  # samples below the current value: the k-th smallest is the first value with seen + count > k
    for i in range(counts.size):
        if seen <= rank_lo < seen + counts[i]:
            found_lo = np.int64(lo) + i
        if seen <= rank_hi < seen + counts[i]:
            found_hi = np.int64(lo) + i
            break
        seen += counts[i]
    return found_lo, found_hi


@njit(fastmath=_FASTMATH, nogil=True, cache=True, boundscheck=False)
def scale_clip(src, a, b, lo, hi, out):  # pragma: no cover - compiled
    """out = clip(src · a + b, lo, hi) as float32 over same-shaped C-contiguous arrays, in one pass.

    A non-finite float source value is invalid and comes out as ``lo`` (integer sources are always finite).
    """
    s = src.reshape(src.size)
    o = out.reshape(out.size)
    a, b, lo, hi = np.float32(a), np.float32(b), np.float32(lo), np.float32(hi)
    for i in range(o.size):
        x = s[i]
        v = np.float32(x) * a + b
        v = v if np.isfinite(x) else lo
        o[i] = min(max(v, lo), hi)


@njit(fastmath=_FASTMATH, nogil=True, cache=True, boundscheck=False, inline="always")
def _blend(colour, rgb, alpha, out):  # pragma: no cover - compiled
    """out = round(alpha · colour + (1 − alpha) · rgb) over flat uint8 arrays, half to even as cv2.addWeighted."""
    a = np.float32(alpha)
    b = np.float32(1.0) - a
    for i in range(out.size):
        out[i] = np.uint8(np.rint(np.float32(colour[i]) * a + np.float32(rgb[i]) * b))  # a convex blend: in [0, 255]


@njit(fastmath=_FASTMATH, nogil=True, cache=True, boundscheck=False)
def blend(colour, rgb, alpha, out):  # pragma: no cover - compiled
    """h×w×3 uint8 images: out = round(alpha · colour + (1 − alpha) · rgb)."""
    _blend(colour.reshape(colour.size), rgb.reshape(rgb.size), alpha, out.reshape(out.size))


@njit(fastmath=_FASTMATH, nogil=True, cache=True, boundscheck=False)
def expand_labels(small, rows, cols, factor, lut, rgb, alpha, labels, colour, overlay):  # pragma: no cover - compiled
    """Network-resolution labels → RGB-resolution labels, palette colour and overlay, in one pass.

    Output pixel (y, x) takes ``small[rows[y], cols[x]]`` (nearest neighbour); ``lut`` is a
    (≥ max label + 1)×3 uint8 table; overlay blends the colour over ``rgb`` with weight ``alpha``.
    Any of labels / colour / overlay may be empty and is then not written. Output rows that take the
    same source row as the row before are copied, not looked up again. ``factor`` > 0 says that
    cols[x] = cols[0] + x // factor: each source label is then coloured once and repeated, with no
    per-pixel index lookups.
    """
    h = rows.size
    w = cols.size
    want_labels, want_colour, want_overlay = labels.size > 0, colour.size > 0, overlay.size > 0
    lab_row = np.empty(w, small.dtype)
    col_row = np.empty(w * 3, np.uint8)
    c0 = cols[0] if w > 0 else 0
    n_src = w // factor if factor > 0 else 0
    # at 2×, four source labels colour 24 bytes of the row, three 64-bit words; label s of the four (bytes 6s..6s+5,
    # r g b r g b) reaches into word s as its first label and into word s − 1 as its second. part[k, j, c]: the
    # bytes of class c in word k as its label j, zero elsewhere; built through a byte view, so right for either
    # byte order
    words = col_row[:(w * 3) // 8 * 8].view(np.uint64)
    n_lut = lut.shape[0] if factor == 2 and (want_colour or want_overlay) else 0
    part = np.zeros((3, 2, n_lut), np.uint64)
    pattern = np.zeros(24, np.uint8)
    as_words = pattern.view(np.uint64)
    for c in range(n_lut):
        for s in range(4):
            pattern[:] = 0
            for k in range(6):
                pattern[6 * s + k] = lut[c, k % 3]
            if s <= 2:
                part[s, 0, c] = as_words[s]
            if s >= 1:
                part[s - 1, 1, c] = as_words[s - 1]
    prev = -1
    for y in range(h):
        sy = rows[y]
        if sy != prev:
            row = small[sy]
            # the run of source columns as a view of its own: indexed from 0, LLVM can drop numba's negative-index
            # wrap-around test per element (not with an offset index, which kept these loops scalar, 16× slower)
            src = row[c0:c0 + n_src]
            if factor == 1:
                for x in range(w):
                    lab_row[x] = src[x]
            elif factor == 2:
                for m in range(n_src):
                    v = src[m]
                    lab_row[2 * m] = v
                    lab_row[2 * m + 1] = v
            elif factor > 2:
                for m in range(n_src):
                    v = src[m]
                    for k in range(factor):
                        lab_row[factor * m + k] = v
            else:
                for x in range(w):
                    lab_row[x] = row[cols[x]]
            if want_colour or want_overlay:
                if factor == 2:
                    # four source labels → eight output pixels → 24 bytes → three 64-bit stores from the tables
                    for q in range(n_src // 4):
                        m = 4 * q
                        words[3 * q] = part[0, 0, src[m]] | part[0, 1, src[m + 1]]
                        words[3 * q + 1] = part[1, 0, src[m + 1]] | part[1, 1, src[m + 2]]
                        words[3 * q + 2] = part[2, 0, src[m + 2]] | part[2, 1, src[m + 3]]
                    for m in range(4 * (n_src // 4), n_src):  # a source width not a multiple of 4: the rest
                        c = src[m]
                        for k in range(6):
                            col_row[6 * m + k] = lut[c, k % 3]
                else:
                    for x in range(w):
                        c = lab_row[x]
                        col_row[3 * x] = lut[c, 0]
                        col_row[3 * x + 1] = lut[c, 1]
                        col_row[3 * x + 2] = lut[c, 2]
            prev = sy
        if want_labels:
            dst_l = labels[y]
            for x in range(w):
                dst_l[x] = lab_row[x]
        if want_colour:
            dst_c = colour[y].reshape(w * 3)
            for i in range(w * 3):
                dst_c[i] = col_row[i]
        if want_overlay:
            _blend(col_row, rgb[y].reshape(w * 3), alpha, overlay[y].reshape(w * 3))


@njit(nogil=True, cache=True, boundscheck=False, error_model="numpy", inline="always")
def _radtan_pixel(X, Y, Z, k, fx, fy, cx, cy):  # pragma: no cover - compiled
    """One camera-frame point (Z > 0) → pixel (u, v), float64, through OpenCV's radial-tangential model (``k``: the
    tuple k1 k2 p1 p2 k3 k4 k5 k6, read out of the array once by the caller, before its loop). Inlined into numba's
    IR, so each caller's fastmath flags apply to these operations."""
    k1, k2, p1, p2, k3, k4, k5, k6 = k
    iz = 1.0 / np.float64(Z)
    x = np.float64(X) * iz
    y = np.float64(Y) * iz
    r2 = x * x + y * y
    radial = (1.0 + r2 * (k1 + r2 * (k2 + r2 * k3))) / (1.0 + r2 * (k4 + r2 * (k5 + r2 * k6)))
    xy2 = 2.0 * x * y
    xd = x * radial + p1 * xy2 + p2 * (r2 + 2.0 * x * x)
    yd = y * radial + p1 * (r2 + 2.0 * y * y) + p2 * xy2
    return fx * xd + cx, fy * yd + cy


# error_model="numpy": the two divisions without Python's zero-division check, whose branch kept the loop scalar
# (4.2 → 1.0 ms for 848×480 points); callers pass Z > 0 only
@njit(fastmath=_FASTMATH, nogil=True, cache=True, boundscheck=False, error_model="numpy")
def project_radtan(X, Y, Z, coeffs, fx, fy, cx, cy, u, v):  # pragma: no cover - compiled
    """Camera-frame points (Z > 0) → pixel (u, v) through OpenCV's radial-tangential lens model, one pass.

    ``coeffs``: k1 k2 p1 p2 k3 k4 k5 k6 (float64; plumb_bob leaves k4..k6 at 0). Points float32 or float64;
    arithmetic and ``u`` / ``v`` float64.
    """
    k = (coeffs[0], coeffs[1], coeffs[2], coeffs[3], coeffs[4], coeffs[5], coeffs[6], coeffs[7])
    for i in range(X.size):
        u[i], v[i] = _radtan_pixel(X[i], Y[i], Z[i], k, fx, fy, cx, cy)


_UNDISTORT_BLOCK = 512  # pixels iterated together: their x, y, x0, y0 stay in L1 through all the iterations


# error_model="numpy": the divisions without a zero-division branch. The iterations run over blocks of pixels
# (innermost loop = pixels, which LLVM vectorises), each pixel the same fixed number of times: a per-pixel early exit
# would keep it scalar.
@njit(fastmath=_FASTMATH, nogil=True, cache=True, boundscheck=False, error_model="numpy")
def undistort_radtan(u, v, coeffs, fx, fy, cx, cy, iterations, x_out, y_out):  # pragma: no cover - compiled
    """Pixel (u, v) → normalised undistorted (x, y) for OpenCV's radial-tangential model, float64, one pass.

    ``cv2.undistortPoints``' fixed-point iteration x ← (x₀ − Δx(x, y)) · icdist(r²), ``iterations`` times for every
    pixel instead of until the reprojection error falls below a bound; a converged pixel stays where it is. Where
    icdist turns negative (the model folds over, far outside the lens's calibrated field) the pixel keeps its
    distorted coordinates, as OpenCV does. ``coeffs``: k1 k2 p1 p2 k3 k4 k5 k6; the skew is ignored, as OpenCV does.
    """
    k1, k2, p1, p2, k3, k4, k5, k6 = (coeffs[0], coeffs[1], coeffs[2], coeffs[3], coeffs[4], coeffs[5], coeffs[6],
                                      coeffs[7])
    x0 = np.empty(_UNDISTORT_BLOCK)
    y0 = np.empty(_UNDISTORT_BLOCK)
    folded = np.empty(_UNDISTORT_BLOCK, np.bool_)
    for start in range(0, u.size, _UNDISTORT_BLOCK):
        m = min(_UNDISTORT_BLOCK, u.size - start)
        x = x_out[start:start + m]
        y = y_out[start:start + m]
        for i in range(m):
            x0[i] = (np.float64(u[start + i]) - cx) / fx
            y0[i] = (np.float64(v[start + i]) - cy) / fy
            x[i] = x0[i]
            y[i] = y0[i]
            folded[i] = False
        for _ in range(iterations):
            for i in range(m):
                xi, yi = x[i], y[i]
                r2 = xi * xi + yi * yi
                icdist = (1.0 + r2 * (k4 + r2 * (k5 + r2 * k6))) / (1.0 + r2 * (k1 + r2 * (k2 + r2 * k3)))
                f = folded[i] | (icdist < 0.0)
                nx = (x0[i] - (2.0 * p1 * xi * yi + p2 * (r2 + 2.0 * xi * xi))) * icdist
                ny = (y0[i] - (p1 * (r2 + 2.0 * yi * yi) + 2.0 * p2 * xi * yi)) * icdist
                x[i] = x0[i] if f else nx
                y[i] = y0[i] if f else ny
                folded[i] = f


# No fastmath: p = z · ray + t and the pinhole projection round op by op in float32, as the numpy formulas did
# before these kernels, so that the pixel each depth sample lands on did not change (contracting them into FMAs
# moves a few samples across a pixel border). error_model="numpy": divisions without a branch, so it vectorises.
@njit(nogil=True, cache=True, boundscheck=False, error_model="numpy")
def depth_to_rgb_pixels(z, ray_x, ray_y, ray_z, t, pinhole, coeffs, rgb_w, rgb_h, index, z_rgb):  # pragma: no cover - compiled
    """Depth samples → the RGB pixel each lands on (``index`` = row · rgb_w + column, −1 for none) and its z there.

    ``z``: depth in metres (0 = invalid), float32; ``ray_*``: R · (undistorted depth ray), float32, same size; ``t``:
    the translation, float32. p = z · ray + t; samples with z ≤ 0 or p_z ≤ 1e-6 land nowhere. ``pinhole``: fx,
    skew, cx, fy, cy of the RGB camera (float64). With ``coeffs`` (k1 k2 p1 p2 k3 k4 k5 k6) all 0 the projection is
    the pinhole in float32; else OpenCV's radial-tangential model in float64, as ``project_radtan`` (which ignores
    the skew, as ``cv2.projectPoints`` does). Coordinates round half up to the nearest pixel.
    """
    t0, t1, t2 = t[0], t[1], t[2]
    eps, half, one = np.float32(1e-6), np.float32(0.5), np.float32(1.0)
    fx32, skew32, cx32 = np.float32(pinhole[0]), np.float32(pinhole[1]), np.float32(pinhole[2])
    fy32, cy32 = np.float32(pinhole[3]), np.float32(pinhole[4])
    k = (coeffs[0], coeffs[1], coeffs[2], coeffs[3], coeffs[4], coeffs[5], coeffs[6], coeffs[7])
    lens = np.any(coeffs != 0.0)
    fx, cx, fy, cy = pinhole[0], pinhole[2], pinhole[3], pinhole[4]
    for i in range(z.size):
        zi = z[i]
        X = zi * ray_x[i] + t0
        Y = zi * ray_y[i] + t1
        Z = zi * ray_z[i] + t2
        keep = (zi > 0) & (Z > eps)
        if lens:
            pu, pv = _radtan_pixel(X, Y, Z, k, fx, fy, cx, cy)
            u = np.floor(pu + 0.5)
            v = np.floor(pv + 0.5)
        else:
            iz32 = one / max(Z, eps)  # finite everywhere: rejected samples too, so nothing below is NaN
            u = np.float64(np.floor(((X * iz32) * fx32 + (Y * iz32) * skew32) + cx32 + half))
            v = np.float64(np.floor((Y * iz32) * fy32 + cy32 + half))
        keep &= (u >= 0) & (u < rgb_w) & (v >= 0) & (v < rgb_h)
        index[i] = np.int32(v) * np.int32(rgb_w) + np.int32(u) if keep else np.int32(-1)
        z_rgb[i] = Z


@njit(nogil=True, cache=True, boundscheck=False)
def zbuffer_min(index, z, out):  # pragma: no cover - compiled
    """out[index[i]] = min(out[index[i]], z[i]) for index[i] ≥ 0: the nearest surface wins (a scatter, scalar)."""
    for i in range(index.size):
        j = index[i]
        if j >= 0 and z[i] < out[j]:
            out[j] = z[i]


def compile_for(label_dtype, num_classes: int) -> None:
    """Compile (or load from the disk cache) the kernels for the exact types and class count the pipeline passes
    them, on tiny inputs, so that the pipeline pays for it when it is built and not on its first frame."""
    f32, u8 = np.float32, np.uint8
    logits = np.zeros((int(num_classes), 1), f32)
    for confidence in (np.empty(1, f32), np.empty(0, f32)):  # with and without the confidence
        argmax_softmax(logits, np.empty(1, label_dtype), confidence)
    hwc_to_chw(np.zeros((1, 1, 3), u8), np.ones(3, f32), np.zeros(3, f32), np.empty((3, 1, 1), f32))
    rows = np.zeros(1, np.int64)
    upsample_clipped(np.zeros((1, 1), f32), rows, rows, np.zeros(1, f32), 4, 0, np.empty((1, 4), f32))
    resize_to_chw(np.zeros((1, 4, 3), u8), rows, rows, np.zeros(1, f32), 4, np.ones(3, f32), np.zeros(3, f32),
                  np.empty((3, 1, 1), f32), 0)
    for aux_dtype in (u8, np.uint16):  # percentile AGC of mono16 thermal, contiguous or a view (row padding)
        for image in (np.zeros((1, 1), aux_dtype), np.zeros((1, 2), aux_dtype)[:, ::2]):
            two_order_statistics(image, 1, 0, 0)
    for aux_dtype in (u8, np.uint16, f32):  # mono8, mono16 and 32FC1 thermal, depth in metres
        scale_clip(np.zeros((1, 1), aux_dtype), 1.0, 0.0, 0.0, 1.0, np.empty((1, 1), f32))
    one = np.ones(1, f32)
    depth_to_rgb_pixels(one, one, one, one, np.zeros(3, f32), np.ones(5), np.zeros(8), 1, 1, np.empty(1, np.int32),
                        np.empty(1, f32))  # depth reprojection: pinhole and lens alike
    zbuffer_min(np.zeros(1, np.int32), one, np.ones(1, f32))
    undistort_radtan(np.zeros(1), np.zeros(1), np.zeros(8), 1.0, 1.0, 0.0, 0.0, 1, np.empty(1), np.empty(1))
    for point_dtype in (f32, np.float64):  # project_points takes either; warp maps use float64
        p = np.ones(1, point_dtype)
        project_radtan(p, p, p, np.zeros(8), 1.0, 1.0, 0.0, 0.0, np.empty(1), np.empty(1))
    index = np.zeros(1, np.int64)
    expand_labels(np.zeros((1, 1), label_dtype), index, index, 1, np.zeros((256, 3), u8), np.zeros((1, 1, 3), u8),
                  0.5, np.empty((1, 1), label_dtype), np.empty((1, 1, 3), u8), np.empty((1, 1, 3), u8))
