/* saboteur: a target that works against rpatch from the inside, the way a hostile process (or
 * container) could while it is being patched.
 *
 *   call N        -> "compute N R"   R = compute(N) = N+1 (fix_basic.so: N*100, fix_basic_b.so: N*7)
 *   race PATH     -> "racing"        opens PATH; two threads (one may be borrowed by rpatch)
 *                                    watch fds 3 to 63 in a tight loop and dup2() PATH over
 *                                    any other file open there: whatever rpatch makes the
 *                                    process open is replaced within microseconds
 *   norace        -> "raced N"       stops the racers (N rounds done); the fds stay as they are
 *   churn PATH    -> "churning SIZE" maps PATH (an ELF file, readable and executable, never
 *                                    touched) and a thread truncates it to a quarter and writes
 *                                    the rest back in a loop (whole for about a millisecond each
 *                                    time), so rpatch reading it meets a file that shrinks
 *                                    under it
 *   calm          -> "calm N"        stops the churner (N rounds done), the file whole again
 *   maps          -> "maps N"        how many of the process's mappings are rpatch's memfds */
#define _GNU_SOURCE
#include "common.h"
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>

static volatile long compute_calls;

PATCHABLE int compute(int x) {
    compute_calls++;
    return x + 1;
}

static atomic_int racing, churning;
static atomic_long race_rounds, churn_rounds;
static int decoy = -1;
static struct stat decoy_st;
static pthread_t racers[2], churner;

static void *race_loop(void *arg) {
    (void)arg;
    struct stat st;
    while (atomic_load(&racing)) {
        for (int n = 3; n < 64; n++) {
            if (n == decoy || fstat(n, &st) != 0)
                continue;
            if (st.st_dev != decoy_st.st_dev || st.st_ino != decoy_st.st_ino)
                dup2(decoy, n);
        }
        atomic_fetch_add(&race_rounds, 1);
    }
    return NULL;
}

static int churn_fd = -1;
static char *churn_copy;
static size_t churn_size;

static void *churn_loop(void *arg) {
    (void)arg;
    struct timespec whole = {0, 1000000};
    while (atomic_load(&churning)) {
        /* Whole for a moment (rpatch opens and sizes it), then shrunk under its reader. */
        nanosleep(&whole, NULL);
        size_t done = churn_size / 4;
        if (ftruncate(churn_fd, (off_t)done) != 0)
            break;
        while (done < churn_size) {
            ssize_t n = pwrite(churn_fd, churn_copy + done, churn_size - done, (off_t)done);
            if (n <= 0)
                break;
            done += (size_t)n;
        }
        atomic_fetch_add(&churn_rounds, 1);
    }
    return NULL;
}

static int start_churn(const char *path) {
    churn_fd = open(path, O_RDWR);
    struct stat st;
    if (churn_fd < 0 || fstat(churn_fd, &st) != 0)
        return -1;
    churn_size = (size_t)st.st_size;
    churn_copy = malloc(churn_size);
    if (!churn_copy || pread(churn_fd, churn_copy, churn_size, 0) != (ssize_t)churn_size)
        return -1;
    /* Mapped executable (so rpatch counts it as a module), never read by this process. */
    if (mmap(NULL, churn_size, PROT_READ | PROT_EXEC, MAP_PRIVATE, churn_fd, 0) == MAP_FAILED)
        return -1;
    atomic_store(&churning, 1);
    return pthread_create(&churner, NULL, churn_loop, NULL);
}

static int memfd_maps(void) {
    FILE *f = fopen("/proc/self/maps", "r");
    if (!f)
        return -1;
    char line[512];
    int n = 0;
    while (fgets(line, sizeof line, f))
        n += strstr(line, "/memfd:rpatch:") != NULL;
    fclose(f);
    return n;
}

int main(void) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    announce_ready();
    char line[4096];
    while (next_command(line, sizeof line)) {
        long n;
        if (arg_of(line, "call", &n)) {
            volatile int in = (int)n;
            reply("compute %ld %d", n, compute(in));
        } else if (strncmp(line, "race ", 5) == 0) {
            decoy = open(line + 5, O_RDONLY | O_CLOEXEC);
            if (decoy < 0 || fstat(decoy, &decoy_st) != 0) {
                reply("error open %s", line + 5);
                continue;
            }
            atomic_store(&racing, 1);
            for (int i = 0; i < 2; i++)
                pthread_create(&racers[i], NULL, race_loop, NULL);
            reply("racing");
        } else if (strcmp(line, "norace") == 0) {
            atomic_store(&racing, 0);
            for (int i = 0; i < 2; i++)
                pthread_join(racers[i], NULL);
            reply("raced %ld", atomic_load(&race_rounds));
        } else if (strncmp(line, "churn ", 6) == 0) {
            if (start_churn(line + 6) != 0)
                reply("error churn %s", line + 6);
            else
                reply("churning %zu", churn_size);
        } else if (strcmp(line, "calm") == 0) {
            atomic_store(&churning, 0);
            pthread_join(churner, NULL);
            reply("calm %ld", atomic_load(&churn_rounds));
        } else if (strcmp(line, "maps") == 0) {
            reply("maps %d", memfd_maps());
        } else {
            reply("error unknown command: %s", line);
        }
    }
    return 0;
}
