/* ambig: two static functions named "helper" in two translation units (ambig_a.c, ambig_b.c).
 *   call N -> "helper N A B"   A = ambig_a.c's helper(N) = N+1, B = ambig_b.c's helper(N) = N+2 */
#include "common.h"

int call_a(int x);
int call_b(int x);

int main(void) {
    announce_ready();
    char line[256];
    while (next_command(line, sizeof line)) {
        long n;
        if (arg_of(line, "call", &n)) {
            volatile int in = (int)n;
            int a = call_a(in);
            int b = call_b(in);
            reply("helper %ld %d %d", n, a, b);
        } else {
            reply("error unknown command: %s", line);
        }
    }
    return 0;
}
