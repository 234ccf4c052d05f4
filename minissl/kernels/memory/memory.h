/* A caching allocator for the data of the NumPy arrays minissl's ops create.
 *
 * Why: a training step allocates and frees the same large arrays every time (activations,
 * gradients, im2col matrices). glibc hands large blocks back to the operating system when
 * they are freed (blocks above its mmap threshold are unmapped; free memory at the top of the
 * heap is trimmed), so the next step pays a page fault and the kernel's zeroing for every
 * 4 KiB page it touches again: a third of a small step. This cache keeps freed blocks of
 * CACHE_MIN bytes or more, by exact size class (requests rounded up to 4 KiB), and hands them
 * back to the next request of the same class, as PyTorch's CUDA caching allocator does on
 * the GPU. It holds at most `limit` bytes of free blocks; beyond that a block is freed for
 * real. Smaller blocks go straight to malloc/free (glibc's bins already reuse them).
 *
 * Every block carries a 16-byte header just before the pointer NumPy gets: its size (the size
 * class of a large block, the request of a small one) and the offset back to the start of the
 * allocation (MS_LARGE_PAD for a large block, MS_HEADER for a small one), so free() and
 * realloc() never trust a size NumPy passes. Large blocks are 64-byte aligned.
 *
 * Thread safety: one mutex around the bins (NumPy normally allocates with the GIL held, but
 * nothing here relies on it). Only free blocks are in the bins; a block in use belongs to its
 * array alone.
 */
#ifndef MINISSL_MEMORY_H
#define MINISSL_MEMORY_H

#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define MS_HEADER 16                 /* bytes of header before every pointer handed out */
#define MS_LARGE_PAD 64              /* large blocks: header padded to keep 64-byte alignment */
#define MS_CACHE_MIN (32 * 1024)     /* blocks from this size up are cached */
#define MS_PAGE 4096
#define MS_NBINS 1024                /* open-addressed table of size classes (a power of 2) */
#define MS_MAGIC 0x6d696e6973736cULL /* "minissl" */

typedef struct { size_t size; uint32_t offset; uint32_t pad; } ms_header;
typedef struct ms_free { struct ms_free *next; } ms_free;   /* stored in the free block */
typedef struct { size_t size_class; ms_free *head; size_t count; } ms_bin;

typedef struct {
    pthread_mutex_t lock;
    ms_bin bins[MS_NBINS];
    size_t cached_bytes, limit;
    size_t hits, misses, bypass;     /* statistics: cache hits, large mallocs, too-full frees */
} ms_cache;

static ms_cache ms_state = {PTHREAD_MUTEX_INITIALIZER, {{0, NULL, 0}}, 0, (size_t)1 << 30, 0, 0, 0};

static inline ms_header *ms_head(void *p) { return (ms_header *)((char *)p - MS_HEADER); }
static inline int ms_is_large(const ms_header *h) { return h->offset == MS_LARGE_PAD; }

/* The bin of a size class, or NULL when the table is full (then the block is not cached). */
static ms_bin *ms_bin_of(size_t size_class, int create) {
    size_t i = (size_t)(((uint64_t)(size_class / MS_PAGE) * 0x9E3779B97F4A7C15ULL) >> 54);
    for (size_t probe = 0; probe < MS_NBINS; probe++, i = (i + 1) & (MS_NBINS - 1)) {
        ms_bin *b = &ms_state.bins[i];
        if (b->size_class == size_class) return b;
        if (b->size_class == 0) {
            if (!create) return NULL;
            b->size_class = size_class;
            return b;
        }
    }
    return NULL;
}

static void *ms_malloc(void *ctx, size_t n) {
    (void)ctx;
    if (n < MS_CACHE_MIN) {                       /* small: plain malloc behind a header */
        char *base = malloc(n + MS_HEADER);
        if (!base) return NULL;
        ms_header *h = (ms_header *)base;
        h->size = n; h->offset = MS_HEADER;
        return base + MS_HEADER;
    }
    if (n > SIZE_MAX - 2 * MS_PAGE) return NULL;
    size_t size_class = (n + MS_PAGE - 1) / MS_PAGE * MS_PAGE;
    pthread_mutex_lock(&ms_state.lock);
    ms_bin *b = ms_bin_of(size_class, 0);
    if (b && b->head) {
        ms_free *f = b->head;
        b->head = f->next; b->count--;
        ms_state.cached_bytes -= size_class; ms_state.hits++;
        pthread_mutex_unlock(&ms_state.lock);
        return f;
    }
    ms_state.misses++;
    pthread_mutex_unlock(&ms_state.lock);
    void *base;
    if (posix_memalign(&base, MS_LARGE_PAD, size_class + MS_LARGE_PAD) != 0) return NULL;
    char *p = (char *)base + MS_LARGE_PAD;
    ms_header *h = ms_head(p);
    h->size = size_class; h->offset = MS_LARGE_PAD;
    return p;
}

static void ms_release(void *p) {                 /* give a block back to the C library */
    free((char *)p - ms_head(p)->offset);
}

static void ms_free_block(void *ctx, void *p, size_t n) {
    (void)ctx; (void)n;                           /* the header knows the size */
    if (!p) return;
    ms_header *h = ms_head(p);
    if (ms_is_large(h)) {
        size_t size_class = h->size;
        pthread_mutex_lock(&ms_state.lock);
        ms_bin *b = ms_state.cached_bytes + size_class <= ms_state.limit
                    ? ms_bin_of(size_class, 1) : NULL;
        if (b) {
            ms_free *f = (ms_free *)p;
            f->next = b->head; b->head = f; b->count++;
            ms_state.cached_bytes += size_class;
            pthread_mutex_unlock(&ms_state.lock);
            return;
        }
        ms_state.bypass++;
        pthread_mutex_unlock(&ms_state.lock);
    }
    ms_release(p);
}

static void *ms_calloc(void *ctx, size_t nelem, size_t elsize) {
    if (elsize && nelem > SIZE_MAX / elsize) return NULL;
    size_t n = nelem * elsize;
    void *p = ms_malloc(ctx, n);
    if (p) memset(p, 0, n);                       /* a reused block holds old data */
    return p;
}

static void *ms_realloc(void *ctx, void *p, size_t n) {
    if (!p) return ms_malloc(ctx, n);
    ms_header *h = ms_head(p);
    if (ms_is_large(h) && n <= h->size && n >= MS_CACHE_MIN) return p;   /* fits already */
    void *q = ms_malloc(ctx, n);
    if (!q) return NULL;
    memcpy(q, p, h->size < n ? h->size : n);      /* never more than the old block holds */
    ms_free_block(ctx, p, 0);
    return q;
}

/* Free every cached block (the blocks in use are untouched). */
static size_t ms_empty(void) {
    size_t freed = 0;
    pthread_mutex_lock(&ms_state.lock);
    for (size_t i = 0; i < MS_NBINS; i++) {
        ms_bin *b = &ms_state.bins[i];
        while (b->head) {
            ms_free *f = b->head;
            b->head = f->next;
            ms_release(f);
            freed += b->size_class;
        }
        b->count = 0;
        b->size_class = 0;                        /* the table may hold other sizes now */
    }
    ms_state.cached_bytes = 0;
    pthread_mutex_unlock(&ms_state.lock);
    return freed;
}

#endif
