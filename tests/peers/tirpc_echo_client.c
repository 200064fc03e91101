/*
 * tirpc_echo_client: drives the rpcgate echo program (echo.x) with classic
 * libtirpc and checks every reply byte for byte.
 *
 *   tirpc_echo_client --host 127.0.0.1 --port P --calls N --min BYTES --max BYTES
 *                     --seed S [--sendsz BYTES] [--connections C] [--timeout SECONDS]
 *
 * Each connection first makes one NULL call, then its share of the N ECHO
 * calls (call i goes to connection i % C, connections run in parallel, one
 * call in flight each). Call i's size and content come only from (seed, i),
 * so a failing run is reproduced by its command line. The server is reached
 * without rpcbind (clnt_vc_create on a connected socket).
 *
 * `--sendsz` is libtirpc's record-stream buffer: a call larger than it leaves
 * as several record-marking fragments (libtirpc caps it at 256 KiB).
 *
 * Output: one line `calls=N bytes=B errors=E seconds=T`; the exit status is 0
 * only if every call succeeded and every reply matched.
 */
#include "peer_common.h"

#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <sys/socket.h>

#include "echo.h"

struct options {
    const char* host;
    const char* port;
    unsigned long calls, min, max, seed, sendsz, connections, timeout_s;
};

struct worker {
    const struct options* opt;
    unsigned index;
    pthread_t thread;
    unsigned long calls, errors;
    unsigned long long bytes;
};

static void usage(void) {
    fprintf(stderr,
            "usage: tirpc_echo_client --host ADDR --port P --calls N --min BYTES "
            "--max BYTES --seed S [--sendsz BYTES] [--connections C] "
            "[--timeout SECONDS]\n");
    exit(2);
}

/* splitmix64: a seedable generator with no state beyond one word. */
static uint64_t mix64(uint64_t* state) {
    uint64_t z = (*state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* Size and content of call `i`, a function of (seed, i) only. */
static size_t payload_for(const struct options* opt, unsigned long i, char* buf) {
    uint64_t state = opt->seed * 0x100000001b3ull ^ i;
    uint64_t span = (uint64_t)(opt->max - opt->min) + 1;
    size_t len = opt->min + (size_t)(mix64(&state) % span);
    size_t off = 0;
    for (; off + 8 <= len; off += 8) {
        uint64_t w = mix64(&state);
        memcpy(buf + off, &w, 8);
    }
    uint64_t tail = mix64(&state);
    memcpy(buf + off, &tail, len - off);
    return len;
}

static CLIENT* connect_client(const struct options* opt) {
    struct sockaddr_storage addr;
    socklen_t addrlen;
    if (peer_resolve(opt->host, opt->port, 0, &addr, &addrlen) != 0) return NULL;
    int fd = socket(addr.ss_family, SOCK_STREAM, 0);
    if (fd < 0 || connect(fd, (struct sockaddr*)&addr, addrlen) < 0) {
        fprintf(stderr, "tirpc_echo_client: cannot connect to %s:%s: %s\n", opt->host, opt->port,
                strerror(errno));
        if (fd >= 0) close(fd);
        return NULL;
    }
    struct netbuf raddr = {.maxlen = addrlen, .len = addrlen, .buf = &addr};
    CLIENT* clnt = clnt_vc_create(fd, &raddr, RPCGATE_ECHO, RPCGATE_ECHO_V1, (u_int)opt->sendsz, 0);
    if (!clnt) {
        fprintf(stderr, "tirpc_echo_client: %s\n", clnt_spcreateerror("clnt_vc_create"));
        close(fd);
        return NULL;
    }
    /* The CLIENT owns the socket from here on; clnt_destroy closes it. */
    clnt_control(clnt, CLSET_FD_CLOSE, NULL);
    return clnt;
}

static void report_mismatch(const struct worker* w, unsigned long i, const char* sent, size_t len,
                            const rpcgate_echo_data* got) {
    size_t n = got->rpcgate_echo_data_len < len ? got->rpcgate_echo_data_len : len;
    size_t at = 0;
    while (at < n && sent[at] == got->rpcgate_echo_data_val[at]) at++;
    fprintf(stderr,
            "tirpc_echo_client: connection %u call %lu: sent %zu bytes, got %u back, "
            "first difference at byte %zu\n",
            w->index, i, len, got->rpcgate_echo_data_len, at);
}

static void* run_worker(void* arg) {
    struct worker* w = arg;
    const struct options* opt = w->opt;
    struct timeval timeout = {.tv_sec = (time_t)opt->timeout_s, .tv_usec = 0};

    CLIENT* clnt = connect_client(opt);
    if (!clnt) {
        w->errors++;
        return NULL;
    }
    char* buf = malloc(opt->max + 8);
    if (!buf) {
        fprintf(stderr, "tirpc_echo_client: out of memory\n");
        w->errors++;
        clnt_destroy(clnt);
        return NULL;
    }

    enum clnt_stat st = clnt_call(clnt, RPCGATE_ECHO_NULL, (xdrproc_t)xdr_void, NULL,
                                  (xdrproc_t)xdr_void, NULL, timeout);
    if (st != RPC_SUCCESS) {
        fprintf(stderr, "tirpc_echo_client: connection %u NULL call: %s\n", w->index,
                clnt_sperror(clnt, "clnt_call"));
        w->errors++;
    }

    for (unsigned long i = w->index; st == RPC_SUCCESS && i < opt->calls; i += opt->connections) {
        rpcgate_echo_data arg_data, reply;
        size_t len = payload_for(opt, i, buf);
        arg_data.rpcgate_echo_data_len = (u_int)len;
        arg_data.rpcgate_echo_data_val = buf;
        memset(&reply, 0, sizeof reply);

        st = clnt_call(clnt, RPCGATE_ECHO_ECHO, (xdrproc_t)xdr_rpcgate_echo_data, (char*)&arg_data,
                       (xdrproc_t)xdr_rpcgate_echo_data, (char*)&reply, timeout);
        w->calls++;
        if (st != RPC_SUCCESS) {
            /* After a transport error the stream is out of step: stop this connection. */
            fprintf(stderr, "tirpc_echo_client: connection %u call %lu (%zu bytes): %s\n", w->index,
                    i, len, clnt_sperror(clnt, "clnt_call"));
            w->errors++;
            break;
        }
        if (reply.rpcgate_echo_data_len != len ||
            (len && memcmp(reply.rpcgate_echo_data_val, buf, len) != 0)) {
            report_mismatch(w, i, buf, len, &reply);
            w->errors++;
        }
        w->bytes += len;
        xdr_free((xdrproc_t)xdr_rpcgate_echo_data, (char*)&reply);
    }
    free(buf);
    clnt_destroy(clnt);
    return NULL;
}

static void parse(int argc, char** argv, struct options* opt) {
    int have_calls = 0, have_max = 0;
    for (int i = 1; i < argc; i += 2) {
        const char *name = argv[i], *val = i + 1 < argc ? argv[i + 1] : NULL;
        if (!val) usage();
        if (strcmp(name, "--host") == 0)
            opt->host = val;
        else if (strcmp(name, "--port") == 0)
            opt->port = val;
        else if (strcmp(name, "--calls") == 0)
            opt->calls = peer_parse_ulong(name, val), have_calls = 1;
        else if (strcmp(name, "--min") == 0)
            opt->min = peer_parse_ulong(name, val);
        else if (strcmp(name, "--max") == 0)
            opt->max = peer_parse_ulong(name, val), have_max = 1;
        else if (strcmp(name, "--seed") == 0)
            opt->seed = peer_parse_ulong(name, val);
        else if (strcmp(name, "--sendsz") == 0)
            opt->sendsz = peer_parse_ulong(name, val);
        else if (strcmp(name, "--connections") == 0)
            opt->connections = peer_parse_ulong(name, val);
        else if (strcmp(name, "--timeout") == 0)
            opt->timeout_s = peer_parse_ulong(name, val);
        else
            usage();
    }
    if (!opt->port || !have_calls || !have_max) usage();
    if (opt->min > opt->max || opt->max > 64ul << 20) {
        fprintf(stderr, "tirpc_echo_client: need --min <= --max <= 64 MiB\n");
        exit(2);
    }
    if (opt->connections == 0 || opt->connections > 1024 || opt->timeout_s == 0) {
        fprintf(stderr, "tirpc_echo_client: need 1..1024 --connections and a --timeout > 0\n");
        exit(2);
    }
}

int main(int argc, char** argv) {
    struct options opt = {.host = "127.0.0.1", .connections = 1, .timeout_s = 30};
    parse(argc, argv, &opt);

    struct worker* workers = calloc(opt.connections, sizeof *workers);
    if (!workers) {
        fprintf(stderr, "tirpc_echo_client: out of memory\n");
        return 1;
    }
    /* libtirpc's authnone_create() fills a process-wide singleton after an
     * unlocked NULL check: clients created at once in several threads each
     * allocate one and all but the last leak (LeakSanitizer saw it). Made
     * here first, the singleton exists before any worker asks for it. */
    (void)authnone_create();
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    for (unsigned k = 0; k < opt.connections; k++) {
        workers[k] = (struct worker){.opt = &opt, .index = k};
        if (pthread_create(&workers[k].thread, NULL, run_worker, &workers[k]) != 0) {
            fprintf(stderr, "tirpc_echo_client: cannot start thread %u\n", k);
            return 1;
        }
    }
    unsigned long calls = 0, errors = 0;
    unsigned long long bytes = 0;
    for (unsigned k = 0; k < opt.connections; k++) {
        pthread_join(workers[k].thread, NULL);
        calls += workers[k].calls;
        errors += workers[k].errors;
        bytes += workers[k].bytes;
    }
    clock_gettime(CLOCK_MONOTONIC, &t1);
    free(workers);

    /* A call never made (a connection gave up early) is an error too. */
    if (calls < opt.calls) errors += opt.calls - calls;
    double secs = (double)(t1.tv_sec - t0.tv_sec) + (double)(t1.tv_nsec - t0.tv_nsec) / 1e9;
    printf("calls=%lu bytes=%llu errors=%lu seconds=%.3f\n", calls, bytes, errors, secs);
    if (errors) {
        fprintf(stderr, "tirpc_echo_client: FAILED: %lu errors (%lu of %lu ECHO calls made)\n",
                errors, calls, opt.calls);
        return 1;
    }
    return 0;
}
