/* Patch library for inl: scale -> x*100; mul_add -> x*k*100; offset_of -> x*100 (inl has no
 * out-of-line offset_of, so patching it must be refused, naming its callers). */
int scale(int x) { return x * 100; }
int mul_add(int x, int k) { return x * k * 100; }
int offset_of(int x) { return x * 100; }
