/*
 * Power-loss model for nestdb-server's durability test (LD_PRELOAD).
 *
 * SIGKILL keeps the page cache, so it only proves "written before
 * acknowledged". This shim records what a power cut would keep instead:
 *  - a file's contents are durable only as of its last fsync/fdatasync;
 *  - a directory's entries (creates, renames, links, unlinks) are durable
 *    only as of the last fsync of the directory.
 * On each fsync of a file under $POWERLOSS_DIR it copies the file to
 * $POWERLOSS_STATE/ino-<inode>; on each fsync of that directory it writes
 * the directory's name -> inode map to $POWERLOSS_STATE/dir.map. At start
 * it takes everything already there as durable. After the test SIGKILLs
 * the server it rebuilds the directory from these records alone (plus, at
 * random, part of the unsynced tail: writes that happened to reach the
 * disk), which is what the machine would find after the cut.
 *
 * Only fsync and fdatasync are intercepted; nestdb-server calls them from
 * its single event-loop thread.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static const char *dir_env(void) { return getenv("POWERLOSS_DIR"); }
static const char *state_env(void) { return getenv("POWERLOSS_STATE"); }

/*
 * Copies what `fd` refers to into `dst`. The copy reads through a fresh
 * read-only descriptor from /proc/self/fd: the caller's may be write-only
 * (nestdb writes its compaction temporary with O_WRONLY), and pread on it
 * fails with EBADF. That failure once went unnoticed here and made the
 * model forget every compacted log: a copy that cannot be made now stops
 * the server (the test then fails saying why) instead of recording a lie.
 */
static void copy_fd_to(int fd, const char *dst) {
    char link[64], tmp[PATH_MAX];
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    snprintf(tmp, sizeof tmp, "%s.tmp", dst);
    int in = open(link, O_RDONLY | O_CLOEXEC);
    int out = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (in < 0 || out < 0) goto fail;
    char buf[65536];
    for (;;) {
        ssize_t n = read(in, buf, sizeof buf);
        if (n < 0) goto fail;
        if (n == 0) break;
        if (write(out, buf, (size_t)n) != n) goto fail;
    }
    close(in);
    close(out);
    if (rename(tmp, dst) == 0) return;
fail:
    fprintf(stderr, "powerloss shim: cannot record %s as durable (%s); stopping\n", dst,
            strerror(errno));
    abort();
}

/* The durable directory map: "inode name" per line. */
static void snapshot_dir(const char *dir, const char *state) {
    char map[PATH_MAX], tmp[PATH_MAX];
    snprintf(map, sizeof map, "%s/dir.map", state);
    snprintf(tmp, sizeof tmp, "%s/dir.map.tmp", state);
    FILE *f = fopen(tmp, "w");
    if (!f) return;
    DIR *d = opendir(dir);
    if (d) {
        struct dirent *e;
        while ((e = readdir(d))) {
            if (e->d_name[0] == '.' && (!e->d_name[1] || (e->d_name[1] == '.' && !e->d_name[2])))
                continue;
            char p[PATH_MAX];
            struct stat st;
            snprintf(p, sizeof p, "%s/%s", dir, e->d_name);
            if (lstat(p, &st) == 0 && S_ISREG(st.st_mode))
                fprintf(f, "%lu %s\n", (unsigned long)st.st_ino, e->d_name);
        }
        closedir(d);
    }
    fclose(f);
    rename(tmp, map);
}

static int under_dir(int fd, char *path, size_t len) {
    const char *dir = dir_env();
    if (!dir || !state_env()) return 0;
    char link[64];
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    ssize_t n = readlink(link, path, len - 1);
    if (n <= 0) return 0;
    path[n] = 0;
    size_t dl = strlen(dir);
    return strncmp(path, dir, dl) == 0 && (path[dl] == 0 || path[dl] == '/');
}

static void record(int fd) {
    char path[PATH_MAX];
    int saved = errno;
    if (under_dir(fd, path, sizeof path)) {
        struct stat st;
        if (fstat(fd, &st) == 0) {
            if (S_ISDIR(st.st_mode)) {
                snapshot_dir(dir_env(), state_env());
            } else if (S_ISREG(st.st_mode)) {
                char dst[PATH_MAX];
                snprintf(dst, sizeof dst, "%s/ino-%lu", state_env(), (unsigned long)st.st_ino);
                copy_fd_to(fd, dst);
            }
        }
    }
    errno = saved;
}

int fsync(int fd) {
    static int (*real)(int);
    if (!real) real = (int (*)(int))dlsym(RTLD_NEXT, "fsync");
    int r = real(fd);
    if (r == 0) record(fd);
    return r;
}

int fdatasync(int fd) {
    static int (*real)(int);
    if (!real) real = (int (*)(int))dlsym(RTLD_NEXT, "fdatasync");
    int r = real(fd);
    if (r == 0) record(fd);
    return r;
}

/* What exists at start is durable (the test restored it). */
__attribute__((constructor)) static void start(void) {
    const char *dir = dir_env(), *state = state_env();
    if (!dir || !state) return;
    snapshot_dir(dir, state);
    DIR *d = opendir(dir);
    if (!d) return;
    struct dirent *e;
    while ((e = readdir(d))) {
        char p[PATH_MAX];
        snprintf(p, sizeof p, "%s/%s", dir, e->d_name);
        struct stat st;
        if (lstat(p, &st) != 0 || !S_ISREG(st.st_mode)) continue;
        int fd = open(p, O_RDONLY);
        if (fd < 0) continue;
        char dst[PATH_MAX];
        snprintf(dst, sizeof dst, "%s/ino-%lu", state, (unsigned long)st.st_ino);
        copy_fd_to(fd, dst);
        close(fd);
    }
    closedir(d);
}
