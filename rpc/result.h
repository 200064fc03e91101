// Error values and a minimal value-or-error type for the RPC wire layer.
//
// The data path never throws (see STYLE.md): every decoder in rpc/ returns a
// `result<T>` that holds either a T or an `rpc::errc`. g++ 12 has no
// std::expected, so this is the small subset we need. `errc` converts to a
// `std::error_code` (category "rpc") for callers that log or propagate errors
// generically.
//
// Thread-safety: plain values; no shared state besides the immutable category.
#pragma once

#include <cstdint>
#include <new>
#include <system_error>
#include <type_traits>
#include <utility>

namespace rpcgate::rpc {

// Why a wire-format operation failed. Stable numbering: the values are used
// as metric labels by the gateway.
enum class errc : uint8_t {
    ok = 0,
    short_input,           // fewer bytes than the encoding needs
    too_long,              // a length exceeds its limit (opaque<N>, string<N>, auth body)
    bad_value,             // a value outside its enumeration (bool not 0/1, bad msg_type ...)
    record_too_large,      // record-marking: record above the configured cap
    too_many_fragments,    // record-marking: fragment count above the configured cap
    rpc_version_mismatch,  // call with rpcvers != 2: answer with an RPC_MISMATCH reply
    trailing_bytes,        // a self-contained structure (AUTH_SYS body) has extra bytes
};

const std::error_category& rpc_category() noexcept;
inline std::error_code make_error_code(errc e) noexcept {
    return {static_cast<int>(e), rpc_category()};
}
// Short lower-case name of an error ("short_input"), for logs and metric labels.
const char* to_string(errc e) noexcept;

// Holds a T or an errc (never errc::ok). T must be nothrow-movable.
template <typename T>
class [[nodiscard]] result {
    static_assert(std::is_nothrow_move_constructible_v<T>);

  public:
    result(T&& v) noexcept : err_(errc::ok) { new (&storage_) T(std::move(v)); }
    result(const T& v) : err_(errc::ok) { new (&storage_) T(v); }
    result(errc e) noexcept : err_(e) {}
    result(result&& o) noexcept : err_(o.err_) {
        if (ok()) new (&storage_) T(std::move(*o.ptr()));
    }
    result& operator=(result&& o) noexcept {
        if (this != &o) {
            reset();
            err_ = o.err_;
            if (ok()) new (&storage_) T(std::move(*o.ptr()));
        }
        return *this;
    }
    result(const result&) = delete;
    result& operator=(const result&) = delete;
    ~result() { reset(); }

    bool ok() const noexcept { return err_ == errc::ok; }
    explicit operator bool() const noexcept { return ok(); }
    errc error() const noexcept { return err_; }

    // Preconditions: ok().
    T& value() & noexcept { return *ptr(); }
    const T& value() const& noexcept { return *ptr(); }
    T&& value() && noexcept { return std::move(*ptr()); }
    T& operator*() & noexcept { return *ptr(); }
    const T& operator*() const& noexcept { return *ptr(); }
    T&& operator*() && noexcept { return std::move(*ptr()); }
    T* operator->() noexcept { return ptr(); }
    const T* operator->() const noexcept { return ptr(); }

  private:
    T* ptr() noexcept { return std::launder(reinterpret_cast<T*>(&storage_)); }
    const T* ptr() const noexcept { return std::launder(reinterpret_cast<const T*>(&storage_)); }
    void reset() noexcept {
        if (ok()) ptr()->~T();
        err_ = errc::short_input;  // any non-ok value: storage is now empty
    }

    alignas(T) unsigned char storage_[sizeof(T)];
    errc err_;
};

// Success or an error, without a value.
template <>
class [[nodiscard]] result<void> {
  public:
    result() noexcept = default;
    result(errc e) noexcept : err_(e) {}
    bool ok() const noexcept { return err_ == errc::ok; }
    explicit operator bool() const noexcept { return ok(); }
    errc error() const noexcept { return err_; }

  private:
    errc err_ = errc::ok;
};

}  // namespace rpcgate::rpc

template <>
struct std::is_error_code_enum<rpcgate::rpc::errc> : std::true_type {};
