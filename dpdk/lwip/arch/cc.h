// lwIP's compiler/platform glue for rpcgate (Linux, GCC or clang, glibc).
#pragma once

#include <stdio.h>
#include <stdlib.h>

#define LWIP_TIMEVAL_PRIVATE 0
#define LWIP_ERRNO_STDINCLUDE 1
#define LWIP_RAND() ((u32_t)random())

// An lwIP assertion is a bug in the stack or in its use: say where and stop.
#define LWIP_PLATFORM_ASSERT(x)                                                            \
    do {                                                                                   \
        fprintf(stderr, "lwIP assertion \"%s\" failed at %s:%d\n", x, __FILE__, __LINE__); \
        abort();                                                                           \
    } while (0)
#define LWIP_PLATFORM_DIAG(x) \
    do {                      \
        printf x;             \
    } while (0)
