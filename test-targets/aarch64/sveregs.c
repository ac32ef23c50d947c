/* sveregs VL: a worker thread holds known values in every SVE register — Z0–Z31, P0–P15 and
 * FFR — and in FPCR, at vector length VL bytes (set with PR_SVE_SET_VL | PR_SVE_VL_INHERIT),
 * and checks them in a loop that makes no system call and no function call (sve_hold in
 * sve-hold.S), so its SVE state stays live while rpatch borrows it. The main thread serves
 * the commands from inside a SIGUSR1 handler: rpatch never borrows a thread in a signal
 * handler, so the worker is its only choice.
 *
 * Prints "ready <pid>", then "holding <tid> vl=<vl> inherit=<0|1>" once the worker has
 * filled its registers (or "unsupported" without SVE). Commands:
 *   call N   -> "compute N <compute(N)>"
 *   check    -> "rounds=<R> bad=<B>"   R: checks passed so far; B: 0 while every register
 *              held its value, else what differed (the byte offset + 1 in the Z0..Z31,
 *              P0..P15, FFR dump, -1 FPCR, -2 the vector length); the worker stops at the first
 *   stop     -> "stopped rounds=<R> bad=<B> vl=<before>/<after> inherit=<before>/<after>":
 *              the worker leaves its loop and reads its vector length again (prctl)
 * Exits on EOF. */
#define _GNU_SOURCE
#include "../c/common.h"
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <sys/auxv.h>
#include <sys/prctl.h>

#ifndef PR_SVE_SET_VL
#define PR_SVE_SET_VL 50
#define PR_SVE_GET_VL 51
#define PR_SVE_VL_LEN_MASK 0xffff
#define PR_SVE_VL_INHERIT (1 << 17)
#endif

/* Fills Z0–Z31, P0–P15, FFR from `expect` (laid out as in NT_ARM_SVE: Z, then P, then FFR)
 * and FPCR with `fpcr`, then stores and compares them with `expect` until control[0] is set.
 * control[1] counts the checks passed. Returns 0, or what differed (see above). */
long sve_hold(const uint8_t *expect, uint8_t *seen, volatile long *control, uint64_t fpcr);

/* Round toward plus infinity, default NaN: a non-default FPCR the check expects back. */
#define FPCR_VALUE ((1UL << 22) | (1UL << 25))

PATCHABLE int compute(int x) { return x + 1; }

static volatile long control[2];
static volatile long bad;
static int vl_before, vl_after;
static pthread_t worker;

static void *hold(void *arg) {
    long want = (long)arg;
    if (prctl(PR_SVE_SET_VL, want | PR_SVE_VL_INHERIT) < 0) {
        reply("prctl(PR_SVE_SET_VL, %ld) failed", want);
        return NULL;
    }
    vl_before = prctl(PR_SVE_GET_VL);
    size_t vl = vl_before & PR_SVE_VL_LEN_MASK;
    size_t len = 32 * vl + 17 * (vl / 8);
    uint8_t *expect = malloc(len), *seen = malloc(len);
    if (!expect || !seen)
        return NULL;
    uint64_t x = 0x9e3779b97f4a7c15ULL;
    for (size_t i = 0; i < len; i++) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        expect[i] = (uint8_t)x;
    }
    /* FFR: a monotonic value (the first lanes true, then false), as the first-fault loads
     * leave it: the one kind WRFFR is defined to keep exactly. */
    uint8_t *ffr = expect + 32 * vl + 16 * (vl / 8);
    memset(ffr, 0, vl / 8);
    for (size_t lane = 0; lane < vl * 3 / 4 - 1; lane++)
        ffr[lane / 8] |= (uint8_t)(1u << (lane % 8));
    reply("holding %ld vl=%zu inherit=%d", (long)gettid(), vl,
          (vl_before & PR_SVE_VL_INHERIT) != 0);
    bad = sve_hold(expect, seen, control, FPCR_VALUE);
    vl_after = prctl(PR_SVE_GET_VL);
    return NULL;
}

static void serve(int sig) {
    (void)sig;
    char line[64];
    long n;
    while (next_command(line, sizeof line)) {
        if (arg_of(line, "call", &n)) {
            reply("compute %ld %d", n, compute((int)n));
        } else if (strcmp(line, "check") == 0) {
            reply("rounds=%ld bad=%ld", control[1], bad);
        } else if (strcmp(line, "stop") == 0) {
            control[0] = 1;
            pthread_join(worker, NULL);
            reply("stopped rounds=%ld bad=%ld vl=%d/%d inherit=%d/%d", control[1], bad,
                  vl_before & PR_SVE_VL_LEN_MASK, vl_after & PR_SVE_VL_LEN_MASK,
                  (vl_before & PR_SVE_VL_INHERIT) != 0, (vl_after & PR_SVE_VL_INHERIT) != 0);
        } else {
            reply("unknown command");
        }
    }
    exit(0);
}

int main(int argc, char **argv) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (argc != 2)
        return 2;
    announce_ready();
    if (!(getauxval(AT_HWCAP) & HWCAP_SVE)) {
        reply("unsupported");
    } else if (pthread_create(&worker, NULL, hold, (void *)strtol(argv[1], NULL, 10)) != 0) {
        return 1;
    }
    struct sigaction sa = {.sa_handler = serve};
    sigaction(SIGUSR1, &sa, NULL);
    raise(SIGUSR1);
    return 0;
}
