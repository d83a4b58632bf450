//! Zero-copy header views over untrusted bytes (smoltcp `wire` style).
