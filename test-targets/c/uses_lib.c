/* uses_lib: linked against build/libvictim.so (rpath $ORIGIN).
 *   call N -> "lib_compute N R"   R = lib_compute(N) = N+3   (fix_victim.so: N*300) */
#include "common.h"

int lib_compute(int x);

int main(void) {
    announce_ready();
    char line[256];
    while (next_command(line, sizeof line)) {
        long n;
        if (arg_of(line, "call", &n)) {
            volatile int in = (int)n;
            reply("lib_compute %ld %d", n, lib_compute(in));
        } else {
            reply("error unknown command: %s", line);
        }
    }
    return 0;
}
