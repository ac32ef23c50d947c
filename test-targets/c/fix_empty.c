/* fix_empty.so: a valid library that defines none of the targets' functions
 * (for "replacement missing in library"). */
int unrelated_function(int x) { return x - 1; }
