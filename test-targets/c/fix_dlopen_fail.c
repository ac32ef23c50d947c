/* fix_dlopen_fail.so: defines compute, but depends on a symbol no loaded object provides, so
 * dlopen(RTLD_NOW) fails in the target with "undefined symbol: no_such_function_xyz". */
extern int no_such_function_xyz(int);
int compute(int x) { return no_such_function_xyz(x); }
