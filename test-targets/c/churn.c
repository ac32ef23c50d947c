/* churn: threads are created and exit all the time (a spawner keeps SPAWNERS short-lived threads
 * coming, each calls compute() a few times and exits), so threads appear and vanish while rpatch
 * freezes the process.
 *   call N  -> "compute N R" (R = N+1)
 *   spawned -> "spawned K" (threads created so far) */
#define _GNU_SOURCE
#include "common.h"
#include <pthread.h>
#include <sched.h>

PATCHABLE int compute(int x) {
    static volatile int calls;
    calls++;
    return x + 1;
}

static volatile long spawned;

static void *short_lived(void *arg) {
    (void)arg;
    for (int i = 0; i < 100; i++) {
        volatile int in = i;
        compute(in);
    }
    return NULL;
}

static void *spawner(void *arg) {
    (void)arg;
    for (;;) {
        pthread_t t;
        if (pthread_create(&t, NULL, short_lived, NULL) == 0) {
            __atomic_add_fetch(&spawned, 1, __ATOMIC_RELAXED);
            pthread_join(t, NULL);
        }
    }
    return NULL;
}

int main(void) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    for (int i = 0; i < 2; i++) {
        pthread_t t;
        pthread_create(&t, NULL, spawner, NULL);
    }
    while (spawned < 10)
        sched_yield();
    announce_ready();
    char line[256];
    while (next_command(line, sizeof line)) {
        long n;
        if (arg_of(line, "call", &n)) {
            volatile int in = (int)n;
            reply("compute %ld %d", n, compute(in));
        } else if (strcmp(line, "spawned") == 0) {
            reply("spawned %ld", spawned);
        } else {
            reply("error unknown command: %s", line);
        }
    }
    return 0;
}
