/* sigsend PID HZ: queues SIGRTMIN+1 about HZ times a second to the threads of process PID, the
 * main thread included, round-robin (rt_tgsigqueueinfo: real-time signals queue, none merge;
 * thread-directed, so a thread's EINTR can only come from a signal it handles itself — a
 * process-directed signal may wake one thread's syscall and be taken by another). The thread
 * list is read again every 100 ms, so threads created later get signals too. Runs until its
 * stdin reaches EOF, then prints "sent N" (the number queued successfully) and exits.
 * Prints "sending" once it started. Exit status 3 when a thread's queue was ever full. */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <string.h>
#include <sys/syscall.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

static volatile int stop;

static void *watch_stdin(void *arg) {
    (void)arg;
    char buf[64];
    while (read(0, buf, sizeof buf) > 0) {
    }
    stop = 1;
    return NULL;
}

/* The threads of pid into tids (at most max); returns how many, 0 when the process is gone. */
static int list_threads(pid_t pid, pid_t *tids, int max) {
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/task", (int)pid);
    DIR *d = opendir(path);
    if (!d)
        return 0;
    int n = 0;
    for (struct dirent *e; (e = readdir(d)) && n < max;) {
        pid_t tid = atoi(e->d_name);
        if (tid > 0)
            tids[n++] = tid;
    }
    closedir(d);
    return n;
}

static long elapsed_ms(const struct timespec *since) {
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (now.tv_sec - since->tv_sec) * 1000 + (now.tv_nsec - since->tv_nsec) / 1000000;
}

int main(int argc, char **argv) {
    if (argc != 3)
        return 2;
    pid_t pid = atoi(argv[1]);
    long hz = atol(argv[2]);
    if (hz <= 0)
        return 2;
    pid_t tids[256];
    int ntids = list_threads(pid, tids, 256);
    if (ntids == 0)
        return 1;
    struct timespec listed;
    clock_gettime(CLOCK_MONOTONIC, &listed);
    pthread_t t;
    pthread_create(&t, NULL, watch_stdin, NULL);
    long sent = 0, failed = 0, turn = 0;
    struct timespec next;
    clock_gettime(CLOCK_MONOTONIC, &next);
    printf("sending\n");
    fflush(stdout);
    while (!stop) {
        if (elapsed_ms(&listed) >= 100) {
            int n = list_threads(pid, tids, 256);
            if (n == 0)
                break; /* target gone */
            ntids = n;
            clock_gettime(CLOCK_MONOTONIC, &listed);
        }
        siginfo_t info;
        memset(&info, 0, sizeof info);
        info.si_signo = SIGRTMIN + 1;
        info.si_code = SI_QUEUE;
        info.si_pid = getpid();
        info.si_uid = getuid();
        info.si_value.sival_int = (int)sent;
        pid_t tid = tids[turn++ % ntids];
        if (syscall(SYS_rt_tgsigqueueinfo, pid, tid, SIGRTMIN + 1, &info) == 0)
            sent++;
        else if (errno == EAGAIN)
            failed++; /* queue full: not sent, not counted */
        else if (errno != ESRCH)
            break;    /* ESRCH: that thread exited; the next listing drops it */
        next.tv_nsec += 1000000000L / hz;
        while (next.tv_nsec >= 1000000000L) {
            next.tv_nsec -= 1000000000L;
            next.tv_sec++;
        }
        clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &next, NULL);
    }
    printf("sent %ld\n", sent);
    fflush(stdout);
    return failed > 0 ? 3 : 0;
}
