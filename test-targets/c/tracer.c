/* tracer PID: PTRACE_SEIZEs the main thread of PID (without stopping it), then prints
 * "ready <own pid>" and keeps it traced until EOF or "quit" on stdin.  Used to test that rpatch
 * refuses a process that another tracer already holds.
 *
 * A seized tracee stops on every signal it receives until its tracer waits for it, so a second
 * thread (the one that seized: ptrace requests must come from it) waits and passes each signal
 * on.  On exit the kernel detaches the tracee.
 *   ping -> "pong" */
#define _GNU_SOURCE
#include "common.h"
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <sys/ptrace.h>
#include <sys/wait.h>

static pid_t tracee;
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cv = PTHREAD_COND_INITIALIZER;
static int seized; /* 1 ok, -1 failed */
static int seize_errno;

static void *trace(void *arg) {
    (void)arg;
    long r = ptrace(PTRACE_SEIZE, tracee, 0, 0);
    pthread_mutex_lock(&mu);
    seized = r == 0 ? 1 : -1;
    seize_errno = errno;
    pthread_cond_broadcast(&cv);
    pthread_mutex_unlock(&mu);
    if (r != 0)
        return NULL;
    for (;;) {
        int status;
        pid_t w = waitpid(tracee, &status, __WALL);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return NULL; /* tracee gone */
        }
        if (WIFSTOPPED(status)) {
            int sig = WSTOPSIG(status);
            int event = status >> 16;
            /* Group-stop (PTRACE_EVENT_STOP) and event stops deliver nothing; a signal stop
             * passes the signal on. */
            ptrace(PTRACE_CONT, tracee, 0, event ? 0 : sig);
        } else if (WIFEXITED(status) || WIFSIGNALED(status)) {
            return NULL;
        }
    }
}

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: tracer PID\n");
        return 2;
    }
    tracee = (pid_t)strtol(argv[1], NULL, 10);
    pthread_t t;
    if (pthread_create(&t, NULL, trace, NULL) != 0) {
        perror("pthread_create");
        return 1;
    }
    pthread_mutex_lock(&mu);
    while (seized == 0)
        pthread_cond_wait(&cv, &mu);
    pthread_mutex_unlock(&mu);
    if (seized < 0) {
        fprintf(stderr, "tracer: PTRACE_SEIZE %d: %s\n", (int)tracee, strerror(seize_errno));
        return 1;
    }
    announce_ready();
    char line[256];
    while (next_command(line, sizeof line)) {
        if (strcmp(line, "ping") == 0)
            reply("pong");
        else
            reply("error unknown command: %s", line);
    }
    return 0;
}
