/* fix_basic_b.so: a second, different fix for compute (x*7), stacked on top of fix_basic.so. */
int compute(int x) { return x * 7; }
