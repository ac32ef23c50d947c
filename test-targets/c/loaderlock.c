/* loaderlock: a thread can be made to hold the dynamic loader's lock: it dlopen()s
 * blocking_ctor.so, whose constructor blocks reading fd 100 (a pipe) until `unlock`.
 *   lock    -> "locked": a thread is inside dlopen, in the blocking constructor
 *   unlock  -> "unlocked N": one byte written to the pipe (each blocking constructor takes one);
 *              N = constructors that finished so far
 *   call N  -> "compute N R" (R = N+1)
 * A spare thread blocks in read() so that a borrowed thread is not the one answering. */
#define _GNU_SOURCE
#include "common.h"
#include <dlfcn.h>
#include <pthread.h>

PATCHABLE int compute(int x) {
    static volatile int calls;
    calls++;
    return x + 1;
}

/* Set by blocking_ctor.so's constructor (exported: linked with -rdynamic). */
volatile int ctor_entered;
volatile int ctor_finished;
static char lib_path[4096];

/* A thread blocked in read() on a pipe nobody writes: the thread rpatch prefers to borrow, so
 * the main thread stays free to answer while a borrowed thread waits in the loader. */
static int spare_fds[2];
static void *spare(void *arg) {
    (void)arg;
    char c;
    for (;;)
        if (read(spare_fds[0], &c, 1) < 0) {
        }
    return NULL;
}

static void *load(void *arg) {
    (void)arg;
    if (!dlopen(lib_path, RTLD_NOW))
        fprintf(stderr, "dlopen: %s\n", dlerror());
    return NULL;
}

int main(int argc, char **argv) {
    (void)argc;
    setvbuf(stdout, NULL, _IOLBF, 0);
    int fds[2];
    if (pipe(fds) != 0 || dup2(fds[0], 100) != 100 || pipe(spare_fds) != 0)
        return 1;
    pthread_t spare_thread;
    pthread_create(&spare_thread, NULL, spare, NULL);
    /* blocking_ctor.so lives beside this executable. */
    snprintf(lib_path, sizeof lib_path, "%s", argv[0]);
    char *slash = strrchr(lib_path, '/');
    snprintf(slash ? slash + 1 : lib_path, sizeof lib_path - (slash ? (size_t)(slash + 1 - lib_path) : 0),
             "blocking_ctor.so");
    announce_ready();
    char line[256];
    while (next_command(line, sizeof line)) {
        long n;
        if (strcmp(line, "lock") == 0) {
            int before = ctor_entered;
            pthread_t t;
            pthread_create(&t, NULL, load, NULL);
            pthread_detach(t);
            while (ctor_entered == before)
                sched_yield();
            reply("locked");
        } else if (strcmp(line, "unlock") == 0) {
            int before = ctor_finished;
            if (write(fds[1], "x", 1) != 1)
                return 1;
            while (ctor_finished == before)
                sched_yield();
            reply("unlocked %d", ctor_finished);
        } else if (arg_of(line, "call", &n)) {
            volatile int in = (int)n;
            reply("compute %ld %d", n, compute(in));
        } else {
            reply("error unknown command: %s", line);
        }
    }
    return 0;
}
