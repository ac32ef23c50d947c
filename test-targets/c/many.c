/* many [THREADS]: THREADS threads (default 256) blocked in pthread_cond_wait, nanosleep and
 * read, plus, on request, one thread deep in a recursion of `recurse`.
 *   call N   -> "compute N R" (R = N+1)
 *   deep D   -> "deep D": a thread has entered recurse() D levels deep and blocks at the bottom
 *   release  -> "released R": the recursion unwinds and returns R (= D)
 *   threads  -> "threads T" (threads started)
 * With fix_many.so's recurse (which blocks at once and returns -n), `release` gives "released -D". */
#define _GNU_SOURCE
#include "common.h"
#include <pthread.h>
#include <sys/syscall.h>
#include <time.h>

PATCHABLE int compute(int x) {
    static volatile int calls;
    calls++;
    return x + 1;
}

/* Exported (the target is linked with -rdynamic) for fix_many.so's replacement of recurse. */
int deep_pipe[2];
volatile int at_bottom;
static int idle_pipe[2];
static volatile long result;

PATCHABLE int recurse(int n) {
    if (n == 0) {
        char c;
        at_bottom = 1;
        while (read(deep_pipe[0], &c, 1) != 1) {
        }
        return 0;
    }
    return recurse(n - 1) + 1;
}

static void *deep(void *arg) {
    result = recurse((int)(long)arg);
    return NULL;
}

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cv = PTHREAD_COND_INITIALIZER;
static volatile int started;

static void *idle(void *arg) {
    long i = (long)arg;
    __atomic_add_fetch(&started, 1, __ATOMIC_RELAXED);
    for (;;) {
        if (i % 3 == 0) {
            pthread_mutex_lock(&mu);
            pthread_cond_wait(&cv, &mu);
            pthread_mutex_unlock(&mu);
        } else if (i % 3 == 1) {
            struct timespec ts = {0, 100 * 1000 * 1000};
            nanosleep(&ts, NULL);
        } else {
            char c;
            if (read(idle_pipe[0], &c, 1) < 0) {
            }
        }
    }
    return NULL;
}

int main(int argc, char **argv) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    int threads = argc > 1 ? atoi(argv[1]) : 256;
    if (pipe(deep_pipe) != 0 || pipe(idle_pipe) != 0)
        return 1;
    pthread_attr_t small;
    pthread_attr_init(&small);
    pthread_attr_setstacksize(&small, 64 * 1024);
    for (long i = 0; i < threads; i++) {
        pthread_t t;
        if (pthread_create(&t, &small, idle, (void *)i) != 0)
            return 1;
    }
    while (started < threads)
        sched_yield();
    announce_ready();
    char line[256];
    pthread_t deep_thread;
    while (next_command(line, sizeof line)) {
        long n;
        if (arg_of(line, "call", &n)) {
            volatile int in = (int)n;
            reply("compute %ld %d", n, compute(in));
        } else if (arg_of(line, "deep", &n)) {
            at_bottom = 0;
            pthread_create(&deep_thread, NULL, deep, (void *)n);
            while (!at_bottom)
                sched_yield();
            reply("deep %ld", n);
        } else if (strcmp(line, "release") == 0) {
            if (write(deep_pipe[1], "x", 1) != 1)
                return 1;
            pthread_join(deep_thread, NULL);
            reply("released %ld", result);
        } else if (strcmp(line, "threads") == 0) {
            reply("threads %d", started);
        } else {
            reply("error unknown command: %s", line);
        }
    }
    return 0;
}
