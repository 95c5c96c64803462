/* Row-wise kernels of a decoder layer (CPU, float32), fused to cut per-op overhead at
 * small batches: RMSNorm with an optional residual add before it, and SiLU(gate) * up.
 * Rows are spread over the OpenMP team when there are enough of them. Built and loaded
 * by cpu_kernels.py with paged_attention.c.
 */
#include <math.h>
#include <stdint.h>

#include "vector_math.h"

/* When delta is given: x += delta (in place, the residual stream). Then
 * out = x / sqrt(mean(x^2) + eps) * weight. x, delta, out: [rows, dim] contiguous. */
void rms_norm_f32(float *restrict out, float *restrict x, const float *restrict delta,
                  const float *restrict weight, int64_t rows, int64_t dim, float eps) {
#pragma omp parallel for schedule(static) if (rows * dim >= 32768)
    for (int64_t r = 0; r < rows; r++) {
        float *restrict xr = x + r * dim;
        float *restrict orow = out + r * dim;
        float sum = 0.0f;
        if (delta) {
            const float *restrict dr = delta + r * dim;
#pragma omp simd reduction(+ : sum)
            for (int64_t i = 0; i < dim; i++) {
                const float v = xr[i] + dr[i];
                xr[i] = v;
                sum += v * v;
            }
        } else {
#pragma omp simd reduction(+ : sum)
            for (int64_t i = 0; i < dim; i++) sum += xr[i] * xr[i];
        }
        const float inv = 1.0f / sqrtf(sum / (float)dim + eps);
#pragma omp simd
        for (int64_t i = 0; i < dim; i++) orow[i] = xr[i] * inv * weight[i];
    }
}

/* out[r, j] = silu(gate_up[r, j]) * gate_up[r, inter + j]; gate_up: [rows, 2 * inter]. */
void silu_mul_f32(float *restrict out, const float *restrict gate_up, int64_t rows,
                  int64_t inter) {
#pragma omp parallel for schedule(static) if (rows * inter >= 32768)
    for (int64_t r = 0; r < rows; r++) {
        const float *restrict g = gate_up + r * 2 * inter;
        const float *restrict u = g + inter;
        float *restrict o = out + r * inter;
#pragma omp simd
        for (int64_t j = 0; j < inter; j++) o[j] = g[j] / (1.0f + expf(-g[j])) * u[j];
    }
}

/* Rotary embedding, rotate-half convention: for each row t and head h of x (row stride
 * x_stride, heads contiguous within a row), out[t, h] = x * cos[t] + rotate_half(x) *
 * sin[t], where rotate_half(x) = [-x[half:], x[:half]]. cos, sin: [rows, head_dim]. out:
 * [rows, heads, head_dim] contiguous. */
void rope_f32(float *restrict out, const float *restrict x, int64_t x_stride,
              const float *restrict cos_t, const float *restrict sin_t, int64_t rows,
              int64_t heads, int64_t head_dim) {
    const int64_t half = head_dim / 2;
#pragma omp parallel for schedule(static) if (rows * heads * head_dim >= 32768)
    for (int64_t t = 0; t < rows; t++) {
        const float *restrict c = cos_t + t * head_dim;
        const float *restrict s = sin_t + t * head_dim;
        for (int64_t h = 0; h < heads; h++) {
            const float *restrict xi = x + t * x_stride + h * head_dim;
            float *restrict o = out + (t * heads + h) * head_dim;
#pragma omp simd
            for (int64_t i = 0; i < half; i++) o[i] = xi[i] * c[i] - xi[i + half] * s[i];
#pragma omp simd
            for (int64_t i = half; i < head_dim; i++) o[i] = xi[i] * c[i] + xi[i - half] * s[i];
        }
    }
}
