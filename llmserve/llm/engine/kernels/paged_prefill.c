/* Prefill attention that reads the paged KV cache in place (CPU, float32).
 *
 * Every multi-token chunk of a step in one call: chunk c holds query rows
 * [rows[c], rows[c] + lens[c]) of q and out, at positions starts[c] ... starts[c] +
 * lens[c] - 1 of its sequence, whose keys (the chunk's own included: they are written
 * to the cache first) live in the blocks of its row of block_tables. A query at position
 * p attends keys [0, p], and with a window only the last window - sink of them plus the
 * first sink.
 *
 * Work items are (chunk, KV head, run of query positions), spread over the OpenMP team;
 * an item's rows (its positions times the query heads of its KV head) are about RV, one
 * row per vector lane. An item copies its queries, pre-scaled and transposed, and walks
 * the keys in tiles of at most KT, never across a block: S = K Q^T with the rows in the
 * lanes (each key value broadcast), an online softmax (flash attention's running max
 * and sum), and acc += P V with the head dimension in the lanes. Both products are
 * vertical multiply-adds, with no horizontal sums and no transposed copy of K.
 * Built and loaded by cpu_kernels.py.
 */
#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "paged_common.h"
#include "vector_math.h"

#define KT 32 /* keys per tile */
#define RV 32 /* query rows per vector block: the rows of an item, padded, in lanes */

#define PV_MAX 8 /* vectors of 16 per row that P V keeps in registers (head_dim 128) */

/* GCC's portable vectors: 16 floats, in one AVX-512 register or split over narrower
 * ones; loads and stores through an alias-safe unaligned type. */
typedef float v16 __attribute__((vector_size(64)));
typedef float v16u __attribute__((vector_size(64), aligned(4), may_alias));

static inline v16 load16(const float *p) { return *(const v16u *)p; }
static inline void store16(float *p, v16 v) { *(v16u *)p = v; }

typedef struct {
    const float *q;
    float *out;
    const float *k_cache;
    const float *v_cache;
    int64_t q_stride, out_stride; /* floats between the rows of q, of out */
    int64_t group, block_size, tok_stride, block_stride, window, sink;
    float scale;
} prefill_args;

/* An item's working set. Rows r = (position i, query head g of the KV head) = i * group
 * + g, padded to a multiple of RV. Queries and scores are stored row-minor, so that the
 * rows of an item fill the vector lanes: qT [head_dim][rows], s [KT][rows]. */
typedef struct {
    float *qT, *s, *m, *l, *corr, *tmax, *acc;
    int64_t *pos, *lo;
} scratch;

/* One key tile [t0, t0 + kt) (inside one block) against the item's rows [0, rows_pad). */
static inline __attribute__((always_inline)) void key_tile(
    const prefill_args *a, const float *kb, const float *vb, int64_t t0, int64_t kt,
    int64_t rows_pad, const int64_t head_dim, const scratch *w) {
    float *restrict s = w->s;
    const float *restrict qT = w->qT;
    const int64_t ts = a->tok_stride;

    /* s[j][r] = k_j . q_r: four keys against a block of RV rows at a time, the key's
     * values broadcast, the rows in the lanes (eight independent vector sums) */
    for (int64_t r0 = 0; r0 < rows_pad; r0 += RV) {
        int64_t j = 0;
        for (; j + 4 <= kt; j += 4) {
            const float *k0 = kb + j * ts, *k1 = k0 + ts, *k2 = k1 + ts, *k3 = k2 + ts;
            v16 a0 = {0}, b0 = {0}, a1 = {0}, b1 = {0}, a2 = {0}, b2 = {0}, a3 = {0}, b3 = {0};
            for (int64_t d = 0; d < head_dim; d++) {
                const v16 qa = load16(qT + d * rows_pad + r0);
                const v16 qb = load16(qT + d * rows_pad + r0 + 16);
                a0 += k0[d] * qa;
                b0 += k0[d] * qb;
                a1 += k1[d] * qa;
                b1 += k1[d] * qb;
                a2 += k2[d] * qa;
                b2 += k2[d] * qb;
                a3 += k3[d] * qa;
                b3 += k3[d] * qb;
            }
            float *sj = s + j * rows_pad + r0;
            store16(sj, a0);
            store16(sj + 16, b0);
            store16(sj + rows_pad, a1);
            store16(sj + rows_pad + 16, b1);
            store16(sj + 2 * rows_pad, a2);
            store16(sj + 2 * rows_pad + 16, b2);
            store16(sj + 3 * rows_pad, a3);
            store16(sj + 3 * rows_pad + 16, b3);
        }
        for (; j < kt; j++) {
            const float *k0 = kb + j * ts;
            v16 a0 = {0}, b0 = {0};
            for (int64_t d = 0; d < head_dim; d++) {
                a0 += k0[d] * load16(qT + d * rows_pad + r0);
                b0 += k0[d] * load16(qT + d * rows_pad + r0 + 16);
            }
            store16(s + j * rows_pad + r0, a0);
            store16(s + j * rows_pad + r0 + 16, b0);
        }
    }

    /* mask; the online softmax: each row's new max, the factor for what it has so far */
    float *restrict m = w->m, *restrict corr = w->corr, *restrict l = w->l;
    const int64_t *restrict pos = w->pos, *restrict lo = w->lo;
    const int64_t sink = a->sink;
    float *restrict tmax = w->tmax;
#pragma omp simd
    for (int64_t r = 0; r < rows_pad; r++) tmax[r] = m[r];
    for (int64_t j = 0; j < kt; j++) {
        float *sj = s + j * rows_pad;
        const int64_t key = t0 + j;
#pragma omp simd
        for (int64_t r = 0; r < rows_pad; r++) {
            const int ok = key <= pos[r] && (key > lo[r] || key < sink);
            sj[r] = ok ? sj[r] : -INFINITY;
            tmax[r] = sj[r] > tmax[r] ? sj[r] : tmax[r];
        }
    }
#pragma omp simd
    for (int64_t r = 0; r < rows_pad; r++) {
        const float base = tmax[r] == -INFINITY ? 0.0f : tmax[r]; /* no key seen yet */
        corr[r] = expf(m[r] - base);
        m[r] = tmax[r];
        tmax[r] = base;
        l[r] *= corr[r];
    }
    for (int64_t j = 0; j < kt; j++) {
        float *sj = s + j * rows_pad;
#pragma omp simd
        for (int64_t r = 0; r < rows_pad; r++) {
            sj[r] = expf(sj[r] - tmax[r]);
            l[r] += sj[r];
        }
    }

    /* acc = acc * corr + P V, two rows at a time, the head dimension in the lanes */
    if (head_dim % 16 == 0 && head_dim <= 16 * PV_MAX) {
        const int64_t nv = head_dim / 16;
        for (int64_t r = 0; r < rows_pad; r += 2) {
            float *acc0 = w->acc + r * head_dim, *acc1 = acc0 + head_dim;
            v16 x[PV_MAX], y[PV_MAX];
            for (int64_t e = 0; e < nv; e++) {
                x[e] = corr[r] * load16(acc0 + 16 * e);
                y[e] = corr[r + 1] * load16(acc1 + 16 * e);
            }
            for (int64_t j = 0; j < kt; j++) {
                const float *v = vb + j * ts;
                const float p0 = s[j * rows_pad + r], p1 = s[j * rows_pad + r + 1];
                for (int64_t e = 0; e < nv; e++) {
                    const v16 ve = load16(v + 16 * e);
                    x[e] += p0 * ve;
                    y[e] += p1 * ve;
                }
            }
            for (int64_t e = 0; e < nv; e++) {
                store16(acc0 + 16 * e, x[e]);
                store16(acc1 + 16 * e, y[e]);
            }
        }
        return;
    }
    for (int64_t r = 0; r < rows_pad; r++) {
        float *restrict acc = w->acc + r * head_dim;
        const float c = corr[r];
        for (int64_t d = 0; d < head_dim; d++) acc[d] *= c;
        for (int64_t j = 0; j < kt; j++) {
            const float *restrict v = vb + j * ts;
            const float pr = s[j * rows_pad + r];
#pragma omp simd
            for (int64_t d = 0; d < head_dim; d++) acc[d] += pr * v[d];
        }
    }
}

/* Keys [lo, hi) of the sequence, tile by tile, never across a block. */
static inline __attribute__((always_inline)) void key_range(
    const prefill_args *a, const int64_t *table, int64_t h, int64_t lo, int64_t hi,
    int64_t rows_pad, const int64_t head_dim, const scratch *w) {
    for (int64_t t0 = lo; t0 < hi;) {
        const int64_t blk = t0 / a->block_size;
        const int64_t block_end = (blk + 1) * a->block_size;
        int64_t t1 = t0 + KT < hi ? t0 + KT : hi;
        if (t1 > block_end) t1 = block_end;
        const int64_t off = table[blk] * a->block_stride + (t0 - blk * a->block_size) *
                                                               a->tok_stride + h * head_dim;
        key_tile(a, a->k_cache + off, a->v_cache + off, t0, t1 - t0, rows_pad, head_dim, w);
        t0 = t1;
    }
}

/* Query positions [start + i0, start + i0 + qt) of a chunk whose first row is row0,
 * every query head of KV head h. */
static inline __attribute__((always_inline)) void attend_tile(
    const prefill_args *a, const int64_t *table, int64_t start, int64_t row0, int64_t i0,
    int64_t qt, int64_t h, const int64_t head_dim, const scratch *w) {
    const int64_t group = a->group;
    const int64_t rows = qt * group;
    const int64_t rows_pad = (rows + RV - 1) / RV * RV;
    for (int64_t r = 0; r < rows_pad; r++) {
        const int64_t i = r < rows ? r / group : qt - 1; /* padding repeats the last */
        const int64_t p = start + i0 + i;
        w->pos[r] = p;
        w->lo[r] = a->window > 0 ? p - (a->window - a->sink) : -1;
        w->m[r] = -INFINITY;
        w->l[r] = 0.0f;
        memset(w->acc + r * head_dim, 0, (size_t)head_dim * sizeof(float));
        const float *src = a->q + (row0 + i0 + i) * a->q_stride +
                           (h * group + (r < rows ? r % group : 0)) * head_dim;
        for (int64_t d = 0; d < head_dim; d++) w->qT[d * rows_pad + r] = src[d] * a->scale;
    }
    int64_t sink_end, lo; /* the keys of the item's first query: the others see more */
    key_ranges(start + i0 + 1, a->window, a->sink, &sink_end, &lo);
    key_range(a, table, h, 0, sink_end, rows_pad, head_dim, w);
    key_range(a, table, h, lo, start + i0 + qt, rows_pad, head_dim, w);
    for (int64_t r = 0; r < rows; r++) {
        float *o = a->out + (row0 + i0 + r / group) * a->out_stride +
                   (h * group + r % group) * head_dim;
        const float *acc = w->acc + r * head_dim;
        const float inv = 1.0f / w->l[r];
        for (int64_t d = 0; d < head_dim; d++) o[d] = acc[d] * inv;
    }
}

/* out: [num_rows, num_heads, head_dim] contiguous. q: head stride head_dim, token stride
 * q_stride. k_cache, v_cache: [num_blocks, block_size, num_kv_heads, head_dim].
 * block_tables: [num_chunks, max_blocks]; starts, lens, rows: [num_chunks]. window <= 0:
 * no window; else 0 <= sink < window. Rows of out outside every chunk are not written.
 * Returns 0 or one of the PAGED_* errors of paged_common.h (nothing has been read from the
 * cache when a shape, length or block id is bad). */
int paged_prefill_f32(float *out, const float *q, int64_t q_stride, int64_t num_rows,
                      const float *k_cache, const float *v_cache, int64_t num_blocks,
                      const int64_t *block_tables, const int64_t *starts,
                      const int64_t *lens, const int64_t *rows, int64_t num_chunks,
                      int64_t num_heads, int64_t num_kv_heads, int64_t head_dim,
                      int64_t block_size, int64_t max_blocks, float scale, int64_t window,
                      int64_t sink) {
    if (num_kv_heads < 1 || num_heads < num_kv_heads || num_heads % num_kv_heads != 0 ||
        head_dim < 1 || block_size < 1 || num_chunks < 0 ||
        (window > 0 && (sink < 0 || sink >= window)))
        return PAGED_BAD_SHAPE;
    const int64_t group = num_heads / num_kv_heads;
    const int64_t qt_max = group < RV ? RV / group : 1; /* positions per item */
    const prefill_args a = {q, out, k_cache, v_cache, q_stride, num_heads * head_dim, group,
                            block_size, num_kv_heads * head_dim,
                            block_size * num_kv_heads * head_dim, window,
                            window > 0 ? sink : 0, scale};
    /* every id the items will follow, before any of them runs */
    int64_t items = 0;
    for (int64_t c = 0; c < num_chunks; c++) {
        const int64_t ctx = starts[c] + lens[c];
        if (starts[c] < 0 || lens[c] < 1 || ctx > max_blocks * block_size || rows[c] < 0 ||
            rows[c] + lens[c] > num_rows)
            return PAGED_BAD_LENGTH;
        int64_t sink_end, lo; /* the keys of the chunk's first query, and all after it */
        key_ranges(starts[c] + 1, a.window, a.sink, &sink_end, &lo);
        const int64_t *table = block_tables + c * max_blocks;
        if (!blocks_in_cache(table, 0, sink_end, block_size, num_blocks) ||
            !blocks_in_cache(table, lo, ctx, block_size, num_blocks))
            return PAGED_BAD_BLOCK;
        items += (lens[c] + qt_max - 1) / qt_max * num_kv_heads;
    }
    const int64_t rows_max = (qt_max * group + RV - 1) / RV * RV;
    int failed = 0;
#pragma omp parallel
    {
        scratch w;
        const size_t n = (size_t)rows_max;
        w.qT = malloc(n * (size_t)head_dim * sizeof(float));
        w.s = malloc(n * KT * sizeof(float));
        w.m = malloc(n * sizeof(float));
        w.l = malloc(n * sizeof(float));
        w.corr = malloc(n * sizeof(float));
        w.tmax = malloc(n * sizeof(float));
        w.acc = malloc(n * (size_t)head_dim * sizeof(float));
        w.pos = malloc(n * sizeof(int64_t));
        w.lo = malloc(n * sizeof(int64_t));
        const int ok = w.qT && w.s && w.m && w.l && w.corr && w.tmax && w.acc && w.pos &&
                       w.lo;
        if (!ok) {
#pragma omp atomic write
            failed = 1;
        }
#pragma omp for schedule(dynamic, 1)
        for (int64_t item = 0; item < items; item++) {
            if (!ok) continue;
            int64_t c = 0, rest = item; /* find the item's chunk (few chunks per step) */
            for (int64_t n; rest >= (n = (lens[c] + qt_max - 1) / qt_max * num_kv_heads); c++)
                rest -= n;
            const int64_t tile = rest / num_kv_heads, h = rest % num_kv_heads;
            const int64_t i0 = tile * qt_max;
            const int64_t qt = lens[c] - i0 < qt_max ? lens[c] - i0 : qt_max;
            const int64_t *table = block_tables + c * max_blocks;
            /* the common head sizes get code specialised for them */
            if (head_dim == 64)
                attend_tile(&a, table, starts[c], rows[c], i0, qt, h, 64, &w);
            else if (head_dim == 128)
                attend_tile(&a, table, starts[c], rows[c], i0, qt, h, 128, &w);
            else
                attend_tile(&a, table, starts[c], rows[c], i0, qt, h, head_dim, &w);
        }
        free(w.qT);
        free(w.s);
        free(w.m);
        free(w.l);
        free(w.corr);
        free(w.tmax);
        free(w.acc);
        free(w.pos);
        free(w.lo);
    }
    return failed ? PAGED_NO_MEMORY : 0;
}
