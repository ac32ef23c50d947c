/* sigsuspender: one thread, waiting for signals in sigsuspend() the classic way: SIGUSR1 and
 * SIGUSR2 are blocked except inside sigsuspend, so each handler run makes one sigsuspend return
 * with EINTR (a daemon's `while (!stop) sigsuspend(&mask);`).  rpatch borrows this thread (it is
 * the only one); a signal that arrives while it runs rpatch's code must still end its
 * sigsuspend, and its own mask must be back after each return.
 *
 * No stdin protocol (a reader thread would be borrowed instead): prints "ready <pid>", then on
 * each SIGUSR2 "handled H returns R eintr E mask_lost L" — handler runs so far (both signals),
 * sigsuspend returns, of which EINTR, and returns after which SIGUSR1 was not blocked. */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <unistd.h>

#include "common.h"

static volatile sig_atomic_t handled;
static volatile long returns, eintr, mask_lost, compute_calls;

/* Bumps a counter too: "return x+1" alone compiles to 4 bytes, shorter than a jump. */
PATCHABLE int compute(int x) {
    compute_calls++;
    return x + 1;
}

static void on_usr1(int sig) {
    (void)sig;
    handled++;
}

static void on_usr2(int sig) {
    (void)sig;
    handled++;
    char line[128];
    int n = snprintf(line, sizeof line, "handled %d returns %ld eintr %ld mask_lost %ld\n",
                     (int)handled, returns, eintr, mask_lost);
    if (write(1, line, (size_t)n) != n)
        _exit(3);
}

int main(void) {
    struct sigaction sa = {0};
    sa.sa_handler = on_usr1;
    sigaction(SIGUSR1, &sa, 0);
    sa.sa_handler = on_usr2;
    sigaction(SIGUSR2, &sa, 0);
    sigset_t block, during;
    sigemptyset(&block);
    sigaddset(&block, SIGUSR1);
    sigaddset(&block, SIGUSR2);
    sigprocmask(SIG_BLOCK, &block, 0);
    sigemptyset(&during);
    announce_ready();
    for (;;) {
        int r = sigsuspend(&during);
        returns++;
        if (r == -1 && errno == EINTR)
            eintr++;
        sigset_t now;
        sigprocmask(SIG_BLOCK, 0, &now);
        if (!sigismember(&now, SIGUSR1))
            mask_lost++;
        compute(r);
    }
}
