/* blocking_ctor.so: a constructor that blocks until one byte arrives on fd 100, counting in the
 * loading process's exported ctor_entered / ctor_finished (loaderlock). Loaded by loaderlock
 * itself (so a thread holds the loader lock) and, as a patch library, by rpatch (a constructor
 * that hangs). Also has a compute replacement (x*100). */
#include <unistd.h>

extern volatile int ctor_entered;
extern volatile int ctor_finished;

__attribute__((constructor)) static void block_until_released(void) {
    char c;
    ctor_entered++;
    while (read(100, &c, 1) != 1) {
    }
    ctor_finished++;
}

int compute(int x) { return x * 100; }
