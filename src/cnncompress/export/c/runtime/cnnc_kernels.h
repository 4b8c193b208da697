/* cnncompress integer kernels: int8 tensors in CHW layout, int32 accumulators, per-channel
 * fixed-point requantization (Q31 multiplier + shift, one rounding), no malloc, no floating point.
 * Written by cnncompress (export/c/runtime); the numpy reference in export/c/ops.py mirrors each kernel. */
#ifndef CNNC_KERNELS_H
#define CNNC_KERNELS_H

#include <stddef.h>
#include <stdint.h>

typedef struct { int32_t c, h, w; } cnnc_shape;

/* conv2d (any stride, padding, dilation, groups) and linear (a 1x1 conv on a (F, 1, 1) input).
 * weights: two's complement codes packed 8 / weight_bits per byte, lowest bits first, in
 * (out, in / groups, kernel_h, kernel_w) order; bias: int32 at scale s_in * s_w (NULL: none). */
typedef struct {
    cnnc_shape in, out;
    int32_t kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w, groups;
    int32_t weight_bits;
    const uint8_t *weights;
    const int32_t *bias;
    const int32_t *multiplier, *shift;
    int32_t input_offset, output_offset, act_min, act_max;
} cnnc_conv_params;

/* out = requant(requant(a - a_offset) + requant(b - b_offset)), inputs scaled by 2^left_shift first. */
typedef struct {
    int32_t size, left_shift;
    int32_t a_offset, a_multiplier, a_shift, b_offset, b_multiplier, b_shift;
    int32_t out_multiplier, out_shift, output_offset, act_min, act_max;
} cnnc_add_params;

/* out = requant(in - input_offset) onto another grid (concat parts, activations on codes). */
typedef struct {
    int32_t size, input_offset, multiplier, shift, output_offset, act_min, act_max;
} cnnc_requant_params;

typedef struct {
    cnnc_shape in, out;
    int32_t kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w;
} cnnc_pool_params;

/* Average pooling: the window sum of (in - input_offset), padding counted as zeros, times the
 * multiplier (which includes 1 / window size). Global average pooling is one window. */
typedef struct {
    cnnc_pool_params geometry;
    int32_t input_offset, multiplier, shift, output_offset, act_min, act_max;
} cnnc_avgpool_params;

/* out[c][h][w] = in[start + (index - pad_before) * step] inside the sliced extent, else fill:
 * a strided slice then zero padding (the option-A ResNet shortcut). */
typedef struct {
    cnnc_shape in, out, start, step, extent, pad_before;
    int32_t fill;
} cnnc_window_params;

void cnnc_conv2d(const cnnc_conv_params *p, const int8_t *input, int8_t *output);
void cnnc_add(const cnnc_add_params *p, const int8_t *a, const int8_t *b, int8_t *output);
void cnnc_requant(const cnnc_requant_params *p, const int8_t *input, int8_t *output);
void cnnc_maxpool(const cnnc_pool_params *p, const int8_t *input, int8_t *output);
void cnnc_avgpool(const cnnc_avgpool_params *p, const int8_t *input, int8_t *output);
void cnnc_window(const cnnc_window_params *p, const int8_t *input, int8_t *output);

#endif
