/* btipac MODE: an arm64 target built with -mbranch-protection=standard (BTI landing pads and
 * pac-ret), for the guest's enforcement checks (scripts/test-aarch64.sh).
 *
 *   btipac serve       prints "ready <pid>"; a worker spins calling compute() and signed()
 *                      (in a guarded page once BTI is enforced); commands: "call N" ->
 *                      "compute N N+1", "signed N" -> "signed N 2N+2" (signed() is not a leaf,
 *                      so it starts with paciasp), "spins" -> "spinning" once the worker's
 *                      counter has moved on.
 *   btipac bad-branch  calls compute() 4 bytes past its entry (past its `bti c`) through a
 *                      pointer: SIGILL where BTI is enforced; else prints "survived", exits 0.
 *   btipac bad-return  replaces its own signed return address on the stack by the unsigned
 *                      one: the authentication fails (SIGSEGV, or SIGILL with FEAT_FPAC) where
 *                      pointer authentication is on; else prints "survived", exits 0. */
#include "../c/common.h"
#include <pthread.h>
#include <stdint.h>

PATCHABLE int compute(int x) { return x + 1; }

__attribute__((noinline)) static int through_pointer(int (*f)(int), int x);

/* Not a leaf: pac-ret signs its return address, so its first instruction is paciasp. */
PATCHABLE int signed_(int x) { return 2 * through_pointer(compute, x); }

static volatile unsigned long spins;

static void *spin(void *arg) {
    (void)arg;
    for (;;) {
        volatile int in = 1;
        compute(in);
        through_pointer(signed_, in); /* an indirect call: its entry must be a landing pad */
        spins++;
    }
    return NULL;
}

__attribute__((noinline)) static int through_pointer(int (*f)(int), int x) { return f(x); }

/* Non-leaf, so pac-ret signs x30 on entry and authenticates it before returning. */
__attribute__((noinline)) static int tamper(void) {
    void **record = __builtin_frame_address(0);
    uintptr_t signed_lr = (uintptr_t)record[1];
    record[1] = (void *)(signed_lr & ((1UL << 48) - 1)); /* the PAC bits dropped */
    return through_pointer(compute, 1);
}

int main(int argc, char **argv) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    const char *mode = argc > 1 ? argv[1] : "serve";
    if (strcmp(mode, "bad-branch") == 0) {
        int (*past_landing_pad)(int) = (int (*)(int))((char *)compute + 4);
        through_pointer(past_landing_pad, 1);
        puts("survived");
        return 0;
    }
    if (strcmp(mode, "bad-return") == 0) {
        tamper();
        puts("survived");
        return 0;
    }
    pthread_t t;
    if (pthread_create(&t, NULL, spin, NULL) != 0)
        return 1;
    while (spins == 0)
        sched_yield();
    announce_ready();
    char line[256];
    while (next_command(line, sizeof line)) {
        long n;
        if (arg_of(line, "call", &n)) {
            volatile int in = (int)n;
            reply("compute %ld %d", n, compute(in));
        } else if (arg_of(line, "signed", &n)) {
            volatile int in = (int)n;
            reply("signed %ld %d", n, signed_(in));
        } else if (strcmp(line, "spins") == 0) {
            unsigned long seen = spins;
            while (spins == seen)
                sched_yield();
            reply("spinning");
        } else {
            reply("error unknown command: %s", line);
        }
    }
    return 0;
}
