//! Safe wrappers over the system DPDK.
