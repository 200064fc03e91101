// lwIP options for rpcgate's DPDK backend (dpdk/). lwIP is compiled from the
// Debian source package (scripts/fetch-lwip.sh) with these settings.
//
// One stack per process, driven by one thread (the DPDK shard): NO_SYS, the
// raw callback API only, no locking. Memory comes from malloc (MEM_LIBC_MALLOC,
// MEMP_MEM_MALLOC) so that the pool sizes below are limits on queue lengths,
// not static arrays sized for the worst case of every connection at once.
#pragma once

#define NO_SYS 1
#define SYS_LIGHTWEIGHT_PROT 0
#define LWIP_SOCKET 0
#define LWIP_NETCONN 0
#define LWIP_NETIF_API 0
#define LWIP_DONT_PROVIDE_BYTEORDER_FUNCTIONS 1  // glibc's htons & co. are in the same TUs

#define MEM_LIBC_MALLOC 1
#define MEMP_MEM_MALLOC 1
#define MEM_ALIGNMENT 8
#define LWIP_SUPPORT_CUSTOM_PBUF 1  // received frames stay in their mbufs (pbuf_alloced_custom)

#define LWIP_IPV4 1
#define LWIP_IPV6 0
#define LWIP_ARP 1
#define ARP_TABLE_SIZE 64
#define ARP_QUEUEING 1
#define ETHARP_SUPPORT_STATIC_ENTRIES 0
#define LWIP_ICMP 1
#define LWIP_RAW 0
#define LWIP_UDP 0
#define LWIP_DHCP 0
#define LWIP_AUTOIP 0
#define LWIP_IGMP 0
#define LWIP_DNS 0
#define IP_REASSEMBLY 0
#define IP_FRAG 0

// TCP: large windows with window scaling (RFC 7323). 1 MiB receive window
// (announced in units of 2^5), 1 MiB send buffer per connection.
#define LWIP_TCP 1
#define TCP_MSS 1460
#define LWIP_WND_SCALE 1
#define TCP_RCV_SCALE 5
#define TCP_WND (1024 * 1024)
#define TCP_SND_BUF (1024 * 1024)
#define TCP_SND_QUEUELEN 8192                    // segments queued per connection (u16)
#define TCP_SNDLOWAT (0xffff - 4 * TCP_MSS - 1)  // lwIP wants it below u16 (sockets only)
#define TCP_SNDQUEUELOWAT (TCP_SND_QUEUELEN / 4)
#define TCP_OVERSIZE TCP_MSS
#define TCP_QUEUE_OOSEQ 1
#define TCP_OOSEQ_MAX_PBUFS 1024  // out-of-order frames held per connection (they hold mbufs)
#define LWIP_TCP_SACK_OUT 1       // tell the sender what arrived after a loss
#define LWIP_TCP_MAX_SACK_NUM 4
#define TCP_LISTEN_BACKLOG 1
#define TCP_DEFAULT_LISTEN_BACKLOG 255
#define MEMP_NUM_TCP_PCB 65535
#define MEMP_NUM_TCP_PCB_LISTEN 16
#define MEMP_NUM_TCP_SEG 65535
#define MEMP_NUM_PBUF 65535
#define PBUF_POOL_SIZE 1024
#define LWIP_TCP_TIMESTAMPS 0
// The TCP timer runs every 50 ms instead of 250: delayed ACKs leave sooner
// and the retransmission timer has a finer grain on a sub-millisecond link.
#define TCP_TMR_INTERVAL 50
#define LWIP_CALLBACK_API 1
#define TCP_WND_UPDATE_THRESHOLD (TCP_WND / 8)

#define LWIP_NETIF_STATUS_CALLBACK 0
#define LWIP_NETIF_LINK_CALLBACK 0
#define LWIP_SINGLE_NETIF 1
// The Internet checksum 8 bytes at a time (dpdk/backend.cc); lwIP's own
// (LWIP_CHKSUM_ALGORITHM 3) was 5 % of the DPDK shard's cycles.
#define LWIP_CHKSUM rpcgate_lwip_chksum
#ifdef __cplusplus
extern "C"
#endif
    unsigned short
    rpcgate_lwip_chksum(const void* data, int len);
// Checksums are computed and checked in software: the veth under
// net_af_packet has its offloads turned off (ethtool -K ... tx off), so every
// frame arrives with a real checksum.
#define CHECKSUM_GEN_IP 1
#define CHECKSUM_GEN_TCP 1
#define CHECKSUM_CHECK_IP 1
#define CHECKSUM_CHECK_TCP 1

#define LWIP_STATS 0
#define LWIP_DEBUG 0
#define LWIP_PERF 0
