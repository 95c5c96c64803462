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

#include "paged_common.h"
#include "vector_math.h"

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

/* Checks every id the kernel will follow before it reads the cache: a context length
 * outside [1, max_blocks * block_size] or a block id outside [0, num_blocks) in the
 * ranges a query reads is an error, not a stray read. Returns the longest context, or
 * PAGED_BAD_LENGTH / PAGED_BAD_BLOCK. */
static int64_t check_tables(const int64_t *block_tables, const int64_t *context_lens,
                            int64_t batch, int64_t block_size, int64_t max_blocks,
                            int64_t num_blocks, int64_t window, int64_t sink) {
    int64_t longest = 1;
    for (int64_t b = 0; b < batch; b++) {
        const int64_t ctx = context_lens[b];
        if (ctx < 1 || ctx > max_blocks * block_size) return PAGED_BAD_LENGTH;
        if (ctx > longest) longest = ctx;
        int64_t sink_end, start;
        key_ranges(ctx, window, sink, &sink_end, &start);
        const int64_t *table = block_tables + b * max_blocks;
        if (!blocks_in_cache(table, 0, sink_end, block_size, num_blocks) ||
            !blocks_in_cache(table, start, ctx, block_size, num_blocks))
            return PAGED_BAD_BLOCK;
    }
    return longest;
}

/* out: [batch, num_heads, head_dim] contiguous. q: head stride head_dim, token stride
 * q_stride. k_cache, v_cache: [num_blocks, block_size, num_kv_heads, head_dim].
 * block_tables: [batch, max_blocks]. window <= 0: no sliding window; with one, a query
 * sees its sink first tokens and the last window - sink (itself included), 0 <= sink <
 * window. Returns 0 or one of the PAGED_* errors (no cache row has been read when the
 * shapes or ids are bad). */
int paged_decode_f32(float *out, const float *q, int64_t q_stride, const float *k_cache,
                     const float *v_cache, int64_t num_blocks, const int64_t *block_tables,
                     const int64_t *context_lens, int64_t batch, int64_t num_heads,
                     int64_t num_kv_heads, int64_t head_dim, int64_t block_size,
                     int64_t max_blocks, float scale, int64_t window, int64_t sink) {
    if (num_kv_heads < 1 || num_heads < num_kv_heads || num_heads % num_kv_heads != 0 ||
        head_dim < 1 || block_size < 1 || batch < 0 ||
        (window > 0 && (sink < 0 || sink >= window)))
        return PAGED_BAD_SHAPE;
    const int64_t group = num_heads / num_kv_heads;
    const int64_t tok_stride = num_kv_heads * head_dim;
    const int64_t block_stride = block_size * tok_stride;
    const int64_t longest = check_tables(block_tables, context_lens, batch, block_size,
                                         max_blocks, num_blocks, window, sink);
    if (longest < 0) return (int)longest;
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
            int64_t sink_end, start;
            key_ranges(ctx, window, sink, &sink_end, &start);
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
    return failed ? PAGED_NO_MEMORY : 0;
}
