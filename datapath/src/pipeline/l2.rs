//! L2 learning switch.
