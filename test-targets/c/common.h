/* Shared helpers for the C test targets: the line protocol on stdin/stdout.
 *
 * Every target prints "ready <pid>" as its first line, then answers exactly one line per
 * command line read from stdin, and exits 0 on EOF or "quit".  Everything is flushed at once:
 * the test harness reads the replies through a pipe. */
#ifndef RPATCH_TT_COMMON_H
#define RPATCH_TT_COMMON_H

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* A function the tests patch: never inlined, never cloned, and callers make no
 * interprocedural assumptions about it (noipa also disables IPA-RA, so the callers keep to the
 * ABI and a replacement that clobbers any caller-saved register is safe). */
#define PATCHABLE __attribute__((noipa, used))

static inline void reply(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vprintf(fmt, ap);
    va_end(ap);
    putchar('\n');
    fflush(stdout);
}

static inline void announce_ready(void) { reply("ready %d", (int)getpid()); }

/* Reads one command line into buf (without the newline). Returns 0 on EOF or "quit". */
static inline int next_command(char *buf, size_t len) {
    if (!fgets(buf, (int)len, stdin))
        return 0;
    buf[strcspn(buf, "\r\n")] = 0;
    return strcmp(buf, "quit") != 0;
}

/* Parses "<word> <int>": returns 1 and sets *n when line starts with word followed by a number. */
static inline int arg_of(const char *line, const char *word, long *n) {
    size_t wl = strlen(word);
    if (strncmp(line, word, wl) != 0 || line[wl] != ' ')
        return 0;
    char *end;
    *n = strtol(line + wl + 1, &end, 10);
    return end != line + wl + 1 && *end == 0;
}

/* Whether thread `tid` of this process is blocked in one of the `count` syscalls `nrs` (first
 * field of /proc/self/task/TID/syscall): how targets wait, without sleeping, until a thread has
 * reached the state a test needs. */
static inline int thread_in_syscall(pid_t tid, const long *nrs, int count) {
    char path[64], buf[256];
    snprintf(path, sizeof path, "/proc/self/task/%d/syscall", (int)tid);
    FILE *f = fopen(path, "r");
    if (!f)
        return 0;
    int ok = 0;
    if (fgets(buf, sizeof buf, f)) {
        char *end;
        long nr = strtol(buf, &end, 10);
        if (end != buf)
            for (int i = 0; i < count; i++)
                ok |= nr == nrs[i];
    }
    fclose(f);
    return ok;
}

#endif
