/*
 * Power-loss model for the durability tests (LD_PRELOAD), shared by
 * nestdb's (nestdb/tests/powerloss.rs) and sluiced's state file's
 * (datapath/tests/powercut_state.rs); the Rust side is
 * sluice_testkit::powerloss.
 *
 * SIGKILL keeps the page cache, so it only proves "written before
 * acknowledged". This shim records what a power cut would keep instead:
 *  - a file's contents are durable only as of its last fsync/fdatasync;
 *  - a directory's entries (creates, renames, links, unlinks) are durable
 *    only as of the last fsync of the directory.
 * On each fsync of a file under the watched directory ($POWERLOSS_DIR) it
 * copies the file to $POWERLOSS_STATE/ino-<inode>; on each fsync of that
 * directory it writes the directory's name -> inode map to
 * $POWERLOSS_STATE/dir.map. At start it takes everything already there as
 * durable. After the cut the test rebuilds the directory from these
 * records alone (plus, at random, part of the unsynced tail: writes that
 * happened to reach the disk), which is what the machine would find.
 *
 * The cut itself:
 *  - a process the test SIGKILLs: the cut is the kill;
 *  - $POWERLOSS_KILL_AT=n: the process SIGKILLs itself when it calls its
 *    (n+1)th fsync/fdatasync under the directory (after n recorded ones),
 *    so the cut lands exactly between two syncs of the code under test;
 *  - in process (the test binary itself runs under the shim):
 *    powerloss_configure(dir, state) watches a directory (and takes what
 *    is there as durable), powerloss_arm(n) lets n more syncs be recorded,
 *    then the power is off: every later sync under the directory fails
 *    with EIO and records nothing (powerloss_is_cut() says so), so the code
 *    under test stops where a power cut would have stopped it.
 *
 * Only fsync and fdatasync are intercepted (sync_file_range, O_SYNC and
 * O_DSYNC writes are not modelled: the code under test must not use
 * them). Thread-safe: a mutex serialises the bookkeeping.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
/* Set by powerloss_configure; else the environment's. */
static char cfg_dir[PATH_MAX], cfg_state[PATH_MAX];
/* Recorded syncs left before the cut; < 0: no cut armed. */
static long left = -1;
static int cut;
static long syncs;

static const char *dir_env(void) { return cfg_dir[0] ? cfg_dir : getenv("POWERLOSS_DIR"); }
static const char *state_env(void) { return cfg_state[0] ? cfg_state : getenv("POWERLOSS_STATE"); }

/*
 * Copies what `fd` refers to into `dst`. The copy reads through a fresh
 * read-only descriptor from /proc/self/fd: the caller's may be write-only
 * (nestdb writes its compaction temporary with O_WRONLY), and pread on it
 * fails with EBADF. That failure once went unnoticed here and made the
 * model forget every compacted log: a copy that cannot be made now stops
 * the process (the test then fails saying why) instead of recording a lie.
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
    if (!f) {
        fprintf(stderr, "powerloss shim: cannot write %s (%s); stopping\n", tmp, strerror(errno));
        abort();
    }
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

/* Before the real sync: 0 to go on, -1 (errno EIO) when the power is off. */
static int before_sync(int fd) {
    char path[PATH_MAX];
    int saved = errno;
    int r = 0;
    pthread_mutex_lock(&lock);
    if (under_dir(fd, path, sizeof path)) {
        const char *kill_at = getenv("POWERLOSS_KILL_AT");
        if (kill_at && syncs >= atol(kill_at)) {
            raise(SIGKILL);
        }
        if (cut || left == 0) {
            cut = 1;
            r = -1;
        }
    }
    pthread_mutex_unlock(&lock);
    errno = r ? EIO : saved;
    return r;
}

static void record(int fd) {
    char path[PATH_MAX];
    int saved = errno;
    pthread_mutex_lock(&lock);
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
            syncs++;
            if (left > 0) left--;
        }
    }
    pthread_mutex_unlock(&lock);
    errno = saved;
}

int fsync(int fd) {
    static int (*real)(int);
    if (!real) real = (int (*)(int))dlsym(RTLD_NEXT, "fsync");
    if (before_sync(fd)) return -1;
    int r = real(fd);
    if (r == 0) record(fd);
    return r;
}

int fdatasync(int fd) {
    static int (*real)(int);
    if (!real) real = (int (*)(int))dlsym(RTLD_NEXT, "fdatasync");
    if (before_sync(fd)) return -1;
    int r = real(fd);
    if (r == 0) record(fd);
    return r;
}

/* Everything now in the watched directory is durable (the test put it there). */
static void take_all_as_durable(void) {
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

/* What exists at start is durable (the test restored it). */
__attribute__((constructor)) static void start(void) { take_all_as_durable(); }

/*
 * In process: watch `dir` with the records in `state` (both absolute,
 * existing), take what is in `dir` as durable, reset the sync count and
 * disarm the cut. Returns 0, or -1 when a path is too long.
 */
int powerloss_configure(const char *dir, const char *state) {
    if (strlen(dir) >= PATH_MAX || strlen(state) >= PATH_MAX) return -1;
    pthread_mutex_lock(&lock);
    snprintf(cfg_dir, sizeof cfg_dir, "%s", dir);
    snprintf(cfg_state, sizeof cfg_state, "%s", state);
    left = -1;
    cut = 0;
    syncs = 0;
    take_all_as_durable();
    pthread_mutex_unlock(&lock);
    return 0;
}

/* In process: `n` more syncs are recorded, then the power is off (n < 0: never). */
void powerloss_arm(long n) {
    pthread_mutex_lock(&lock);
    left = n;
    cut = 0;
    pthread_mutex_unlock(&lock);
}

/* In process: 1 once a sync was refused because the power is off. */
int powerloss_is_cut(void) {
    pthread_mutex_lock(&lock);
    int c = cut;
    pthread_mutex_unlock(&lock);
    return c;
}

/* Syncs recorded since the start (or the last powerloss_configure). */
long powerloss_syncs(void) {
    pthread_mutex_lock(&lock);
    long s = syncs;
    pthread_mutex_unlock(&lock);
    return s;
}
