/* Small C helpers for DPDK constructs bindgen cannot express. */
#include "wrapper.h"

/* rte_errno is a per-lcore (thread-local) variable behind a macro. */
int sluice_rte_errno(void) { return rte_errno; }
void sluice_rte_errno_set(int v) { rte_errno = v; }

/* rte_pktmbuf_mtod is a macro. */
void *sluice_pktmbuf_mtod(struct rte_mbuf *m) { return rte_pktmbuf_mtod(m, void *); }

uint16_t sluice_pktmbuf_headroom_default(void) { return RTE_PKTMBUF_HEADROOM; }
uint64_t sluice_rx_offload_rss_hash(void) { return RTE_ETH_RX_OFFLOAD_RSS_HASH; }
uint32_t sluice_mbuf_rss_flag(void) { return (uint32_t)RTE_MBUF_F_RX_RSS_HASH; }
