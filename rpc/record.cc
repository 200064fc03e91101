#include "rpc/record.h"

#include <algorithm>

#include "rpc/xdr_codec.h"

namespace rpcgate::rpc {

size_t record_reassembler::gather_header(const core::slice& data, size_t off) noexcept {
    size_t k = std::min<size_t>(4 - hdr_have_, data.size() - off);
    std::memcpy(hdr_ + hdr_have_, data.data() + off, k);
    hdr_have_ = static_cast<uint8_t>(hdr_have_ + k);
    in_record_ = true;
    return k;
}

bool record_reassembler::begin_fragment(uint32_t header) noexcept {
    const size_t len = header & record_max_fragment;
    // Check against the cap before buffering anything: a hostile 2 GiB length
    // is refused at its header, not after we held 4 MiB of it.
    if (len > limits_.max_record - record_size_) {
        error_ = errc::record_too_large;
        return false;
    }
    if (++fragments_ > limits_.max_fragments) {
        error_ = errc::too_many_fragments;
        return false;
    }
    ++fragments_total_;
    in_record_ = true;
    record_size_ += len;
    frag_left_ = len;
    in_fragment_ = len != 0;
    last_ = (header & record_last_fragment) != 0;
    return true;
}

core::slice_chain record_reassembler::take_record() noexcept {
    ++records_total_;
    core::slice_chain rec = std::move(record_);
    record_.clear();  // a moved-from chain keeps its byte count: reset it
    record_size_ = 0;
    fragments_ = 0;
    in_record_ = false;
    last_ = false;
    return rec;
}

void record_reassembler::reset() noexcept {
    record_.clear();
    record_size_ = 0;
    fragments_ = 0;
    in_record_ = false;
    last_ = false;
    frag_left_ = 0;
    in_fragment_ = false;
    hdr_have_ = 0;
    error_ = errc::ok;
}

core::slice_chain frame_record(core::slice_chain&& payload, size_t max_fragment) {
    max_fragment = std::clamp<size_t>(max_fragment, 1, record_max_fragment);
    size_t total = payload.size();
    size_t nfrag = total == 0 ? 1 : (total + max_fragment - 1) / max_fragment;
    core::slice headers = core::slice::allocate(4 * nfrag);
    core::slice_chain out;
    for (size_t i = 0; i < nfrag; ++i) {
        size_t len = std::min(max_fragment, payload.size());
        bool last = i + 1 == nfrag;
        store_be32(headers.mutable_data() + 4 * i,
                   static_cast<uint32_t>(len) | (last ? record_last_fragment : 0));
        out.push_back(headers.share(4 * i, 4));
        out.append(last ? std::move(payload) : payload.split_front(len));
    }
    return out;
}

}  // namespace rpcgate::rpc
