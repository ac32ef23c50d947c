/* sigsend PID HZ: queues SIGRTMIN+1 about HZ times a second to the threads of process PID other
 * than its main thread, round-robin (rt_tgsigqueueinfo: real-time signals queue, none merge;
 * thread-directed, so a thread's EINTR can only come from a signal it handles itself — a
 * process-directed signal may wake one thread's syscall and be taken by another), until its
 * stdin reaches EOF, then prints "sent N" (the number queued successfully) and exits.
 * Prints "sending" once it started. */
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

int main(int argc, char **argv) {
    if (argc != 3)
        return 2;
    pid_t pid = atoi(argv[1]);
    long hz = atol(argv[2]);
    pid_t tids[256];
    int ntids = 0;
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/task", (int)pid);
    DIR *d = opendir(path);
    if (!d)
        return 1;
    for (struct dirent *e; (e = readdir(d)) && ntids < 256;) {
        pid_t tid = atoi(e->d_name);
        if (tid > 0 && tid != pid)
            tids[ntids++] = tid;
    }
    closedir(d);
    if (ntids == 0)
        return 1;
    pthread_t t;
    pthread_create(&t, NULL, watch_stdin, NULL);
    long sent = 0, failed = 0;
    struct timespec next;
    clock_gettime(CLOCK_MONOTONIC, &next);
    printf("sending\n");
    fflush(stdout);
    while (!stop) {
        siginfo_t info;
        memset(&info, 0, sizeof info);
        info.si_signo = SIGRTMIN + 1;
        info.si_code = SI_QUEUE;
        info.si_pid = getpid();
        info.si_uid = getuid();
        info.si_value.sival_int = (int)sent;
        pid_t tid = tids[sent % ntids];
        if (syscall(SYS_rt_tgsigqueueinfo, pid, tid, SIGRTMIN + 1, &info) == 0)
            sent++;
        else if (errno == EAGAIN)
            failed++; /* queue full: not sent, not counted */
        else
            break;    /* target gone */
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
