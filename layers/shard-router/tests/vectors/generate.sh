#!/bin/sh
# Regenerates ketama-expected.txt: the servers that the real memcached clients pick for the keys
# and server sets of ketama-cases.txt. Nothing in it is computed by this crate.
#
# - libmemcached (C): ketama_libmemcached.c, linked against the system's libmemcached;
# - spymemcached (Java): KetamaSpy.java, run against the system's spymemcached jar.
#
# Needs (Debian): apt-get install -y gcc pkg-config libmemcached-dev default-jdk-headless libspymemcached-java
# Run from anywhere: sh layers/shard-router/tests/vectors/generate.sh
set -eu
here=$(cd "$(dirname "$0")" && pwd)
for tool in gcc pkg-config javac java; do
  command -v "$tool" >/dev/null || { echo "generate.sh: $tool is missing (see the header for the packages)" >&2; exit 1; }
done
jar=/usr/share/java/spymemcached.jar
[ -f "$jar" ] || { echo "generate.sh: $jar is missing: apt-get install -y libspymemcached-java" >&2; exit 1; }
pkg-config --exists libmemcached || { echo "generate.sh: libmemcached is missing: apt-get install -y libmemcached-dev" >&2; exit 1; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
gcc -O1 -Wall -o "$work/ketama_libmemcached" "$here/ketama_libmemcached.c" $(pkg-config --cflags --libs libmemcached)
javac -d "$work" -cp "$jar" "$here/KetamaSpy.java"

out="$here/ketama-expected.txt"
{
  echo "# Produced by generate.sh from ketama-cases.txt with the real clients:"
  echo "#   libmemcached $(pkg-config --modversion libmemcached) (Debian $(dpkg-query -W -f='${Version}' libmemcached11 2>/dev/null || echo '?'))"
  echo "#   spymemcached (Debian libspymemcached-java $(dpkg-query -W -f='${Version}' libspymemcached-java 2>/dev/null || echo '?')), $(java -version 2>&1 | head -n 1)"
  echo "# '<flavour> <config> <digits>': one base-36 digit per key, the server's position in the"
  echo "# config's list; keys in the order of the cases file's 'keys' line, then key-0 .. key-499."
  echo "# 'hash <function> <key> <u32>': the client's key hash."
  "$work/ketama_libmemcached" "$here/ketama-cases.txt"
  java -cp "$jar:$work" KetamaSpy "$here/ketama-cases.txt"
} > "$out.tmp"
mv "$out.tmp" "$out"
echo "wrote $out"
