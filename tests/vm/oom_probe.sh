#!/bin/sh
# Run in a guest booted with little RAM (ctest vm_harness_names_oom): awk
# keeps copies of a 1 MB string until the kernel's OOM killer ends it, and
# run_vm.sh must say so (an OOM line), not just "rc=137". Each allocation is
# small, so none is refused up front (which would be an ordinary error exit).
exec awk 'BEGIN { s = sprintf("%1000000s", ""); for (i = 0; i < 100000; i++) a[i] = s i }'
