#include "tools/probe/probe.h"

int main(int argc, char** argv) {
    return rpcgate::probe::probe_main(argc, argv);
}
