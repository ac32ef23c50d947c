/* callcost FIX.so: cycles per call (rdtsc, 10^8 calls) of `bump` as it is now (patched or not),
 * of the replacement `bump` in FIX.so called through a pointer (what a patched call should cost
 * at most, plus the jump), and of a function pointer read under a reader-writer lock (what the
 * `hotpatch` crate does on every call). For scripts/bench.sh.
 *   run current|direct|rwlock -> "cycles C" (per call, median of 5 runs of 10^8 calls) */
#define _GNU_SOURCE
#include "../../test-targets/c/common.h"
#include <dlfcn.h>
#include <pthread.h>
#include <stdint.h>
#include <x86intrin.h>

PATCHABLE int bump(int x) {
    static volatile int calls;
    calls++;
    return x + 1;
}

#define CALLS 100000000L

static int (*replacement)(int);
static int (*locked_fn)(int);
static pthread_rwlock_t lock = PTHREAD_RWLOCK_INITIALIZER;

__attribute__((noipa)) static int via_lock(int x) {
    pthread_rwlock_rdlock(&lock);
    int (*f)(int) = locked_fn;
    pthread_rwlock_unlock(&lock);
    return f(x);
}

static double cycles_per_call(int (*call)(int)) {
    double best[5];
    for (int r = 0; r < 5; r++) {
        int acc = 0;
        uint64_t t0 = __rdtsc();
        for (long i = 0; i < CALLS; i++)
            acc = call(acc);
        uint64_t t1 = __rdtsc();
        __asm__ volatile("" ::"r"(acc));
        best[r] = (double)(t1 - t0) / CALLS;
    }
    /* median of 5 */
    for (int i = 0; i < 5; i++)
        for (int j = i + 1; j < 5; j++)
            if (best[j] < best[i]) {
                double t = best[i];
                best[i] = best[j];
                best[j] = t;
            }
    return best[2];
}

/* Each measured loop calls one of these wrappers: bump by its entry (a `call rel32`, as any
 * caller does, through the patch's jumps once patched), or the replacement through a pointer
 * (the call a patch aims to match). */
__attribute__((noipa)) static int call_bump(int x) { return bump(x); }
__attribute__((noipa)) static int call_replacement(int x) { return replacement(x); }

int main(int argc, char **argv) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (argc != 2)
        return 2;
    void *fix = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
    if (!fix || !(replacement = (int (*)(int))dlsym(fix, "bump")))
        return fprintf(stderr, "%s\n", dlerror()), 1;
    locked_fn = replacement;
    announce_ready();
    char line[128];
    while (next_command(line, sizeof line)) {
        if (strcmp(line, "run current") == 0)
            reply("cycles %.2f", cycles_per_call(call_bump));
        else if (strcmp(line, "run direct") == 0)
            reply("cycles %.2f", cycles_per_call(call_replacement));
        else if (strcmp(line, "run rwlock") == 0)
            reply("cycles %.2f", cycles_per_call(via_lock));
        else
            reply("error unknown command: %s", line);
    }
    return 0;
}
