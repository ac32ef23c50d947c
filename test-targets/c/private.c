/* private: a target whose state lives in globals no loaded object exports.  Built without
 * -rdynamic, so neither `counter` (a plain global) nor `hidden` (a `static`) is in .dynsym; only
 * .symtab names them.  A patch reaching them must be bound to them by rpatch (binding shim).
 *
 *   bump   -> "bump C H"       after bump(): C = counter, H = hidden (each +1 by the original;
 *                              fix_private: counter +100, hidden +1000, in the target's own
 *                              variables)
 *   show   -> "counters C H"   the current values, read by the target's own code
 * fix_private's bump computes hidden's increment with the target's private `scaled`. */
#include "common.h"

int counter;
static int hidden;

/* A private function the patch calls (bound like the globals): scaled(x) = 10x. */
PATCHABLE static int scaled(int x) { return x * 10; }

PATCHABLE void bump(void) {
    counter += 1;
    hidden += 1;
}

int main(void) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    announce_ready();
    char line[256];
    while (next_command(line, sizeof line)) {
        if (strcmp(line, "bump") == 0) {
            bump();
            reply("bump %d %d", counter, hidden);
        } else if (strcmp(line, "show") == 0) {
            reply("counters %d %d", counter, hidden);
        } else {
            reply("error unknown command: %s", line);
        }
    }
    return 0;
}
