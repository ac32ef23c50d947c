/* fix_private_ambig.so: for ambig, whose two translation units each have a `static int helper`.
 *   call_a -> helper(x) * 100, where `helper` is undefined here and names two private functions
 *   of the target: rpatch must refuse to guess which one to bind. */
int helper(int x);

int call_a(int x) { return helper(x) * 100; }
