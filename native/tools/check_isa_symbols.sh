#!/bin/sh
# Every function compiled with an ISA's flags (native/src/simd/<isa>/) must live in that ISA's
# namespace: an inline function or template instance defined there with external linkage (a std::
# helper, a core/ header function) could be the copy the linker keeps for baseline callers too, and
# then run AVX-512 instructions on a CPU without them. Lists such symbols and exits 1 if any.
#   native/tools/check_isa_symbols.sh [build dir, default build]
build="${1:-build}"
status=0
for object in $(find "$build" -path '*/native/src/simd/*/*.o' -name '*.o'); do
  isa=$(basename "$(dirname "$object")")
  leaks=$(nm -C --defined-only "$object" | awk '$2 ~ /^[TWVu]$/' | grep -v " moe::simd::$isa::" |
          grep -v -E " (typeinfo|vtable|guard variable) for moe::simd::$isa::")
  if [ -n "$leaks" ]; then
    echo "$object defines symbols outside moe::simd::$isa:"
    echo "$leaks"
    status=1
  fi
done
[ $status -eq 0 ] && echo "ISA objects: every external symbol is in its ISA namespace"
exit $status
