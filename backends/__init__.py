"""Other inference stacks the CLI can hand a run to, outside the engine (selfspec), which they do not use."""
