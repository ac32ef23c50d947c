/* Patch library for basic_pie whose compute has another signature than the target's
 * `int compute(int)`: long compute(long). Attaching it is refused unless --force
 * (then `call N` answers N*100: the caller passes an int and reads back an int). */
long compute(long x) { return x * 100; }
