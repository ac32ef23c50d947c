/* prefork: the master of a prefork server (nginx, Apache, PostgreSQL, php-fpm, gunicorn), whose
 * workers are forked copies of it, each serving its own pipe pair.  Built with -rdynamic so a
 * patch library's constructor can reach prefork_fork_now().
 *
 *   call N      -> "compute N R"    R = compute(N) = N+1 in the master (fix_basic: N*100)
 *   fork K      -> "forked P..."    forks K workers (their PIDs)
 *   orphans K   -> "forked P..."    the same, but the workers outlive the master (for a test
 *                                   that ends the master; it must kill them itself)
 *   workers     -> "workers P..."   every worker's PID, in order (worker I is the I-th)
 *   w I call N  -> "compute N R"    worker I answers over its own pipes, computing in itself
 *   exec        -> the master re-executes itself (same PID, a new exec image), which prints
 *                  "ready PID" again
 *   share       -> "shared P": a clone(CLONE_VM) process P (not a thread: the master's address
 *                  space, its own thread group) blocks in read() inside shared_park()
 *   unshare     -> "unshared": shared_park returns and that process exits
 *   madvise ADV -> "madvised N": madvise(ADV) on the N anonymous executable mappings (rpatch's
 *                  stub code page and island pages); ADV is dontfork, dofork, wipeonfork or
 *                  keeponfork
 *
 * Workers die with the master (PR_SET_PDEATHSIG), except those of `orphans`.
 * prefork_fork_now(), for a patch library's constructor, has one of the master's two forker
 * threads (not the caller) fork one more worker and returns once it has. */
#define _GNU_SOURCE
#include "common.h"
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/wait.h>

PATCHABLE int compute(int x) {
    static volatile int calls;
    calls++;
    return x + 1;
}

#define MAX_WORKERS 32

struct worker {
    pid_t pid;
    int to;     /* commands to the worker */
    FILE *from; /* its replies */
};

static struct worker workers[MAX_WORKERS];
static int nworkers;
static pthread_mutex_t workers_lock = PTHREAD_MUTEX_INITIALIZER;

/* The worker's loop: one reply line per command line on its own pipes.  An untied worker
 * outlives the master: at the end of its commands it waits to be killed. */
static void serve(int in, int out, int tied) {
    FILE *cmds = fdopen(in, "r");
    char line[256];
    while (cmds && fgets(line, sizeof line, cmds)) {
        line[strcspn(line, "\r\n")] = 0;
        long n;
        char reply[300];
        if (arg_of(line, "call", &n)) {
            volatile int v = (int)n;
            snprintf(reply, sizeof reply, "compute %ld %d\n", n, compute(v));
        } else {
            snprintf(reply, sizeof reply, "error unknown command: %s\n", line);
        }
        if (write(out, reply, strlen(reply)) < 0)
            break;
    }
    while (!tied)
        pause();
    _exit(0);
}

/* Forks one worker, killed when the master dies if `tied`; returns its PID (or -1). */
static pid_t spawn_worker(int tied) {
    int to[2], from[2];
    if (nworkers == MAX_WORKERS || pipe(to) != 0 || pipe(from) != 0)
        return -1;
    pid_t master = getpid();
    pid_t pid = fork();
    if (pid == 0) {
        if (tied && (prctl(PR_SET_PDEATHSIG, SIGKILL) != 0 || getppid() != master))
            _exit(0);
        close(to[1]);
        close(from[0]);
        serve(to[0], from[1], tied);
    }
    close(to[0]);
    close(from[1]);
    if (pid < 0)
        return -1;
    pthread_mutex_lock(&workers_lock);
    workers[nworkers++] = (struct worker){pid, to[1], fdopen(from[0], "r")};
    pthread_mutex_unlock(&workers_lock);
    return pid;
}

/* Two forker threads: each forks a worker each time a byte arrives on its `ask` pipe, then
 * answers on its `done` pipe.  Two, because the thread rpatch borrows for the load (the one
 * that runs the constructor) may be one of them. */
struct forker {
    int ask[2], done[2];
    volatile pid_t tid;
};

static struct forker forkers[2];

static void *forker(void *arg) {
    struct forker *f = arg;
    f->tid = gettid();
    char c;
    while (read(f->ask[0], &c, 1) == 1) {
        spawn_worker(1);
        if (write(f->done[1], "f", 1) != 1)
            break;
    }
    return NULL;
}

/* For a patch library's constructor: one more worker is forked, by another thread, while the
 * constructor (inside dlopen) waits. */
void prefork_fork_now(void) {
    struct forker *f = &forkers[forkers[0].tid == gettid()];
    char c;
    if (write(f->ask[1], "f", 1) == 1 && read(f->done[0], &c, 1) == 1)
        return;
}

/* The clone(CLONE_VM) process: blocked in read() inside shared_park until `unshare`. */
static int park[2];

PATCHABLE int shared_park(int fd) {
    char c;
    return (int)read(fd, &c, 1);
}

static int shared_main(void *arg) {
    (void)arg;
    shared_park(park[0]);
    _exit(0);
}

static pid_t sharer;

static int advice_of(const char *name) {
    if (strcmp(name, "dontfork") == 0)
        return MADV_DONTFORK;
    if (strcmp(name, "dofork") == 0)
        return MADV_DOFORK;
    if (strcmp(name, "wipeonfork") == 0)
        return MADV_WIPEONFORK;
    if (strcmp(name, "keeponfork") == 0)
        return MADV_KEEPONFORK;
    return -1;
}

/* madvise(advice) on every anonymous r-x mapping; returns how many, or -1. */
static int advise_anonymous_code(int advice) {
    FILE *maps = fopen("/proc/self/maps", "r");
    char line[512];
    int n = 0;
    while (maps && fgets(line, sizeof line, maps)) {
        unsigned long lo, hi, inode;
        char perms[8];
        int path_at = 0;
        if (sscanf(line, "%lx-%lx %7s %*s %*s %lu %n", &lo, &hi, perms, &inode, &path_at) < 4)
            continue;
        int anonymous = inode == 0 && (path_at == 0 || line[path_at] == '\n' || line[path_at] == 0);
        if (anonymous && strcmp(perms, "r-xp") == 0) {
            if (madvise((void *)lo, hi - lo, advice) != 0) {
                fclose(maps);
                return -1;
            }
            n++;
        }
    }
    if (maps)
        fclose(maps);
    return n;
}

int main(int argc, char **argv) {
    (void)argc;
    setvbuf(stdout, NULL, _IOLBF, 0);
    for (int i = 0; i < 2; i++) {
        pthread_t t;
        if (pipe(forkers[i].ask) != 0 || pipe(forkers[i].done) != 0 ||
            pthread_create(&t, NULL, forker, &forkers[i]) != 0)
            return 1;
    }
    while (!forkers[0].tid || !forkers[1].tid)
        sched_yield();
    announce_ready();
    char line[256];
    while (next_command(line, sizeof line)) {
        long n;
        char word[32];
        if (arg_of(line, "call", &n)) {
            volatile int in = (int)n;
            reply("compute %ld %d", n, compute(in));
        } else if (arg_of(line, "fork", &n) || arg_of(line, "orphans", &n)) {
            char out[512] = "forked";
            for (long i = 0; i < n; i++) {
                pid_t p = spawn_worker(line[0] == 'f');
                snprintf(out + strlen(out), sizeof out - strlen(out), " %d", (int)p);
            }
            reply("%s", out);
        } else if (strcmp(line, "workers") == 0) {
            char out[512] = "workers";
            pthread_mutex_lock(&workers_lock);
            for (int i = 0; i < nworkers; i++)
                snprintf(out + strlen(out), sizeof out - strlen(out), " %d", (int)workers[i].pid);
            pthread_mutex_unlock(&workers_lock);
            reply("%s", out);
        } else if (strncmp(line, "w ", 2) == 0) {
            char *cmd;
            long i = strtol(line + 2, &cmd, 10);
            pthread_mutex_lock(&workers_lock);
            struct worker w = (i >= 0 && i < nworkers) ? workers[i] : (struct worker){0, -1, NULL};
            pthread_mutex_unlock(&workers_lock);
            char answer[300] = "error no such worker\n";
            size_t len = strlen(cmd + 1);
            if (w.from && (write(w.to, cmd + 1, len) != (ssize_t)len || write(w.to, "\n", 1) != 1 ||
                           !fgets(answer, sizeof answer, w.from)))
                snprintf(answer, sizeof answer, "error worker %d is gone\n", (int)w.pid);
            answer[strcspn(answer, "\n")] = 0;
            reply("%s", answer);
        } else if (strcmp(line, "exec") == 0) {
            fflush(stdout);
            char *args[] = {argv[0], NULL};
            execv("/proc/self/exe", args);
            reply("error exec failed");
        } else if (strcmp(line, "share") == 0) {
            static char stack[256 * 1024] __attribute__((aligned(16)));
            if (sharer || pipe(park) != 0) {
                reply("error already shared");
                continue;
            }
            sharer = clone(shared_main, stack + sizeof stack, CLONE_VM | SIGCHLD, NULL);
            /* Wait until it is blocked in its read(), inside shared_park. */
            char path[64], state = 0;
            snprintf(path, sizeof path, "/proc/%d/stat", (int)sharer);
            while (state != 'S') {
                FILE *f = fopen(path, "r");
                if (!f || fscanf(f, "%*d (%*[^)]) %c", &state) != 1)
                    state = 0;
                if (f)
                    fclose(f);
                if (state != 'S')
                    sched_yield();
            }
            reply("shared %d", (int)sharer);
        } else if (strcmp(line, "unshare") == 0) {
            if (!sharer || write(park[1], "x", 1) != 1 || waitpid(sharer, NULL, 0) != sharer) {
                reply("error not shared");
                continue;
            }
            sharer = 0;
            close(park[0]);
            close(park[1]);
            reply("unshared");
        } else if (sscanf(line, "madvise %31s", word) == 1 && advice_of(word) >= 0) {
            reply("madvised %d", advise_anonymous_code(advice_of(word)));
        } else {
            reply("error unknown command: %s", line);
        }
    }
    return 0;
}
