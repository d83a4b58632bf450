//! Sluice control plane: agent, sluicectl, CNI plugin.
