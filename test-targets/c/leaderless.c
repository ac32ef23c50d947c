/* leaderless: the main thread exits (pthread_exit) and a worker thread serves the protocol.
 * /proc/PID/{maps,mem,exe} of the zombie main thread read empty: rpatch must use a live
 * thread's.
 *   call N -> "compute N R" (R = N+1) */
#include "common.h"
#include <pthread.h>

PATCHABLE int compute(int x) {
    static volatile int calls;
    calls++;
    return x + 1;
}

static void *serve(void *arg) {
    (void)arg;
    char line[256];
    while (next_command(line, sizeof line)) {
        long n;
        if (arg_of(line, "call", &n)) {
            volatile int in = (int)n;
            reply("compute %ld %d", n, compute(in));
        } else {
            reply("error unknown command: %s", line);
        }
    }
    exit(0);
}

/* Announces readiness only once the main thread is a zombie. */
static void *announce(void *arg) {
    (void)arg;
    char path[64], buf[512];
    snprintf(path, sizeof path, "/proc/%d/stat", (int)getpid());
    for (;;) {
        FILE *f = fopen(path, "r");
        size_t n = f ? fread(buf, 1, sizeof buf - 1, f) : 0;
        if (f)
            fclose(f);
        buf[n] = 0;
        char *close = strrchr(buf, ')');
        if (close && close[2] == 'Z')
            break;
        sched_yield();
    }
    announce_ready();
    return NULL;
}

int main(void) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    pthread_t t;
    pthread_create(&t, NULL, announce, NULL);
    pthread_create(&t, NULL, serve, NULL);
    pthread_exit(NULL);
}
