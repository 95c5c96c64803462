"""Model families the engine runs: one readable file per family."""
