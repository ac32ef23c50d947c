# Targets for the DWARF tests (tests/resolve.rs, tests/dwarf.rs): inlining, clones,
# signatures, and stripped executables whose DWARF lives in a separate debug file.
# Included by the Makefile.

DWARF_TARGETS := $(B)/inl $(B)/lto $(B)/fix_inl.so $(B)/fix_sig.so \
                 $(B)/stripped_link $(B)/stripped_bid $(B)/stripped_dynsym

all: $(DWARF_TARGETS)

# -fipa-cp-clone: GCC clones mul_add for its constant argument (mul_add.constprop.0).
$(B)/inl: c/inl.c c/common.h | $(B)
	$(CC) -O2 -fipa-cp-clone -g -Wall -Wextra -fPIE -pie -o $@ $<

# Link-time optimisation: scale (lto_scale.c) is inlined into caller_across (lto_main.c), and
# the copy's DWARF sits in a unit of the link step's own that refers to scale's unit.
$(B)/lto: c/lto_main.c c/lto_scale.c c/common.h | $(B)
	$(CC) -O2 -g -flto -Wall -Wextra -fPIE -pie -o $@ c/lto_main.c c/lto_scale.c

# basic.c, stripped, its DWARF in stripped_link.debug beside it, named by .gnu_debuglink.
# Each stripped variant gets a build-id of its own (the same source and flags would give
# basic_pie's).
$(B)/stripped_link: c/basic.c c/common.h | $(B)
	$(CC) $(CFLAGS) -Wl,--build-id=0x72706174636820746573743a206c696e6b202031 -fPIE -pie -o $@.full $<
	objcopy --only-keep-debug $@.full $@.debug
	objcopy --strip-all --add-gnu-debuglink=$@.debug $@.full $@
	rm -f $@.full

# basic.c, stripped, its DWARF only under debugroot/.build-id/xx/yyyy.debug (tests point
# RPATCH_DEBUG_ROOT at build/debugroot).
$(B)/stripped_bid: c/basic.c c/common.h | $(B)
	$(CC) $(CFLAGS) -Wl,--build-id=0x72706174636820746573743a2062696420202031 -fPIE -pie -o $@.full $<
	id=$$(readelf -n $@.full | sed -n 's/.*Build ID: *//p'); \
	test -n "$$id" || { echo "$@: no build-id" >&2; exit 1; }; \
	dir=$(B)/debugroot/.build-id/$$(echo $$id | cut -c1-2); \
	mkdir -p $$dir; \
	objcopy --only-keep-debug $@.full $$dir/$$(echo $$id | cut -c3-).debug
	objcopy --strip-all $@.full $@
	rm -f $@.full

# basic.c with its functions exported (-rdynamic), stripped, no debug file anywhere: only
# .dynsym names compute.
$(B)/stripped_dynsym: c/basic.c c/common.h | $(B)
	$(CC) $(CFLAGS) -Wl,--build-id=0x72706174636820746573743a2064796e73796d31 -rdynamic -fPIE -pie -o $@.full $<
	objcopy --strip-all $@.full $@
	rm -f $@.full
