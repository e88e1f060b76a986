"""Models: loading, PEFT adapters, the [CLS]-only last layer, precision."""
