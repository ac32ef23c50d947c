/* epollers FDS THREADS: THREADS worker threads, each alternating a short busy stretch with
 * epoll_wait(..., 1 ms) on one of FDS epoll instances in turn (never woken; one call site, so
 * the call's other arguments are the same whichever instance it waits on), for the guest's check
 * of rpatch's EINTR repair (isa::rewind_eintr): a worker is often running as rpatch looks at it
 * and enters epoll_pwait just as it is stopped. Nothing sends this process a signal, so every
 * EINTR a worker sees is spurious.
 *
 *   stats   -> "stats calls=C eintr=E threads=T1:E1,T2:E2,..." (E: EINTRs seen by thread T)
 *   call N  -> "compute N R" (R = compute(N), the function the tests patch)
 */
#define _GNU_SOURCE
#include "../c/common.h"
#include <errno.h>
#include <pthread.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <time.h>

#define MAX_THREADS 16
#define MAX_FDS 4

static int epfds[MAX_FDS];
static int nfds;
static volatile long calls;
static volatile long eintr[MAX_THREADS];
static volatile pid_t tids[MAX_THREADS];
static volatile int started;

static volatile long compute_calls;
PATCHABLE int compute(int x) {
    compute_calls++;
    return x + 1;
}

static long now_us(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1000000 + t.tv_nsec / 1000;
}

static void *run(void *arg) {
    int me = (int)(long)arg;
    tids[me] = gettid();
    __atomic_add_fetch(&started, 1, __ATOMIC_RELAXED);
    struct epoll_event ev;
    for (unsigned i = 0;; i++) {
        /* Busy for about 200 us: running when rpatch looks, about to enter the call. */
        long until = now_us() + 200;
        while (now_us() < until)
            ;
        int fd = epfds[i % nfds];
        if (epoll_wait(fd, &ev, 1, 1) < 0 && errno == EINTR)
            __atomic_add_fetch(&eintr[me], 1, __ATOMIC_RELAXED);
        __atomic_add_fetch(&calls, 1, __ATOMIC_RELAXED);
    }
    return NULL;
}

int main(int argc, char **argv) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (argc != 3)
        return 2;
    nfds = atoi(argv[1]);
    int threads = atoi(argv[2]);
    if (nfds < 1 || nfds > MAX_FDS || threads < 1 || threads > MAX_THREADS)
        return 2;
    for (int i = 0; i < nfds; i++) {
        int efd = eventfd(0, 0);
        struct epoll_event ev = {.events = EPOLLIN};
        if (efd < 0 || (epfds[i] = epoll_create1(0)) < 0 ||
            epoll_ctl(epfds[i], EPOLL_CTL_ADD, efd, &ev) != 0)
            return 1;
    }
    for (long i = 0; i < threads; i++) {
        pthread_t t;
        if (pthread_create(&t, NULL, run, (void *)i) != 0)
            return 1;
    }
    while (started < threads)
        sched_yield();
    announce_ready();
    char line[64];
    while (next_command(line, sizeof line)) {
        long n;
        if (strcmp(line, "stats") == 0) {
            char per[MAX_THREADS * 24] = "";
            long total = 0;
            for (int i = 0; i < threads; i++) {
                char one[24];
                snprintf(one, sizeof one, "%s%d:%ld", i ? "," : "", (int)tids[i], eintr[i]);
                strcat(per, one);
                total += eintr[i];
            }
            reply("stats calls=%ld eintr=%ld threads=%s", calls, total, per);
        } else if (arg_of(line, "call", &n)) {
            volatile int in = (int)n;
            reply("compute %ld %d", n, compute(in));
        } else {
            reply("unknown command");
        }
    }
    return 0;
}
