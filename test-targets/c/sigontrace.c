/* sigontrace PID: queues one SIGRTMIN+2 to each thread of process PID at the moment it becomes
 * traced (its TracerPid turns non-zero), and again each time it is traced anew after having been
 * let go (sigstorm's slow handler takes that signal). rpatch borrows one thread for its injected calls before it stops the others, so this
 * lands a signal on exactly the thread that is about to run rpatch's code — with the signal
 * pending while the thread is held, it is delivered the instant the thread is resumed there.
 * Runs until stdin reaches EOF, then prints "sent N" and exits; prints "watching" once started.
 * Not a target: a tool for the signal-safety tests. */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

#define MAX_TIDS 256

static volatile int stop;

static void *watch_stdin(void *arg) {
    (void)arg;
    char buf[64];
    while (read(0, buf, sizeof buf) > 0) {
    }
    stop = 1;
    return NULL;
}

/* TracerPid of one thread; -1 when it cannot be read (the thread exited). */
static int tracer_of(pid_t pid, pid_t tid) {
    char path[64], line[256];
    snprintf(path, sizeof path, "/proc/%d/task/%d/status", (int)pid, (int)tid);
    FILE *f = fopen(path, "r");
    if (!f)
        return -1;
    int tracer = -1;
    while (fgets(line, sizeof line, f))
        if (sscanf(line, "TracerPid: %d", &tracer) == 1)
            break;
    fclose(f);
    return tracer;
}

int main(int argc, char **argv) {
    if (argc != 2)
        return 2;
    pid_t pid = atoi(argv[1]);
    pid_t known[MAX_TIDS];
    int traced[MAX_TIDS];
    int nknown = 0;
    long sent = 0;
    pthread_t t;
    pthread_create(&t, NULL, watch_stdin, NULL);
    printf("watching\n");
    fflush(stdout);
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/task", (int)pid);
    while (!stop) {
        DIR *d = opendir(path);
        if (!d)
            break; /* target gone */
        for (struct dirent *e; (e = readdir(d));) {
            pid_t tid = atoi(e->d_name);
            if (tid <= 0)
                continue;
            int i = 0;
            while (i < nknown && known[i] != tid)
                i++;
            if (i == nknown) {
                if (nknown == MAX_TIDS)
                    continue;
                known[nknown] = tid;
                traced[nknown++] = 0;
            }
            int tracer = tracer_of(pid, tid);
            if (tracer > 0 && !traced[i]) {
                siginfo_t info;
                memset(&info, 0, sizeof info);
                info.si_signo = SIGRTMIN + 2;
                info.si_code = SI_QUEUE;
                info.si_pid = getpid();
                info.si_uid = getuid();
                if (syscall(SYS_rt_tgsigqueueinfo, pid, tid, SIGRTMIN + 2, &info) == 0)
                    sent++;
            }
            if (tracer >= 0)
                traced[i] = tracer > 0;
        }
        closedir(d);
    }
    printf("sent %ld\n", sent);
    fflush(stdout);
    return 0;
}
