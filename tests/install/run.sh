#!/bin/sh
# Installs the build tree into a scratch prefix and builds a consumer against
# it through find_package(xsync) and through pkg-config.
# usage: run.sh BUILD_DIR SOURCE_DIR   (CC names the compiler)
set -eu
build=$1 src=$2
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cmake --install "$build" --prefix "$work/prefix" >/dev/null
libdir=$(ls -d "$work"/prefix/lib*/pkgconfig | head -n 1)
libdir=${libdir%/pkgconfig}

echo "== find_package(xsync)"
cmake -S "$src" -B "$work/cm" -DCMAKE_PREFIX_PATH="$work/prefix" -DCMAKE_C_COMPILER="${CC:-cc}" >/dev/null
cmake --build "$work/cm" >/dev/null
LD_LIBRARY_PATH="$libdir" "$work/cm/consumer"
"$work/cm/consumer_static"

echo "== pkg-config"
export PKG_CONFIG_PATH="$libdir/pkgconfig"
${CC:-cc} -std=c11 -Wall -Werror -o "$work/pc" "$src/main.c" $(pkg-config --cflags --libs xsync)
LD_LIBRARY_PATH="$libdir" "$work/pc"
${CC:-cc} -std=c11 -Wall -Werror -o "$work/pcs" "$src/main.c" $(pkg-config --cflags xsync) \
  "$libdir/libxsync.a" $(pkg-config --static --libs-only-l xsync | sed 's/-lxsync//')
"$work/pcs"

echo "== exported symbols"
bad=$(nm -D --defined-only "$libdir/libxsync.so" | awk '$2 ~ /[TDBR]/ {print $3}' | grep -v '^xs_' | grep -v '^XSYNC' || true)
bad2=$(nm -D --defined-only "$libdir/libxsync.so" | awk '{print $3}' | grep '^xs__' || true)
if [ -n "$bad$bad2" ]; then echo "unexpected exports: $bad $bad2"; exit 1; fi
soname=$(objdump -p "$libdir/libxsync.so" | awk '/SONAME/ {print $2}')
echo "soname $soname"
[ "$soname" = "libxsync.so.0" ]
echo "install: ok"
