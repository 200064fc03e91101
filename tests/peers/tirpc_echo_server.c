/*
 * tirpc_echo_server: the rpcgate echo program (echo.x) served by classic
 * libtirpc, as an independent RPC implementation for the tests.
 *
 *   tirpc_echo_server --port P [--host 127.0.0.1] [--sendsz BYTES]
 *
 * The program is registered with svc_reg(..., NULL): no rpcbind involved, so
 * any number of instances can run side by side. `--port 0` binds an ephemeral
 * port. Once listening it prints `READY port=<n>` on stdout (flushed); the
 * scripts that start it wait for that line instead of sleeping.
 *
 * `--sendsz` is libtirpc's record-stream buffer: replies larger than it leave
 * as several record-marking fragments (libtirpc caps it at 256 KiB).
 */
#include "peer_common.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <netinet/in.h>
#include <sys/socket.h>

#include "echo.h"

static void usage(void) {
    fprintf(stderr, "usage: tirpc_echo_server --port P [--host ADDR] [--sendsz BYTES]\n");
    exit(2);
}

static void dispatch(struct svc_req* req, SVCXPRT* xprt) {
    switch (req->rq_proc) {
        case RPCGATE_ECHO_NULL:
            svc_sendreply(xprt, (xdrproc_t)xdr_void, NULL);
            return;
        case RPCGATE_ECHO_ECHO: {
            rpcgate_echo_data data;
            memset(&data, 0, sizeof data);
            if (!svc_getargs(xprt, (xdrproc_t)xdr_rpcgate_echo_data, (char*)&data)) {
                svcerr_decode(xprt);
                return;
            }
            if (!svc_sendreply(xprt, (xdrproc_t)xdr_rpcgate_echo_data, (char*)&data))
                fprintf(stderr, "tirpc_echo_server: sending a %u-byte reply failed\n",
                        data.rpcgate_echo_data_len);
            svc_freeargs(xprt, (xdrproc_t)xdr_rpcgate_echo_data, (char*)&data);
            return;
        }
        default:
            svcerr_noproc(xprt);
            return;
    }
}

int main(int argc, char** argv) {
    const char* host = "127.0.0.1";
    const char* port = NULL;
    unsigned long sendsz = 0;

    for (int i = 1; i < argc; i++) {
        const char* val = i + 1 < argc ? argv[i + 1] : NULL;
        if (!val) usage();
        if (strcmp(argv[i], "--port") == 0)
            port = val;
        else if (strcmp(argv[i], "--host") == 0)
            host = val;
        else if (strcmp(argv[i], "--sendsz") == 0)
            sendsz = peer_parse_ulong("--sendsz", val);
        else
            usage();
        i++;
    }
    if (!port) usage();

    /* A client that goes away mid-reply must not kill the server. */
    signal(SIGPIPE, SIG_IGN);

    struct sockaddr_storage addr;
    socklen_t addrlen;
    if (peer_resolve(host, port, AI_PASSIVE, &addr, &addrlen) != 0) return 1;

    int fd = socket(addr.ss_family, SOCK_STREAM, 0);
    int one = 1;
    if (fd < 0 || setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) < 0 ||
        bind(fd, (struct sockaddr*)&addr, addrlen) < 0 || listen(fd, SOMAXCONN) < 0) {
        fprintf(stderr, "tirpc_echo_server: cannot listen on %s:%s: %s\n", host, port,
                strerror(errno));
        return 1;
    }

    /* recvsz 0: libtirpc's default buffer; records of any length still arrive. */
    SVCXPRT* xprt = svc_vc_create(fd, (u_int)sendsz, 0);
    if (!xprt) {
        fprintf(stderr, "tirpc_echo_server: svc_vc_create failed\n");
        return 1;
    }
    /* NULL netconfig: register the dispatcher locally, never with rpcbind. */
    if (!svc_reg(xprt, RPCGATE_ECHO, RPCGATE_ECHO_V1, dispatch, NULL)) {
        fprintf(stderr, "tirpc_echo_server: svc_reg failed\n");
        return 1;
    }

    addrlen = sizeof addr;
    if (getsockname(fd, (struct sockaddr*)&addr, &addrlen) < 0) {
        fprintf(stderr, "tirpc_echo_server: getsockname: %s\n", strerror(errno));
        return 1;
    }
    printf("READY port=%u\n", peer_port_of(&addr));
    fflush(stdout);

    svc_run();
    fprintf(stderr, "tirpc_echo_server: svc_run returned\n");
    return 1;
}
