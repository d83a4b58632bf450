/* Small C helpers for DPDK constructs bindgen cannot express. */
#define _GNU_SOURCE
#include <stdio.h>
#include "wrapper.h"

/* rte_errno is a per-lcore (thread-local) variable behind a macro. */
int sluice_rte_errno(void) { return rte_errno; }
void sluice_rte_errno_set(int v) { rte_errno = v; }

/* rte_pktmbuf_mtod is a macro. */
void *sluice_pktmbuf_mtod(struct rte_mbuf *m) { return rte_pktmbuf_mtod(m, void *); }

uint16_t sluice_pktmbuf_headroom_default(void) { return RTE_PKTMBUF_HEADROOM; }
uint64_t sluice_rx_offload_rss_hash(void) { return RTE_ETH_RX_OFFLOAD_RSS_HASH; }
uint32_t sluice_mbuf_rss_flag(void) { return (uint32_t)RTE_MBUF_F_RX_RSS_HASH; }

/* A stdio stream whose writes go to `cb` (DPDK logs into it; Rust routes
 * the text to tracing). glibc's fopencookie is not in Rust's libc crate. */
static sluice_log_cb_t sluice_log_cb;

static ssize_t sluice_cookie_write(void *cookie, const char *buf, size_t size)
{
    (void)cookie;
    if (sluice_log_cb)
        sluice_log_cb(buf, size);
    return (ssize_t)size;
}

FILE *sluice_log_stream(sluice_log_cb_t cb)
{
    cookie_io_functions_t funcs = { .read = NULL, .write = sluice_cookie_write, .seek = NULL, .close = NULL };
    FILE *f;
    sluice_log_cb = cb;
    f = fopencookie(NULL, "w", funcs);
    if (f)
        setvbuf(f, NULL, _IOLBF, 0);
    return f;
}
