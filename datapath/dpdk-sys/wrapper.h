/* Headers bound by dpdk-sys. Keep to what Sluice uses. */
#include <stdio.h>
#include <rte_config.h>
#include <rte_common.h>
#include <rte_eal.h>
#include <rte_errno.h>
#include <rte_lcore.h>
#include <rte_cycles.h>
#include <rte_memory.h>
#include <rte_malloc.h>
#include <rte_mempool.h>
#include <rte_mbuf.h>
#include <rte_ethdev.h>
#include <rte_ring.h>
#include <rte_eth_ring.h>
#include <rte_bus_vdev.h>
#include <rte_dev.h>
#include <rte_version.h>
#include <rte_thread.h>
#include <rte_launch.h>
#include <rte_prefetch.h>

/* Helpers for what bindgen cannot bind: thread-locals and macros. */
int sluice_rte_errno(void);
void sluice_rte_errno_set(int v);
void *sluice_pktmbuf_mtod(struct rte_mbuf *m);
uint16_t sluice_pktmbuf_headroom_default(void);
uint64_t sluice_rx_offload_rss_hash(void);
uint32_t sluice_mbuf_rss_flag(void);
typedef void (*sluice_log_cb_t)(const char *buf, size_t len);
FILE *sluice_log_stream(sluice_log_cb_t cb);
