/* freeze_min PID ROUNDS: the floor of stopping a whole process — each round seizes and
 * interrupts every thread of PID, waits for every stop, then detaches them all. Prints the
 * median microseconds threads were held. For benchmarks only (scripts/bench.sh). */
#define _GNU_SOURCE
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/ptrace.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static long now_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1000000000L + t.tv_nsec;
}

static int cmp(const void *a, const void *b) { return (*(const long *)a > *(const long *)b) - (*(const long *)a < *(const long *)b); }

int main(int argc, char **argv) {
    if (argc != 3)
        return 2;
    pid_t pid = atoi(argv[1]);
    int rounds = atoi(argv[2]);
    long *held = calloc(rounds, sizeof *held);
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/task", (int)pid);
    for (int r = 0; r < rounds; r++) {
        pid_t tids[4096];
        int n = 0;
        DIR *d = opendir(path);
        for (struct dirent *e; d && (e = readdir(d)) && n < 4096;)
            if (atoi(e->d_name) > 0)
                tids[n++] = atoi(e->d_name);
        if (d)
            closedir(d);
        long t0 = now_ns();
        for (int i = 0; i < n; i++) {
            ptrace(PTRACE_SEIZE, tids[i], 0, 0);
            ptrace(PTRACE_INTERRUPT, tids[i], 0, 0);
        }
        for (int i = 0; i < n; i++) {
            int status;
            waitpid(tids[i], &status, __WALL);
        }
        for (int i = 0; i < n; i++)
            ptrace(PTRACE_DETACH, tids[i], 0, 0);
        held[r] = now_ns() - t0;
        usleep(20000);
    }
    qsort(held, rounds, sizeof *held, cmp);
    printf("held median %ld us\n", held[rounds / 2] / 1000);
    return 0;
}
