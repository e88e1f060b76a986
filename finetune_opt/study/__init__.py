"""Studies: the multi-seed runner, its cell layout, report and statistics."""
