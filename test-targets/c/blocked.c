/* blocked: threads that sit in blocking system calls while rpatch attaches and rolls back.
 *
 *   reader  blocks in read() on a pipe          epoller blocks in epoll_wait(-1) on an eventfd
 *   sleeper loops on 10 s nanosleep()s          holder  blocks in read() *inside* held(), a
 *                                                       patchable function that never returns
 *   parker  loops on pause() issued by the `syscall` instruction at the very start of parked(),
 *           so its PC (the syscall's return address) is always inside parked()'s first 5 bytes
 * "ready" is printed only once all four are inside their system calls (seen in
 * /proc/self/task/TID/syscall), and "wake" replies only once reader and epoller are back in them.
 *
 *   call N -> "compute N R"      compute(N) = N+1 (fix_basic.so: N*100)
 *   wake   -> "woke read=S epoll=S"  main writes to the pipe and the eventfd and waits (condvar,
 *             10 s bound) for both threads to report; S is "ok" when the thread woke with the
 *             expected data and had no abnormal return since the previous wake, else "EINTR"
 *             (an EINTR happened), "bad" (another wrong return) or "timeout"
 *   errs   -> "errs read=N nanosleep=N epoll=N held=N"   abnormal returns so far (EINTR or any
 *             other unexpected result) per thread; all 0 in a correct run
 *   tids   -> "tids main=T reader=T sleeper=T epoller=T holder=T parker=T" */
#define _GNU_SOURCE
#include "common.h"
#include <errno.h>
#include <pthread.h>
#include <sched.h>
#include <stdint.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/syscall.h>
#include <time.h>

static volatile long compute_calls;
PATCHABLE int compute(int x) {
    compute_calls++;
    return x + 1;
}

static volatile long held_calls;
/* The holder thread is always inside this function (blocked in read below it). */
PATCHABLE int held(int fd) {
    char c;
    ssize_t r = read(fd, &c, 1);
    held_calls++;
    return (int)r + 1;
}

/* void parked(void): pause() forever; the thread blocked in it has its PC at parked+2.  No branch
 * targets inside, 9 bytes long: patchable in principle, but never while the parker is there. */
void parked(void);
void park_forever(void);
__asm__(".text\n"
        ".p2align 4\n"
        ".globl parked\n"
        ".type parked, @function\n"
        "parked:\n"
        "  .cfi_startproc\n"
        "  syscall\n"              /* eax = SYS_pause, set by the caller */
        "  nop\n  nop\n  nop\n  nop\n  nop\n  nop\n"
        "  ret\n"
        "  .cfi_endproc\n"
        ".size parked, .-parked\n"
        ".p2align 4\n"
        ".globl park_forever\n"
        ".type park_forever, @function\n"
        "park_forever:\n"
        "  .cfi_startproc\n"
        "  sub $8, %rsp\n"         /* align the stack for the call */
        "  .cfi_adjust_cfa_offset 8\n"
        "1:\n"
        "  mov $34, %eax\n"        /* SYS_pause */
        "  call parked\n"
        "  jmp 1b\n"
        "  .cfi_endproc\n"
        ".size park_forever, .-park_forever\n");

enum { READER, SLEEPER, EPOLLER, HOLDER, PARKER, NTHREADS };
static const char *names[NTHREADS] = {"reader", "sleeper", "epoller", "holder", "parker"};

static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cv = PTHREAD_COND_INITIALIZER;
static pid_t tids[NTHREADS];
static long errs[NTHREADS];         /* abnormal returns, ever */
static const char *last_err[NTHREADS]; /* abnormal return since the last wake, or NULL */
static long wakes[NTHREADS];        /* normal wake-ups */
static int wake_bad[NTHREADS];      /* the last wake-up delivered the wrong data */

static int pipe_fds[2], hold_fds[2], efd, epfd;

static void record_error(int who, int err) {
    pthread_mutex_lock(&mu);
    errs[who]++;
    last_err[who] = err == EINTR ? "EINTR" : "bad";
    pthread_mutex_unlock(&mu);
}

static void record_wake(int who, int good) {
    pthread_mutex_lock(&mu);
    wakes[who]++;
    wake_bad[who] = !good;
    pthread_cond_broadcast(&cv);
    pthread_mutex_unlock(&mu);
}

static void set_tid(int who) {
    pthread_mutex_lock(&mu);
    tids[who] = gettid();
    pthread_cond_broadcast(&cv);
    pthread_mutex_unlock(&mu);
}

static void *reader(void *arg) {
    (void)arg;
    set_tid(READER);
    for (;;) {
        char c;
        ssize_t r = read(pipe_fds[0], &c, 1);
        if (r == 1)
            record_wake(READER, c == 'w');
        else
            record_error(READER, r < 0 ? errno : 0);
    }
    return NULL;
}

static void *sleeper(void *arg) {
    (void)arg;
    set_tid(SLEEPER);
    for (;;) {
        struct timespec ts = {10, 0};
        if (nanosleep(&ts, NULL) != 0)
            record_error(SLEEPER, errno);
    }
    return NULL;
}

static void *epoller(void *arg) {
    (void)arg;
    set_tid(EPOLLER);
    for (;;) {
        struct epoll_event ev;
        int n = epoll_wait(epfd, &ev, 1, -1);
        if (n == 1 && ev.data.fd == efd) {
            uint64_t v = 0;
            ssize_t r = read(efd, &v, sizeof v);
            record_wake(EPOLLER, r == (ssize_t)sizeof v && v == 1);
        } else {
            record_error(EPOLLER, n < 0 ? errno : 0);
        }
    }
    return NULL;
}

static void *holder(void *arg) {
    (void)arg;
    set_tid(HOLDER);
    for (;;) {
        /* The pipe is never written: held() returns only on an abnormal return of read(). */
        int r = held(hold_fds[0]);
        record_error(HOLDER, r < 1 ? errno : 0);
    }
    return NULL;
}

static void *parker(void *arg) {
    (void)arg;
    set_tid(PARKER);
    park_forever();
    return NULL;
}

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Is thread `tid` blocked in one of the given system calls? */
static const long read_nrs[] = {SYS_read};
static const long pause_nrs[] = {SYS_pause};
static const long sleep_nrs[] = {SYS_nanosleep, SYS_clock_nanosleep};
static const long epoll_nrs[] = {SYS_epoll_wait, SYS_epoll_pwait
#ifdef SYS_epoll_pwait2
                                 , SYS_epoll_pwait2
#endif
};

/* Waits (yielding, bounded by 10 s) until the given thread is blocked in its system call. */
static int wait_blocked(int who) {
    const long *nrs = who == SLEEPER   ? sleep_nrs
                      : who == EPOLLER ? epoll_nrs
                      : who == PARKER  ? pause_nrs
                                       : read_nrs;
    int count = who == SLEEPER ? 2 : who == EPOLLER ? (int)(sizeof epoll_nrs / sizeof *epoll_nrs) : 1;
    pthread_mutex_lock(&mu);
    pid_t tid = tids[who];
    pthread_mutex_unlock(&mu);
    double deadline = now() + 10;
    while (!thread_in_syscall(tid, nrs, count)) {
        if (now() > deadline) {
            fprintf(stderr, "blocked: %s (tid %d) never blocked in its system call\n", names[who],
                    (int)tid);
            return 0;
        }
        sched_yield();
    }
    return 1;
}

static const char *wake_status(int who, long before, int timed_out) {
    if (last_err[who])
        return last_err[who];
    if (wakes[who] == before)
        return timed_out ? "timeout" : "none";
    return wake_bad[who] ? "bad" : "ok";
}

static void do_wake(void) {
    pthread_mutex_lock(&mu);
    long r0 = wakes[READER], e0 = wakes[EPOLLER];
    pthread_mutex_unlock(&mu);

    uint64_t one = 1;
    if (write(pipe_fds[1], "w", 1) != 1 || write(efd, &one, sizeof one) != sizeof one) {
        reply("error write: %s", strerror(errno));
        return;
    }
    struct timespec deadline;
    clock_gettime(CLOCK_REALTIME, &deadline);
    deadline.tv_sec += 10;
    int timed_out = 0;
    pthread_mutex_lock(&mu);
    while ((wakes[READER] == r0 || wakes[EPOLLER] == e0) && !timed_out)
        timed_out = pthread_cond_timedwait(&cv, &mu, &deadline) == ETIMEDOUT;
    const char *rs = wake_status(READER, r0, timed_out);
    const char *es = wake_status(EPOLLER, e0, timed_out);
    last_err[READER] = last_err[EPOLLER] = NULL;
    pthread_mutex_unlock(&mu);
    /* Reply only once both are blocked again, so the next command meets them blocked. */
    wait_blocked(READER);
    wait_blocked(EPOLLER);
    reply("woke read=%s epoll=%s", rs, es);
}

int main(void) {
    if (pipe(pipe_fds) != 0 || pipe(hold_fds) != 0) {
        perror("pipe");
        return 1;
    }
    efd = eventfd(0, 0);
    epfd = epoll_create1(0);
    struct epoll_event ev = {.events = EPOLLIN, .data.fd = efd};
    if (efd < 0 || epfd < 0 || epoll_ctl(epfd, EPOLL_CTL_ADD, efd, &ev) != 0) {
        perror("eventfd/epoll");
        return 1;
    }
    void *(*fns[NTHREADS])(void *) = {reader, sleeper, epoller, holder, parker};
    for (int i = 0; i < NTHREADS; i++) {
        pthread_t t;
        if (pthread_create(&t, NULL, fns[i], NULL) != 0) {
            perror("pthread_create");
            return 1;
        }
        pthread_setname_np(t, names[i]);
    }
    pthread_mutex_lock(&mu);
    for (int i = 0; i < NTHREADS; i++)
        while (tids[i] == 0)
            pthread_cond_wait(&cv, &mu);
    pthread_mutex_unlock(&mu);
    for (int i = 0; i < NTHREADS; i++)
        if (!wait_blocked(i))
            return 1;
    announce_ready();

    char line[256];
    while (next_command(line, sizeof line)) {
        long n;
        if (arg_of(line, "call", &n)) {
            volatile int in = (int)n;
            reply("compute %ld %d", n, compute(in));
        } else if (strcmp(line, "wake") == 0) {
            do_wake();
        } else if (strcmp(line, "errs") == 0) {
            pthread_mutex_lock(&mu);
            reply("errs read=%ld nanosleep=%ld epoll=%ld held=%ld", errs[READER], errs[SLEEPER],
                  errs[EPOLLER], errs[HOLDER]);
            pthread_mutex_unlock(&mu);
        } else if (strcmp(line, "tids") == 0) {
            reply("tids main=%d reader=%d sleeper=%d epoller=%d holder=%d parker=%d", (int)getpid(),
                  (int)tids[READER], (int)tids[SLEEPER], (int)tids[EPOLLER], (int)tids[HOLDER],
                  (int)tids[PARKER]);
        } else {
            reply("error unknown command: %s", line);
        }
    }
    return 0;
}
