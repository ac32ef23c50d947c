/* fix_btipac.so: replacements for btipac, built with -mbranch-protection=standard like it (so
 * the replacements sit in guarded pages where BTI is enforced, reached by `br x16`).
 *   compute -> x*100        signed_ -> x*1000 (calls out, so it signs its return address) */
__attribute__((noinline)) static int scale(int x, int k) { return x * k; }
int compute(int x) { return x * 100; }
int signed_(int x) {
    int (*volatile f)(int, int) = scale;
    return f(x, 1000);
}
