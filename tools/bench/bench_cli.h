// The rpcgate-bench command line: `serve`, `run`, `handshake` and `nfs` (see
// DESIGN.md, contract).
//
//   rpcgate-bench serve --listen ADDR:PORT [--shards N]
//                       [--tls off|implicit --cert FILE --key FILE [--ciphersuites S]
//                        [--tls-max-version 1.2|1.3] [--ciphers LIST] [--groups LIST]]
//   rpcgate-bench run --target ADDR:PORT --connections N --depth D --size BYTES
//                     (--duration SECONDS | --calls COUNT) [--proc echo|null|callback]
//                     [--rate OPS_PER_S] [--threads T] [--verify] [--reconnect] [--json]
//                     [--quiet]
//                     [--progress SECONDS] [--seed S] [--size-max BYTES]
//                     [--tls off|starttls|implicit [--ca FILE] [--cert FILE --key FILE]
//                      [--server-name NAME] [--ciphersuites S] [--tls-max-version 1.2|1.3]
//                      [--ciphers LIST] [--groups LIST]]
//   rpcgate-bench handshake --target ADDR:PORT --tls starttls|implicit
//                     --connections N --duration S [--json] [TLS options as for run]
//   rpcgate-bench handshake --baseline --cert FILE --key FILE --duration S [--ca FILE]
//                     [--server-name NAME] [--ciphersuites S] [--tls-max-version 1.2|1.3]
//                     [--ciphers LIST] [--groups LIST] [--json]
//                     (both in-memory ends take the versions, ciphers and groups)
//   rpcgate-bench nfs --target ADDR:PORT [--nfs-version 3|4.1] [--mount-port P]
//                     [--export PATH] [--file NAME]
//                     [--file-size BYTES] [--size BYTES] [--pattern seq|rand]
//                     [--mix read=70,write=30] [--connections N] [--depth D]
//                     (--duration SECONDS | --calls COUNT) [--verify] [--fill]
//                     [--stable unstable|data_sync|file_sync] [--uid U] [--gid G]
//                     [--json] [--quiet] [--progress S] [--tls off|starttls|implicit ...]
//                     [--mount-tls off|starttls|implicit]
//     (NFS load; see nfs_load.h)
//
// `bench_main` is main() minus the process: it parses, runs and returns the
// exit status, so tests can drive the whole CLI in-process. Output: `serve`
// prints `READY port=<n>` (flushed) once listening and a one-line summary at
// exit; `run` prints its report on stdout (with --json: one object holding the
// summary figures and the latency histogram), logs on stderr, and on runs
// longer than 3 s a progress line a second on stderr (--quiet: none).
// `--rate` makes `run` open-loop (see load_client.h).
// A bad option is one line on stderr and exit status 2.
//
// Main thread only (installs signal handling: SIGINT/SIGTERM end a `serve`
// with status 0, and end a `run` early with its report).
#pragma once

namespace rpcgate::bench {

int bench_main(int argc, char** argv);

}  // namespace rpcgate::bench
