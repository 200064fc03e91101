// Micro-benchmarks of per-call accounting (rpc/call_kind.h,
// gateway/call_stats.h): what the data path adds to each forwarded call.
// Compare with decode_call_header (rpc_bench.cc), which every call pays
// already, and with the e2e report's rpcgate vs rpcgate-nostats ratio.
//
//   rpcgate-micro --benchmark_filter='classify|accounting'
#include <benchmark/benchmark.h>

#include <string>

#include "gateway/call_stats.h"
#include "rpc/call_kind.h"
#include "rpc/message.h"
#include "rpc/xdr_codec.h"

using namespace rpcgate;

namespace {

// SEQUENCE, PUTFH (32-byte handle), READ: what a Linux NFSv4.1 client sends.
core::slice_chain v41_read_args() {
    rpc::xdr_writer w;
    w.u32(0);  // empty tag
    w.u32(1);  // minor version
    w.u32(3);
    w.u32(53);
    for (int i = 0; i < 8; ++i) w.u32(uint32_t(i));
    w.u32(22);
    w.u32(32);
    for (int i = 0; i < 8; ++i) w.u32(0xabcdef00u + uint32_t(i));
    w.u32(25);
    for (int i = 0; i < 7; ++i) w.u32(0);
    return w.finish();
}

void classify_nfs3(benchmark::State& state) {
    core::slice_chain none;
    uint32_t proc = 0;
    for (auto _ : state) {
        benchmark::DoNotOptimize(rpc::classify_call(100003, 3, proc, none));
        proc = (proc + 1) % 22;
    }
    state.SetItemsProcessed(int64_t(state.iterations()));
}
BENCHMARK(classify_nfs3);

void classify_nfs41_compound(benchmark::State& state) {
    core::slice_chain args = v41_read_args();
    for (auto _ : state) benchmark::DoNotOptimize(rpc::classify_call(100003, 4, 1, args));
    state.SetItemsProcessed(int64_t(state.iterations()));
}
BENCHMARK(classify_nfs41_compound);

// One call and its reply, as a session sees them: classify, count, remember
// the xid, match the reply, check its status, two histogram samples. Arg:
// calls in flight on the connection.
void accounting_call_and_reply(benchmark::State& state) {
    gw::call_stats cs;
    gw::calls_in_flight f;
    gw::gateway_counters c;
    core::slice framed =
        rpc::build_reply(rpc::reply_header::accepted(1, rpc::accept_stat::success));
    core::slice_chain reply(std::move(framed));
    reply.trim_front(4);
    core::slice_chain none;
    uint32_t depth = uint32_t(state.range(0));
    uint32_t xid = 0;
    uint64_t now = 1'000'000;
    for (uint32_t i = 0; i < depth; ++i, ++xid)
        gw::note_call(cs, f, c, xid, rpc::classify_call(100003, 3, 6, none), 128, now);
    for (auto _ : state) {
        now += 50'000;
        gw::note_call(cs, f, c, xid, rpc::classify_call(100003, 3, 6, none), 128, now);
        gw::note_reply(cs, f, reply, xid - depth, 0, now);
        ++xid;
    }
    state.SetItemsProcessed(int64_t(state.iterations()));
}
BENCHMARK(accounting_call_and_reply)->Arg(1)->Arg(16)->Arg(1024)->ArgName("in_flight");

}  // namespace
