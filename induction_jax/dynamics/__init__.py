"""Formation of the circuit in the weights: every member's sub-circuits followed through its snapshots."""
