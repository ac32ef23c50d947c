/* hot: N threads (argv[1], default 4) call twice_plus_one in a tight loop, so that at any moment
 * some thread is likely to be executing it or about to; the patch must wait for a moment when
 * none is inside its first bytes.
 *
 * Built with -O2 -falign-functions=1 -fcf-protection=none: twice_plus_one is 5 bytes
 * (lea 0x1(%rdi,%rdi,1),%eax; ret), exactly the length of a jmp rel32, and the next function
 * starts right after it (checked by the Makefile with objdump).
 *
 *   q       -> "hot R0 R1 ... R(N-1)"   each thread's latest result for input 10:
 *                                       21 originally, 1020 with fix_hot.so (x*2+1000)
 *   iters   -> "iters I0 I1 ..."         each thread's number of calls so far
 *   call N  -> "twice_plus_one N R"      one call from the main thread */
#define _GNU_SOURCE
#include "common.h"
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>

#define MAX_THREADS 64

PATCHABLE int twice_plus_one(int x) { return x * 2 + 1; }

static volatile int input = 10;
static _Atomic int results[MAX_THREADS];
static _Atomic unsigned long iterations[MAX_THREADS];

static void *spin(void *arg) {
    long i = (long)arg;
    for (;;) {
        int r = twice_plus_one(input);
        atomic_store_explicit(&results[i], r, memory_order_relaxed);
        atomic_fetch_add_explicit(&iterations[i], 1, memory_order_relaxed);
    }
    return NULL;
}

int main(int argc, char **argv) {
    long n = argc > 1 ? strtol(argv[1], NULL, 10) : 4;
    if (n < 1 || n > MAX_THREADS) {
        fprintf(stderr, "hot: thread count must be 1..%d\n", MAX_THREADS);
        return 2;
    }
    for (long i = 0; i < n; i++) {
        pthread_t t;
        if (pthread_create(&t, NULL, spin, (void *)i) != 0) {
            perror("pthread_create");
            return 1;
        }
        char name[16];
        snprintf(name, sizeof name, "spin%ld", i);
        pthread_setname_np(t, name);
    }
    /* Ready only once every thread has produced a result. */
    for (long i = 0; i < n; i++)
        while (atomic_load(&iterations[i]) == 0)
            sched_yield();
    announce_ready();

    char line[256];
    char out[MAX_THREADS * 24 + 16];
    while (next_command(line, sizeof line)) {
        long v;
        if (strcmp(line, "q") == 0 || strcmp(line, "iters") == 0) {
            int q = line[0] == 'q';
            size_t len = (size_t)snprintf(out, sizeof out, q ? "hot" : "iters");
            for (long i = 0; i < n; i++) {
                if (q)
                    len += (size_t)snprintf(out + len, sizeof out - len, " %d",
                                            atomic_load(&results[i]));
                else
                    len += (size_t)snprintf(out + len, sizeof out - len, " %lu",
                                            atomic_load(&iterations[i]));
            }
            reply("%s", out);
        } else if (arg_of(line, "call", &v)) {
            volatile int in = (int)v;
            reply("twice_plus_one %ld %d", v, twice_plus_one(in));
        } else {
            reply("error unknown command: %s", line);
        }
    }
    return 0;
}
