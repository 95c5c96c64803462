/* Decode attention that reads the paged KV cache in place (CPU, float32).
 *
 * One query token per sequence. The cache of a layer is [num_blocks, block_size,
 * num_kv_heads, head_dim]; sequence b's token t lives in block block_tables[b][t / bs]
 * at offset t % bs. Work items are sequences (or, for small batches, single KV heads of
 * a sequence), spread over the OpenMP team; all query heads of an item are handled
 * together, so each K and V row is read from memory once. Built and loaded by
 * cpu_kernels.py.
 */
#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

static inline float dot(const float *restrict a, const float *restrict b, int64_t n) {
    float acc = 0.0f;
#pragma omp simd reduction(+ : acc)
    for (int64_t i = 0; i < n; i++) acc += a[i] * b[i];
    return acc;
}

/* Q.K of keys [lo, hi) into scores[.. + off + (t - lo)], tracking each row's max.
 * Tokens are visited block by block and, within a token, every KV head of the range is
 * read at once: one contiguous run of memory per token. */
static inline __attribute__((always_inline)) void qk_range(
    const float *restrict q, const float *k_cache, const int64_t *table, int64_t lo,
    int64_t hi, int64_t off, int64_t n, int64_t rows, int64_t h0, int64_t group,
    int64_t head_dim, int64_t block_size, int64_t tok_stride, int64_t block_stride,
    float scale, float *restrict scores, float *restrict maxs) {
    for (int64_t blk = lo / block_size; blk * block_size < hi; blk++) {
        const int64_t first = blk * block_size;
        const int64_t t0 = first > lo ? first : lo;
        const int64_t t1 = first + block_size < hi ? first + block_size : hi;
        const float *kb = k_cache + table[blk] * block_stride;
        for (int64_t t = t0; t < t1; t++) {
            const float *k = kb + (t - first) * tok_stride + h0 * head_dim;
            for (int64_t r = 0; r < rows; k += head_dim) {
                for (int64_t g = 0; g < group; g++, r++) {
                    const float s = dot(q + r * head_dim, k, head_dim) * scale;
                    scores[r * n + off + (t - lo)] = s;
                    if (s > maxs[r]) maxs[r] = s;
                }
            }
        }
    }
}

/* acc += probabilities (scores[.. + off + (t - lo)]) times the values of keys [lo, hi). */
static inline __attribute__((always_inline)) void pv_range(
    const float *v_cache, const int64_t *table, int64_t lo, int64_t hi, int64_t off,
    int64_t n, int64_t rows, int64_t h0, int64_t group, int64_t head_dim, int64_t block_size,
    int64_t tok_stride, int64_t block_stride, const float *restrict scores,
    float *restrict acc) {
    for (int64_t blk = lo / block_size; blk * block_size < hi; blk++) {
        const int64_t first = blk * block_size;
        const int64_t t0 = first > lo ? first : lo;
        const int64_t t1 = first + block_size < hi ? first + block_size : hi;
        const float *vb = v_cache + table[blk] * block_stride;
        for (int64_t t = t0; t < t1; t++) {
            const float *v = vb + (t - first) * tok_stride + h0 * head_dim;
            for (int64_t r = 0; r < rows; v += head_dim) {
                for (int64_t g = 0; g < group; g++, r++) {
                    const float p = scores[r * n + off + (t - lo)];
                    float *a = acc + r * head_dim;
#pragma omp simd
                    for (int64_t d = 0; d < head_dim; d++) a[d] += p * v[d];
                }
            }
        }
    }
}

/* Attention of one sequence's query heads [h0 * group, h1 * group) over the keys
 * [0, sink_end) and [start, ctx) (sink_end <= start): a sliding window keeps its sink
 * tokens, and the blocks between the two ranges are never read (they may be freed). */
static inline __attribute__((always_inline)) void attend(float *restrict out, const float *restrict q, const float *k_cache,
                   const float *v_cache, const int64_t *table, int64_t sink_end, int64_t start,
                   int64_t ctx, int64_t h0, int64_t h1, int64_t group, int64_t head_dim,
                   int64_t block_size, int64_t tok_stride, int64_t block_stride, float scale,
                   float *restrict scores, float *restrict acc, float *restrict maxs) {
    const int64_t n = sink_end + ctx - start;
    const int64_t rows = (h1 - h0) * group; /* query heads handled here */
    for (int64_t r = 0; r < rows; r++) maxs[r] = -INFINITY;
    qk_range(q, k_cache, table, 0, sink_end, 0, n, rows, h0, group, head_dim, block_size,
             tok_stride, block_stride, scale, scores, maxs);
    qk_range(q, k_cache, table, start, ctx, sink_end, n, rows, h0, group, head_dim,
             block_size, tok_stride, block_stride, scale, scores, maxs);
    for (int64_t r = 0; r < rows; r++) {
        float *row = scores + r * n;
        const float m = maxs[r];
        float sum = 0.0f;
#pragma omp simd reduction(+ : sum)
        for (int64_t i = 0; i < n; i++) {
            row[i] = expf(row[i] - m);
            sum += row[i];
        }
        maxs[r] = 1.0f / sum; /* reused as the normaliser */
    }
    memset(acc, 0, (size_t)(rows * head_dim) * sizeof(float));
    pv_range(v_cache, table, 0, sink_end, 0, n, rows, h0, group, head_dim, block_size,
             tok_stride, block_stride, scores, acc);
    pv_range(v_cache, table, start, ctx, sink_end, n, rows, h0, group, head_dim, block_size,
             tok_stride, block_stride, scores, acc);
    for (int64_t r = 0; r < rows; r++) {
        float *o = out + r * head_dim;
        const float *a = acc + r * head_dim;
        for (int64_t d = 0; d < head_dim; d++) o[d] = a[d] * maxs[r];
    }
}

/* out: [batch, num_heads, head_dim] contiguous. q: head stride head_dim, token stride
 * q_stride. block_tables: [batch, max_blocks]. window <= 0: no sliding window; with
 * one, a query sees its sink first tokens and the last window - sink (itself included).
 * Returns 0, or -1 when a work buffer cannot be allocated or the heads do not divide. */
int paged_decode_f32(float *out, const float *q, int64_t q_stride, const float *k_cache,
                     const float *v_cache, const int64_t *block_tables,
                     const int64_t *context_lens, int64_t batch, int64_t num_heads,
                     int64_t num_kv_heads, int64_t head_dim, int64_t block_size,
                     int64_t max_blocks, float scale, int64_t window,
                     int64_t sink) {
    const int64_t group = num_heads / num_kv_heads;
    if (group < 1 || num_heads % num_kv_heads != 0) return -1;
    const int64_t tok_stride = num_kv_heads * head_dim;
    const int64_t block_stride = block_size * tok_stride;
    int64_t longest = 1;
    for (int64_t b = 0; b < batch; b++)
        if (context_lens[b] > longest) longest = context_lens[b];
    /* Work items: (sequence, run of KV heads). Whole sequences read each token's heads
     * as one contiguous run; small batches are split by head to feed every thread. */
    const int64_t split = batch >= 4 * omp_get_max_threads() ? 1 : num_kv_heads;
    const int64_t per_item = num_kv_heads / split;
    int failed = 0;
#pragma omp parallel
    {
        float *scores = malloc((size_t)(per_item * group * longest) * sizeof(float));
        float *acc = malloc((size_t)(per_item * group * head_dim) * sizeof(float));
        float *maxs = malloc((size_t)(per_item * group) * sizeof(float));
        if (!scores || !acc || !maxs) {
#pragma omp atomic write
            failed = 1;
        }
#pragma omp for schedule(dynamic, 1)
        for (int64_t item = 0; item < batch * split; item++) {
            if (!scores || !acc || !maxs) continue;
            const int64_t b = item / split;
            const int64_t h0 = (item % split) * per_item;
            const int64_t ctx = context_lens[b];
            const int64_t lo = window > 0 ? ctx - (window - sink) : 0;
            const int64_t start = lo > sink ? lo : 0;
            const int64_t sink_end = lo > sink ? sink : 0;
            float *o = out + (b * num_heads + h0 * group) * head_dim;
            const float *qb = q + b * q_stride + h0 * group * head_dim;
            const int64_t *table = block_tables + b * max_blocks;
            /* the common head sizes get code specialised for them (unrolled rows) */
            if (head_dim == 64)
                attend(o, qb, k_cache, v_cache, table, sink_end, start, ctx, h0,
                       h0 + per_item, group, 64, block_size, tok_stride, block_stride, scale, scores, acc, maxs);
            else if (head_dim == 128)
                attend(o, qb, k_cache, v_cache, table, sink_end, start, ctx, h0,
                       h0 + per_item, group, 128, block_size, tok_stride, block_stride, scale, scores, acc, maxs);
            else
                attend(o, qb, k_cache, v_cache, table, sink_end, start, ctx, h0,
                       h0 + per_item, group, head_dim, block_size, tok_stride, block_stride, scale, scores, acc,
                       maxs);
        }
        free(scores);
        free(acc);
        free(maxs);
    }
    return failed ? -1 : 0;
}
