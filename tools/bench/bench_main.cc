// rpcgate-bench: load generator and echo RPC server (tools/bench/bench_cli.h).
#include "tools/bench/bench_cli.h"

int main(int argc, char** argv) {
    return rpcgate::bench::bench_main(argc, argv);
}
