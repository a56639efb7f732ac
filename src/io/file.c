/* file.c - files and paths: read-only mmap, whole-file reads, atomic writes (path.tmp,
 * fsync, rename, fsync of the folder), path joining and tests. POSIX only. */
#include "io_internal.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

/* Opens path read-only and checks that it is a regular file whose size fits size_t.
 * Returns the descriptor in *fd and the size in *size; on failure nothing stays open. */
static mc_status open_regular(const char *path, int *fd, size_t *size) {
    struct stat st;
    int d;
    *fd = -1;
    *size = 0;
    d = open(path, O_RDONLY | O_CLOEXEC);
    if (d < 0) {
        int e = errno;
        if (e == ENOENT || e == ENOTDIR)
            return mc_fail(MC_ERR_FILE_NOT_FOUND, "%s: file not found", path);
        return mc_fail(MC_ERR_IO, "%s: cannot open: %s", path, strerror(e));
    }
    if (fstat(d, &st) != 0) {
        int e = errno;
        (void)close(d);
        return mc_fail(MC_ERR_IO, "%s: cannot stat: %s", path, strerror(e));
    }
    if (!S_ISREG(st.st_mode)) {
        (void)close(d);
        return mc_fail(MC_ERR_IO, "%s: not a regular file", path);
    }
    if (st.st_size < 0 || (uint64_t)st.st_size > (uint64_t)SIZE_MAX) {
        (void)close(d);
        return mc_fail(MC_ERR_IO, "%s: file too large to map", path);
    }
    *fd = d;
    *size = (size_t)st.st_size;
    return MC_OK;
}

mc_status mc_map_file(const char *path, mc_mapped *out) {
    int fd = -1;
    size_t size = 0;
    void *p;
    mc_status st;
    if (!out) return mc_fail(MC_ERR_INVALID_ARG, "mc_map_file: out is NULL");
    out->data = NULL;
    out->size = 0;
    if (!path) return mc_fail(MC_ERR_INVALID_ARG, "mc_map_file: path is NULL");
    st = open_regular(path, &fd, &size);
    if (st != MC_OK) return st;
    if (size == 0) { /* mmap rejects length 0; an empty file is an empty mapping */
        (void)close(fd);
        return MC_OK;
    }
    p = mmap(NULL, size, PROT_READ, MAP_PRIVATE, fd, 0);
    if (p == MAP_FAILED) {
        int e = errno;
        (void)close(fd);
        return mc_fail(MC_ERR_IO, "%s: cannot map %zu bytes: %s", path, size, strerror(e));
    }
    (void)close(fd); /* the mapping keeps the file alive */
    out->data = p;
    out->size = size;
    return MC_OK;
}

void mc_unmap(mc_mapped *m) {
    if (!m) return;
    if (m->data && m->size) (void)munmap((void *)(uintptr_t)m->data, m->size);
    m->data = NULL;
    m->size = 0;
}

mc_status mc_read_file(const char *path, char **out, size_t *len) {
    int fd = -1;
    size_t size = 0, got = 0, cap;
    char *buf = NULL;
    mc_status st;
    if (!out || !len) return mc_fail(MC_ERR_INVALID_ARG, "mc_read_file: out or len is NULL");
    *out = NULL;
    *len = 0;
    if (!path) return mc_fail(MC_ERR_INVALID_ARG, "mc_read_file: path is NULL");
    st = open_regular(path, &fd, &size);
    if (st != MC_OK) return st;
    if (!mc_add_ok(size, 1, &cap)) {
        st = mc_fail(MC_ERR_OOM, "%s: file too large to read", path);
        goto done;
    }
    buf = mc_malloc(cap);
    if (!buf) {
        st = mc_fail(MC_ERR_OOM, "%s: out of memory reading %zu bytes", path, size);
        goto done;
    }
    while (got < size) { /* a file that shrank meanwhile gives what is there */
        ssize_t r = read(fd, buf + got, size - got);
        if (r < 0 && errno == EINTR) continue;
        if (r < 0) {
            st = mc_fail(MC_ERR_IO, "%s: read failed: %s", path, strerror(errno));
            goto done;
        }
        if (r == 0) break;
        got += (size_t)r;
    }
    buf[got] = '\0';
    *out = buf;
    *len = got;
    buf = NULL;
done:
    mc_free(buf);
    (void)close(fd);
    return st;
}

/* ---- atomic writes ------------------------------------------------------------------- */

/* Heap copy of the folder part of path ("." when there is none, "/" for the root). */
static char *dir_of(const char *path) {
    const char *slash = strrchr(path, '/');
    size_t n;
    char *d;
    if (!slash) return mc_strdup(".");
    n = (size_t)(slash - path);
    if (n == 0) n = 1; /* "/file" lives in "/" */
    d = mc_malloc(n + 1);
    if (!d) return NULL;
    memcpy(d, path, n);
    d[n] = '\0';
    return d;
}

/* fsyncs the folder holding path, so a rename in it is durable. Filesystems that cannot
 * sync a folder (EINVAL) are accepted. */
static mc_status sync_dir_of(const char *path) {
    char *dir = dir_of(path);
    int fd;
    mc_status st = MC_OK;
    if (!dir) return mc_fail(MC_ERR_OOM, "%s: out of memory", path);
    fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) {
        st = mc_fail(MC_ERR_IO, "%s: cannot open folder %s: %s", path, dir, strerror(errno));
    } else {
        if (fsync(fd) != 0 && errno != EINVAL)
            st = mc_fail(MC_ERR_IO, "%s: cannot sync folder %s: %s", path, dir, strerror(errno));
        (void)close(fd);
    }
    mc_free(dir);
    return st;
}

/* Frees f's strings and marks it released. */
static void atomic_release(mc_atomic_file *f) {
    mc_free(f->path);
    mc_free(f->tmp);
    f->path = NULL;
    f->tmp = NULL;
    f->fd = -1;
}

mc_status mc_atomic_open(mc_atomic_file *f, const char *path) {
    size_t n;
    f->fd = -1;
    f->path = NULL;
    f->tmp = NULL;
    if (!path || !*path) return mc_fail(MC_ERR_INVALID_ARG, "atomic write: empty path");
    n = strlen(path);
    f->path = mc_strdup(path);
    f->tmp = mc_malloc(n + sizeof ".tmp");
    if (!f->path || !f->tmp) {
        atomic_release(f);
        return mc_fail(MC_ERR_OOM, "%s: out of memory", path);
    }
    memcpy(f->tmp, path, n);
    memcpy(f->tmp + n, ".tmp", sizeof ".tmp");
    f->fd = open(f->tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0644);
    if (f->fd < 0) {
        mc_status st = mc_fail(MC_ERR_IO, "%s: cannot create %s: %s", path, f->tmp, strerror(errno));
        atomic_release(f);
        return st;
    }
    return MC_OK;
}

mc_status mc_atomic_write(mc_atomic_file *f, const void *data, size_t len) {
    const uint8_t *p = data;
    while (len > 0) {
        ssize_t w = write(f->fd, p, len);
        if (w < 0 && errno == EINTR) continue;
        if (w <= 0) return mc_fail(MC_ERR_IO, "%s: write failed: %s", f->tmp, strerror(errno));
        p += (size_t)w;
        len -= (size_t)w;
    }
    return MC_OK;
}

mc_status mc_atomic_commit(mc_atomic_file *f) {
    mc_status st = MC_OK;
    int fd = f->fd;
    if (!f->tmp || !f->path || fd < 0) return mc_fail(MC_ERR_INVALID_ARG, "atomic write: not open");
    f->fd = -1;
    if (fsync(fd) != 0) {
        st = mc_fail(MC_ERR_IO, "%s: fsync failed: %s", f->tmp, strerror(errno));
        (void)close(fd);
        goto done;
    }
    if (close(fd) != 0) {
        st = mc_fail(MC_ERR_IO, "%s: close failed: %s", f->tmp, strerror(errno));
        goto done;
    }
    if (rename(f->tmp, f->path) != 0) {
        st = mc_fail(MC_ERR_IO, "%s: cannot rename %s over it: %s", f->path, f->tmp,
                     strerror(errno));
        goto done;
    }
    st = sync_dir_of(f->path);
done:
    if (st != MC_OK) (void)unlink(f->tmp); /* fails harmlessly once renamed */
    atomic_release(f);
    return st;
}

void mc_atomic_abort(mc_atomic_file *f) {
    if (!f || !f->tmp) return;
    if (f->fd >= 0) (void)close(f->fd);
    (void)unlink(f->tmp);
    atomic_release(f);
}

mc_status mc_write_file_atomic(const char *path, const void *data, size_t len) {
    mc_atomic_file f;
    mc_status st;
    if (!data && len) return mc_fail(MC_ERR_INVALID_ARG, "mc_write_file_atomic: data is NULL");
    st = mc_atomic_open(&f, path);
    if (st != MC_OK) return st;
    st = mc_atomic_write(&f, data, len);
    if (st != MC_OK) {
        mc_atomic_abort(&f);
        return st;
    }
    return mc_atomic_commit(&f);
}

/* ---- paths --------------------------------------------------------------------------- */

bool mc_path_exists(const char *path) {
    struct stat st;
    return path && stat(path, &st) == 0;
}

bool mc_path_is_dir(const char *path) {
    struct stat st;
    return path && stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

char *mc_path_join(const char *dir, const char *name) {
    size_t nd, nn, total;
    bool slash;
    char *p;
    if (!dir || !name) return NULL;
    nd = strlen(dir);
    nn = strlen(name);
    slash = nd > 0 && dir[nd - 1] != '/';
    total = nd + (slash ? 1 : 0) + nn + 1;
    p = mc_malloc(total);
    if (!p) return NULL;
    memcpy(p, dir, nd);
    if (slash) p[nd] = '/';
    memcpy(p + nd + (slash ? 1 : 0), name, nn + 1);
    return p;
}

mc_status mc_mkdir_p(const char *dir) {
    char p[4096];
    size_t n, i;
    if (mc_path_is_dir(dir)) return MC_OK;
    n = strlen(dir);
    if (n == 0) return mc_fail(MC_ERR_INVALID_ARG, "empty folder name");
    if (n >= sizeof p) return mc_fail(MC_ERR_INVALID_ARG, "%.200s...: folder name too long", dir);
    memcpy(p, dir, n + 1);
    for (i = 1; i <= n; i++) {
        char c = p[i];
        if ((c != '/' && c != '\0') || p[i - 1] == '/') continue;
        p[i] = '\0';
        if (mkdir(p, 0755) != 0 && errno != EEXIST)
            return mc_fail(MC_ERR_IO, "%s: cannot create folder: %s", p, strerror(errno));
        if (!mc_path_is_dir(p)) return mc_fail(MC_ERR_NOT_DIR, "%s: exists and is not a folder", p);
        p[i] = c;
    }
    return MC_OK;
}
