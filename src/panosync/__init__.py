"""panosync: coherent panoramas with SyncDiffusion."""
