/*
 * tirpc_mount_client: the plaintext half of an NFSv3 mount, as mount.nfs does
 * it, with classic libtirpc: portmap GETPORT, MOUNT v3 MNT, and a NULL call
 * on any program (to see whether a server answers it or refuses it).
 *
 *   tirpc_mount_client HOST PORT STEP...
 *
 * STEP is one of
 *   getport PROG VERS   portmap v2 GETPORT for (PROG, VERS, TCP); prints the port
 *   mnt PATH            MOUNT v3 MNT of PATH; prints the status and file handle size
 *   null PROG VERS      a NULL call; success only if it is accepted
 *   tooweak PROG VERS   a NULL call; success only if it is refused with
 *                       AUTH_ERROR AUTH_TOOWEAK (RFC 9289 §4.2)
 * Each step opens its own TCP connection straight to HOST:PORT (no rpcbind),
 * as mount.nfs does for each program. One line per step on stdout; the exit
 * status is 0 only if every step succeeded.
 */
#include "peer_common.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* pmap_prot.h needs the types rpc.h declares first. */
#include <rpc/rpc.h>
/* clang-format off */
#include <rpc/pmap_prot.h>
/* clang-format on */
#include <sys/socket.h>

enum { mount_prog = 100005, mount_v3 = 3, mountproc3_mnt = 1, fhsize3 = 64 };

struct mnt_result {
    u_int status;
    char fh[fhsize3];
    u_int fh_len;
    int flavors[16];
    u_int n_flavors;
};

/* mountres3 (RFC 1813 §5.2.1): status, then on MNT3_OK the handle and the
 * accepted auth flavors. */
static bool_t xdr_mnt_result(XDR* x, struct mnt_result* r) {
    if (!xdr_u_int(x, &r->status)) return FALSE;
    if (r->status != 0) return TRUE;
    char* fh = r->fh;
    if (!xdr_bytes(x, &fh, &r->fh_len, fhsize3)) return FALSE;
    int* flavors = r->flavors;
    return xdr_array(x, (char**)&flavors, &r->n_flavors, 16, sizeof(int), (xdrproc_t)xdr_int);
}

static CLIENT* connect_client(const char* host, const char* port, rpcprog_t prog, rpcvers_t vers) {
    struct sockaddr_storage addr;
    socklen_t addrlen;
    if (peer_resolve(host, port, 0, &addr, &addrlen) != 0) return NULL;
    int fd = socket(addr.ss_family, SOCK_STREAM, 0);
    if (fd < 0 || connect(fd, (struct sockaddr*)&addr, addrlen) < 0) {
        fprintf(stderr, "tirpc_mount_client: cannot connect to %s:%s: %s\n", host, port,
                strerror(errno));
        if (fd >= 0) close(fd);
        return NULL;
    }
    struct netbuf raddr = {.maxlen = addrlen, .len = addrlen, .buf = &addr};
    CLIENT* clnt = clnt_vc_create(fd, &raddr, prog, vers, 0, 0);
    if (!clnt) {
        fprintf(stderr, "tirpc_mount_client: %s\n", clnt_spcreateerror("clnt_vc_create"));
        close(fd);
        return NULL;
    }
    clnt_control(clnt, CLSET_FD_CLOSE, NULL);
    return clnt;
}

static const struct timeval call_timeout = {10, 0};

static int step_getport(CLIENT* c, unsigned long prog, unsigned long vers) {
    struct pmap parms = {.pm_prog = prog, .pm_vers = vers, .pm_prot = IPPROTO_TCP, .pm_port = 0};
    u_int port = 0;
    enum clnt_stat st = clnt_call(c, PMAPPROC_GETPORT, (xdrproc_t)xdr_pmap, (caddr_t)&parms,
                                  (xdrproc_t)xdr_u_int, (caddr_t)&port, call_timeout);
    if (st != RPC_SUCCESS) {
        printf("getport %lu %lu: %s\n", prog, vers, clnt_sperror(c, "GETPORT"));
        return 1;
    }
    printf("getport %lu %lu: port %u\n", prog, vers, port);
    return port == 0;
}

static int step_mnt(CLIENT* c, const char* path) {
    struct mnt_result r;
    memset(&r, 0, sizeof r);
    char* p = (char*)path;
    enum clnt_stat st = clnt_call(c, mountproc3_mnt, (xdrproc_t)xdr_wrapstring, (caddr_t)&p,
                                  (xdrproc_t)xdr_mnt_result, (caddr_t)&r, call_timeout);
    if (st != RPC_SUCCESS) {
        printf("mnt %s: %s\n", path, clnt_sperror(c, "MNT"));
        return 1;
    }
    printf("mnt %s: status %u, file handle %u bytes, %u auth flavor(s)\n", path, r.status, r.fh_len,
           r.n_flavors);
    return r.status != 0 || r.fh_len == 0;
}

static int step_null(CLIENT* c, unsigned long prog, unsigned long vers, int want_tooweak) {
    enum clnt_stat st =
        clnt_call(c, NULLPROC, (xdrproc_t)xdr_void, NULL, (xdrproc_t)xdr_void, NULL, call_timeout);
    struct rpc_err e;
    clnt_geterr(c, &e);
    const char* what = want_tooweak ? "tooweak" : "null";
    if (st == RPC_SUCCESS) {
        printf("%s %lu %lu: accepted\n", what, prog, vers);
        return want_tooweak;
    }
    printf("%s %lu %lu: %s\n", what, prog, vers, clnt_sperror(c, "NULL"));
    return !(want_tooweak && st == RPC_AUTHERROR && e.re_why == AUTH_TOOWEAK);
}

static void usage(void) {
    fprintf(stderr,
            "usage: tirpc_mount_client HOST PORT STEP... (getport PROG VERS | mnt PATH | "
            "null PROG VERS | tooweak PROG VERS)\n");
    exit(2);
}

int main(int argc, char** argv) {
    if (argc < 4) usage();
    const char *host = argv[1], *port = argv[2];
    int failed = 0;
    for (int i = 3; i < argc;) {
        const char* step = argv[i];
        int two = strcmp(step, "getport") == 0 || strcmp(step, "null") == 0 ||
                  strcmp(step, "tooweak") == 0;
        if (two && i + 2 < argc) {
            unsigned long a = peer_parse_ulong(step, argv[i + 1]);
            unsigned long b = peer_parse_ulong(step, argv[i + 2]);
            int is_getport = strcmp(step, "getport") == 0;
            CLIENT* c =
                connect_client(host, port, is_getport ? PMAPPROG : a, is_getport ? PMAPVERS : b);
            if (!c) return 1;
            failed |= is_getport ? step_getport(c, a, b)
                                 : step_null(c, a, b, strcmp(step, "tooweak") == 0);
            clnt_destroy(c);
            i += 3;
        } else if (strcmp(step, "mnt") == 0 && i + 1 < argc) {
            CLIENT* c = connect_client(host, port, mount_prog, mount_v3);
            if (!c) return 1;
            failed |= step_mnt(c, argv[i + 1]);
            clnt_destroy(c);
            i += 2;
        } else {
            usage();
        }
    }
    fflush(stdout);
    return failed ? 1 : 0;
}
