"""The run configuration: its schema, loading YAML files and key=value overrides, the packaged configs."""
