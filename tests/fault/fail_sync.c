/* An LD_PRELOAD shim for the system tests: a real fault under a real
 * node. While the file named by ETP_FAIL_SYNC exists, fsync and fdatasync
 * take ETP_FAIL_SYNC_MS milliseconds (default 300) and then fail with EIO,
 * as a disk that lost a write does; otherwise they are the real calls. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

static int failing(void) {
    const char *f = getenv("ETP_FAIL_SYNC");
    if (f == NULL || access(f, F_OK) != 0) {
        return 0;
    }
    const char *ms = getenv("ETP_FAIL_SYNC_MS");
    long wait = ms ? atol(ms) : 300;
    struct timespec t = {wait / 1000, (wait % 1000) * 1000000L};
    nanosleep(&t, NULL);
    return 1;
}

/* The real call `name`, or EIO while failing. */
static int sync_or_fail(const char *name, int (**real)(int), int fd) {
    if (failing()) {
        errno = EIO;
        return -1;
    }
    if (!*real) {
        *real = (int (*)(int))dlsym(RTLD_NEXT, name);
    }
    return (*real)(fd);
}

int fdatasync(int fd) {
    static int (*real)(int);
    return sync_or_fail("fdatasync", &real, fd);
}

int fsync(int fd) {
    static int (*real)(int);
    return sync_or_fail("fsync", &real, fd);
}
