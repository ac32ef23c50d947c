/* vectors MODE: a worker thread spins with live vector state, for the guest's check of which
 * threads may be borrowed (rpatch_arch::aarch64::vector):
 *
 *   sve        Z and P registers in use
 *   streaming  SME streaming mode
 *   za         SME ZA storage enabled
 *
 * Prints "ready <pid>", then "spinning <tid>" as the worker enters its loop, or "unsupported"
 * when the CPU does not offer the extension (AT_HWCAP / AT_HWCAP2). Exits on EOF. */
#define _GNU_SOURCE
#include "../c/common.h"
#include <pthread.h>
#include <sys/auxv.h>

void spin_sve(void);
void spin_streaming(void);
void spin_za(void);

#ifndef HWCAP2_SME
#define HWCAP2_SME (1UL << 23)
#endif

static void (*spin)(void);

static void *run(void *arg) {
    (void)arg;
    reply("spinning %ld", (long)gettid());
    spin();
    return NULL;
}

int main(int argc, char **argv) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (argc != 2)
        return 2;
    int sve = (getauxval(AT_HWCAP) & HWCAP_SVE) != 0;
    int sme = (getauxval(AT_HWCAP2) & HWCAP2_SME) != 0;
    int ok = 0;
    if (strcmp(argv[1], "sve") == 0) {
        spin = spin_sve;
        ok = sve;
    } else if (strcmp(argv[1], "streaming") == 0) {
        spin = spin_streaming;
        ok = sme;
    } else if (strcmp(argv[1], "za") == 0) {
        spin = spin_za;
        ok = sme;
    } else {
        return 2;
    }
    announce_ready();
    pthread_t t;
    if (!ok)
        reply("unsupported");
    else if (pthread_create(&t, NULL, run, NULL) != 0)
        return 1;
    char line[64];
    while (next_command(line, sizeof line))
        reply("unknown command");
    return 0;
}
