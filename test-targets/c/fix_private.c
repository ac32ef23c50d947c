/* fix_private.so: replaces private's bump, changing the target's own globals.
 *   bump -> counter += 100, hidden += scaled(100) = 1000 (scaled: a static function of the target)
 * `counter` and `hidden` stay undefined here (a shared object may keep undefined symbols; no
 * extra link flag is needed): rpatch binds them to the target's variables when it loads this. */
extern int counter;
extern int hidden;
int scaled(int x);

void bump(void) {
    counter += 100;
    hidden += scaled(100);
}
