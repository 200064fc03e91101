#!/usr/bin/env python3
"""report.py's arithmetic: the median round, the ratios and what the tables say."""
import os
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import report  # noqa: E402


def run(workload, setup, ops, p99=100.0, rnd=1, **extra):
    result = {"ops_per_sec": ops, "bytes_per_sec": ops * 128, "p50_us": 50.0, "p90_us": 80.0,
              "p99_us": p99, "p999_us": p99 * 2, "max_us": p99 * 3, "errors": 0,
              "histogram": {"unit": "ns", "count": 4,
                            "buckets": [[1000, 1000, 1], [2000, 2001, 2], [9000, 9063, 1]]}}
    result.update(extra)
    return {"round": rnd, "workload": workload, "setup": setup, "result": result}


META = {"duration_s": 3, "rounds": 3, "shards": 2, "cipher": "TLS_AES_128_GCM_SHA256",
        "open_rate": 10000, "machine": "2 cores"}


class median_rounds(unittest.TestCase):
    def test_closed_loop_keeps_the_median_ops_and_the_spread(self):
        by, spread, groups = report.median_rounds(
            [run("small", "rpcgate", ops, rnd=i) for i, ops in enumerate((900, 1000, 1200))])
        self.assertEqual(by[("small", "rpcgate")]["ops_per_sec"], 1000)
        self.assertAlmostEqual(spread[("small", "rpcgate")], 0.3)
        self.assertEqual(len(groups[("small", "rpcgate")]), 3)

    def test_open_loop_keeps_the_median_p99(self):
        by, _, _ = report.median_rounds(
            [run("open", "haproxy", 10000, p99=p) for p in (300.0, 100.0, 200.0)])
        self.assertEqual(by[("open", "haproxy")]["p99_us"], 200.0)

    def test_even_rounds_keep_the_lower_middle_and_one_round_has_no_spread(self):
        by, spread, _ = report.median_rounds(
            [run("large", "direct", 10), run("large", "direct", 20), run("small", "x", 5)])
        self.assertEqual(by[("large", "direct")]["ops_per_sec"], 10)
        self.assertNotIn(("small", "x"), spread)


class tables(unittest.TestCase):
    def test_each_setup_is_held_against_the_haproxy_doing_the_same_job(self):
        runs = [run("small", "direct", 2000), run("small", "rpcgate", 1100),
                run("small", "haproxy", 1000), run("small", "rpcgate-tls", 600),
                run("small", "haproxy-tls", 800), run("open", "haproxy", 10000, p99=400.0),
                run("open", "rpcgate", 10000, p99=100.0), run("open", "direct", 10000, p99=50.0)]
        _, _, _, _, table, ratios, _ = report.summarize(runs, {}, META)
        self.assertAlmostEqual(ratios["small/rpcgate"]["vs_haproxy"], 1.1)
        self.assertAlmostEqual(ratios["small/rpcgate"]["vs_direct"], 0.55)
        self.assertEqual(ratios["small/rpcgate-tls"]["haproxy"], "haproxy-tls")
        self.assertAlmostEqual(ratios["small/rpcgate-tls"]["vs_haproxy"], 0.75)
        self.assertAlmostEqual(ratios["open/rpcgate"]["p99_vs_haproxy"], 0.25)
        self.assertAlmostEqual(ratios["open/rpcgate"]["p99_vs_direct"], 2.0)
        self.assertIn("| small | rpcgate | 1100 | 0.1 | 50 | 100 | 200 | 0 | 1.10 | 0.55 |", table)
        self.assertIn("median of 3 rounds", table)

    def test_a_setup_that_could_not_run_is_a_row_that_says_why(self):
        runs = [run("small", "direct", 2000), run("open", "direct", 10000)]
        _, _, _, setups, table, _, _ = report.summarize(
            runs, {"rpcgate-chain": "no upstream TLS in this build"}, META)
        self.assertIn("rpcgate-chain", setups)
        self.assertIn("| small | rpcgate A->B TLS | n/a (no upstream TLS in this build) |", table)
        self.assertIn("| rpcgate A->B TLS | n/a (no upstream TLS in this build) |", table)

    def test_ratio_table_of_the_compare_scripts(self):
        lines, ratios = report.ratio_table(
            [run("small", "direct-tls", 500), run("small", "stunnel", 1000)],
            ["direct-tls", "stunnel"])
        self.assertEqual(lines[0].count("| vs "), 2)
        self.assertEqual(ratios["small/stunnel"], {"vs_direct_tls": 2.0, "vs_stunnel": 1.0})
        self.assertTrue(lines[-1].endswith("| 2.00 | 1.00 |"), lines[-1])


def cpu_run(workload, setup, proxy_s, echo_s, calls=1000, nbytes=1e9, rnd=1):
    r = run(workload, setup, calls, rnd=rnd, calls=calls, elapsed_s=2.0,
            payload_bytes_sent=nbytes / 2, payload_bytes_received=nbytes / 2)
    r["result"]["cpu"] = {"proxy_s": proxy_s, "echo_s": echo_s}
    return r


class cpu(unittest.TestCase):
    def test_cpu_per_call_per_gb_and_the_ratios_against_both_haproxies(self):
        meta = dict(META, tls_libraries={"aead": {"host": {"gb_per_s": 2.0, "s_per_gb": 0.5},
                                                  "chroot": {"gb_per_s": 4.0, "s_per_gb": 0.25}}})
        runs = [cpu_run("large", "rpcgate-tls", 1.0, 0.5), cpu_run("large", "haproxy-tls", 2.0, 0.5),
                cpu_run("large", "haproxy32-tls", 4.0, 0.5), cpu_run("large", "direct", None, 0.4),
                # The median of each figure: rounds 0.5, 1.0 (kept) and 9.0 s.
                cpu_run("small", "rpcgate", 9.0, 1.0, rnd=1), cpu_run("small", "rpcgate", 0.5, 1.0, rnd=2),
                cpu_run("small", "rpcgate", 1.0, 1.0, rnd=3), cpu_run("small", "haproxy32", 2.0, 1.0)]
        _, _, _, _, table, ratios, sections = report.summarize(runs, {}, meta)
        c = sections["cpu"]
        self.assertAlmostEqual(c["large/rpcgate-tls"]["proxy_us_per_call"], 1000.0)
        self.assertAlmostEqual(c["large/rpcgate-tls"]["proxy_s_per_gb"], 1.0)
        self.assertAlmostEqual(c["large/rpcgate-tls"]["proxy_cores"], 0.5)
        self.assertAlmostEqual(c["large/rpcgate-tls"]["echo_us_per_call"], 500.0)
        self.assertAlmostEqual(c["large/rpcgate-tls"]["proxy_vs_echo"], 2.0)
        self.assertAlmostEqual(ratios["large/rpcgate-tls"]["cpu_vs_haproxy32"], 0.25)
        self.assertAlmostEqual(ratios["large/rpcgate-tls"]["cpu_vs_haproxy"], 0.5)
        # Each library against its own OpenSSL's AEAD cost.
        self.assertAlmostEqual(ratios["large/rpcgate-tls"]["x_aead"], 2.0)
        self.assertAlmostEqual(ratios["large/haproxy32-tls"]["x_aead"], 16.0)
        self.assertIsNone(ratios["large/haproxy32-tls"]["cpu_vs_haproxy32"])
        self.assertIsNone(c["large/direct"]["proxy_us_per_call"])
        self.assertAlmostEqual(c["small/rpcgate"]["proxy_us_per_call"], 1000.0)
        self.assertAlmostEqual(ratios["small/rpcgate"]["cpu_vs_haproxy32"], 0.5)
        self.assertIsNone(ratios["small/rpcgate"]["cpu_vs_haproxy"])
        self.assertIn("| large | rpcgate TLS | 1000 | 0.50 | 1000.00 | 1.000 | 0.25 | 0.50 | 2.00 | "
                      "500.00 | 2.00 |", table)
        self.assertIn("AES-128-GCM alone", table)

    def test_idle_memory_per_connection_against_the_haproxy_doing_the_same_job(self):
        def idle(setup, per_conn):
            # The next 100 connections cost half as much as the first (first touches).
            return {"round": 1, "workload": "idle", "setup": setup,
                    "result": {"idle_connections": 100, "rss_before_kib": 1024,
                               "rss_after_kib": 1024 + 100 * per_conn,
                               "kib_per_connection": per_conn, "more_connections": 100,
                               "rss_more_kib": 1024 + 150 * per_conn,
                               "kib_per_more_connection": per_conn / 2, "errors": 0}}
        runs = [idle("rpcgate-tls", 10.0), idle("haproxy32-tls", 40.0), idle("haproxy-tls", 20.0),
                idle("rpcgate", 4.0), idle("haproxy32", 8.0)]
        _, _, workloads, _, table, ratios, sections = report.summarize(runs, {}, META)
        self.assertEqual(workloads, [])
        self.assertAlmostEqual(ratios["idle/rpcgate-tls"]["vs_haproxy32"], 0.25)
        self.assertAlmostEqual(ratios["idle/rpcgate-tls"]["vs_haproxy"], 0.5)
        self.assertAlmostEqual(ratios["idle/rpcgate"]["vs_haproxy32"], 0.5)
        self.assertIsNone(ratios["idle/rpcgate"]["vs_haproxy"])
        self.assertEqual(sections["idle"]["rpcgate"]["rss_after_kib"], 1424)
        self.assertAlmostEqual(ratios["idle/rpcgate-tls"]["vs_haproxy32_next"], 0.25)
        self.assertAlmostEqual(ratios["idle/rpcgate"]["vs_haproxy32_next"], 0.5)
        self.assertIsNone(ratios["idle/rpcgate"]["vs_haproxy_next"])
        self.assertEqual(sections["idle"]["rpcgate"]["kib_per_more_connection"], 2.0)
        self.assertIn("| rpcgate TLS | 100 | 1.0 | 2.0 | 10.0 | 0.25 | 0.50 | 5.0 | 0.25 | 0 |",
                      table)


class cdf(unittest.TestCase):
    def test_points_are_cumulative_fractions_at_each_bucket_top(self):
        pts = report.cdf_points(run("open", "x", 1)["result"])
        self.assertEqual(pts, [(1.001, 0.25), (2.002, 0.75), (9.064, 1.0)])


if __name__ == "__main__":
    unittest.main()
