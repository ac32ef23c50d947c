/* fix_hot.so: replacement for hot's twice_plus_one (x*2+1000: 10 -> 1020). */
int twice_plus_one(int x) { return x * 2 + 1000; }
