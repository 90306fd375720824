/*
 * The kernel mount's READ fast path: a loop that reads requests from
 * /dev/fuse and answers a READ of a file whose layout it was shown with one
 * writev whose iovec points into the region. Anything else goes back to
 * Python (fastio.py), which serves it as before and may install what the
 * next READ of that handle needs.
 *
 * What this code may use is a copy Python installs per FUSE handle: the
 * file's visible size, its mapped tiles, and a time after which the entry is
 * not used (the lease's self-fencing point). Every change Python makes to
 * what such a copy was taken from (a layout cached or dropped, a recall, a
 * size seen or written, a fence) calls fio_bump first, which drops every
 * copy under the exclusive lock: no READ served from a dropped copy is in
 * flight when it returns. A copy is installed only if no bump came between
 * the generation Python read before taking it and the install (fio_install).
 *
 * Loaded with ctypes (no Python headers needed), built on first use by
 * fastio.py. Linux only.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#define FUSE_READ 15
#define IN_HEADER 40
#define READ_IN 40
#define OUT_HEADER 16
#define SLOTS 64      /* handles with a copy at once; more evict the oldest slot */
#define MAX_IOV 64    /* pieces of one reply; a READ needing more goes to Python */
#define SIZES 16      /* request sizes counted (the mount's iostats); others are not */

struct tile {
    uint64_t start, length, region;
};

struct entry {
    uint64_t fh;      /* 0: free */
    uint64_t size;    /* visible size: a READ past it is short */
    int64_t until_ns; /* CLOCK_MONOTONIC: not used from then on */
    uint32_t ntiles;
    struct tile *tiles; /* sorted by start, mapped only (holes go to Python) */
};

struct fastio {
    pthread_rwlock_t lock;
    uint64_t gen; /* bumped by fio_bump under the exclusive lock */
    uint8_t *region;
    uint64_t region_length;
    uint32_t next_victim;
    uint64_t reads, read_bytes, fallbacks;
    uint64_t sizes[SIZES][2]; /* (request size, count); size 0: free */
    struct entry slots[SLOTS];
};

void *fio_new(void *region, uint64_t region_length)
{
    struct fastio *f = calloc(1, sizeof *f);
    if (f == NULL)
        return NULL;
    if (pthread_rwlock_init(&f->lock, NULL) != 0) {
        free(f);
        return NULL;
    }
    f->region = region;
    f->region_length = region_length;
    return f;
}

static void clear_all(struct fastio *f)
{
    for (int i = 0; i < SLOTS; i++) {
        free(f->slots[i].tiles);
        memset(&f->slots[i], 0, sizeof f->slots[i]);
    }
}

void fio_free(void *p)
{
    struct fastio *f = p;
    if (f == NULL)
        return;
    clear_all(f);
    pthread_rwlock_destroy(&f->lock);
    free(f);
}

uint64_t fio_gen(void *p)
{
    struct fastio *f = p;
    pthread_rwlock_rdlock(&f->lock);
    uint64_t g = f->gen;
    pthread_rwlock_unlock(&f->lock);
    return g;
}

/* Every copy is dropped; READs served from one have all returned. */
void fio_bump(void *p)
{
    struct fastio *f = p;
    pthread_rwlock_wrlock(&f->lock);
    f->gen++;
    clear_all(f);
    pthread_rwlock_unlock(&f->lock);
}

/* Forget handle ``fh`` (released). */
void fio_forget(void *p, uint64_t fh)
{
    struct fastio *f = p;
    pthread_rwlock_wrlock(&f->lock);
    for (int i = 0; i < SLOTS; i++) {
        if (f->slots[i].fh == fh) {
            free(f->slots[i].tiles);
            memset(&f->slots[i], 0, sizeof f->slots[i]);
        }
    }
    pthread_rwlock_unlock(&f->lock);
}

/*
 * Install a copy for ``fh``: ``tiles`` holds ``ntiles`` triples (file start,
 * length, region offset), sorted and mapped. 1 if installed; 0 if a bump
 * came after ``gen`` was read (the copy may be stale) or a tile lies outside
 * the region; -1 without memory.
 */
int fio_install(void *p, uint64_t fh, uint64_t gen, uint64_t size, int64_t until_ns,
                uint32_t ntiles, const uint64_t *tiles)
{
    struct fastio *f = p;
    if (fh == 0)
        return 0;
    for (uint32_t i = 0; i < ntiles; i++) {
        uint64_t region = tiles[3 * i + 2], length = tiles[3 * i + 1];
        if (region > f->region_length || length > f->region_length - region)
            return 0;
    }
    struct tile *copy = malloc(sizeof(struct tile) * (ntiles ? ntiles : 1));
    if (copy == NULL)
        return -1;
    for (uint32_t i = 0; i < ntiles; i++) {
        copy[i].start = tiles[3 * i];
        copy[i].length = tiles[3 * i + 1];
        copy[i].region = tiles[3 * i + 2];
    }
    pthread_rwlock_wrlock(&f->lock);
    if (gen != f->gen) {
        pthread_rwlock_unlock(&f->lock);
        free(copy);
        return 0;
    }
    struct entry *slot = NULL;
    for (int i = 0; i < SLOTS && slot == NULL; i++)
        if (f->slots[i].fh == fh)
            slot = &f->slots[i];
    for (int i = 0; i < SLOTS && slot == NULL; i++)
        if (f->slots[i].fh == 0)
            slot = &f->slots[i];
    if (slot == NULL) {
        slot = &f->slots[f->next_victim];
        f->next_victim = (f->next_victim + 1) % SLOTS;
    }
    free(slot->tiles);
    slot->fh = fh;
    slot->size = size;
    slot->until_ns = until_ns;
    slot->ntiles = ntiles;
    slot->tiles = copy;
    pthread_rwlock_unlock(&f->lock);
    return 1;
}

/* ``out``: reads, bytes, fallbacks, then SIZES pairs (request size, count). */
void fio_counts(void *p, uint64_t *out)
{
    struct fastio *f = p;
    out[0] = __atomic_load_n(&f->reads, __ATOMIC_RELAXED);
    out[1] = __atomic_load_n(&f->read_bytes, __ATOMIC_RELAXED);
    out[2] = __atomic_load_n(&f->fallbacks, __ATOMIC_RELAXED);
    for (int i = 0; i < SIZES; i++) {
        out[3 + 2 * i] = __atomic_load_n(&f->sizes[i][0], __ATOMIC_RELAXED);
        out[4 + 2 * i] = __atomic_load_n(&f->sizes[i][1], __ATOMIC_RELAXED);
    }
}

/* Count a request of ``size`` bytes (one serving thread at a time calls this). */
static void count_size(struct fastio *f, uint64_t size)
{
    for (int i = 0; i < SIZES; i++) {
        uint64_t s = __atomic_load_n(&f->sizes[i][0], __ATOMIC_RELAXED);
        if (s == 0) {
            __atomic_store_n(&f->sizes[i][0], size, __ATOMIC_RELAXED);
            s = size;
        }
        if (s == size) {
            __atomic_add_fetch(&f->sizes[i][1], 1, __ATOMIC_RELAXED);
            return;
        }
    }
}

static int64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static struct entry *find(struct fastio *f, uint64_t fh)
{
    for (int i = 0; i < SLOTS; i++)
        if (f->slots[i].fh == fh)
            return &f->slots[i];
    return NULL;
}

/*
 * Serve one READ from the copy of its handle, under the shared lock.
 * 1: answered (or the kernel no longer waits for it); 0: Python's to serve;
 * -errno: the reply could not be written.
 */
static int serve_read(struct fastio *f, int fd, const uint8_t *req)
{
    uint64_t unique, fh, offset;
    uint32_t size;
    memcpy(&unique, req + 8, 8);
    memcpy(&fh, req + IN_HEADER, 8);
    memcpy(&offset, req + IN_HEADER + 8, 8);
    memcpy(&size, req + IN_HEADER + 16, 4);

    struct iovec iov[MAX_IOV + 1];
    uint8_t header[OUT_HEADER];
    int answered = 0, err = 0;

    pthread_rwlock_rdlock(&f->lock);
    struct entry *e = find(f, fh);
    if (e == NULL || now_ns() >= e->until_ns)
        goto out;
    uint64_t end = offset + size;
    if (end < offset)
        goto out;
    if (end > e->size)
        end = e->size;
    int n = 1;
    uint64_t pos = offset;
    if (end > offset) {
        /* The first tile ending past ``offset``, then consecutive tiles to ``end``. */
        uint32_t lo = 0, hi = e->ntiles;
        while (lo < hi) {
            uint32_t mid = (lo + hi) / 2;
            if (e->tiles[mid].start + e->tiles[mid].length <= offset)
                lo = mid + 1;
            else
                hi = mid;
        }
        for (uint32_t i = lo; i < e->ntiles && pos < end; i++) {
            const struct tile *t = &e->tiles[i];
            if (t->start > pos || n > MAX_IOV)
                goto out; /* a gap (unknown or a hole) or too many pieces */
            uint64_t piece_end = t->start + t->length < end ? t->start + t->length : end;
            iov[n].iov_base = f->region + t->region + (pos - t->start);
            iov[n].iov_len = piece_end - pos;
            n++;
            pos = piece_end;
        }
        if (pos < end)
            goto out;
    }
    uint32_t length = OUT_HEADER + (uint32_t)(end > offset ? end - offset : 0);
    int32_t zero = 0;
    memcpy(header, &length, 4);
    memcpy(header + 4, &zero, 4);
    memcpy(header + 8, &unique, 8);
    iov[0].iov_base = header;
    iov[0].iov_len = OUT_HEADER;
    answered = 1;
    if (writev(fd, iov, n) < 0 && errno != ENOENT && errno != ENODEV)
        err = -errno;
    __atomic_add_fetch(&f->reads, 1, __ATOMIC_RELAXED);
    __atomic_add_fetch(&f->read_bytes, end > offset ? end - offset : 0, __ATOMIC_RELAXED);
    count_size(f, size);
out:
    pthread_rwlock_unlock(&f->lock);
    if (!answered)
        __atomic_add_fetch(&f->fallbacks, 1, __ATOMIC_RELAXED);
    return err ? err : answered;
}

/*
 * Read requests from ``fd`` into ``buf`` and answer the READs this code can;
 * return the length of the first request it cannot (for Python), 0 once
 * unmounted (ENODEV), or -errno.
 */
ssize_t fio_serve(void *p, int fd, uint8_t *buf, size_t buflen)
{
    struct fastio *f = p;
    for (;;) {
        ssize_t n = read(fd, buf, buflen);
        if (n < 0) {
            if (errno == ENODEV)
                return 0;
            if (errno == EINTR || errno == ENOENT || errno == EAGAIN)
                continue;
            return -errno;
        }
        if (n < IN_HEADER + READ_IN)
            return n;
        uint32_t opcode;
        memcpy(&opcode, buf + 4, 4);
        if (opcode != FUSE_READ)
            return n;
        int r = serve_read(f, fd, buf);
        if (r == 0)
            return n;
        if (r < 0)
            return r;
    }
}
