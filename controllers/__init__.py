"""Per-resource controllers: observe (through a Host), diff and plan (pure)."""
