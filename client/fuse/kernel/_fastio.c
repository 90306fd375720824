/*
 * The kernel mount's data path: a loop that reads requests from /dev/fuse
 * and answers a READ of a file whose layout it was shown with one writev
 * whose iovec points into the region, and a WRITE inside the file's visible
 * size with one memcpy into it. Anything else goes back to Python
 * (fastio.py), which serves it as before and may install what the next
 * request of that handle needs.
 *
 * What this code may use is a copy Python installs per FUSE handle: the
 * file's visible size, its mapped tiles, whether the handle may read and may
 * overwrite, and a time after which the entry is not used (the lease's
 * self-fencing point). Every change Python makes to what such a copy was
 * taken from (a layout cached or dropped, a recall, a size seen or written,
 * a mode seen, a fence) calls fio_bump first, which drops every copy under
 * the exclusive lock: no READ or WRITE served from a dropped copy is in
 * flight when it returns. A copy is installed only if no bump came between
 * the generation Python read before taking it and the install (fio_install).
 *
 * A WRITE this code served is recorded per handle (the span it covers,
 * kept across bumps) until Python takes the records (fio_take_written)
 * before it serves the handle's FLUSH, FSYNC, SETATTR or RELEASE: they make
 * the file dirty (mtime at the next publication) and name what an fsync
 * persists.
 *
 * Loaded with ctypes (no Python headers needed), built on first use by
 * fastio.py. Linux only.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#define FUSE_READ 15
#define FUSE_WRITE 16
#define IN_HEADER 40
#define READ_IN 40
#define WRITE_IN 40
#define OUT_HEADER 16
#define WRITE_OUT 8
#define MAY_READ 1
#define MAY_WRITE 2
#define SLOTS 64      /* handles with a copy at once; more evict the oldest slot */
#define MAX_IOV 64    /* pieces of one reply; a READ needing more goes to Python */
#define SIZES 16      /* request sizes counted (the mount's iostats); others are not */

struct tile {
    uint64_t start, length, region;
};

struct entry {
    uint64_t fh;      /* 0: free */
    uint32_t may;     /* MAY_READ | MAY_WRITE */
    uint64_t size;    /* visible size: a READ past it is short */
    int64_t until_ns; /* CLOCK_MONOTONIC: not used from then on */
    uint32_t ntiles;
    struct tile *tiles; /* sorted by start, mapped only (holes go to Python) */
};

struct written {
    uint64_t fh, lo, hi; /* fh 0: free */
};

struct fastio {
    pthread_rwlock_t lock;
    pthread_mutex_t written_lock; /* guards ``written`` */
    struct written written[SLOTS];
    uint64_t writes, write_bytes;
    uint64_t write_sizes[SIZES][2];
    uint64_t gen; /* bumped by fio_bump under the exclusive lock */
    uint8_t *region;
    uint64_t region_length;
    uint32_t next_victim;
    uint64_t reads, read_bytes, fallbacks, refused;
    /* How long the loop polls for the next request after serving one, before
     * it sleeps in read(2) (ns; 0: never); and how often that caught one. */
    int64_t spin_ns;
    uint64_t spin_caught, spin_missed;
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
    pthread_mutex_init(&f->written_lock, NULL);
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
    pthread_mutex_destroy(&f->written_lock);
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
int fio_install(void *p, uint64_t fh, uint32_t may, uint64_t gen, uint64_t size,
                int64_t until_ns, uint32_t ntiles, const uint64_t *tiles)
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
    slot->may = may;
    slot->size = size;
    slot->until_ns = until_ns;
    slot->ntiles = ntiles;
    slot->tiles = copy;
    pthread_rwlock_unlock(&f->lock);
    return 1;
}

/*
 * ``out``: reads, read bytes, fallbacks, writes, write bytes, then SIZES
 * pairs (READ size, count), then SIZES pairs (WRITE size, count), then the
 * replies the kernel refused.
 */
void fio_counts(void *p, uint64_t *out)
{
    struct fastio *f = p;
    out[0] = __atomic_load_n(&f->reads, __ATOMIC_RELAXED);
    out[1] = __atomic_load_n(&f->read_bytes, __ATOMIC_RELAXED);
    out[2] = __atomic_load_n(&f->fallbacks, __ATOMIC_RELAXED);
    out[3] = __atomic_load_n(&f->writes, __ATOMIC_RELAXED);
    out[4] = __atomic_load_n(&f->write_bytes, __ATOMIC_RELAXED);
    for (int i = 0; i < SIZES; i++) {
        out[5 + 2 * i] = __atomic_load_n(&f->sizes[i][0], __ATOMIC_RELAXED);
        out[6 + 2 * i] = __atomic_load_n(&f->sizes[i][1], __ATOMIC_RELAXED);
        out[5 + 2 * SIZES + 2 * i] = __atomic_load_n(&f->write_sizes[i][0], __ATOMIC_RELAXED);
        out[6 + 2 * SIZES + 2 * i] = __atomic_load_n(&f->write_sizes[i][1], __ATOMIC_RELAXED);
    }
    out[5 + 4 * SIZES] = __atomic_load_n(&f->refused, __ATOMIC_RELAXED);
}

/* Count a request of ``size`` bytes (one serving thread at a time calls this). */
static void count_size(uint64_t (*sizes)[2], uint64_t size)
{
    for (int i = 0; i < SIZES; i++) {
        uint64_t s = __atomic_load_n(&sizes[i][0], __ATOMIC_RELAXED);
        if (s == 0) {
            __atomic_store_n(&sizes[i][0], size, __ATOMIC_RELAXED);
            s = size;
        }
        if (s == size) {
            __atomic_add_fetch(&sizes[i][1], 1, __ATOMIC_RELAXED);
            return;
        }
    }
}

/*
 * Take the records of WRITEs served here: up to ``max`` triples (fh, lo, hi)
 * into ``out``; returns how many (the rest stay for the next call).
 */
uint32_t fio_take_written(void *p, uint64_t *out, uint32_t max)
{
    struct fastio *f = p;
    uint32_t n = 0;
    pthread_mutex_lock(&f->written_lock);
    for (int i = 0; i < SLOTS && n < max; i++) {
        struct written *w = &f->written[i];
        if (w->fh == 0)
            continue;
        out[3 * n] = w->fh;
        out[3 * n + 1] = w->lo;
        out[3 * n + 2] = w->hi;
        n++;
        w->fh = 0;
    }
    pthread_mutex_unlock(&f->written_lock);
    return n;
}

/* Record a WRITE of [lo, hi) through ``fh``; 0 if the table is full. */
static int record_written(struct fastio *f, uint64_t fh, uint64_t lo, uint64_t hi)
{
    struct written *free_slot = NULL;
    int ok = 0;
    pthread_mutex_lock(&f->written_lock);
    for (int i = 0; i < SLOTS; i++) {
        struct written *w = &f->written[i];
        if (w->fh == fh) {
            if (lo < w->lo)
                w->lo = lo;
            if (hi > w->hi)
                w->hi = hi;
            ok = 1;
            break;
        }
        if (w->fh == 0 && free_slot == NULL)
            free_slot = w;
    }
    if (!ok && free_slot != NULL) {
        free_slot->fh = fh;
        free_slot->lo = lo;
        free_slot->hi = hi;
        ok = 1;
    }
    pthread_mutex_unlock(&f->written_lock);
    return ok;
}

/* A free record for ``fh`` exists (or its own): a WRITE served now can be recorded. */
static int can_record(struct fastio *f, uint64_t fh)
{
    int ok = 0;
    pthread_mutex_lock(&f->written_lock);
    for (int i = 0; i < SLOTS && !ok; i++)
        ok = f->written[i].fh == fh || f->written[i].fh == 0;
    pthread_mutex_unlock(&f->written_lock);
    return ok;
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

/* What a READ and a WRITE start alike with: the request's id, then
 * fuse_read_in's and fuse_write_in's first fields. */
struct io_head {
    uint64_t unique, fh, offset;
    uint32_t size;
};

static struct io_head io_head(const uint8_t *req)
{
    struct io_head h;
    memcpy(&h.unique, req + 8, 8);
    memcpy(&h.fh, req + IN_HEADER, 8);
    memcpy(&h.offset, req + IN_HEADER + 8, 8);
    memcpy(&h.size, req + IN_HEADER + 16, 4);
    return h;
}

/*
 * The region pieces holding bytes [offset, end) of ``e``'s file, in order,
 * into ``out`` (at most ``max``); their count, or -1 when a part is not
 * known to be mapped (a hole, a gap) or takes more pieces. Under the lock.
 */
static int map_range(const struct fastio *f, const struct entry *e, uint64_t offset,
                     uint64_t end, struct iovec *out, int max)
{
    /* The first tile ending past ``offset``, then consecutive tiles to ``end``. */
    uint32_t lo = 0, hi = e->ntiles;
    while (lo < hi) {
        uint32_t mid = (lo + hi) / 2;
        if (e->tiles[mid].start + e->tiles[mid].length <= offset)
            lo = mid + 1;
        else
            hi = mid;
    }
    int n = 0;
    uint64_t pos = offset;
    for (uint32_t i = lo; i < e->ntiles && pos < end; i++) {
        const struct tile *t = &e->tiles[i];
        if (t->start > pos || n == max)
            return -1;
        uint64_t piece_end = t->start + t->length < end ? t->start + t->length : end;
        out[n].iov_base = f->region + t->region + (pos - t->start);
        out[n].iov_len = piece_end - pos;
        n++;
        pos = piece_end;
    }
    return pos < end ? -1 : n;
}

/*
 * Serve one READ from the copy of its handle, under the shared lock.
 * 1: answered; 0: Python's to serve. A reply the kernel refuses is counted
 * (``refused``; Python's path logs it) and the loop goes on, as Python's does.
 */
static int serve_read(struct fastio *f, int fd, const uint8_t *req)
{
    const struct io_head h = io_head(req);
    const uint64_t unique = h.unique, fh = h.fh, offset = h.offset;
    const uint32_t size = h.size;

    struct iovec iov[MAX_IOV + 1];
    uint8_t header[OUT_HEADER];
    int answered = 0;

    pthread_rwlock_rdlock(&f->lock);
    struct entry *e = find(f, fh);
    if (e == NULL || !(e->may & MAY_READ) || now_ns() >= e->until_ns)
        goto out;
    uint64_t end = offset + size;
    if (end < offset)
        goto out;
    if (end > e->size)
        end = e->size;
    int n = 0;
    if (end > offset && (n = map_range(f, e, offset, end, iov + 1, MAX_IOV)) < 0)
        goto out;
    n += 1; /* and the header */
    uint32_t length = OUT_HEADER + (uint32_t)(end > offset ? end - offset : 0);
    int32_t zero = 0;
    memcpy(header, &length, 4);
    memcpy(header + 4, &zero, 4);
    memcpy(header + 8, &unique, 8);
    iov[0].iov_base = header;
    iov[0].iov_len = OUT_HEADER;
    answered = 1;
    if (writev(fd, iov, n) < 0 && errno != ENOENT && errno != ENODEV)
        __atomic_add_fetch(&f->refused, 1, __ATOMIC_RELAXED);
    __atomic_add_fetch(&f->reads, 1, __ATOMIC_RELAXED);
    __atomic_add_fetch(&f->read_bytes, end > offset ? end - offset : 0, __ATOMIC_RELAXED);
    count_size(f->sizes, size);
out:
    pthread_rwlock_unlock(&f->lock);
    if (!answered)
        __atomic_add_fetch(&f->fallbacks, 1, __ATOMIC_RELAXED);
    return answered;
}

/*
 * Serve one WRITE inside the visible size (an overwrite: the size model and
 * the layout stay as they are) from the copy of its handle, under the shared
 * lock. 1: answered; 0: Python's to serve (a refused reply as for a READ).
 */
static int serve_write(struct fastio *f, int fd, const uint8_t *req, size_t n)
{
    const struct io_head h = io_head(req);
    const uint64_t unique = h.unique, fh = h.fh, offset = h.offset;
    const uint32_t size = h.size;
    const uint8_t *data = req + IN_HEADER + WRITE_IN;
    if (size == 0 || (size_t)IN_HEADER + WRITE_IN + size > n)
        goto fallback; /* Python answers the odd ones (and EINVAL) */

    struct iovec piece[MAX_IOV];
    int pieces = 0, answered = 0;
    uint64_t end = offset + size;

    pthread_rwlock_rdlock(&f->lock);
    struct entry *e = find(f, fh);
    if (e == NULL || !(e->may & MAY_WRITE) || end < offset || end > e->size)
        goto out;
    if ((pieces = map_range(f, e, offset, end, piece, MAX_IOV)) < 0 || !can_record(f, fh))
        goto out;
    /* The lease checked just before the copy, as Python's _store does per piece
     * (a request is at most 1 MiB, one piece there). */
    if (now_ns() >= e->until_ns)
        goto out;
    for (int i = 0; i < pieces; i++) {
        memcpy(piece[i].iov_base, data, piece[i].iov_len);
        data += piece[i].iov_len;
    }
    record_written(f, fh, offset, end);
    uint8_t reply[OUT_HEADER + WRITE_OUT];
    uint32_t length = OUT_HEADER + WRITE_OUT, zero = 0;
    int32_t ok = 0;
    memcpy(reply, &length, 4);
    memcpy(reply + 4, &ok, 4);
    memcpy(reply + 8, &unique, 8);
    memcpy(reply + 16, &size, 4);
    memcpy(reply + 20, &zero, 4);
    answered = 1;
    if (write(fd, reply, sizeof reply) < 0 && errno != ENOENT && errno != ENODEV)
        __atomic_add_fetch(&f->refused, 1, __ATOMIC_RELAXED);
    __atomic_add_fetch(&f->writes, 1, __ATOMIC_RELAXED);
    __atomic_add_fetch(&f->write_bytes, size, __ATOMIC_RELAXED);
    count_size(f->write_sizes, size);
out:
    pthread_rwlock_unlock(&f->lock);
    if (answered)
        return 1;
fallback:
    __atomic_add_fetch(&f->fallbacks, 1, __ATOMIC_RELAXED);
    return 0;
}

/*
 * Read requests from ``fd`` into ``buf`` and answer the READs and WRITEs this code can;
 * return the length of the first request it cannot (for Python), 0 once
 * unmounted (ENODEV), or -errno.
 */
void fio_set_spin(void *p, int64_t ns)
{
    ((struct fastio *)p)->spin_ns = ns;
}

void fio_spins(void *p, uint64_t *out)
{
    struct fastio *f = p;
    out[0] = f->spin_caught;
    out[1] = f->spin_missed;
}

/* After a request answered (here, or by Python just before it called in), wait
 * for the next one awake for up to spin_ns:
 * a synchronous reader sends it a few microseconds after our reply, and a
 * thread that slept in read(2) is woken on another CPU, which costs more
 * than the whole request on a virtual machine (fio psync 4 KiB reads here:
 * 25,000 per second across CPUs, 135,000 with both on one). Yields between
 * polls, so a task waiting for this CPU (the reader itself) runs first. */
static void spin(struct fastio *f, int fd)
{
    struct pollfd p = {.fd = fd, .events = POLLIN};
    int64_t until = now_ns() + f->spin_ns;
    do {
        if (poll(&p, 1, 0) > 0) {
            f->spin_caught++;
            return;
        }
        sched_yield();
    } while (now_ns() < until);
    f->spin_missed++;
}

/* ``answered``: the caller (Python) has just answered a request, so the next
 * may be close too: wait awake for it as after one answered here. */
ssize_t fio_serve(void *p, int fd, uint8_t *buf, size_t buflen, int answered)
{
    struct fastio *f = p;
    int served = answered; /* the last request was answered: the next may be close */
    for (;;) {
        if (served && f->spin_ns > 0)
            spin(f, fd);
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
        int r;
        if (opcode == FUSE_READ)
            r = serve_read(f, fd, buf);
        else if (opcode == FUSE_WRITE)
            r = serve_write(f, fd, buf, (size_t)n);
        else
            return n;
        if (r == 0)
            return n;
        served = 1;
    }
}
