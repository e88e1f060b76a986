"""Reports: comparison tables, memory breakdowns and study plots."""
