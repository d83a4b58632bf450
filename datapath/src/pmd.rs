//! Poll-mode threads.
