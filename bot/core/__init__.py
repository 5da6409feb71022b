"""The pure core: the records (one vocabulary), the promotion policy and the experiment lifecycle. No I/O."""
