/* cnncompress integer kernels (see cnnc_kernels.h). Plain C99, scalar loops, int32 accumulators. */
#include "cnnc_kernels.h"

/* round(x * multiplier * 2^(shift - 31)), ties up: one 64-bit product, one rounding shift. */
static int64_t cnnc_requantize(int32_t x, int32_t multiplier, int32_t shift)
{
    const int32_t total = 31 - shift;
    return ((int64_t)x * multiplier + ((int64_t)1 << (total - 1))) >> total;
}

static int8_t cnnc_clamp(int64_t value, int32_t low, int32_t high)
{
    return (int8_t)(value < low ? low : (value > high ? high : value));
}

/* The i-th packed weight code, sign-extended. */
static int32_t cnnc_weight(const uint8_t *weights, int32_t i, int32_t bits)
{
    int32_t v;
    if (bits == 4) {
        v = (weights[i >> 1] >> ((i & 1) * 4)) & 0xF;
        return v - ((v & 0x8) << 1);
    }
    v = (weights[i >> 2] >> ((i & 3) * 2)) & 0x3;
    return v - ((v & 0x2) << 1);
}

/* sum over k < n of (x[k * step] - offset) * weight(first + k): one row of taps, the width switch
 * outside the multiply-accumulate loop. */
static int32_t cnnc_row(const int8_t *x, int32_t step, int32_t offset, const uint8_t *weights, int32_t first,
                        int32_t n, int32_t bits)
{
    int32_t acc = 0, k;
    if (bits == 8) {
        const int8_t *w = (const int8_t *)weights + first;
        for (k = 0; k < n; ++k) {
            acc += (x[k * step] - offset) * w[k];
        }
        return acc;
    }
    for (k = 0; k < n; ++k) {
        acc += (x[k * step] - offset) * cnnc_weight(weights, first + k, bits);
    }
    return acc;
}

/* First and one-past-last kernel taps that land inside [0, size) for output position o. */
static void cnnc_taps(int32_t o, int32_t stride, int32_t pad, int32_t dilation, int32_t kernel, int32_t size,
                      int32_t *first, int32_t *last)
{
    const int32_t origin = o * stride - pad;
    *first = origin < 0 ? (-origin + dilation - 1) / dilation : 0;
    if (origin >= size) {
        *last = 0; /* the window lies wholly in the padding */
    } else {
        *last = origin + (kernel - 1) * dilation < size ? kernel : (size - 1 - origin) / dilation + 1;
    }
}

/* Taps outside the input are zero padding: (zero point - input_offset) adds nothing, so they are skipped. */
static int32_t cnnc_conv_point(const cnnc_conv_params *p, const int8_t *input, int32_t oc, int32_t first_in,
                               int32_t oy, int32_t ox)
{
    const int32_t in_per_group = p->in.c / p->groups, plane = p->in.h * p->in.w;
    int32_t acc = p->bias ? p->bias[oc] : 0, ic, ky, ky_end, kx, kx_end;
    if (p->kernel_h == 1 && p->kernel_w == 1 && p->pad_h == 0 && p->pad_w == 0) { /* 1x1 and linear: over channels */
        const int32_t offset = first_in * plane + oy * p->stride_h * p->in.w + ox * p->stride_w;
        return acc + cnnc_row(input + offset, plane, p->input_offset, p->weights, oc * in_per_group, in_per_group,
                              p->weight_bits);
    }
    cnnc_taps(oy, p->stride_h, p->pad_h, p->dilation_h, p->kernel_h, p->in.h, &ky, &ky_end);
    cnnc_taps(ox, p->stride_w, p->pad_w, p->dilation_w, p->kernel_w, p->in.w, &kx, &kx_end);
    if (kx >= kx_end) {
        return acc;
    }
    for (ic = 0; ic < in_per_group; ++ic) {
        const int8_t *channel = input + (first_in + ic) * plane;
        const int32_t w_base = (oc * in_per_group + ic) * p->kernel_h * p->kernel_w;
        int32_t y;
        for (y = ky; y < ky_end; ++y) {
            const int32_t iy = oy * p->stride_h - p->pad_h + y * p->dilation_h;
            const int32_t ix = ox * p->stride_w - p->pad_w + kx * p->dilation_w;
            acc += cnnc_row(channel + iy * p->in.w + ix, p->dilation_w, p->input_offset, p->weights,
                            w_base + y * p->kernel_w + kx, kx_end - kx, p->weight_bits);
        }
    }
    return acc;
}

void cnnc_conv2d(const cnnc_conv_params *p, const int8_t *input, int8_t *output)
{
    const int32_t in_per_group = p->in.c / p->groups, out_per_group = p->out.c / p->groups;
    int32_t oc, oy, ox;
    for (oc = 0; oc < p->out.c; ++oc) {
        const int32_t first_in = (oc / out_per_group) * in_per_group;
        for (oy = 0; oy < p->out.h; ++oy) {
            for (ox = 0; ox < p->out.w; ++ox) {
                const int32_t acc = cnnc_conv_point(p, input, oc, first_in, oy, ox);
                output[(oc * p->out.h + oy) * p->out.w + ox] = cnnc_clamp(
                    cnnc_requantize(acc, p->multiplier[oc], p->shift[oc]) + p->output_offset, p->act_min, p->act_max);
            }
        }
    }
}

void cnnc_add(const cnnc_add_params *p, const int8_t *a, const int8_t *b, int8_t *output)
{
    const int32_t scale = (int32_t)1 << p->left_shift;
    int32_t i;
    for (i = 0; i < p->size; ++i) {
        const int64_t sum = cnnc_requantize((a[i] - p->a_offset) * scale, p->a_multiplier, p->a_shift)
                            + cnnc_requantize((b[i] - p->b_offset) * scale, p->b_multiplier, p->b_shift);
        output[i] = cnnc_clamp(cnnc_requantize((int32_t)sum, p->out_multiplier, p->out_shift) + p->output_offset,
                               p->act_min, p->act_max);
    }
}

void cnnc_requant(const cnnc_requant_params *p, const int8_t *input, int8_t *output)
{
    int32_t i;
    for (i = 0; i < p->size; ++i) {
        output[i] = cnnc_clamp(cnnc_requantize(input[i] - p->input_offset, p->multiplier, p->shift)
                               + p->output_offset, p->act_min, p->act_max);
    }
}

void cnnc_maxpool(const cnnc_pool_params *p, const int8_t *input, int8_t *output)
{
    int32_t c, oy, ox, ky, kx;
    for (c = 0; c < p->out.c; ++c) {
        const int8_t *plane = input + c * p->in.h * p->in.w;
        for (oy = 0; oy < p->out.h; ++oy) {
            for (ox = 0; ox < p->out.w; ++ox) {
                int32_t best = -129; /* padding never wins: every window holds an input */
                for (ky = 0; ky < p->kernel_h; ++ky) {
                    const int32_t iy = oy * p->stride_h - p->pad_h + ky;
                    for (kx = 0; kx < p->kernel_w; ++kx) {
                        const int32_t ix = ox * p->stride_w - p->pad_w + kx;
                        if (iy >= 0 && iy < p->in.h && ix >= 0 && ix < p->in.w && plane[iy * p->in.w + ix] > best) {
                            best = plane[iy * p->in.w + ix];
                        }
                    }
                }
                output[(c * p->out.h + oy) * p->out.w + ox] = (int8_t)best;
            }
        }
    }
}

void cnnc_avgpool(const cnnc_avgpool_params *p, const int8_t *input, int8_t *output)
{
    const cnnc_pool_params *g = &p->geometry;
    int32_t c, oy, ox, ky, kx;
    for (c = 0; c < g->out.c; ++c) {
        const int8_t *plane = input + c * g->in.h * g->in.w;
        for (oy = 0; oy < g->out.h; ++oy) {
            for (ox = 0; ox < g->out.w; ++ox) {
                int32_t sum = 0;
                for (ky = 0; ky < g->kernel_h; ++ky) {
                    const int32_t iy = oy * g->stride_h - g->pad_h + ky;
                    for (kx = 0; kx < g->kernel_w; ++kx) {
                        const int32_t ix = ox * g->stride_w - g->pad_w + kx;
                        if (iy >= 0 && iy < g->in.h && ix >= 0 && ix < g->in.w) {
                            sum += plane[iy * g->in.w + ix] - p->input_offset;
                        }
                    }
                }
                output[(c * g->out.h + oy) * g->out.w + ox] = cnnc_clamp(
                    cnnc_requantize(sum, p->multiplier, p->shift) + p->output_offset, p->act_min, p->act_max);
            }
        }
    }
}

static int32_t cnnc_source(int32_t index, int32_t pad_before, int32_t extent, int32_t start, int32_t step)
{
    const int32_t k = index - pad_before;
    return (k < 0 || k >= extent) ? -1 : start + k * step;
}

void cnnc_window(const cnnc_window_params *p, const int8_t *input, int8_t *output)
{
    int32_t c, y, x;
    for (c = 0; c < p->out.c; ++c) {
        const int32_t sc = cnnc_source(c, p->pad_before.c, p->extent.c, p->start.c, p->step.c);
        for (y = 0; y < p->out.h; ++y) {
            const int32_t sy = cnnc_source(y, p->pad_before.h, p->extent.h, p->start.h, p->step.h);
            for (x = 0; x < p->out.w; ++x) {
                const int32_t sx = cnnc_source(x, p->pad_before.w, p->extent.w, p->start.w, p->step.w);
                *output++ = (sc < 0 || sy < 0 || sx < 0) ? (int8_t)p->fill
                                                         : input[(sc * p->in.h + sy) * p->in.w + sx];
            }
        }
    }
}
