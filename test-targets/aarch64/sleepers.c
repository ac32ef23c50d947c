/* sleepers KIND MS: a worker thread that makes one blocking call of MS milliseconds per "go",
 * for the guest's system-call restart checks (scripts/test-aarch64.sh): a remote call made in
 * the worker while it is blocked must neither fail the call with EINTR nor make it sleep longer
 * than asked (a call that continues through restart_syscall keeps its deadline).
 *
 *   KIND  nanosleep | clock_nanosleep (relative) | clock_nanosleep_abs | futex (FUTEX_WAIT
 *         with a relative timeout, never woken) | poll (glibc: ppoll) | epoll (epoll_wait on an
 *         eventfd never written: epoll_pwait) | sigsuspend (SIGUSR1 blocked, waits with an
 *         empty mask until "wake"; MS unused)
 *
 *   go    -> "sleeping TID" as the worker enters the call, later
 *            "woke rc=R errno=E ms=M mask=K" (M: elapsed milliseconds; K: the worker's signal
 *            mask afterwards, hex)
 *   wake  -> (sigsuspend) sends SIGUSR1 to the worker; the worker's "woke" line follows */
#define _GNU_SOURCE
#include "../c/common.h"
#include <errno.h>
#include <linux/futex.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/syscall.h>
#include <time.h>

static const char *kind;
static long ms;
static int go_pipe[2];
static pthread_t worker;

static long now_ms(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1000 + t.tv_nsec / 1000000;
}

static void on_usr1(int sig) { (void)sig; }

static long blocking_call(void) {
    struct timespec rel = {ms / 1000, (ms % 1000) * 1000000L};
    if (strcmp(kind, "nanosleep") == 0)
        return nanosleep(&rel, NULL);
    if (strcmp(kind, "clock_nanosleep") == 0) {
        int rc = clock_nanosleep(CLOCK_MONOTONIC, 0, &rel, NULL);
        errno = rc;
        return rc ? -1 : 0;
    }
    if (strcmp(kind, "clock_nanosleep_abs") == 0) {
        struct timespec until;
        clock_gettime(CLOCK_MONOTONIC, &until);
        until.tv_sec += rel.tv_sec;
        until.tv_nsec += rel.tv_nsec;
        if (until.tv_nsec >= 1000000000L) {
            until.tv_sec++;
            until.tv_nsec -= 1000000000L;
        }
        int rc = clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &until, NULL);
        errno = rc;
        return rc ? -1 : 0;
    }
    if (strcmp(kind, "futex") == 0) {
        static uint32_t word;
        return syscall(SYS_futex, &word, FUTEX_WAIT_PRIVATE, 0, &rel, NULL, 0);
    }
    if (strcmp(kind, "poll") == 0)
        return poll(NULL, 0, (int)ms);
    if (strcmp(kind, "epoll") == 0) {
        static int epfd = -1;
        if (epfd < 0) {
            int efd = eventfd(0, 0);
            epfd = epoll_create1(0);
            struct epoll_event ev = {.events = EPOLLIN};
            epoll_ctl(epfd, EPOLL_CTL_ADD, efd, &ev);
        }
        struct epoll_event ev;
        return epoll_wait(epfd, &ev, 1, (int)ms);
    }
    if (strcmp(kind, "sigsuspend") == 0) {
        sigset_t empty;
        sigemptyset(&empty);
        return sigsuspend(&empty);
    }
    errno = EINVAL;
    return -1;
}

static void *run(void *arg) {
    (void)arg;
    sigset_t usr1;
    sigemptyset(&usr1);
    sigaddset(&usr1, SIGUSR1);
    pthread_sigmask(SIG_BLOCK, &usr1, NULL);
    char c;
    while (read(go_pipe[0], &c, 1) == 1) {
        reply("sleeping %ld", (long)gettid());
        long start = now_ms();
        errno = 0;
        long rc = blocking_call();
        int err = errno;
        long took = now_ms() - start;
        sigset_t mask;
        pthread_sigmask(SIG_BLOCK, NULL, &mask);
        unsigned long bits = 0;
        for (int s = 1; s < 64; s++)
            if (sigismember(&mask, s))
                bits |= 1UL << (s - 1);
        reply("woke rc=%ld errno=%d ms=%ld mask=%lx", rc, rc < 0 ? err : 0, took, bits);
    }
    return NULL;
}

int main(int argc, char **argv) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (argc != 3)
        return 2;
    kind = argv[1];
    ms = atol(argv[2]);
    struct sigaction sa = {.sa_handler = on_usr1};
    sigemptyset(&sa.sa_mask);
    sigaction(SIGUSR1, &sa, NULL);
    if (pipe(go_pipe) != 0 || pthread_create(&worker, NULL, run, NULL) != 0)
        return 1;
    announce_ready();
    char line[64];
    while (next_command(line, sizeof line)) {
        if (strcmp(line, "go") == 0)
            (void)!write(go_pipe[1], "g", 1);
        else if (strcmp(line, "wake") == 0)
            pthread_kill(worker, SIGUSR1);
        else
            reply("unknown command");
    }
    return 0;
}
