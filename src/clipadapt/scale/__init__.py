"""Scale-out: bulk embedding with Ray Data into Parquet shards, and multi-process training
under torchrun. Used by the CLI only; Ray and pyarrow come with the ``scale`` extra."""
