"""The INT8 model in torch: what each backend quantizes, and transforms that make it hold."""
