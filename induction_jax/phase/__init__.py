"""Phase-change timing per member and across the ensemble."""
