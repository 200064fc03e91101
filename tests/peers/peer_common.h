/*
 * Small helpers shared by the libtirpc peer programs: option parsing and
 * address resolution. They print their own one-line error and the callers
 * just fail, in keeping with "start-up errors print one clear line".
 */
#ifndef RPCGATE_TESTS_PEERS_PEER_COMMON_H
#define RPCGATE_TESTS_PEERS_PEER_COMMON_H

#include <netdb.h>
#include <sys/socket.h>

/* Parses a whole decimal number; exits with status 2 naming `opt` if it is not one. */
unsigned long peer_parse_ulong(const char* opt, const char* text);

/* getaddrinfo() for one TCP address; returns 0, or -1 after printing why. */
int peer_resolve(const char* host, const char* port, int flags, struct sockaddr_storage* out,
                 socklen_t* outlen);

/* The port of an AF_INET or AF_INET6 address, in host order. */
unsigned peer_port_of(const struct sockaddr_storage* addr);

#endif
