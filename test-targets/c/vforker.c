/* vforker: a thread blocked in vfork() while its child waits on a pipe — a thread rpatch must
 * never borrow (a child runs on its stack and memory).
 *   vfork   -> "vforked": a worker thread called vfork(); its child blocks in read()
 *   release -> "released": the child exits, the worker returns from vfork
 *   call N  -> "compute N R" (R = N+1) */
#define _GNU_SOURCE
#include "common.h"
#include <pthread.h>
#include <sys/syscall.h>
#include <sys/wait.h>

PATCHABLE int compute(int x) {
    static volatile int calls;
    calls++;
    return x + 1;
}

static int child_pipe[2];
static volatile pid_t worker_tid;
static volatile int returned;

static void *forker(void *arg) {
    (void)arg;
    worker_tid = gettid();
    pid_t child = vfork();
    if (child == 0) {
        char c;
        while (read(child_pipe[0], &c, 1) != 1) {
        }
        _exit(0);
    }
    waitpid(child, NULL, 0);
    returned = 1;
    return NULL;
}

int main(void) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (pipe(child_pipe) != 0)
        return 1;
    announce_ready();
    char line[256];
    pthread_t t;
    while (next_command(line, sizeof line)) {
        long n;
        if (strcmp(line, "vfork") == 0) {
            pthread_create(&t, NULL, forker, NULL);
            while (worker_tid == 0 || !thread_in_syscall(worker_tid, (const long[]){SYS_vfork}, 1))
                sched_yield();
            reply("vforked");
        } else if (strcmp(line, "release") == 0) {
            if (write(child_pipe[1], "x", 1) != 1)
                return 1;
            pthread_join(t, NULL);
            reply("released");
        } else if (arg_of(line, "call", &n)) {
            volatile int in = (int)n;
            reply("compute %ld %d", n, compute(in));
        } else {
            reply("error unknown command: %s", line);
        }
    }
    return 0;
}
