#!/usr/bin/env bash
# Horovod 0.28.1's CMake forces -std=c++14, but torch >= 2.1 headers need C++17.
# scripts/setup.sh passes this wrapper as CXX: it rewrites the flag and calls the real compiler.
args=()
for a in "$@"; do
  case "$a" in
    -std=c++14|-std=gnu++14) args+=("-std=c++17") ;;
    *) args+=("$a") ;;
  esac
done
exec "${AFM_REAL_CXX:-g++}" "${args[@]}"
