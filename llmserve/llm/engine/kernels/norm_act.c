/* Row-wise kernels of a decoder layer (CPU, float32), fused to cut per-op overhead at
 * small batches: RMSNorm with an optional residual add before it, and SiLU(gate) * up.
 * Rows are spread over the OpenMP team when there are enough of them. Built and loaded
 * by cpu_kernels.py with paged_attention.c.
 */
#include <math.h>
#include <stdint.h>

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
