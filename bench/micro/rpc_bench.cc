// Micro-benchmarks of the RPC wire layer (rpc/): record reassembly and call
// header decoding, with a memcpy of the same bytes as the baseline that a
// copying reassembler could at best reach.
//
//   rpcgate-micro --benchmark_filter=reassemble
#include <benchmark/benchmark.h>

#include <cstring>
#include <string>
#include <vector>

#include "rpc/message.h"
#include "rpc/record.h"
#include "rpc/xdr_codec.h"

using namespace rpcgate;

namespace {

constexpr size_t slice_size = 64 * 1024;

// A typical small call: NFS-style header with AUTH_NONE and args, `size`
// bytes of record payload (>= 40).
std::string make_call(uint32_t xid, size_t size) {
    rpc::call_header h;
    h.xid = xid;
    h.prog = 100003;
    h.vers = 3;
    h.proc = 1;
    rpc::xdr_writer w;
    encode_call_header(w, h);
    std::string args(size - w.size(), 'a');
    w.raw(args.data(), args.size());
    return w.finish().to_string();
}

std::string framed(const std::string& payload) {
    std::string out(4, '\0');
    rpc::store_be32(reinterpret_cast<uint8_t*>(out.data()),
                    rpc::record_last_fragment | static_cast<uint32_t>(payload.size()));
    return out + payload;
}

// A receive stream cut into 64 KiB slices, as a provided-buffer ring delivers it.
struct stream {
    core::slice whole;
    std::vector<core::slice> pieces;
    size_t records = 0;
};

stream make_stream(const std::string& bytes, size_t records) {
    stream s;
    s.whole = core::slice::copy_of(bytes);
    for (size_t at = 0; at < bytes.size(); at += slice_size)
        s.pieces.push_back(s.whole.share(at, std::min(slice_size, bytes.size() - at)));
    s.records = records;
    return s;
}

// 1 MiB of 128-byte framed calls in 64 KiB slices.
stream small_call_stream() {
    const std::string rec = framed(make_call(1, 124));
    std::string bytes;
    const size_t n = 16 * slice_size / rec.size();
    for (size_t i = 0; i < n; ++i) bytes += rec;
    return make_stream(bytes, n);
}

// 128-byte calls (124 bytes of payload behind the 4-byte mark), 64 KiB slices:
// records straddle slice boundaries 1 time in 512, exactly as on the wire.
void reassemble_small_calls(benchmark::State& state) {
    stream s = small_call_stream();
    size_t seen = 0;
    for (auto _ : state) {
        rpc::record_reassembler ra;
        for (const auto& p : s.pieces) {
            auto r = ra.feed(p, [&](core::slice_chain&& c) {
                ++seen;
                benchmark::DoNotOptimize(c);
            });
            benchmark::DoNotOptimize(r);
        }
    }
    if (seen != state.iterations() * s.records) state.SkipWithError("records lost");
    state.SetItemsProcessed(static_cast<int64_t>(state.iterations() * s.records));
    state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * s.whole.size()));
}
BENCHMARK(reassemble_small_calls);

// The shard's real first step: reassemble 128-byte calls and decode each header.
void reassemble_and_decode_small_calls(benchmark::State& state) {
    stream s = small_call_stream();
    size_t procs = 0;
    for (auto _ : state) {
        rpc::record_reassembler ra;
        for (const auto& p : s.pieces) {
            auto r = ra.feed(p, [&](core::slice_chain&& c) {
                auto m = rpc::decode_call(c);
                procs += m ? m->header.proc : 0;
            });
            benchmark::DoNotOptimize(r);
        }
    }
    if (procs != state.iterations() * s.records) state.SkipWithError("decode failed");
    state.SetItemsProcessed(static_cast<int64_t>(state.iterations() * s.records));
}
BENCHMARK(reassemble_and_decode_small_calls);

// 1 MiB records arriving in 64 KiB slices: the reassembler only shares slices.
constexpr size_t big_record = 1024 * 1024;
constexpr size_t big_records = 16;

std::string big_stream_bytes() {
    std::string rec = framed(std::string(big_record, 'x'));
    std::string bytes;
    for (size_t i = 0; i < big_records; ++i) bytes += rec;
    return bytes;
}

void reassemble_1mib_records(benchmark::State& state) {
    stream s = make_stream(big_stream_bytes(), big_records);
    size_t seen = 0;
    for (auto _ : state) {
        rpc::record_reassembler ra;
        for (const auto& p : s.pieces) {
            auto r = ra.feed(p, [&](core::slice_chain&& c) {
                seen += c.size();
                benchmark::DoNotOptimize(c);
            });
            benchmark::DoNotOptimize(r);
        }
    }
    if (seen != state.iterations() * s.records * big_record) state.SkipWithError("bytes lost");
    state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * s.whole.size()));
    state.SetItemsProcessed(static_cast<int64_t>(state.iterations() * s.records));
}
BENCHMARK(reassemble_1mib_records);

// Baseline: copying the same 1 MiB records out of the same 64 KiB slices into
// a contiguous record buffer — what a copying reassembler must at least do.
void memcpy_1mib_records_baseline(benchmark::State& state) {
    stream s = make_stream(big_stream_bytes(), big_records);
    std::vector<uint8_t> record(big_record + 4);
    for (auto _ : state) {
        size_t at = 0;
        for (const auto& p : s.pieces) {
            size_t off = 0;
            while (off < p.size()) {
                size_t k = std::min(p.size() - off, record.size() - at);
                std::memcpy(record.data() + at, p.data() + off, k);
                off += k;
                at += k;
                if (at == record.size()) {
                    benchmark::DoNotOptimize(record.data());
                    benchmark::ClobberMemory();
                    at = 0;
                }
            }
        }
    }
    state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * s.whole.size()));
    state.SetItemsProcessed(static_cast<int64_t>(state.iterations() * s.records));
}
BENCHMARK(memcpy_1mib_records_baseline);

// decode_call on a 124-byte call (AUTH_NONE) and on one with a 64-byte AUTH_SYS.
void decode_call_header(benchmark::State& state) {
    core::slice_chain rec;
    if (state.range(0) == 0) {
        rec.push_back(core::slice::copy_of(make_call(7, 124)));
    } else {
        rpc::call_header h;
        h.xid = 7;
        h.prog = 100003;
        h.vers = 3;
        h.proc = 1;
        rpc::auth_sys_params p;
        p.set_machine("client-0001.example");
        p.uid = p.gid = 1000;
        h.cred = rpc::encode_auth_sys(p);
        rpc::xdr_writer w;
        encode_call_header(w, h);
        w.raw("argumentsargumentsargumentsargs!", 32);
        rec.push_back(w.finish_slice());
    }
    for (auto _ : state) {
        auto m = rpc::decode_call(rec);
        benchmark::DoNotOptimize(m);
    }
    state.SetItemsProcessed(static_cast<int64_t>(state.iterations()));
}
BENCHMARK(decode_call_header)->Arg(0)->Arg(1)->ArgName("auth_sys");

void peek_message(benchmark::State& state) {
    core::slice_chain rec(core::slice::copy_of(make_call(7, 124)));
    for (auto _ : state) {
        auto m = rpc::peek_message(rec);
        benchmark::DoNotOptimize(m);
    }
    state.SetItemsProcessed(static_cast<int64_t>(state.iterations()));
}
BENCHMARK(peek_message);

}  // namespace
