#include "peer_common.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <netinet/in.h>

unsigned long peer_parse_ulong(const char* opt, const char* text) {
    char* end = NULL;
    errno = 0;
    unsigned long v = strtoul(text, &end, 10);
    if (errno != 0 || end == text || *end != '\0' || text[0] == '-') {
        fprintf(stderr, "%s wants a whole number, got '%s'\n", opt, text);
        exit(2);
    }
    return v;
}

int peer_resolve(const char* host, const char* port, int flags, struct sockaddr_storage* out,
                 socklen_t* outlen) {
    struct addrinfo hints, *res = NULL;
    memset(&hints, 0, sizeof hints);
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = flags | AI_NUMERICSERV;
    int rc = getaddrinfo(host, port, &hints, &res);
    if (rc != 0) {
        fprintf(stderr, "cannot resolve %s port %s: %s\n", host, port, gai_strerror(rc));
        return -1;
    }
    memcpy(out, res->ai_addr, res->ai_addrlen);
    *outlen = res->ai_addrlen;
    freeaddrinfo(res);
    return 0;
}

unsigned peer_port_of(const struct sockaddr_storage* addr) {
    if (addr->ss_family == AF_INET6) return ntohs(((const struct sockaddr_in6*)addr)->sin6_port);
    return ntohs(((const struct sockaddr_in*)addr)->sin_port);
}
