/* sigsuspender [epoll]: one thread, waiting for signals the classic way, in sigsuspend():
 * SIGUSR1 and SIGUSR2 are blocked except inside sigsuspend, so each handler run makes one
 * sigsuspend return with EINTR (a daemon's `while (!stop) sigsuspend(&mask);`).  With `epoll`
 * it waits in epoll_wait() on an epoll instance that never becomes ready, with the signals
 * unblocked: a handler run makes it return EINTR as well (rpatch rewinds the spurious EINTR its
 * own stop causes).  rpatch borrows this thread (it is the only one); a signal that arrives
 * while it runs rpatch's code must still end its wait, and its own mask must be as before after
 * each return.
 *
 * No stdin protocol (a reader thread would be borrowed instead): prints "ready <pid>", then on
 * each SIGUSR2 "handled H returns R eintr E mask_lost L" — handler runs so far (both signals),
 * wait returns, of which EINTR, and returns after which the mask was not the thread's own. */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <string.h>
#include <sys/epoll.h>
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

int main(int argc, char **argv) {
    int use_epoll = argc > 1 && strcmp(argv[1], "epoll") == 0;
    struct sigaction sa = {0};
    sa.sa_handler = on_usr1;
    sigaction(SIGUSR1, &sa, 0);
    sa.sa_handler = on_usr2;
    sigaction(SIGUSR2, &sa, 0);
    sigset_t block, during;
    sigemptyset(&block);
    if (!use_epoll) {
        sigaddset(&block, SIGUSR1);
        sigaddset(&block, SIGUSR2);
    }
    sigprocmask(SIG_BLOCK, &block, 0);
    sigemptyset(&during);
    int ep = epoll_create1(EPOLL_CLOEXEC);
    if (ep < 0)
        return 2;
    announce_ready();
    for (;;) {
        struct epoll_event ev;
        int r = use_epoll ? epoll_wait(ep, &ev, 1, -1) : sigsuspend(&during);
        returns++;
        if (r == -1 && errno == EINTR)
            eintr++;
        sigset_t now;
        sigprocmask(SIG_BLOCK, 0, &now);
        if (sigismember(&now, SIGUSR1) != sigismember(&block, SIGUSR1))
            mask_lost++;
        compute(r);
    }
}
