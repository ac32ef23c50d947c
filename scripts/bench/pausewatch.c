/* pausewatch [THREADS]: THREADS-1 threads asleep (nanosleep loops) and one watcher thread that
 * reads the monotonic clock in a loop and keeps the longest gap between two reads: how long the
 * process was stopped, as the process itself saw it. For scripts/bench.sh.
 *   reset  -> "reset"           forget the longest gap so far
 *   max    -> "max US"          the longest gap since the last reset, in microseconds
 *   call N -> "compute N R"     (R = N+1; compute is what the benchmark patches) */
#define _GNU_SOURCE
#include "../../test-targets/c/common.h"
#include <pthread.h>
#include <time.h>

PATCHABLE int compute(int x) {
    static volatile int calls;
    calls++;
    return x + 1;
}

static volatile long longest_ns, reset_requested;

static long now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1000000000L + t.tv_nsec;
}

static void *watch(void *arg) {
    (void)arg;
    long last = now_ns();
    for (;;) {
        long t = now_ns();
        if (reset_requested) {
            reset_requested = 0;
            longest_ns = 0;
        } else if (t - last > longest_ns) {
            longest_ns = t - last;
        }
        last = t;
    }
    return NULL;
}

static void *sleep_forever(void *arg) {
    (void)arg;
    for (;;) {
        struct timespec ts = {1, 0};
        nanosleep(&ts, NULL);
    }
    return NULL;
}

int main(int argc, char **argv) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    int threads = argc > 1 ? atoi(argv[1]) : 8;
    pthread_t t;
    pthread_create(&t, NULL, watch, NULL);
    for (int i = 2; i < threads; i++)
        pthread_create(&t, NULL, sleep_forever, NULL);
    announce_ready();
    char line[128];
    while (next_command(line, sizeof line)) {
        long n;
        if (strcmp(line, "reset") == 0) {
            reset_requested = 1;
            while (reset_requested)
                sched_yield();
            reply("reset");
        } else if (strcmp(line, "max") == 0) {
            reply("max %ld", longest_ns / 1000);
        } else if (arg_of(line, "call", &n)) {
            volatile int in = (int)n;
            reply("compute %ld %d", n, compute(in));
        } else {
            reply("error unknown command: %s", line);
        }
    }
    return 0;
}
