/* What the paged attention kernels (paged_attention.c, paged_prefill.c) share: their
 * error codes, the keys a query attends under a window with sink tokens, and the check of
 * a block table's ids before any cache row is read.
 */
#ifndef LLMSERVE_PAGED_COMMON_H
#define LLMSERVE_PAGED_COMMON_H

#include <stdint.h>

enum { PAGED_NO_MEMORY = -1, PAGED_BAD_SHAPE = -2, PAGED_BAD_LENGTH = -3, PAGED_BAD_BLOCK = -4 };

/* The keys a query at context length ctx attends: [0, *sink_end) and [*start, ctx). With
 * a window, its sink first tokens and the last window - sink (itself included); the
 * blocks between the two ranges are never read (they may be freed). */
static inline void key_ranges(int64_t ctx, int64_t window, int64_t sink, int64_t *sink_end,
                              int64_t *start) {
    const int64_t lo = window > 0 ? ctx - (window - sink) : 0;
    *start = lo > sink ? lo : 0;
    *sink_end = lo > sink ? sink : 0;
}

/* Every id of the table's blocks that hold keys [lo, hi) is a block of the cache. */
static inline int blocks_in_cache(const int64_t *table, int64_t lo, int64_t hi,
                                  int64_t block_size, int64_t num_blocks) {
    for (int64_t blk = lo / block_size; blk * block_size < hi; blk++)
        if (table[blk] < 0 || table[blk] >= num_blocks) return 0;
    return 1;
}

#endif
