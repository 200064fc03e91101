// What `rpcgate-bench run --json` and the progress line say about a report:
// the JSON parses, its summary figures agree with the histogram it carries,
// and the histogram's buckets hold the recorded values.
#include <gtest/gtest.h>

#include <cctype>
#include <cstdlib>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "tools/bench/load_client.h"

using namespace rpcgate::bench;

namespace {

// Just enough JSON for the test: objects, arrays, strings without escapes,
// numbers, true/false. A syntax error fails the parse (ok == false).
struct json {
    enum kind_t { null, boolean, number, string, array, object } kind = null;
    double num = 0;
    bool b = false;
    std::string str;
    std::vector<json> items;
    std::map<std::string, json> fields;

    const json& operator[](const std::string& k) const {
        static const json missing;
        auto it = fields.find(k);
        return it == fields.end() ? missing : it->second;
    }
};

struct json_parser {
    const std::string& s;
    size_t i = 0;
    bool ok = true;

    void ws() {
        while (i < s.size() && std::isspace(static_cast<unsigned char>(s[i]))) ++i;
    }
    bool eat(char c) {
        ws();
        if (i < s.size() && s[i] == c) {
            ++i;
            return true;
        }
        return false;
    }
    std::string str() {
        std::string out;
        if (!eat('"')) return ok = false, out;
        while (i < s.size() && s[i] != '"') {
            if (s[i] == '\\') ok = false;
            out += s[i++];
        }
        if (i >= s.size()) ok = false;
        ++i;
        return out;
    }
    json value() {
        json v;
        ws();
        if (i >= s.size()) return ok = false, v;
        char c = s[i];
        if (c == '{') {
            v.kind = json::object;
            ++i;
            if (eat('}')) return v;
            do {
                std::string k = str();
                if (!eat(':')) ok = false;
                v.fields[k] = value();
            } while (ok && eat(','));
            if (!eat('}')) ok = false;
        } else if (c == '[') {
            v.kind = json::array;
            ++i;
            if (eat(']')) return v;
            do v.items.push_back(value());
            while (ok && eat(','));
            if (!eat(']')) ok = false;
        } else if (c == '"') {
            v.kind = json::string;
            v.str = str();
        } else if (s.compare(i, 4, "true") == 0 || s.compare(i, 5, "false") == 0) {
            v.kind = json::boolean;
            v.b = s[i] == 't';
            i += v.b ? 4 : 5;
        } else {
            v.kind = json::number;
            char* end = nullptr;
            v.num = std::strtod(s.c_str() + i, &end);
            if (end == s.c_str() + i) ok = false;
            i = size_t(end - s.c_str());
        }
        return v;
    }
};

json parse(const std::string& text, bool* ok) {
    json_parser p{text};
    json v = p.value();
    p.ws();
    *ok = p.ok && p.i == text.size();
    return v;
}

// A report as a run would leave it: 1000 calls of 1 MiB each way in 2 s,
// latencies 1..1000 us.
run_report sample_report() {
    run_report r;
    r.connections = 8;
    r.depth = 4;
    r.size = r.size_max = 1 << 20;
    r.calls = 1000;
    r.elapsed_s = 2.0;
    r.payload_bytes_sent = r.payload_bytes_received = 1000ull << 20;
    for (uint64_t us = 1; us <= 1000; ++us) r.latency.record(us * 1000);
    r.lost_calls = 3;
    r.timeouts = 2;
    r.errors = 5;
    return r;
}

TEST(report_json, summary_figures_and_histogram) {
    run_report r = sample_report();
    const std::string text = format_json(r);
    EXPECT_EQ(text.find('\n'), std::string::npos) << "one line";
    bool ok = false;
    json j = parse(text, &ok);
    ASSERT_TRUE(ok) << text;
    ASSERT_EQ(j.kind, json::object);

    EXPECT_EQ(j["mode"].str, "closed");
    EXPECT_EQ(j["calls"].num, 1000);
    EXPECT_NEAR(j["ops_per_sec"].num, 500, 0.1);
    EXPECT_NEAR(j["bytes_per_sec"].num, 2.0 * 1000 * (1 << 20) / 2.0, 1);
    EXPECT_NEAR(j["mb_per_sec"].num, 1048.576, 0.001);
    EXPECT_EQ(j["errors"].num, 5);
    EXPECT_EQ(j["lost_calls"].num, 3);
    EXPECT_EQ(j["timeouts"].num, 2);
    // Percentiles within the histogram's 1 % of the exact k-th value.
    for (auto [key, exact] : std::vector<std::pair<std::string, double>>{
             {"p50_us", 500}, {"p90_us", 900}, {"p99_us", 990}, {"p999_us", 999}}) {
        EXPECT_NEAR(j[key].num, exact, exact * 0.01) << key;
    }
    EXPECT_EQ(j["max_us"].num, 1000);
    EXPECT_EQ(j["min_us"].num, 1);
    EXPECT_NEAR(j["mean_us"].num, 500.5, 0.01);

    // The histogram: every non-empty bucket once, in order, holding the counts.
    const json& h = j["histogram"];
    ASSERT_EQ(h.kind, json::object) << text;
    EXPECT_EQ(h["unit"].str, "ns");
    EXPECT_EQ(h["count"].num, 1000);
    const std::vector<json>& b = h["buckets"].items;
    ASSERT_FALSE(b.empty());
    double total = 0, prev_hi = -1;
    size_t next_value = 1;  // values recorded: next_value * 1000 ns
    for (const json& e : b) {
        ASSERT_EQ(e.items.size(), 3u);
        double lo = e.items[0].num, hi = e.items[1].num, n = e.items[2].num;
        EXPECT_GT(lo, prev_hi);
        EXPECT_LE(lo, hi);
        EXPECT_GT(n, 0);
        // Exactly the recorded values that fall in [lo, hi].
        size_t in = 0;
        while (next_value <= 1000 && double(next_value * 1000) <= hi) {
            EXPECT_GE(double(next_value * 1000), lo);
            ++next_value;
            ++in;
        }
        EXPECT_EQ(double(in), n) << "bucket [" << lo << ", " << hi << "]";
        total += n;
        prev_hi = hi;
    }
    EXPECT_EQ(total, 1000);
    EXPECT_EQ(next_value, 1001u);
}

TEST(report_json, open_loop_fields) {
    run_report r = sample_report();
    r.rate = 2500;
    r.missed_calls = 17;
    for (int i = 0; i < 100; ++i) r.send_lag.record(i < 99 ? 10'000 : 900'000);
    bool ok = false;
    json j = parse(format_json(r), &ok);
    ASSERT_TRUE(ok);
    EXPECT_EQ(j["mode"].str, "open");
    EXPECT_EQ(j["rate"].num, 2500);
    EXPECT_EQ(j["missed_calls"].num, 17);
    EXPECT_NEAR(j["send_lag_p50_us"].num, 10, 0.1);
    EXPECT_NEAR(j["send_lag_p99_us"].num, 10, 0.1);
    EXPECT_NE(format_human(r).find("17 calls due but never sent"), std::string::npos);
}

TEST(report_json, empty_run_is_still_valid_json) {
    run_report r;
    bool ok = false;
    json j = parse(format_json(r), &ok);
    ASSERT_TRUE(ok);
    EXPECT_EQ(j["calls"].num, 0);
    EXPECT_EQ(j["histogram"]["count"].num, 0);
    EXPECT_TRUE(j["histogram"]["buckets"].items.empty());
}

TEST(progress_line, says_rate_and_percentiles_so_far) {
    latency_histogram h;
    for (int i = 0; i < 995; ++i) h.record(50'000);
    for (int i = 0; i < 5; ++i) h.record(2'000'000);
    EXPECT_EQ(format_progress(3.0, 123456.4, h, 2),
              "progress: 3s 123456 ops/s p50 50.0 us p99 50.0 us errors 2");
    for (int i = 0; i < 10; ++i) h.record(2'000'000);  // now 15 of 1010: over 1 %
    EXPECT_EQ(format_progress(4.2, 0, h, 0),
              "progress: 4s 0 ops/s p50 50.0 us p99 2000.0 us errors 0");
    EXPECT_EQ(format_progress(1, 10, latency_histogram{}, 0), "progress: 1s 10 ops/s errors 0");
}

}  // namespace
