/* sigstorm [THREADS [SLOW_MS]]: THREADS worker threads (default 8) under a storm of queued
 * real-time signals, to check that attaching and rolling back lose, duplicate or spuriously
 * interrupt nothing. Workers cycle through roles: busy (calls compute() in a loop), reader
 * (read() on a pipe), sleeper (nanosleep 1 ms), epoller (epoll_wait on an eventfd, 5 ms timeout).
 * Every thread, the main thread included, handles SIGRTMIN+1 (at once) and SIGRTMIN+2 (after
 * sleeping SLOW_MS milliseconds, default 0, so a signal that lands while rpatch runs code in the
 * thread keeps its frame on the stack for that long) and counts both. A blocking call that fails
 * with EINTR while its thread handled no signal during the call is *spurious* (someone else
 * interrupted it).
 *
 *   stats  -> "stats handled=H spurious=S busy_calls=C spurious_read=R spurious_nanosleep=N
 *              spurious_epoll=E"
 *   call N -> "compute N R" (R = N+1) */
#define _GNU_SOURCE
#include "common.h"
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <time.h>

PATCHABLE int compute(int x) {
    static volatile int calls;
    calls++;
    return x + 1;
}

#define MAX_THREADS 64
static volatile long handled[MAX_THREADS]; /* per thread */
static volatile long spurious;
static volatile long spurious_by_role[4]; /* busy, read, nanosleep, epoll_wait */
static volatile long busy_calls;
static __thread int my_index = -1;
static int pipe_fds[2], efd, epfd;

static long handler_ms;

static void on_rt(int sig) {
    int saved = errno;
    if (sig == SIGRTMIN + 2 && handler_ms > 0) {
        struct timespec ts = {handler_ms / 1000, (handler_ms % 1000) * 1000000L};
        while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
        }
    }
    if (my_index >= 0)
        handled[my_index]++;
    errno = saved;
}

/* The main thread takes signals too: its command reads retry on EINTR (stdio's fgets would
 * report the interruption as end of input). Reads one line into buf; 0 on EOF or "quit". */
static int next_command_retrying(char *buf, size_t len) {
    static char pending[512];
    static size_t have;
    for (;;) {
        char *nl = memchr(pending, '\n', have);
        if (nl) {
            size_t n = (size_t)(nl - pending);
            size_t copy = n < len - 1 ? n : len - 1;
            memcpy(buf, pending, copy);
            buf[copy] = 0;
            memmove(pending, nl + 1, have - n - 1);
            have -= n + 1;
            return strcmp(buf, "quit") != 0;
        }
        if (have == sizeof pending)
            have = 0; /* an overlong line: dropped */
        ssize_t got = read(0, pending + have, sizeof pending - have);
        if (got < 0 && errno == EINTR)
            continue;
        if (got <= 0)
            return 0;
        have += (size_t)got;
    }
}

static void check(long rc, long before) {
    if (rc < 0 && errno == EINTR && handled[my_index] == before) {
        __atomic_add_fetch(&spurious, 1, __ATOMIC_RELAXED);
        __atomic_add_fetch(&spurious_by_role[my_index % 4], 1, __ATOMIC_RELAXED);
    }
}

static volatile int started;

static void *run(void *arg) {
    my_index = (int)(long)arg;
    __atomic_add_fetch(&started, 1, __ATOMIC_RELAXED);
    for (;;) {
        long before = handled[my_index];
        switch (my_index % 4) {
        case 0: {
            volatile int in = my_index;
            compute(in);
            __atomic_add_fetch(&busy_calls, 1, __ATOMIC_RELAXED);
            break;
        }
        case 1: {
            char c;
            check(read(pipe_fds[0], &c, 1), before);
            break;
        }
        case 2: {
            struct timespec ts = {0, 1000000};
            check(nanosleep(&ts, NULL), before);
            break;
        }
        case 3: {
            struct epoll_event ev;
            check(epoll_wait(epfd, &ev, 1, 5), before);
            break;
        }
        }
    }
    return NULL;
}

int main(int argc, char **argv) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    int threads = argc > 1 ? atoi(argv[1]) : 8;
    handler_ms = argc > 2 ? atol(argv[2]) : 0;
    if (threads < 1 || threads >= MAX_THREADS)
        return 2;
    if (pipe(pipe_fds) != 0 || (efd = eventfd(0, 0)) < 0 || (epfd = epoll_create1(0)) < 0)
        return 1;
    struct epoll_event ev = {.events = EPOLLIN};
    epoll_ctl(epfd, EPOLL_CTL_ADD, efd, &ev);
    struct sigaction sa = {.sa_handler = on_rt};
    sigemptyset(&sa.sa_mask);
    sigaction(SIGRTMIN + 1, &sa, NULL);
    sigaction(SIGRTMIN + 2, &sa, NULL);
    my_index = threads; /* the main thread's counter */
    for (long i = 0; i < threads; i++) {
        pthread_t t;
        if (pthread_create(&t, NULL, run, (void *)i) != 0)
            return 1;
    }
    /* Ready only once every thread knows its index: a signal handled before that would not be
     * counted. */
    while (started < threads)
        sched_yield();
    announce_ready();
    char line[256];
    while (next_command_retrying(line, sizeof line)) {
        long n;
        if (strcmp(line, "stats") == 0) {
            long total = 0;
            for (int i = 0; i <= threads; i++)
                total += handled[i];
            reply("stats handled=%ld spurious=%ld busy_calls=%ld spurious_read=%ld spurious_nanosleep=%ld "
                  "spurious_epoll=%ld",
                  total, spurious, busy_calls, spurious_by_role[1], spurious_by_role[2], spurious_by_role[3]);
        } else if (arg_of(line, "call", &n)) {
            volatile int in = (int)n;
            reply("compute %ld %d", n, compute(in));
        } else {
            reply("error unknown command: %s", line);
        }
    }
    return 0;
}
