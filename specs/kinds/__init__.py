"""One module per resource kind: the typed desired state a controller reconciles."""
