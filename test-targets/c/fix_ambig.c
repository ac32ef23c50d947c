/* fix_ambig.so: a replacement named helper (so that the only error is the ambiguity). */
int helper(int x) { return x * 100; }
