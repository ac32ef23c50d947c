/* sighandler: a thread interrupted by a signal at the very start of a function, with the
 * handler blocked in read(): the interrupted PC lives only in the signal frame, inside the
 * bytes a patch of `sigtrapped` would overwrite.
 *
 *   trap    -> "trapped": the worker calls sigtrapped(), whose first instruction raises SIGUSR1
 *              at itself; the handler blocks in read() until `release` (replied once the
 *              handler is blocked)
 *   release -> "released N": the handler returns, sigtrapped finishes; N = times it completed
 *   call N  -> "compute N R" (R = N+1), a function nobody is inside */
#define _GNU_SOURCE
#include "common.h"
#include <pthread.h>
#include <signal.h>
#include <sys/syscall.h>

PATCHABLE int compute(int x) {
    static volatile int calls; /* makes it long enough to patch */
    calls++;
    return x + 1;
}

/* sigtrapped: `syscall` is its first instruction; the caller loads tgkill's number and
 * arguments, so the signal is taken with the PC 2 bytes into the function. */
__asm__(".globl sigtrapped\n"
        ".type sigtrapped, @function\n"
        "sigtrapped:\n"
        "  syscall\n"
        "  nop; nop; nop; nop; nop; nop\n"
        "  ret\n"
        ".size sigtrapped, .-sigtrapped\n");

static int pipe_fds[2];
static volatile int in_handler;
static volatile long completed;
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cv = PTHREAD_COND_INITIALIZER;
static int trap_requests; /* guarded by mu */
static volatile pid_t worker_tid;

static void on_usr1(int sig) {
    (void)sig;
    char c;
    in_handler = 1;
    while (read(pipe_fds[0], &c, 1) < 0) {
    }
    in_handler = 0;
}

static void *worker(void *arg) {
    (void)arg;
    worker_tid = gettid();
    for (;;) {
        pthread_mutex_lock(&mu);
        while (trap_requests == 0)
            pthread_cond_wait(&cv, &mu);
        trap_requests--;
        pthread_mutex_unlock(&mu);
        long pid = getpid(), tid = gettid(), sig = SIGUSR1;
        __asm__ volatile("call sigtrapped"
                         : "+a"((long){SYS_tgkill}), "+D"(pid), "+S"(tid), "+d"(sig)
                         :
                         : "rcx", "r11", "r8", "r9", "r10", "memory");
        completed++;
    }
    return NULL;
}

int main(void) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (pipe(pipe_fds) != 0)
        return 1;
    struct sigaction sa = {.sa_handler = on_usr1};
    sigemptyset(&sa.sa_mask);
    sigaction(SIGUSR1, &sa, NULL);
    pthread_t t;
    pthread_create(&t, NULL, worker, NULL);
    while (worker_tid == 0)
        sched_yield();
    announce_ready();
    char line[256];
    while (next_command(line, sizeof line)) {
        long n;
        if (strcmp(line, "trap") == 0) {
            pthread_mutex_lock(&mu);
            trap_requests++;
            pthread_cond_signal(&cv);
            pthread_mutex_unlock(&mu);
            while (!in_handler || !thread_in_syscall(worker_tid, (const long[]){SYS_read}, 1))
                sched_yield();
            reply("trapped");
        } else if (strcmp(line, "release") == 0) {
            long before = completed;
            if (write(pipe_fds[1], "x", 1) != 1)
                return 1;
            while (completed == before)
                sched_yield();
            reply("released %ld", completed);
        } else if (arg_of(line, "call", &n)) {
            volatile int in = (int)n;
            reply("compute %ld %d", n, compute(in));
        } else {
            reply("error unknown command: %s", line);
        }
    }
    return 0;
}
