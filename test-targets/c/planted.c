/* planted.so: the library a hostile file system plants where rpatch might look for its copy of a
 * patch library. If it is ever loaded, its constructor announces it on the target's stdout (the
 * next reply a test reads), and its compute returns 666. */
#include <unistd.h>

__attribute__((constructor)) static void announce(void) {
    static const char msg[] = "planted library ran\n";
    (void)!write(1, msg, sizeof msg - 1);
}

int compute(int x) { (void)x; return 666; }
