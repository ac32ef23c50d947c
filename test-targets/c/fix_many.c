/* fix_many.so: a replacement for many's recurse that blocks at once (like the original's bottom)
 * and returns -n, using the target's exported deep_pipe and at_bottom. */
#include <unistd.h>

extern int deep_pipe[2];
extern volatile int at_bottom;

int recurse(int n) {
    char c;
    at_bottom = 1;
    while (read(deep_pipe[0], &c, 1) != 1) {
    }
    return -n;
}

/* Same signature as many's thread main loop `idle`, for the attach that must refuse it. */
void *idle(void *arg) { return arg; }
