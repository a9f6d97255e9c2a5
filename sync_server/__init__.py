"""coinvision sync server: catalog publishing, Faiss indexes, signed embedding packs."""
